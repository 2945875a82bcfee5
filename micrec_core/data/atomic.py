"""Atomic writes of files and folders, and content hashes: nothing half-written is ever left under a final name.

A file is written to a temporary ``.{name}.{pid}-{random}.tmp{suffix}`` beside its final name, created with mode
0666 filtered by the user's umask (as ``open`` would create it), flushed to disk (fsync) and only then renamed onto
the final name; the folder is fsynced after the rename. A folder is built the same way, as
``.{name}.{pid}-{random}.tmpdir`` beside it, and swapped in as a whole (:func:`atomic_folder`).

Leftovers of a killed process are removed the next time a process writes into the same folder: the first atomic
file write into a folder in a process, and every atomic folder write, sweeps that folder, deleting the temporary files
and folders whose process is gone (its pid no longer runs on this machine) and those of the older pid-less naming
(``mkstemp``'s 8 random characters) that are more than a day old. A temporary of a live process, this one included,
is never touched. (Once per process for files: a folder of many files, such as downloaded images, is listed once.)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger("micrec.atomic")
TEMP_NAME = re.compile(r"\..+\.(?:(?P<pid>\d+)-[0-9a-f]{8}|(?P<legacy>[a-z0-9_]{8}))\.tmp(?:dir|\..*)?")
LEGACY_MAX_AGE_S = 24 * 3600
_swept: set[Path] = set()
_swept_lock = threading.Lock()


def is_temp_name(name: str) -> bool:
    """Whether `name` is a temporary file or folder of an atomic write."""
    return TEMP_NAME.fullmatch(name) is not None


def _alive(pid: int) -> bool:
    """Whether a process with this pid runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it runs, as another user
    return True


def _is_stale(entry: Path) -> bool:
    """Whether `entry` is an atomic write's temporary that no live process will finish."""
    match = TEMP_NAME.fullmatch(entry.name)
    if match is None:
        return False
    if match["pid"] is not None:
        return not _alive(int(match["pid"]))
    try:
        return time.time() - entry.lstat().st_mtime > LEGACY_MAX_AGE_S
    except FileNotFoundError:
        return False


def sweep_stale(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporaries that killed processes left in `folder`; returns what was removed."""
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for entry in sorted(Path(folder).iterdir()):
            if _is_stale(entry):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry)
    if removed:
        log.info("removed %d temporary file(s) left by killed processes in %s", len(removed), folder)
    return removed


def _sweep_once(folder: Path) -> None:
    """Sweep `folder` the first time this process writes into it."""
    key = folder.resolve()
    with _swept_lock:
        if key in _swept:
            return
        _swept.add(key)
    sweep_stale(folder)


def _temp_name(final: Path, kind: str) -> Path:
    """A fresh temporary name beside `final`, tagged with this process's pid."""
    return final.with_name(f".{final.name}.{os.getpid()}-{secrets.token_hex(4)}.{kind}")


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush a file's or folder's data and metadata to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix); flush it to disk and rename it onto `path` only if the
    block succeeds. The file is created with the permissions `open` would give it (0666 less the umask)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    _sweep_once(final.parent)
    while True:
        tmp = _temp_name(final, f"tmp{final.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, final)
        fsync_path(final.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a new empty folder beside `path`; if the block succeeds, it replaces `path` as a whole.

    The swap is two renames (the old folder aside, the new one in place) followed by deleting the old one, so a
    reader sees the old folder, the new one, or briefly none, never a mix. Files written into the new folder should
    be written with :func:`atomic_path` (flushed); the folders are fsynced here. Use it under :func:`folder_lock`
    when two processes may write the same `path`.
    """
    final = Path(path).resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(final.parent)
    tmp = _temp_name(final, "tmpdir")
    tmp.mkdir(mode=0o777)
    try:
        yield tmp
        for folder, _, _ in os.walk(tmp):
            fsync_path(folder)
        old = None
        if final.exists():
            old = _temp_name(final, "tmpdir")
            os.rename(final, old)
        os.rename(tmp, final)
        fsync_path(final.parent)
        if old is not None:
            shutil.rmtree(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def folder_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on `path` (a ``.{name}.lock`` file beside it), waiting for another holder to finish."""
    final = Path(path).resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    lock = final.with_name(f".{final.name}.lock")
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("%s is being written by another process (lock %s); waiting for it to finish", final, lock)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as indented, key-sorted JSON atomically (stable bytes for equal content). Strict JSON only: a
    NaN or infinity anywhere in `obj` is a ValueError naming the file (no parser of the standard could read it)."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False)
    except ValueError as err:
        raise ValueError(f"{path}: refusing to write a NaN or infinity into JSON ({err})") from err
    write_bytes(path, (text + "\n").encode())


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


Verdict = Literal["keep", "open", "foreign"]


def check_layout(out: Path, verdict: Callable[[Path], Verdict], what: str) -> None:
    """Refuse to write into `out` unless it is missing or a folder whose every path is its own: `verdict(path)` says
    "keep" (one of ours, not looked into), "open" (a folder of ours whose entries are judged too) or "foreign"; the
    error names the first foreign path and `what` the folder should hold."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    folders = [out]
    while folders:
        for path in sorted(folders.pop().iterdir()):
            judged = verdict(path)
            if judged == "foreign":
                raise ValueError(f"--out {out} holds {path}, which is not part of {what}; "
                                 "choose an empty or new folder")
            if judged == "open":
                folders.append(path)
