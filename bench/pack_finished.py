"""Pack the run files a device session needs to skip what CPU sessions already finished (bench/gpu_session.sh).

Every run folder under RUNS (`<dataset>/<label>/seed<k>/`) whose metrics.json says it stopped early or at
max_epochs, or that diverged (failed.json), goes into OUT (a .tar.gz) as its json files; a run stopped by a time
budget does not (without its checkpoint, too large for a device call to carry, it would count as finished), nor
does a folder without a result. `micrec grid` on the device then reuses each packed run by its configuration and
data sha256, as it would here.

    python bench/pack_finished.py /path/to/runs .gpu/runs.tar.gz
    git add $(python bench/pack_finished.py --list runs/Beauty_Electronics/runs)   # commit what a session finished
"""

from __future__ import annotations

import argparse
import tarfile
from pathlib import Path

from micrec_core.data.atomic import atomic_path
from micrec_core.runs.grid import settled


def finished_folders(runs: Path) -> list[Path]:
    """Every finished run folder under `runs` (`<dataset>/<label>/seed<k>/`), sorted."""
    return sorted(f for f in runs.glob("*/*/seed*") if f.is_dir() and settled(f))


def pack(runs: Path, out: Path) -> list[Path]:
    """Write the json files of every finished run under `runs` into `out`; returns the packed run folders."""
    folders = finished_folders(runs)
    with atomic_path(out) as tmp, tarfile.open(tmp, "w:gz") as tar:
        for folder in folders:
            for path in sorted(folder.glob("*.json")):
                tar.add(path, arcname=path.relative_to(runs).as_posix())
    return folders


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, help="the runs folder (holding <dataset>/<label>/seed<k>/)")
    parser.add_argument("out", type=Path, nargs="?", help="the .tar.gz to write")
    parser.add_argument("--list", action="store_true", help="print the finished run folders instead of packing")
    args = parser.parse_args()
    if args.list:
        print("\n".join(folder.as_posix() for folder in finished_folders(args.runs)))
        return
    if args.out is None:
        parser.error("the .tar.gz to write is required unless --list")
    folders = pack(args.runs, args.out)
    print(f"{len(folders)} finished runs packed into {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
