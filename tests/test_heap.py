"""A converter worker reuses a task's freed region for the next task instead of asking the
kernel for fresh zeroed pages (`heap.keep_task_buffers`)."""

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
