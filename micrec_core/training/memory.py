"""Keep a CPU run's freed memory for reuse (glibc's malloc), which saves page faults and no arithmetic.

A training step allocates and frees the same few-megabyte tensors again and again (a [users + items, d] layer output
is 4 MiB on Beauty x Electronics, and so are its gradients). glibc serves an allocation above its mmap threshold with
fresh pages from the kernel and hands the heap's free top back once it exceeds twice that threshold; the threshold
starts at 128 KiB and follows the largest block freed so far, so a step's mix of sizes keeps mapping, faulting in and
zeroing memory it had a moment before (~6,000 minor page faults a step on that pair). Fixing the threshold at glibc's
largest (32 MiB) and never trimming keeps those blocks in the heap: 3-4x fewer page faults and 10-20 % less CPU time
a step for LightGCN, INMO, MICRec, SGL and IDCF there (bench/RESULTS.md). What is computed is unchanged, so results are
equal bit for bit (tests/test_training.py); memory a run frees stays with its process, which holds its peak resident
size anyway. Blocks above 32 MiB (full-ranking score matrices) are still mapped and returned as before.
"""

from __future__ import annotations

import ctypes
import functools
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit systems: mallopt refuses more
NEVER_TRIM = 2**31 - 1  # mallopt takes a C int


@functools.cache
def retain_freed_memory() -> bool:
    """Set this process's glibc malloc to keep freed blocks up to 32 MiB for reuse (once; later calls return the first
    answer). False, with nothing changed, where the C library is not glibc (macOS, musl) or refuses the settings."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process already runs on
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # the threshold first: setting either one also turns off glibc's dynamic threshold
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1 and mallopt(M_TRIM_THRESHOLD, NEVER_TRIM) == 1
