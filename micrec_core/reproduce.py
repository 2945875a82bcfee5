"""Rerun the book for one domain pair: execute the ordered notebooks with papermill into runs/<pair>/.

Each executed notebook is written atomically next to a small JSON record of the parameters it ran with; a rerun
with the same parameters skips notebooks already executed, so a killed reproduction resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from micrec_core.atomic import atomic_path, write_json

log = logging.getLogger("micrec.reproduce")
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def pair_name(raw: Path | None, pair: tuple[str, str] | None) -> str:
    """The folder name of a pair's reproduction: 'synthetic' for the default data, else 'A_B'."""
    if raw is None:
        return "synthetic"
    if pair is None:
        raise ValueError("--pair is required with --raw")
    return f"{pair[0]}_{pair[1]}"


def notebook_parameters(
    raw: Path | None, release: str, pair: tuple[str, str] | None, seeds: int, device: str, out: Path, data: Path,
    max_epochs: int | None = None,
) -> dict[str, Any]:
    """The papermill parameters every chapter accepts (absolute paths: notebooks run in notebooks/)."""
    name = pair_name(raw, pair)
    extra = {} if max_epochs is None else {"max_epochs": max_epochs}
    return extra | {
        "raw": None if raw is None else str(Path(raw).resolve()),
        "release": release,
        "pair": None if pair is None else ",".join(pair),
        "out": str((Path(data) / "processed" / name).resolve()),
        "runs": str((Path(out) / name / "runs").resolve()),
        "device": device,
        "seeds": seeds,
    }


def reproduce(
    raw: Path | None = None,
    release: str = "2014",
    pair: tuple[str, str] | None = None,
    seeds: int = 1,
    device: str = "cpu",
    out: Path = Path("runs"),
    data: Path = Path("data"),
    max_epochs: int | None = None,
    notebooks: Path = NOTEBOOKS,
) -> list[Path]:
    """Execute every notebooks/NN_*.ipynb for one pair into OUT/<pair>/, skipping those already done."""
    import papermill

    params = notebook_parameters(raw, release, pair, seeds, device, out, data, max_epochs)
    target_dir = Path(out) / pair_name(raw, pair)
    target_dir.mkdir(parents=True, exist_ok=True)
    done = []
    for source in sorted(Path(notebooks).glob("[0-9][0-9]_*.ipynb")):
        target = target_dir / source.name
        record = target.with_suffix(".params.json")
        if target.is_file() and record.is_file() and json.loads(record.read_text()) == params:
            log.info("%s: already executed with these parameters, skipped", source.name)
            done.append(target)
            continue
        log.info("%s: executing", source.name)
        with atomic_path(target) as tmp:
            papermill.execute_notebook(
                str(source), str(tmp), parameters=params, cwd=str(source.parent), progress_bar=False
            )
        write_json(record, params)
        done.append(target)
    return done
