"""Files the project writes: the user's umask, flushed before the rename, leftovers of killed writers removed,
folders swapped in whole, one writer of a folder at a time."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from micrec_core.data import atomic
from micrec_core.data.atomic import write_bytes, write_json


def mode(path: Path) -> int:
    """Permission bits of a file or folder."""
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Run the test under the umask it is parametrised with."""
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077], indirect=True)
def test_written_files_honour_the_umask(tmp_path: Path, umask: int) -> None:
    write_json(tmp_path / "a.json", {"x": 1})
    with atomic.atomic_path(tmp_path / "sub" / "b.bin") as tmp:
        tmp.write_bytes(b"b")
    assert mode(tmp_path / "a.json") == 0o666 & ~umask
    assert mode(tmp_path / "sub" / "b.bin") == 0o666 & ~umask


@pytest.mark.parametrize("umask", [0o022, 0o077], indirect=True)
def test_written_folders_honour_the_umask(tmp_path: Path, umask: int) -> None:
    with atomic.atomic_folder(tmp_path / "built") as tmp:
        write_json(tmp / "inner" / "c.json", {})
    assert mode(tmp_path / "built") == 0o777 & ~umask
    assert mode(tmp_path / "built" / "inner" / "c.json") == 0o666 & ~umask


def test_atomic_write_is_flushed_before_the_rename(tmp_path: Path, durability_events: list[tuple[str, int]]) -> None:
    events = durability_events
    write_bytes(tmp_path / "f.bin", b"data")
    inode = (tmp_path / "f.bin").stat().st_ino
    assert ("fsync", inode) in events
    assert events.index(("fsync", inode)) < events.index(("replace", inode))


def gone_pid() -> int:
    """The pid of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_leftovers_of_killed_writers_are_removed_on_the_next_write(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    dead = folder / f".metrics.json.{gone_pid()}-0123abcd.tmp.json"
    dead_folder = folder / f".built.{gone_pid()}-4567cdef.tmpdir"
    live = folder / f".metrics.json.{os.getpid()}-89abcdef.tmp.json"
    old_style = folder / ".model.pt.k2j4h5g1.tmp.pt"  # tempfile.mkstemp's names, before pids were in them
    recent_old_style = folder / ".model.pt.a1b2c3d4.tmp.pt"
    unrelated = folder / ".notes.tmp.json"
    for path in (dead, live, old_style, recent_old_style, unrelated):
        path.write_text("partial")
    (dead_folder / "A").mkdir(parents=True)
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(old_style, (two_days_ago, two_days_ago))
    write_json(folder / "metrics.json", {"done": True})
    assert not dead.exists() and not dead_folder.exists() and not old_style.exists()
    assert live.exists() and recent_old_style.exists() and unrelated.exists()
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == ["metrics.json"]


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path: Path) -> None:
    final = tmp_path / "built"
    with atomic.atomic_folder(final) as tmp:
        write_json(tmp / "one.json", 1)
    with pytest.raises(RuntimeError, match="killed"), atomic.atomic_folder(final) as tmp:
        write_json(tmp / "two.json", 2)
        raise RuntimeError("killed half-way")
    assert sorted(p.name for p in final.iterdir()) == ["one.json"]
    with atomic.atomic_folder(final) as tmp:
        write_json(tmp / "two.json", 2)
    assert sorted(p.name for p in final.iterdir()) == ["two.json"]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["built"]


def test_folder_lock_makes_a_second_writer_wait(tmp_path: Path) -> None:
    final = tmp_path / "built"
    waiting, order = threading.Event(), []

    class Signal(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "waiting" in record.getMessage():
                waiting.set()

    def second() -> None:
        with atomic.folder_lock(final):
            order.append("second")

    handler = Signal()
    logging.getLogger("micrec.atomic").addHandler(handler)
    try:
        with atomic.folder_lock(final):
            thread = threading.Thread(target=second)
            thread.start()
            assert waiting.wait(60), "the second writer did not wait for the lock"
            order.append("first")
        thread.join(60)
    finally:
        logging.getLogger("micrec.atomic").removeHandler(handler)
    assert order == ["first", "second"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_json_files_are_strict_json(tmp_path: Path, bad: float) -> None:
    target = tmp_path / "metrics.json"
    with pytest.raises(ValueError, match=r"metrics.json: refusing to write a NaN or infinity"):
        write_json(target, {"history": [{"grad_ratio": bad}]})
    assert not target.exists()
    write_json(target, {"history": [{"grad_ratio": None}]})
    assert json.loads(target.read_text(), parse_constant=pytest.fail) == {"history": [{"grad_ratio": None}]}
