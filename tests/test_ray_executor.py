"""The Ray executor (`micrec grid --executor ray`): each cell a Ray task, with the local executor's results, reuse
and error reporting; and a clear message where Ray is not installed."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from micrec_core.cli import main
from micrec_core.runs.grid import GridError, run_dir, run_grid

SMALL = {"dim": 8, "max_epochs": 2, "batches_per_epoch": 2, "device": "cpu"}


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray of 2 CPUs for the module (no dashboard, its files in a temporary folder), then nothing left."""
    ray = pytest.importorskip("ray")
    earlier = {p.pid for p in psutil.Process().children(recursive=True)}  # e.g. a multiprocessing forkserver
    with tempfile.TemporaryDirectory(prefix="ray") as temp:
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, log_to_driver=False)
        try:
            yield
        finally:
            started = [p for p in psutil.Process().children(recursive=True) if p.pid not in earlier]
            ray.shutdown()
            _, alive = psutil.wait_procs(started, timeout=20)
            assert not [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _results(folder: Path) -> tuple[object, object, object]:
    """What a run computed: its best epochs, its history and its test metrics."""
    metrics = json.loads((folder / "metrics.json").read_text())
    return metrics["best_epochs"], metrics["history"], metrics["test"]


def test_ray_tasks_compute_what_local_processes_do_and_finished_runs_are_reused(
    tiny_dataset: Path, tmp_path: Path, local_ray: None,
) -> None:
    grid = {"together": True, "threads": 1, **SMALL}  # inmo's two seeds train as one union cell, lightgcn's too
    local = run_grid(tiny_dataset, ["inmo", "lightgcn"], [0, 1], tmp_path / "local", **grid)
    remote = run_grid(tiny_dataset, ["inmo", "lightgcn"], [0, 1], tmp_path / "ray", executor="ray", **grid)
    assert [f.relative_to(tmp_path / "ray") for f in remote] == [f.relative_to(tmp_path / "local") for f in local]
    for here, there in zip(local, remote, strict=True):
        assert _results(there) == _results(here)
        assert json.loads((there / "metrics.json").read_text())["provenance"]["trained_together"] == 2
    stamps = {f: (f / "metrics.json").stat().st_mtime_ns for f in remote}
    broken = run_dir(tmp_path / "ray", tiny_dataset, "inmo", 2)
    broken.mkdir()
    (broken / "metrics.json").write_text('{"config": ')
    with pytest.raises(GridError, match=r"inmo/seed2/metrics.json: unreadable"):
        run_grid(tiny_dataset, ["inmo", "lightgcn"], [0, 1, 2], tmp_path / "ray", executor="ray", **grid)
    assert stamps == {f: (f / "metrics.json").stat().st_mtime_ns for f in remote}  # reused, not retrained
    assert (run_dir(tmp_path / "ray", tiny_dataset, "lightgcn", 2) / "metrics.json").is_file()


def test_a_task_error_reaches_the_caller_as_it_is(tiny_dataset: Path, tmp_path: Path, local_ray: None) -> None:
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        run_grid(tiny_dataset, ["inmo"], [0, 1], tmp_path, together=True, graph=True, executor="ray", **SMALL)


def test_the_command_line_runs_the_grid_on_ray(tiny_dataset: Path, tmp_path: Path, local_ray: None,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["grid", "--dataset", str(tiny_dataset), "--variants", "inmo", "--seeds", "1", "--runs", str(tmp_path),
            "--device", "cpu", "--quiet", "--max-epochs", "1", "--set", "dim=8", "--set", "batches_per_epoch=2",
            "--executor", "ray"]
    assert main(argv) == 0
    (folder,) = json.loads(capsys.readouterr().out)
    assert json.loads((Path(folder) / "metrics.json").read_text())["epochs_run"] == 1


def test_a_second_driver_runs_its_grid_on_a_running_cluster_and_leaves_it_up(tiny_dataset: Path, tmp_path: Path,
                                                                             local_ray: None) -> None:
    import ray

    address = ray.get_runtime_context().gcs_address
    argv = ["grid", "--dataset", str(tiny_dataset), "--variants", "lightgcn", "--seeds", "1", "--runs",
            str(tmp_path), "--device", "cpu", "--quiet", "--max-epochs", "1", "--set", "dim=8", "--set",
            "batches_per_epoch=2", "--executor", "ray", "--ray-address", address]
    done = subprocess.run([sys.executable, "-m", "micrec_core.cli", *argv], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    (folder,) = json.loads(done.stdout)
    assert json.loads((Path(folder) / "metrics.json").read_text())["epochs_run"] == 1
    assert ray.cluster_resources()["CPU"] == 2


def test_without_ray_the_error_says_how_to_install_it_and_local_grids_train(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    argv = ["grid", "--dataset", str(tiny_dataset), "--variants", "inmo", "--seeds", "1", "--runs", str(tmp_path),
            "--device", "cpu", "--quiet", "--executor", "ray"]
    assert main(argv) == 2
    assert "needs Ray, which is not installed: pip install -e '.[ray]' (or pip install ray==2.60.0)" in \
        capsys.readouterr().err
    assert not list(tmp_path.rglob("*.json"))
    (folder,) = run_grid(tiny_dataset, ["inmo"], [0], tmp_path, **SMALL)  # the local executor needs no Ray
    assert (folder / "metrics.json").is_file()
    with pytest.raises(ValueError, match="executor must be one of local, ray"):
        run_grid(tiny_dataset, ["inmo"], [0], tmp_path, executor="dask", **SMALL)
