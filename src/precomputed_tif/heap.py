"""How a process gets its memory: freed blocks kept for the next request or task (glibc's malloc
only), and a converter worker's pages faulted small (`small_pages_for_task_buffers`).

A chunk is hundreds of KiB and a task's buffers many MiB. glibc hands blocks that large back to
the kernel when they are freed (mmap'd blocks, and heap tops above 128 KiB), so the next block of
the same size is faulted in and zeroed page by page again: measured, a third of the CPU of
serving a cold tiff chunk. Raising both thresholds keeps freed blocks for reuse; a process then
holds at most what it held at its peak, which the memory budget already counts.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc refuses more on 64-bit systems
_TRIM_THRESHOLD = 256 << 20


def keep_freed_blocks() -> bool:
    """Ask glibc to keep freed blocks up to 32 MiB (and heap tops up to 256 MiB) for reuse;
    False where the C library is not glibc (macOS, Windows, musl), which is left as it is."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    kept = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
    return bool(kept and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


def keep_task_buffers() -> bool:
    """`keep_freed_blocks`, and no block mapped on its own, whatever its size (a converter
    worker's).

    A task's region is often above 32 MiB, beyond any mmap threshold, so each task's region was
    a new mapping that the kernel zeroed page by page before the planes were read into it:
    4.5-7.6% of a zarr or blockfs conversion's CPU in perf, under 1% from the heap, where the
    next task's region reuses the freed one. Peak RSS stays that of the largest task (measured
    at 2048x2048x512: 343-380 MiB either way), which the memory budget counts.
    """
    global _keeping_task_buffers
    mallopt = _mallopt()
    _keeping_task_buffers = bool(
        keep_freed_blocks() and mallopt is not None and mallopt(_M_MMAP_MAX, 0)
    )
    return _keeping_task_buffers


_keeping_task_buffers = False
_largest_task = 0

_PR_SET_THP_DISABLE = 41  # linux/prctl.h; inherited by children, kept across execve


def small_pages_for_task_buffers() -> bool:
    """Fault this process's new memory in 4 KiB pages, not transparent huge pages (a converter
    worker's); False where the kernel or the C library does not offer it.

    Virtual machines whose hypervisor takes freed memory back (free page reporting) hand a huge
    page fault a 2 MiB block the host must back again, as the kernel only reports free blocks
    that large: first touch of fresh memory ran at 0.4 GiB/s with huge pages and 2.2 GiB/s
    without on the benchmark VM, and zeroing huge pages was 12% of a zarr conversion's CPU at
    1024x1024x256 (0.6% without). A worker streams through each task's region once and reuses it
    for the next task, so huge pages spare it few TLB misses: with memory the host still backed,
    eight interleaved pairs showed no difference in wall or CPU (``benchmarks/README.md``).
    """
    prctl = _libc_function("prctl", [ctypes.c_int] + [ctypes.c_ulong] * 4)
    return prctl is not None and prctl(_PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0


def make_room_for_task(task_bytes: int) -> bool:
    """Before a task of about `task_bytes`, in a process that keeps task buffers: when it is larger
    than every task before it, its region cannot fit where theirs were freed, so the freed heap
    goes back to the kernel first. A worker then never holds a freed region beside a larger new
    one: at most one task's memory, as the budget counts. True when memory was given back."""
    global _largest_task
    if not _keeping_task_buffers or task_bytes <= _largest_task:
        return False
    _largest_task = task_bytes
    malloc_trim = _libc_function("malloc_trim", [ctypes.c_size_t])
    return bool(malloc_trim is not None and malloc_trim(0))


def _mallopt() -> Any:
    return _libc_function("mallopt", [ctypes.c_int, ctypes.c_int])


def _libc_function(name: str, argtypes: list[Any]) -> Any:
    """glibc's `name`, returning an int, or None off Linux or where the C library lacks it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        # the process's own symbols, libc's among them: `ctypes.util.find_library` would run
        # `ldconfig -p` in a subprocess, in every worker and server started
        function = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    return function
