"""Nothing committed or published carries a path of the machine that wrote it (issue 18).

Every tracked file of the book's sources, the executed chapters, the committed runs and the project's top-level
documents is searched for an absolute path: this checkout's own location (wherever the test runs) and the home,
temporary and work folders under which machines here and elsewhere keep their checkouts. The vendored widget
JavaScript is excluded: it is third-party code that tests paths, not one of ours.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SEARCHED = ("notebooks", "runs", "book", "bench", "README.md", "_config.yml", "_toc.yml", "environment.yml")
VENDORED = ("book/widgets_js/",)
USUAL_ROOTS = r"/(?:home|Users|tmp|work|root|mnt|check|private|var/folders|scratch)/"
NOT_AFTER = r"(?<![\w.~/-])"


def _tracked() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--", *SEARCHED], cwd=ROOT, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the committed files cannot be listed")
    return [name for name in out.stdout.decode().split("\0") if name and not name.startswith(VENDORED)]


def machine_paths(text: str, roots: tuple[str, ...]) -> list[str]:
    """The absolute machine paths in ``text``: any of ``roots`` and anything under a usual home or work folder."""
    alternatives = "|".join([USUAL_ROOTS, *(re.escape(root.rstrip("/") + "/") for root in roots)])
    return re.findall(NOT_AFTER + f"(?:{alternatives})[^\\s\"',]{{0,40}}", text)


def test_pattern_finds_machine_paths_and_spares_urls_and_relative_paths() -> None:
    roots = ("/opt/checkout/micrec",)
    assert machine_paths('"raw": "/work/main/data/x"', roots)
    assert machine_paths("output_path: /tmp/exec_01.ipynb", roots)
    assert machine_paths("see /opt/checkout/micrec/runs", roots)
    assert not machine_paths("../shared/data/amazon2014 and https://example.org/home/page", roots)
    assert not machine_paths("runs/Toys/work/seed0 and ~/tmp/x", roots)


def test_no_committed_file_holds_a_machine_path() -> None:
    roots = tuple({str(ROOT), str(ROOT.parent)} - {"/"})
    offenders = {}
    for name in _tracked():
        path = ROOT / name
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        hits = machine_paths(text, roots)
        if hits:
            offenders[name] = sorted(set(hits))[:3]
    assert not offenders, f"absolute machine paths in {len(offenders)} committed files: {offenders}"
