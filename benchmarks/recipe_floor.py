#!/usr/bin/env python3
"""The floor: the I/O any converter must do, and nothing else.

usage: recipe_floor.py 'STACK/*.tif' OUT [--levels N] [--read-threads 2]

1. read: every plane with tifffile, into a reused slab of 64 planes (bounded memory);
2. write: as many bytes as the full pyramid holds (all level sizes summed), as plain files of
   one 64^3 chunk each (the last one shorter), with `np.ndarray.tofile` from the slab buffer.

No downsampling, no chunk reshaping, no metadata. Prints one JSON line with read_s and write_s.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import numpy as np

# isort: split
from _stack import CHUNK, default_levels, list_planes, pyramid_bytes, read_slab, stack_shape


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", help="glob of the TIFF planes, e.g. 'stack/*.tif'")
    ap.add_argument("out", type=Path)
    ap.add_argument("--levels", type=int, default=None, help="default: until one chunk")
    ap.add_argument("--read-threads", type=int, default=2)
    a = ap.parse_args()

    t0 = time.perf_counter()
    planes = list_planes(a.source)
    size, dtype = stack_shape(planes)
    levels = a.levels if a.levels is not None else default_levels(size)
    a.out.mkdir(parents=True, exist_ok=True)
    if any(a.out.iterdir()):
        raise SystemExit(f"{a.out} is not empty")

    x, y, z = size
    slab = np.empty((CHUNK, y, x), dtype)
    with ThreadPoolExecutor(a.read_threads) if a.read_threads > 1 else nullcontext() as pool:
        for z0 in range(0, z, CHUNK):
            read_slab(planes, z0, min(z, z0 + CHUNK), slab, pool)
    t_read = time.perf_counter() - t0

    t1 = time.perf_counter()
    total = pyramid_bytes(size, levels, dtype.itemsize)
    chunk_items = CHUNK**3
    flat = slab.reshape(-1)  # whatever the last slab holds; only the byte count matters
    written = 0
    index = 0
    while written < total:
        n = min(chunk_items, (total - written) // dtype.itemsize)
        start = (index * chunk_items) % (flat.size - chunk_items + 1)
        if index % 1024 == 0:
            folder = a.out / f"{index // 1024:04d}"
            folder.mkdir()
        flat[start : start + n].tofile(folder / f"{index:06d}")
        written += n * dtype.itemsize
        index += 1
    t_write = time.perf_counter() - t1
    print(
        json.dumps(
            {
                "recipe": "floor",
                "levels": levels,
                "files": index,
                "bytes": written,
                "read_s": round(t_read, 3),
                "write_s": round(t_write, 3),
                "total_s": round(t_read + t_write, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
