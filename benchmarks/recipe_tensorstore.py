#!/usr/bin/env python3
"""Peer recipe: the precomputed pyramid written with TensorStore's neuroglancer_precomputed driver.

usage: recipe_tensorstore.py 'STACK/*.tif' OUT --levels N [--chunk 64] [--sharded]

Unsharded, raw encoding (no compression), one scale per level with key R_R_R (R = 2**(L-1)).
Level 1 is written from slabs of `chunk` planes read with tifffile (memory stays ~2 slabs): while
TensorStore commits slab i in its own threads, this process reads slab i+1. Every next level is
`ts.downsample(previous, [2, 2, 2, 1], method="mean")` written to the next scale; TensorStore
streams that copy chunk by chunk with its own concurrency.

With `--sharded` every scale is `neuroglancer_uint64_sharded_v1` with gzip data encoding (raw
chunks inside), and TensorStore chooses the sharding itself from the schema: read chunks of
`chunk`^3, write chunks (= shards) of `--shard-chunks` read chunks. Level-1 slabs are then as
thick as a shard, so every write covers whole shards (no shard is read back and rewritten).

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
from typing import Any

import numpy as np
import tensorstore as ts

# isort: split
from _stack import CHUNK, XYZ, level_key, level_sizes, list_planes, read_slab, stack_shape


def scale_spec(
    out: Path,
    dtype: np.dtype,
    size: XYZ,
    level: int,
    chunk: int,
    shard_chunks: int = 0,
    shard_encoding: str = "gzip",
) -> dict[str, Any]:
    """The spec of one scale; `shard_chunks` > 0: sharded, chosen by TensorStore."""
    r = 2 ** (level - 1)
    spec: dict[str, Any] = {
        "driver": "neuroglancer_precomputed",
        "kvstore": {"driver": "file", "path": str(out)},
        "multiscale_metadata": {"type": "image", "data_type": dtype.name, "num_channels": 1},
        "scale_metadata": {
            "key": level_key(level),
            "size": list(size),
            "voxel_offset": [0, 0, 0],
            "resolution": [r, r, r],
            "encoding": "raw",
            "chunk_size": [chunk, chunk, chunk],
        },
    }
    if shard_chunks:
        del spec["scale_metadata"]["chunk_size"]
        spec["schema"] = {
            "chunk_layout": {
                "read_chunk": {"shape": [chunk, chunk, chunk, 1]},
                "write_chunk": {"elements": shard_chunks * chunk**3},
            },
            "codec": {"driver": "neuroglancer_precomputed", "shard_data_encoding": shard_encoding},
        }
    return spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", help="glob of the TIFF planes, e.g. 'stack/*.tif'")
    ap.add_argument("out", type=Path)
    ap.add_argument("--levels", type=int, required=True)
    ap.add_argument("--chunk", type=int, default=CHUNK)
    ap.add_argument("--read-threads", type=int, default=2)
    ap.add_argument("--sharded", action="store_true", help="sharded scales, gzip data encoding")
    ap.add_argument("--shard-chunks", type=int, default=8, help="read chunks per shard (--sharded)")
    ap.add_argument(
        "--shard-data-encoding",
        choices=("gzip", "raw"),
        default="gzip",
        help="data encoding inside the shards (--sharded)",
    )
    a = ap.parse_args()

    t0 = time.perf_counter()
    planes = list_planes(a.source)
    size, dtype = stack_shape(planes)
    sizes = level_sizes(size, a.levels)
    a.out.mkdir(parents=True, exist_ok=True)
    if any(a.out.iterdir()):
        raise SystemExit(f"{a.out} is not empty")
    context = ts.Context()  # defaults: data copy and file I/O concurrency sized to the cores

    # level 1: slabs of `chunk` planes, so every write covers whole chunks (no read-modify-write)
    shard_chunks = a.shard_chunks if a.sharded else 0
    base = ts.open(
        scale_spec(a.out, dtype, size, 1, a.chunk, shard_chunks, a.shard_data_encoding),
        create=True,
        context=context,
    ).result()
    x, y, z = size
    # sharded: a slab is as thick as a shard (TensorStore's write chunk), so writes cover shards
    thick = int(base.chunk_layout.write_chunk.shape[2]) if a.sharded else a.chunk
    slab = np.empty((thick, y, x), dtype)
    pending: ts.Future[None] | None = None
    with ThreadPoolExecutor(a.read_threads) if a.read_threads > 1 else nullcontext() as pool:
        for z0 in range(0, z, thick):
            z1 = min(z, z0 + thick)
            data = read_slab(planes, z0, z1, slab, pool)
            # (z, y, x) C-order -> (x, y, z) view, which is the raw chunks' own x-fastest layout
            write = base[:, :, z0:z1, 0].write(data.T)
            write.copy.result()  # the slab buffer may be reused once TensorStore has copied it
            if pending is not None:
                pending.result()  # keep at most two slabs in flight
            pending = write.commit
        if pending is not None:
            pending.result()
    t_level1 = time.perf_counter() - t0

    # levels 2..N: each the 2x2x2 mean of the level just written
    prev = base
    for level in range(2, a.levels + 1):
        store = ts.open(
            scale_spec(
                a.out, dtype, sizes[level - 1], level, a.chunk, shard_chunks, a.shard_data_encoding
            ),
            create=True,
            open=True,
            context=context,
        ).result()
        store.write(ts.downsample(prev, [2, 2, 2, 1], method="mean")).result()
        prev = store
    total = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "recipe": "tensorstore-sharded" if a.sharded else "tensorstore",
                "tensorstore": version("tensorstore"),
                "shard_chunks": shard_chunks or None,
                "shard_data_encoding": a.shard_data_encoding if a.sharded else None,
                "slab_planes": thick,
                "level1_s": round(t_level1, 3),
                "downsample_s": round(total - t_level1, 3),
                "total_s": round(total, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
