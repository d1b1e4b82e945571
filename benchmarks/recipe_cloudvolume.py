#!/usr/bin/env python3
"""Peer recipe: the precomputed pyramid written with CloudVolume (file://) and tinybrain.

usage: recipe_cloudvolume.py 'STACK/*.tif' OUT --levels N [--parallel 1]

As the CloudVolume docs suggest: `CloudVolume.create_new_info` (raw encoding, 64^3 chunks),
`add_scale` for each further level, `commit_info`; level 1 is written from slabs of 64 planes read
with tifffile (2 threads); then each level L >= 2 is made slab by slab: read 128 planes of level
L-1 back through CloudVolume, `tinybrain.downsample_with_averaging(..., (2, 2, 2))`, write the 64
planes of level L (chunk-aligned, so no read-modify-write). Chunks are written uncompressed
(`compress=False`; CloudVolume would otherwise gzip raw chunks). `--parallel 2` (CloudVolume's
multiprocess transfers) was ~3x slower on 2 cores, so the default is 1.

Prints one JSON line with the phase timings at the end.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from importlib.metadata import version
from pathlib import Path

import numpy as np
import tinybrain
from cloudvolume import CloudVolume

# isort: split
from _stack import CHUNK, level_sizes, list_planes, read_slab, stack_shape


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", help="glob of the TIFF planes, e.g. 'stack/*.tif'")
    ap.add_argument("out", type=Path)
    ap.add_argument("--levels", type=int, required=True)
    ap.add_argument("--read-threads", type=int, default=2)
    ap.add_argument(
        "--parallel", type=int, default=1, help="CloudVolume's parallel= (processes per transfer)"
    )
    a = ap.parse_args()

    t0 = time.perf_counter()
    planes = list_planes(a.source)
    size, dtype = stack_shape(planes)
    sizes = level_sizes(size, a.levels)
    a.out.mkdir(parents=True, exist_ok=True)
    if any(a.out.iterdir()):
        raise SystemExit(f"{a.out} is not empty")
    url = "file://" + str(a.out.resolve())

    info = CloudVolume.create_new_info(
        num_channels=1,
        layer_type="image",
        data_type=dtype.name,
        encoding="raw",
        resolution=[1, 1, 1],
        voxel_offset=[0, 0, 0],
        volume_size=list(size),
        chunk_size=[CHUNK, CHUNK, CHUNK],
    )
    opts = {"compress": False, "progress": False, "parallel": a.parallel}
    vol = CloudVolume(url, info=info, **opts)
    for level in range(2, a.levels + 1):
        r = 2 ** (level - 1)
        vol.add_scale((r, r, r), encoding="raw", chunk_size=[CHUNK, CHUNK, CHUNK])
    vol.commit_info()
    for level, expected in enumerate(sizes, start=1):  # CloudVolume rounds sizes up too
        got = tuple(int(v) for v in vol.meta.volume_size(level - 1))
        if got != expected:
            raise SystemExit(f"level {level}: CloudVolume size {got}, expected {expected}")

    # level 1
    x, y, z = size
    slab = np.empty((CHUNK, y, x), dtype)
    with ThreadPoolExecutor(a.read_threads) if a.read_threads > 1 else nullcontext() as pool:
        for z0 in range(0, z, CHUNK):
            z1 = min(z, z0 + CHUNK)
            data = read_slab(planes, z0, z1, slab, pool)
            vol[:, :, z0:z1] = data.T  # (z, y, x) -> CloudVolume's (x, y, z)
    t_level1 = time.perf_counter() - t0

    # levels 2..N, slab by slab from the level just written
    for level in range(2, a.levels + 1):
        src = CloudVolume(url, mip=level - 2, **opts)
        dst = CloudVolume(url, mip=level - 1, **opts)
        zsrc = sizes[level - 2][2]
        for z0 in range(0, zsrc, 2 * CHUNK):
            z1 = min(zsrc, z0 + 2 * CHUNK)
            block = src[:, :, z0:z1]  # (x, y, z, channel)
            (mip,) = tinybrain.downsample_with_averaging(block, (2, 2, 2), num_mips=1)
            dst[:, :, z0 // 2 : -(-z1 // 2)] = mip
    total = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "recipe": "cloudvolume",
                "cloudvolume": version("cloud-volume"),
                "tinybrain": version("tinybrain"),
                "parallel": a.parallel,
                "level1_s": round(t_level1, 3),
                "downsample_s": round(total - t_level1, 3),
                "total_s": round(total, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
