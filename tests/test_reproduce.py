"""`micrec reproduce`: executes ordered notebooks with papermill and resumes what is already done."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat

from micrec_core.reproduce import reproduce


def write_notebook(path: Path, body: str) -> None:
    """A notebook with a parameters cell and one code cell."""
    params = nbformat.v4.new_code_cell("raw = None\nout = ''\nruns = ''")
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
    assert record["runs"] == str((tmp_path / "runs" / "synthetic" / "runs").resolve())
    reproduce(out=tmp_path / "runs", data=tmp_path / "data", notebooks=books)
    assert len(log.read_text().splitlines()) == 2  # nothing re-executed
    reproduce(out=tmp_path / "runs", data=tmp_path / "data", notebooks=books, device="cuda")
    assert len(log.read_text().splitlines()) == 4  # new parameters: executed again
