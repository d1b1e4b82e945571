"""A converter worker reuses a task's freed region for the next task instead of asking the
kernel for fresh zeroed pages (`heap.keep_task_buffers`), and faults its pages in 4 KiB, not as
transparent huge pages (`heap.small_pages_for_task_buffers`)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

_REUSE = """
import sys
import numpy as np
from precomputed_tif.heap import keep_task_buffers

if {keep}:
    assert keep_task_buffers() is True
size = 96 << 20  # a task's region: above glibc's largest mmap threshold (32 MiB)
region = np.empty(size, np.uint8)
region.fill(0xAB)
del region
again = np.empty(size, np.uint8)
middle = again[size // 2 : size // 2 + 4096]
print(int((middle == 0xAB).all()))
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc's malloc only",
)
@pytest.mark.parametrize("keep", [True, False])
def test_the_next_task_region_reuses_the_freed_one(keep):
    """With `keep_task_buffers` the second region is the first one's memory, old bytes and all;
    without it (as in the server, or any other process) it is a new mapping of zeroed pages."""
    reused = subprocess.run(
        [sys.executable, "-c", _REUSE.format(keep=keep)], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert reused == ("1" if keep else "0")


_ROOM = """
import os
import numpy as np
from precomputed_tif.heap import keep_task_buffers, make_room_for_task

def resident_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

assert keep_task_buffers() is True
make_room_for_task(64 << 20)
region = np.empty(64 << 20, np.uint8)
region.fill(1)
pin = np.ones(1 << 20, np.uint8)  # allocated after it: the freed region is not the heap's top
del region
held = resident_mib()
smaller = make_room_for_task(48 << 20)
after_smaller = resident_mib()
larger = make_room_for_task(96 << 20)
print(smaller, larger, round(held - after_smaller), round(held - resident_mib()))
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc's malloc only",
)
def test_a_larger_task_first_gives_the_freed_regions_back():
    """A freed region is kept for the next task of its size or less; before a larger task, which
    could not reuse it, it goes back to the kernel, so a worker never holds both."""
    out = subprocess.run(
        [sys.executable, "-c", _ROOM], capture_output=True, text=True, check=True
    ).stdout.split()
    smaller, larger, freed_before_smaller, freed_before_larger = out
    assert (smaller, larger) == ("False", "True")
    assert int(freed_before_smaller) < 8
    assert int(freed_before_larger) > 56


def _huge_pages_allowed() -> str:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("THP_enabled:"):
                return line.split()[1]
    pytest.skip("this kernel does not report THP_enabled (Linux 6.5+)")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's prctl only")
def test_pool_workers_fault_small_pages_and_the_driver_keeps_huge_ones():
    """Every converter worker has asked for 4 KiB pages (`heap.small_pages_for_task_buffers`);
    the driver, which calls no task, is left as the system set it."""
    from precomputed_tif.executors import process_pool

    driver = _huge_pages_allowed()
    with process_pool(2) as pool:
        workers = [pool.submit(_huge_pages_allowed) for _ in range(4)]
        assert {future.result() for future in workers} == {"0"}
    assert _huge_pages_allowed() == driver
