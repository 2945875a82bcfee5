"""What identifies the code that trained a run: the bytes of this package's modules.

A git commit is too fine (a commit that edits a notebook or the README would make every checkpoint
unresumable) and a version number too coarse; the sha256 over the package's source files changes exactly when
code that computes something changes. Checkpoints record it and a resume across a different value is refused;
metrics.json records it beside the git commit.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]


@functools.cache
def code_sha256() -> str:
    """sha256 over the package's .py files, its subpackages' included (path in the package and bytes, sorted by
    path)."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py"), key=lambda p: p.relative_to(PACKAGE).as_posix()):
        digest.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()
