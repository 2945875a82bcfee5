"""Grid cells as Ray tasks (`micrec grid --executor ray`): one task per cell (a union of runs, or one run).

Each task declares what it needs: `threads` CPUs, and on CUDA a share of one GPU (`gpus`, e.g. 1/2 when two
cells share a GPU). A task trains into its run folders exactly as a local worker does (the same checkpoints,
metrics.json or failed.json), so the run folders must be on a filesystem every Ray worker sees at the same path
(the dataset too). A killed driver ends its tasks; the next grid call resumes them from their checkpoints. Ray is
optional (`pip install -e '.[ray]'`) and imported only here, only when a cell is to train.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from micrec_core.config import Config

log = logging.getLogger("micrec.grid")
RAY_PIN = "ray==2.60.0"


def import_ray() -> ModuleType:
    """The `ray` module, or an error that says how to install it."""
    try:
        import ray
    except ImportError as err:
        raise RuntimeError(f"--executor ray needs Ray, which is not installed: pip install -e '.[ray]' "
                           f"(or pip install {RAY_PIN})") from err
    return ray


def run_cells(
    train_cell: Callable[..., list[Path]], cells: list[tuple[list[Config], list[Path]]], threads: int | None,
    deadline: float | None, graph: bool, gpus: float, address: str | None, cpus: int, across_code: bool = False,
) -> None:
    """Train every cell as one Ray task running `train_cell` (`grid._train_cell`); once all have ended, raise the
    first error, if any (a task's own error, as the local executor does, or a RuntimeError naming the cell whose
    worker was lost).

    gpus: the GPU share each task declares (0 on a CPU). address: a running cluster to connect to (the driver
    disconnects at the end, the cluster stays up); None: start a local Ray with `cpus` CPUs for this call and shut
    it down at the end. A Ray this process already started (`ray.init`) is used as it is and left running.
    across_code: passed on to `train_cell` (resume checkpoints written by other code).
    """
    if not cells:
        return
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        settings = {"address": address} if address else {"num_cpus": cpus, "include_dashboard": False}
        ray.init(**settings)
    try:
        task = ray.remote(num_cpus=threads or 1, num_gpus=gpus)(train_cell)
        pending = {task.remote(configs, [f.absolute() for f in folders], threads, False, deadline, graph,
                               across_code): folders for configs, folders in cells}
        error: BaseException | None = None
        while pending:
            (done,), _ = ray.wait(list(pending), num_returns=1)
            folders = pending.pop(done)
            try:
                ray.get(done)
                log.info("finished %s", ", ".join(str(f) for f in folders))
            except ray.exceptions.RayTaskError as err:  # the task raised: its own error, as a local worker's
                error = error or err.cause
            except ray.exceptions.RayError as err:  # its worker or node was lost (after Ray's retries)
                error = error or RuntimeError(f"{', '.join(str(f) for f in folders)}: {err}")
        if error is not None:
            raise error
    finally:
        if started:
            ray.shutdown()
