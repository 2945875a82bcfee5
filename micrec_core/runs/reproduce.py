"""Rerun the book for one domain pair: execute the ordered notebooks with papermill into runs/<pair>/.

Each executed notebook is written atomically next to a small JSON record of the parameters it ran with, and records
the sha256 of the chapter it ran (its cells, not the outputs a run of it stored); a rerun with the same parameters
skips notebooks already executed from the same chapter, so a killed reproduction resumes where it stopped and a
changed chapter is executed again. The parameters (raw folder and the pair's files in it, the pair, counts, output
folders) are checked before any kernel starts. A chapter that fails keeps its partly executed notebook, with the
error in it, as <chapter>.failed.ipynb beside where the executed chapter would be (removed once the chapter
succeeds), and the error names that file.
`only` executes a subset of the chapters (e.g. all but one whose runs are not all trained yet); the others are left
as they are, and the pair's book lists those of them already executed with the same parameters.
`like_arguments` reads those records back, so a pair's book can be rerun with exactly the parameters it was
executed with (`micrec reproduce --like runs/<pair>`), without retyping them; `like_chapter_params` lets such a
rerun change a chapter parameter for the chapters it executes (`--only 7 --chapter baseline_seeds=5`).
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from micrec_core.data.amazon import check_release, find_file
from micrec_core.data.atomic import atomic_path, write_json
from micrec_core.data.synth import DOMAINS

log = logging.getLogger("micrec.reproduce")
NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
# The kernel's own log at ERROR: its start-up warning about unencrypted local TCP is noise on every chapter.
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=ERROR"]


def pair_name(raw: Path | None, pair: tuple[str, str] | None) -> str:
    """The folder name of a pair's reproduction: 'synthetic' for the default data, else 'A_B'."""
    if raw is None:
        return "synthetic"
    if pair is None:
        raise ValueError("--pair is required with --raw")
    return f"{pair[0]}_{pair[1]}"


def _count(value: Any, option: str) -> None:
    """A count option is a whole number of at least 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{option} must be a whole number of at least 1, got {value!r}")


def chapter_numbers(spec: str) -> set[int]:
    """Chapter numbers from '1-6,8,10-11' (ranges inclusive), refusing anything else by name."""
    numbers: set[int] = set()
    for part in (p.strip() for p in str(spec).split(",")):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if match is None or (match[2] is not None and int(match[2]) < int(match[1])):
            raise ValueError(f"--only takes chapter numbers and ranges such as 1-6,8, got {part!r} in {spec!r}")
        numbers |= set(range(int(match[1]), int(match[2] or match[1]) + 1))
    return numbers


def check_parameters(
    raw: Path | None, release: str, pair: tuple[str, str] | None, seeds: int, device: str, out: Path, data: Path,
    max_epochs: int | None = None,
) -> None:
    """Refuse parameters no chapter could run with, naming the option."""
    check_release(release)
    _count(seeds, "--seeds")
    if max_epochs is not None:
        _count(max_epochs, "--max-epochs")
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {device!r}")
    for option, folder in (("--out", out), ("--data", data)):
        if Path(folder).exists() and not Path(folder).is_dir():
            raise ValueError(f"{option} {folder} exists and is not a folder")
    if pair is not None and (len(pair) != 2 or pair[0] == pair[1]):
        raise ValueError(f"--pair needs two different domains, got {','.join(pair)!r}")
    if raw is None:
        if pair is not None and tuple(pair) != (DOMAINS[0].name, DOMAINS[1].name):
            raise ValueError(f"--pair {','.join(pair)} needs --raw: without it the book runs on the synthetic pair")
        return
    if pair is None:
        raise ValueError("--pair is required with --raw")
    if not Path(raw).is_dir():
        raise ValueError(f"--raw {raw} is not a folder")
    for domain in pair:
        if find_file(Path(raw), domain, release, "reviews") is None:
            raise ValueError(f"--raw {raw} has no {release} reviews file for {domain!r} (in {Path(raw) / domain} or "
                             f"{raw})")


def _from_notebooks(path: Path, notebooks: Path) -> str:
    """`path` relative to the notebooks' folder, where papermill runs them: no path of this machine is recorded.
    Symbolic links are kept as given (`../shared` linked elsewhere stays `../shared`), so the same command gives the
    same parameters on every machine."""
    return os.path.relpath(os.path.abspath(path), os.path.abspath(notebooks))


def notebook_parameters(
    raw: Path | None, release: str, pair: tuple[str, str] | None, seeds: int, device: str, out: Path, data: Path,
    max_epochs: int | None = None, notebooks: Path = NOTEBOOKS,
) -> dict[str, Any]:
    """The papermill parameters of a pair (paths relative to the notebooks' folder); each chapter gets those it
    declares in its parameters cell."""
    name = pair_name(raw, pair)
    extra = {} if max_epochs is None else {"max_epochs": max_epochs}
    return extra | {
        "raw": None if raw is None else _from_notebooks(Path(raw), notebooks),
        "release": release,
        "pair": None if pair is None else ",".join(pair),
        "out": _from_notebooks(Path(data) / "processed" / name, notebooks),
        "runs": _from_notebooks(Path(out) / name / "runs", notebooks),
        "device": device,
        "seeds": seeds,
    }


BASE_KEYS = ("raw", "release", "pair", "out", "runs", "device", "seeds", "max_epochs")


def like_arguments(folder: Path, notebooks: Path = NOTEBOOKS) -> dict[str, Any]:
    """The `reproduce` arguments a pair's chapters in `folder` were executed with, read from their NN_*.params.json
    records: the pair's own parameters, and every other as a chapter parameter. Records that disagree on a
    parameter, or that `reproduce` with the derived arguments would not write again, are refused, naming the file."""
    records = sorted(Path(folder).glob("[0-9][0-9]_*.params.json"))
    if not records:
        raise ValueError(f"{folder} holds no chapter's .params.json: not a folder `micrec reproduce` wrote")
    merged: dict[str, Any] = {}
    seen: dict[str, Path] = {}
    for record in records:
        for key, value in json.loads(record.read_text()).items():
            if key in merged and merged[key] != value:
                raise ValueError(f"{record} has {key}={value!r}, but {seen[key]} has {key}={merged[key]!r}: "
                                 f"the chapters in {folder} were not executed with one set of parameters")
            merged[key], seen[key] = value, record
    missing = sorted({"out", "runs"} - set(merged))
    if missing:
        raise ValueError(f"no record in {folder} has {', '.join(missing)}: not a folder `micrec reproduce` wrote")

    def here(value: str) -> Path:  # recorded relative to the notebooks; given relative to the current folder
        return Path(os.path.relpath(os.path.normpath(Path(notebooks).absolute() / value)))

    pair = merged.get("pair")
    arguments = {
        "raw": None if merged.get("raw") is None else here(merged["raw"]),
        "release": str(merged.get("release", "2014")),
        "pair": None if pair is None else tuple(str(pair).split(",")),
        "seeds": int(merged.get("seeds", 1)),
        "device": str(merged.get("device", "cpu")),
        "out": here(merged["runs"]).parent.parent,
        "data": here(merged["out"]).parent.parent,
        "max_epochs": merged.get("max_epochs"),
        "chapter_params": {k: v for k, v in merged.items() if k not in BASE_KEYS},
    }
    again = notebook_parameters(*(arguments[k] for k in ("raw", "release", "pair", "seeds", "device", "out", "data",
                                                          "max_epochs")), notebooks=notebooks)
    differing = sorted(k for k in BASE_KEYS if k in merged and again.get(k) != merged[k])
    if differing:
        raise ValueError(f"{seen[differing[0]]}: {', '.join(differing)} not as `micrec reproduce` writes them "
                         f"({', '.join(f'{k}={merged[k]!r}' for k in differing)}; expected "
                         f"{', '.join(f'{k}={again.get(k)!r}' for k in differing)})")
    return arguments


def like_chapter_params(folder: Path, recorded: dict[str, Any], given: dict[str, Any],
                        only: set[int] | None) -> dict[str, Any]:
    """`--like`'s chapter parameters: the `recorded` ones (`like_arguments`), with each of `given` added where no
    record has it (a chapter not executed yet) or changed where every chapter that records it is executed by this
    call (`only`; None: all): a chapter left alone keeps what it was executed with, so a change it would miss is
    refused, naming those chapters."""
    merged = dict(recorded)
    for key, value in given.items():
        if key in recorded and recorded[key] != value:
            holders = sorted(int(record.name[:2]) for record in Path(folder).glob("[0-9][0-9]_*.params.json")
                             if key in json.loads(record.read_text()))
            kept = [] if only is None else [n for n in holders if n not in only]
            if kept:
                raise ValueError(f"--chapter {key}={value!r}: {folder}'s records have {key}={recorded[key]!r} (chapter"
                                 f"{'s' if len(kept) > 1 else ''} {', '.join(map(str, kept))}), and --like keeps "
                                 "them for the chapters it does not execute (name every one of them in --only, or run "
                                 "without --like to execute with other parameters)")
        merged[key] = value
    return merged


def declared(notebook: Path) -> set[str]:
    """The names a chapter's parameters cell assigns, read as Python reads them; a chapter whose cell papermill
    cannot parse whole (it skips any line with a second '=', even in a comment or a string) is refused, because
    papermill would then warn about, or a reader miss, parameters it does not see."""
    import papermill

    cells = [c for c in json.loads(Path(notebook).read_text())["cells"]
             if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{notebook}: needs exactly one cell tagged 'parameters', found {len(cells)}")
    source = "".join(cells[0]["source"])
    names = {target.id for node in ast.parse(source).body if isinstance(node, ast.Assign | ast.AnnAssign)
             for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
             if isinstance(target, ast.Name)}
    unparsed = names - set(papermill.inspect_notebook(str(notebook)))
    if unparsed:
        raise ValueError(f"{notebook}: papermill cannot parse the parameters cell's lines for "
                         f"{', '.join(sorted(unparsed))} (a second '=' on the line?)")
    return names


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
    chapter_params: dict[str, Any] | None = None,
    progress: bool = True,
    only: set[int] | None = None,
) -> list[Path]:
    """Execute every notebooks/NN_*.ipynb for one pair into OUT/<pair>/, skipping those already done.

    chapter_params: parameters some chapters declare beyond the pair's (e.g. chapter 6's `sweep`), each given to
    the chapters that declare it; a name no chapter declares is refused before any kernel starts.
    only: the chapter numbers to execute (None: all); the others are not executed, and the returned list (and the
    pair's book) holds those of them already executed with the same parameters.
    """
    check_parameters(raw, release, pair, seeds, device, out, data, max_epochs)
    import papermill

    sources = sorted(Path(notebooks).glob("[0-9][0-9]_*.ipynb"))
    if only is not None:
        missing = sorted(only - {int(source.name[:2]) for source in sources})
        if missing:
            raise ValueError(f"--only names no chapter numbered {', '.join(map(str, missing))}")
    names = {source: declared(source) for source in sources}
    unknown = sorted(set(chapter_params or {}) - set().union(*names.values()))
    if unknown:
        raise ValueError(f"no chapter declares the parameter(s) {', '.join(unknown)}")
    blind = [source.name for source in sources if raw is not None and not {"raw", "pair"} <= names[source]]
    if blind:
        raise ValueError(f"{', '.join(blind)} declare no raw and pair parameters: they would run on the synthetic "
                         f"default, not on {','.join(pair or ())}")
    given = notebook_parameters(raw, release, pair, seeds, device, out, data, max_epochs, notebooks)
    given |= chapter_params or {}
    target_dir = Path(out) / pair_name(raw, pair)
    target_dir.mkdir(parents=True, exist_ok=True)
    done = []
    for k, source in enumerate(sources):
        params = {key: v for key, v in given.items() if key in names[source]}
        target = target_dir / source.name
        record = target.with_suffix(".params.json")
        failed = target.with_suffix(".failed.ipynb")
        number = int(source.name[:2])
        if target.is_file() and record.is_file() and json.loads(record.read_text()) == params \
                and is_current(target, source):
            log.info("%s: already executed with these parameters, skipped", source.name)
            done.append(target)
            continue
        if only is not None and number not in only:
            log.info("%s: not in --only, and no copy executed from it with these parameters: left out", source.name)
            continue
        log.info("chapter %d of %d: %s", k + 1, len(sources), source.name)
        with atomic_path(target) as tmp, RunWatcher(target_dir / "runs", source.stem):
            try:
                papermill.execute_notebook(
                    str(source), str(tmp), parameters=params, cwd=str(source.parent), progress_bar=progress,
                    extra_arguments=KERNEL_ARGUMENTS,
                )
                _portable_record(tmp, source, target.name, label_prefix(target_dir.name))
            except Exception as err:
                reason = f"{getattr(err, 'ename', type(err).__name__)}: {getattr(err, 'evalue', err)}"
                if tmp.stat().st_size == 0:
                    raise RuntimeError(f"{source.name} failed before it ran ({reason})") from err
                os.replace(tmp, failed)
                raise RuntimeError(
                    f"{source.name} failed ({reason}); its partly executed notebook is kept at {failed}"
                ) from err
        failed.unlink(missing_ok=True)
        write_json(record, params)
        done.append(target)
    write_book(target_dir, done)
    return done


class RunWatcher:
    """While a chapter executes, reports each training run that finishes meanwhile (a metrics.json written or
    rewritten under `runs`), with the seconds since the previous report: papermill's bar counts only the chapter's
    cells, and a cell that trains a grid can run for hours. Early stopping leaves the number of epochs, and so an ETA
    per run, unknown; the count and the pace are what can be told. The folder does not say who wrote a file, so a run
    that another process trains into the same folder (a `micrec grid` of bench/cpu_session.sh) is reported too, and
    the message says "under the runs folder", not "by this chapter"."""

    def __init__(self, runs: Path, chapter: str, every: float = 2.0) -> None:
        # absolute: papermill changes the process's working directory while the chapter runs
        self.runs, self.chapter, self.every = Path(runs).absolute(), chapter, every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _finished(self) -> dict[Path, float]:
        return {path: path.stat().st_mtime for path in self.runs.glob("*/*/seed*/metrics.json")}

    def _watch(self) -> None:
        seen, count, last = self._finished(), 0, time.perf_counter()
        while True:
            stopped = self.stop.wait(self.every)  # one last look once the chapter has ended
            for path, stamp in sorted(self._finished().items()):
                if seen.get(path) != stamp:
                    seen[path], count, now = stamp, count + 1, time.perf_counter()
                    log.info("%s: run %d finished under the runs folder: %s/%s (%.0f s)", self.chapter, count,
                             path.parent.parent.name, path.parent.name, now - last)
                    last = now
            if stopped:
                return

    def __enter__(self) -> RunWatcher:
        self.thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop.set()
        self.thread.join()


def chapter_sha256(source: Path) -> str:
    """The sha256 of what a chapter computes and says: each cell's type, tags and source, in order. Outputs,
    execution counts and metadata are left out, so executing the chapter in place (the synthetic book) does not make
    the pairs' copies of it stale."""
    parts = [[cell["cell_type"], sorted(cell.get("metadata", {}).get("tags", [])), "".join(cell["source"])]
             for cell in json.loads(Path(source).read_text())["cells"]]  # source: a string or a list of lines
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def is_current(target: Path, source: Path) -> bool:
    """Whether an executed copy was made from the chapter as it is now: by its recorded `chapter_sha256`, or, for a
    copy made before that was recorded, by the sha256 of the whole chapter file it records (outputs included)."""
    record = json.loads(Path(target).read_text())["metadata"].get("micrec", {})
    if "chapter_sha256" in record:
        return record["chapter_sha256"] == chapter_sha256(source)
    return record.get("source_sha256") == hashlib.sha256(Path(source).read_bytes()).hexdigest()


def _portable_record(notebook: Path, source: Path, target: str, prefix: str) -> None:
    """Record papermill's input and output as the chapters' names, not as paths of this machine, and which version
    of the chapter ran (`chapter_sha256`: a changed chapter is executed again), and make the copy's figure labels its
    own (`own_labels`)."""
    import nbformat

    executed = nbformat.read(notebook, as_version=4)
    executed.metadata["papermill"] |= {"input_path": f"notebooks/{source.name}", "output_path": target}
    executed.metadata["micrec"] = {"chapter_sha256": chapter_sha256(source)}
    own_labels(executed, prefix)
    nbformat.write(executed, notebook)


def label_prefix(pair_folder: str) -> str:
    """The prefix of a pair's figure labels: its folder name, lower case, words joined by '-'."""
    return re.sub(r"[^a-z0-9]+", "-", pair_folder.lower()).strip("-")


def own_labels(notebook: Any, prefix: str) -> None:
    """Give a chapter copy figure labels of its own, so that one book holds several copies of a chapter: each code
    cell's figure name (`metadata.mystnb.figure.name`, `fig-...`) and each {numref} of one in the markdown cells
    becomes `<prefix>-fig-...`."""
    for cell in notebook.cells:
        figure = cell.metadata.get("mystnb", {}).get("figure", {})
        if figure.get("name", "").startswith("fig-"):
            figure["name"] = f"{prefix}-{figure['name']}"
        if cell.cell_type == "markdown":
            cell.source = re.sub(r"\{numref\}`(fig-[^`]+)`", rf"{{numref}}`{prefix}-\1`", cell.source)


def glued(notebook: Path) -> dict[str, str]:
    """The values a chapter glued (myst_nb.glue), as their text."""
    values = {}
    for cell in json.loads(Path(notebook).read_text())["cells"]:
        for output in cell.get("outputs", []):
            name = output.get("metadata", {}).get("scrapbook", {}).get("name")
            text = output.get("data", {}).get("application/papermill.record/text/plain")
            if name and text is not None:
                values[name] = text.strip("'")
    return values


def write_book(target_dir: Path, chapters: list[Path]) -> Path:
    """A table of contents for the book of this reproduction (its chapters, beside the equations page), with an
    index page of its headline numbers: `jupyter-book build --all . --toc <dir>/_toc.yml` builds it."""
    root = Path(os.path.relpath(os.path.abspath(target_dir), os.path.abspath(NOTEBOOKS.parent)))
    (Path(target_dir) / "index.md").write_text("\n".join([
        f"# Your reproduction: {Path(target_dir).name}", "",
        "Executed by `micrec reproduce`; the chapters below are those it wrote, with their stored outputs.", "",
        *summary_lines(chapters), ""]))
    lines = ["format: jb-book", f"root: {root.as_posix()}/index", "chapters:", "  - file: book/equations",
             *(f"  - file: {(root / c.stem).as_posix()}" for c in chapters)]
    toc = Path(target_dir) / "_toc.yml"
    toc.write_text("\n".join(lines) + "\n")
    return toc


HEADLINES = {  # chapter -> glued key -> what it says
    "06_contrastive_scale.ipynb": {"sweep_selected": "validation-selected MICRec configuration",
                                   "selected_vs_inmo": "its test NDCG@20 against INMO's, %"},
    "07_results.ipynb": {"micrec_vs_inmo": "MICRec against INMO, mean change of P/R/NDCG@20, %",
                         "n_models": "models compared"},
    "11_claims.ipynb": {"claims_summary": "the paper's claims"},
}


def summary_lines(chapters: list[Path]) -> list[str]:
    """The headline numbers the executed chapters glued, one line each."""
    lines = []
    for chapter in chapters:
        values = glued(chapter) if chapter.is_file() else {}
        for key, text in HEADLINES.get(chapter.name, {}).items():
            if key in values:
                lines.append(f"- {text}: {_readable(values[key])} (chapter {chapter.stem})")
    return lines


def _readable(text: str) -> str:
    """A glued value for the terminal: a float to three significant digits, anything else as glued."""
    try:
        number = float(text)
    except ValueError:
        return text
    return text if number.is_integer() and "." not in text else f"{number:.3g}"
