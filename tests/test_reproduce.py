"""`micrec reproduce`: executes ordered notebooks with papermill and resumes what is already done."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nbformat
import pytest

from micrec_core.cli import main
from micrec_core.runs.reproduce import (
    chapter_numbers,
    label_prefix,
    like_arguments,
    like_chapter_params,
    notebook_parameters,
    own_labels,
    reproduce,
)


def write_notebook(path: Path, body: str) -> None:
    """A notebook with a parameters cell and one code cell."""
    params = nbformat.v4.new_code_cell("raw = None\nout = ''\nruns = ''\ndevice = 'cpu'")
    params.metadata["tags"] = ["parameters"]
    notebook = nbformat.v4.new_notebook(cells=[params, nbformat.v4.new_code_cell(body)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, path)


def test_executes_in_order_and_skips_done(tmp_path: Path) -> None:
    books = tmp_path / "notebooks"
    books.mkdir()
    log = tmp_path / "log.txt"
    for name in ("01_a.ipynb", "02_b.ipynb"):
        write_notebook(books / name, f"open({str(log)!r}, 'a').write({name!r} + ' ' + str(raw) + '\\n')")
    write_notebook(books / "helper.ipynb", "raise RuntimeError('not a chapter')")
    done = reproduce(out=tmp_path / "runs", data=tmp_path / "data", notebooks=books)
    assert [p.name for p in done] == ["01_a.ipynb", "02_b.ipynb"]
    assert log.read_text().splitlines() == ["01_a.ipynb None", "02_b.ipynb None"]
    executed = nbformat.read(tmp_path / "runs" / "synthetic" / "01_a.ipynb", as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    record = json.loads((tmp_path / "runs" / "synthetic" / "01_a.params.json").read_text())
    assert record["runs"] == "../runs/synthetic/runs"  # relative to the notebooks, where papermill runs them
    assert set(record) == {"raw", "out", "runs", "device"}  # what the chapter declares, nothing else
    assert executed.metadata["papermill"]["input_path"] == "notebooks/01_a.ipynb"
    assert str(tmp_path) not in json.dumps(executed.metadata["papermill"])
    toc = (tmp_path / "runs" / "synthetic" / "_toc.yml").read_text()
    assert toc.count("- file:") == 3 and toc.rstrip().endswith("synthetic/02_b")  # equations, then the chapters
    assert (tmp_path / "runs" / "synthetic" / "index.md").read_text().startswith("# Your reproduction: synthetic")
    reproduce(out=tmp_path / "runs", data=tmp_path / "data", notebooks=books)
    assert len(log.read_text().splitlines()) == 2  # nothing re-executed
    reproduce(out=tmp_path / "runs", data=tmp_path / "data", notebooks=books, device="cuda")
    assert len(log.read_text().splitlines()) == 4  # new parameters: executed again
    write_notebook(books / "02_b.ipynb", f"open({str(log)!r}, 'a').write('changed\\n')")
    reproduce(out=tmp_path / "runs", data=tmp_path / "data", notebooks=books, device="cuda")
    assert log.read_text().splitlines()[4:] == ["changed"]  # a changed chapter, and only it, executed again


def chapters(tmp_path: Path, *bodies: str) -> Path:
    """A notebooks folder with one chapter per body, 01_a, 02_b, ..."""
    books = tmp_path / "notebooks"
    books.mkdir(exist_ok=True)
    for k, body in enumerate(bodies):
        write_notebook(books / f"{k + 1:02d}_{'abcdefgh'[k]}.ipynb", body)
    return books


@pytest.mark.parametrize(("options", "message"), [
    ({"raw": "missing", "pair": ("A", "B")}, r"--raw .*missing is not a folder"),
    ({"raw": "raw", "pair": ("A", "C")}, r"--raw .*raw has no 2014 reviews file for 'C'"),
    ({"raw": "raw", "pair": ("A", "A")}, "--pair needs two different domains"),
    ({"raw": "raw"}, "--pair is required with --raw"),
    ({"pair": ("A", "B")}, "--pair A,B needs --raw"),
    ({"seeds": 0}, "--seeds must be a whole number of at least 1, got 0"),
    ({"max_epochs": 0}, "--max-epochs must be a whole number of at least 1, got 0"),
    ({"release": "2020"}, "--release must be one of"),
])
def test_parameters_are_checked_before_any_kernel_starts(tmp_path: Path, options: dict, message: str) -> None:
    for name in ("A", "B"):
        (tmp_path / "raw" / name).mkdir(parents=True)
        (tmp_path / "raw" / name / f"reviews_{name}_5.json.gz").write_bytes(b"")
    if "raw" in options:
        options["raw"] = tmp_path / options["raw"]
    ran = tmp_path / "ran.txt"
    books = chapters(tmp_path, f"open({str(ran)!r}, 'w').write('ran')")
    with pytest.raises(ValueError, match=message):
        reproduce(out=tmp_path / "runs", data=tmp_path / "data", notebooks=books, **options)
    assert not ran.exists() and not (tmp_path / "runs").exists()


def test_a_failed_chapter_keeps_its_notebook_and_says_where(tmp_path: Path) -> None:
    books = chapters(tmp_path, "x = 1", "print('half-way')\nraise RuntimeError('boom')", "y = 3")
    runs = tmp_path / "runs" / "synthetic"
    with pytest.raises(RuntimeError, match=r"02_b\.ipynb failed \(RuntimeError: boom\); its partly executed notebook "
                                           rf"is kept at {runs / '02_b.failed.ipynb'}"):
        reproduce(out=tmp_path / "runs", data=tmp_path / "data", notebooks=books)
    kept = nbformat.read(runs / "02_b.failed.ipynb", as_version=4)
    outputs = [output for cell in kept.cells for output in cell.get("outputs", [])]
    assert any(o.get("text", "").startswith("half-way") for o in outputs)
    assert any(o.get("ename") == "RuntimeError" and o.get("evalue") == "boom" for o in outputs)
    assert sorted(p.name for p in runs.iterdir()) == ["01_a.ipynb", "01_a.params.json", "02_b.failed.ipynb"]
    write_notebook(books / "02_b.ipynb", "x = 2")
    done = reproduce(out=tmp_path / "runs", data=tmp_path / "data", notebooks=books)
    assert [p.name for p in done] == ["01_a.ipynb", "02_b.ipynb", "03_c.ipynb"]
    assert not (runs / "02_b.failed.ipynb").exists()


def test_chapter_parameters_go_to_the_chapters_that_declare_them(tmp_path: Path) -> None:
    books = chapters(tmp_path, "pass")
    special = nbformat.v4.new_code_cell("raw = None\nout = ''\nruns = ''\nsweep = 'none'")
    special.metadata["tags"] = ["parameters"]
    notebook = nbformat.v4.new_notebook(cells=[special, nbformat.v4.new_code_cell("assert sweep == 'lr=0.1'")])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, books / "02_sweep.ipynb")
    with pytest.raises(ValueError, match=r"no chapter declares the parameter.s. colour"):
        reproduce(out=tmp_path / "runs", data=tmp_path / "data", notebooks=books, chapter_params={"colour": 1})
    reproduce(out=tmp_path / "runs", data=tmp_path / "data", notebooks=books, chapter_params={"sweep": "lr=0.1"})
    records = {p.name: json.loads(p.read_text()) for p in (tmp_path / "runs" / "synthetic").glob("*.params.json")}
    assert "sweep" not in records["01_a.params.json"] and records["02_sweep.params.json"]["sweep"] == "lr=0.1"
    assert not any(str(tmp_path) in json.dumps(r) for r in records.values())


def test_the_books_chapters_declare_their_parameters_as_papermill_reads_them() -> None:
    from micrec_core.runs.reproduce import NOTEBOOKS, declared

    sources = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    assert len(sources) >= 11
    for source in sources:
        assert {"raw", "pair", "release", "out"} <= declared(source), source.name


def test_a_parameters_cell_papermill_cannot_parse_whole_is_refused(tmp_path: Path) -> None:
    from micrec_core.runs.reproduce import declared

    books = chapters(tmp_path, "pass")
    cell = nbformat.v4.new_code_cell("raw = None  # None = synthetic\nout = ''\nruns = ''")
    cell.metadata["tags"] = ["parameters"]
    notebook = nbformat.v4.new_notebook(cells=[cell])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, books / "02_b.ipynb")
    with pytest.raises(ValueError, match=r"02_b.ipynb: papermill cannot parse .* for raw"):
        declared(books / "02_b.ipynb")
    with pytest.raises(ValueError, match=r"02_b.ipynb: papermill cannot parse"):
        reproduce(out=tmp_path / "runs", data=tmp_path / "data", notebooks=books)


def test_a_real_pair_is_refused_by_chapters_that_would_not_receive_it(tmp_path: Path) -> None:
    books = chapters(tmp_path, "pass")  # declares raw but not pair
    raw = tmp_path / "raw"
    for name in ("A", "B"):
        (raw / name).mkdir(parents=True)
        (raw / name / f"reviews_{name}_5.json.gz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"01_a.ipynb declare no raw and pair parameters: .* not on A,B"):
        reproduce(raw=raw, pair=("A", "B"), out=tmp_path / "runs", data=tmp_path / "data", notebooks=books)


def test_the_closing_summary_reads_the_numbers_the_chapters_glued(tmp_path: Path) -> None:
    from micrec_core.runs.reproduce import summary_lines

    books = tmp_path / "notebooks"
    books.mkdir()
    write_notebook(books / "07_results.ipynb",
                   "from myst_nb import glue\nglue('micrec_vs_inmo', -2.5123456, display=False)")
    done = reproduce(out=tmp_path / "runs", data=tmp_path / "data", notebooks=books, progress=False)
    assert summary_lines(done) == ["- MICRec against INMO, mean change of P/R/NDCG@20, %: -2.51 (chapter 07_results)"]
    assert "-2.51" in (tmp_path / "runs" / "synthetic" / "index.md").read_text()


def test_a_chapter_copy_gets_figure_labels_of_its_own() -> None:
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("As {numref}`fig-degrees` shows, and {eq}`eq-bpr` says."),
        nbformat.v4.new_code_cell("plot()", metadata={"mystnb": {"figure": {"name": "fig-degrees", "caption": "c"}}}),
    ])
    prefix = label_prefix("Toys_and_Games_Video_Games")
    own_labels(nb, prefix)
    assert prefix == "toys-and-games-video-games"
    assert nb.cells[0].source == "As {numref}`toys-and-games-video-games-fig-degrees` shows, and {eq}`eq-bpr` says."
    assert nb.cells[1].metadata["mystnb"]["figure"]["name"] == "toys-and-games-video-games-fig-degrees"


def test_parameters_name_a_linked_folder_by_its_link_not_its_target(tmp_path: Path) -> None:
    (tmp_path / "elsewhere" / "amazon").mkdir(parents=True)
    (tmp_path / "shared").symlink_to(tmp_path / "elsewhere")
    notebooks = tmp_path / "repo" / "notebooks"
    notebooks.mkdir(parents=True)
    raw = tmp_path / "repo" / ".." / "shared" / "amazon"
    given = notebook_parameters(raw, "2014", ("A", "B"), 1, "cpu", tmp_path / "repo" / "runs",
                                tmp_path / "repo" / "data", notebooks=notebooks)
    assert given["raw"] == "../../shared/amazon"


def test_each_training_run_a_chapter_finishes_is_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    books = tmp_path / "notebooks"
    books.mkdir()
    run = tmp_path / "runs" / "synthetic" / "runs" / "data" / "inmo" / "seed3"
    write_notebook(books / "04_training.ipynb",
                   f"from pathlib import Path\nPath({str(run)!r}).mkdir(parents=True)\n"
                   f"(Path({str(run)!r}) / 'metrics.json').write_text('{{}}')")
    with caplog.at_level("INFO", logger="micrec.reproduce"):
        reproduce(out=tmp_path / "runs", data=tmp_path / "data", notebooks=books, progress=False)
    assert "04_training: run 1 finished under the runs folder: inmo/seed3" in caplog.text


def test_only_executes_the_chapters_named_and_lists_the_others_done(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    books = chapters(tmp_path, *(f"open({str(log)!r}, 'a').write('{k}\\n')" for k in "abcd"))
    runs = tmp_path / "runs"
    done = reproduce(out=runs, data=tmp_path / "data", notebooks=books, only=chapter_numbers("1,3-4"))
    assert log.read_text().split() == ["a", "c", "d"]
    assert [p.name for p in done] == ["01_a.ipynb", "03_c.ipynb", "04_d.ipynb"]
    assert "synthetic/02_b" not in (runs / "synthetic" / "_toc.yml").read_text()
    done = reproduce(out=runs, data=tmp_path / "data", notebooks=books, only={2})
    assert log.read_text().split() == ["a", "c", "d", "b"]  # the others were done with these parameters: kept
    assert [p.name for p in done] == ["01_a.ipynb", "02_b.ipynb", "03_c.ipynb", "04_d.ipynb"]
    done = reproduce(out=runs, data=tmp_path / "data", notebooks=books, device="cuda", only={4})
    assert [p.name for p in done] == ["04_d.ipynb"]  # the others ran with other parameters: not listed
    with pytest.raises(ValueError, match="--only names no chapter numbered 5, 7"):
        reproduce(out=runs, data=tmp_path / "data", notebooks=books, only={1, 5, 7})


def test_a_chapter_executed_in_place_keeps_its_copies_current(tmp_path: Path) -> None:
    """The synthetic book executes the chapters in place, which changes their stored outputs, not what they compute:
    a pair's copies stay current (listed by --only), and only an edited cell executes a chapter again."""
    log = tmp_path / "log.txt"
    books = chapters(tmp_path, *(f"open({str(log)!r}, 'a').write('{k}\\n')" for k in "ab"))
    runs = tmp_path / "runs"
    reproduce(out=runs, data=tmp_path / "data", notebooks=books)
    source = books / "02_b.ipynb"
    executed = nbformat.read(source, as_version=4)
    executed.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="ran in place\n")]
    executed.cells[1].execution_count = 7
    nbformat.write(executed, source)
    done = reproduce(out=runs, data=tmp_path / "data", notebooks=books, only={1})
    assert log.read_text().split() == ["a", "b"]  # nothing executed again
    assert [p.name for p in done] == ["01_a.ipynb", "02_b.ipynb"]  # 02 still listed
    executed.cells[1].source += "  # edited"
    nbformat.write(executed, source)
    done = reproduce(out=runs, data=tmp_path / "data", notebooks=books, only={1})
    assert [p.name for p in done] == ["01_a.ipynb"]  # an edited chapter's copy is stale
    reproduce(out=runs, data=tmp_path / "data", notebooks=books, only={2})
    assert log.read_text().split() == ["a", "b", "b"]


def test_a_copy_made_before_chapter_hashes_is_current_by_its_file_hash(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    books = chapters(tmp_path, f"open({str(log)!r}, 'a').write('a\\n')")
    runs = tmp_path / "runs"
    reproduce(out=runs, data=tmp_path / "data", notebooks=books)
    copy = runs / "synthetic" / "01_a.ipynb"
    executed = nbformat.read(copy, as_version=4)
    source = books / "01_a.ipynb"
    executed.metadata["micrec"] = {"source_sha256": hashlib.sha256(source.read_bytes()).hexdigest()}
    nbformat.write(executed, copy)
    reproduce(out=runs, data=tmp_path / "data", notebooks=books)
    assert log.read_text().split() == ["a"]  # the old record matches the file as it is: current
    source.write_text(source.read_text().replace('"nbformat"', ' "nbformat"', 1))  # same cells, other bytes
    reproduce(out=runs, data=tmp_path / "data", notebooks=books)
    assert log.read_text().split() == ["a", "a"]  # an old record cannot tell: executed again, now by cell hash
    assert "chapter_sha256" in nbformat.read(copy, as_version=4).metadata["micrec"]


@pytest.mark.parametrize("spec", ["1,x", "3-1", "1-", ""])
def test_only_refuses_what_is_no_chapter_list(spec: str) -> None:
    with pytest.raises(ValueError, match="--only takes chapter numbers and ranges"):
        chapter_numbers(spec)


def test_like_reruns_a_pair_with_the_parameters_it_was_executed_with(tmp_path: Path) -> None:
    for name in ("A", "B"):
        (tmp_path / "raw" / name).mkdir(parents=True)
        (tmp_path / "raw" / name / f"reviews_{name}_5.json.gz").write_bytes(b"")
    log = tmp_path / "log.txt"
    books = chapters(tmp_path, f"open({str(log)!r}, 'a').write(str(raw).split('/')[-1] + ' ' + device + '\\n')")
    special = nbformat.v4.new_code_cell("raw = None\npair = None\nout = ''\nruns = ''\nsweep = 'none'")
    special.metadata["tags"] = ["parameters"]
    body = f"open({str(log)!r}, 'a').write(sweep + '\\n')"
    notebook = nbformat.v4.new_notebook(cells=[special, nbformat.v4.new_code_cell(body)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, books / "02_sweep.ipynb")
    first = (books / "01_a.ipynb").read_text()
    (books / "01_a.ipynb").write_text(first.replace("raw = None", "raw = None\\npair = None"))
    reproduce(tmp_path / "raw", pair=("A", "B"), device="cuda", out=tmp_path / "runs", data=tmp_path / "data",
              notebooks=books, chapter_params={"sweep": "lr=0.1"}, progress=False)
    assert log.read_text().split("\n")[:2] == ["raw cuda", "lr=0.1"]
    like = like_arguments(tmp_path / "runs" / "A_B", notebooks=books)
    assert like["pair"] == ("A", "B") and like["device"] == "cuda" and like["chapter_params"] == {"sweep": "lr=0.1"}
    assert like["raw"].resolve() == (tmp_path / "raw").resolve()
    assert like["out"].resolve() == (tmp_path / "runs").resolve()
    assert like["data"].resolve() == (tmp_path / "data").resolve()
    before = {p: p.read_bytes() for p in (tmp_path / "runs").rglob("*") if p.is_file()}
    reproduce(**like, notebooks=books, progress=False)
    assert len(log.read_text().splitlines()) == 2  # every chapter already executed with these parameters
    assert {p: p.read_bytes() for p in (tmp_path / "runs").rglob("*") if p.is_file()} == before
    notebook.cells[1].source += "  # edited"  # a changed chapter
    nbformat.write(notebook, books / "02_sweep.ipynb")
    reproduce(**like, notebooks=books, progress=False, only={2})
    assert log.read_text().splitlines()[2:] == ["lr=0.1"]  # the changed chapter, with its recorded sweep


def test_like_refuses_records_that_are_not_one_reproduction(tmp_path: Path) -> None:
    folder = tmp_path / "runs" / "A_B"
    folder.mkdir(parents=True)
    with pytest.raises(ValueError, match=r"holds no chapter's \.params\.json"):
        like_arguments(folder)
    base = {"raw": None, "out": "../data/processed/synthetic", "runs": "../runs/synthetic/runs", "device": "cpu"}
    (folder / "01_a.params.json").write_text(json.dumps(base))
    (folder / "02_b.params.json").write_text(json.dumps(base | {"device": "cuda"}))
    with pytest.raises(ValueError, match=r"02_b.params.json has device='cuda', but .*01_a.params.json has "
                                         r"device='cpu'"):
        like_arguments(folder, notebooks=tmp_path / "notebooks")
    (folder / "02_b.params.json").unlink()
    (folder / "01_a.params.json").write_text(json.dumps(base | {"runs": "../elsewhere/runs"}))
    with pytest.raises(ValueError, match="runs not as `micrec reproduce` writes them"):
        like_arguments(folder, notebooks=tmp_path / "notebooks")


def test_like_refuses_options_it_would_override(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reproduce", "--like", "runs/Beauty_Electronics", "--seeds", "1", "--device", "cpu"]) == 2
    assert "drop --seeds, --device" in capsys.readouterr().err
    assert main(["reproduce", "--like", "runs/Beauty_Electronics", "--chapter", "jobs=1", "--only", "1"]) == 2
    assert "--chapter jobs=1: runs/Beauty_Electronics's records have jobs=2" in capsys.readouterr().err


def test_like_changes_a_chapter_parameter_only_for_the_chapters_it_executes(tmp_path: Path) -> None:
    folder = tmp_path / "A_B"
    folder.mkdir()
    (folder / "06_sweep.params.json").write_text(json.dumps({"seeds": 5, "jobs": 2}))
    (folder / "07_results.params.json").write_text(json.dumps({"seeds": 5, "jobs": 2, "baseline_seeds": 1}))
    recorded = {"jobs": 2, "baseline_seeds": 1}
    assert like_chapter_params(folder, recorded, {"sweep": "lr=0.1"}, {8}) == recorded | {"sweep": "lr=0.1"}  # new
    assert like_chapter_params(folder, recorded, {"baseline_seeds": 5}, {7}) == {"jobs": 2, "baseline_seeds": 5}
    assert like_chapter_params(folder, recorded, {"baseline_seeds": 5}, None)["baseline_seeds"] == 5  # all executed
    assert like_chapter_params(folder, recorded, {"jobs": 2}, {1}) == recorded  # as recorded: no change
    with pytest.raises(ValueError, match=r"baseline_seeds=1 \(chapter 7\), and --like keeps them"):
        like_chapter_params(folder, recorded, {"baseline_seeds": 5}, {6})
    with pytest.raises(ValueError, match=r"jobs=2 \(chapter 6\)"):
        like_chapter_params(folder, recorded, {"jobs": 1}, {7})  # chapter 6 would keep jobs=2
    with pytest.raises(ValueError, match=r"jobs=2 \(chapters 6, 7\)"):
        like_chapter_params(folder, recorded, {"jobs": 1}, {1})
    assert recorded == {"jobs": 2, "baseline_seeds": 1}  # the records' values are not changed in place
