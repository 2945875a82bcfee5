"""What identifies the code that trained a run, the bytes of this package's modules, and the CPU kernels it ran on.

A git commit is too fine (a commit that edits a notebook or the README would make every checkpoint
unresumable) and a version number too coarse; the sha256 over the package's source files changes exactly when
code that computes something changes. Checkpoints record it and a resume across a different value is refused;
metrics.json records it beside the git commit.

The same code and seed give the same bits on one machine, not on every CPU: torch picks its vectorised kernels
(ATen's CPU capability) and MKL its code path by the processor, and their rounding differs; early stopping can
turn a difference in the seventh digit into a different best epoch (bench/RESULTS.md, "The same seed on another
CPU"). `device_name` names the device a run trained on (for a CPU, its model and kernels), for its provenance and
for each segment of a run resumed on another machine.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
from pathlib import Path

import torch

PACKAGE = Path(__file__).resolve().parents[1]


@functools.cache
def code_sha256() -> str:
    """sha256 over the package's .py files, its subpackages' included (path in the package and bytes, sorted by
    path)."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py"), key=lambda p: p.relative_to(PACKAGE).as_posix()):
        digest.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@functools.cache
def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The processor's model name as the OS reports it (a virtual machine may report a generic one), else the
    architecture."""
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    return platform.processor() or platform.machine()


def cpu_kernels() -> str:
    """The CPU a run computes on and the kernels torch takes there: its model, ATen's vector capability (AVX2,
    AVX512, ...) and MKL's code path where MKL_CBWR fixes it."""
    kernels = torch.backends.cpu.get_cpu_capability()
    if os.environ.get("MKL_CBWR"):
        kernels += f", MKL_CBWR={os.environ['MKL_CBWR']}"
    return f"{platform.machine()} {cpu_model()} ({kernels})"


def device_name(device: torch.device) -> str:
    """The device as a run's provenance names it: the GPU's name, or the CPU's kernels and torch's thread count."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"{device.type}: {cpu_kernels()}, {torch.get_num_threads()} threads"
