#!/usr/bin/env python3
"""Peer recipe: the OME-Zarr 0.5 pyramid of ``--format ngff [--sharded]`` written with TensorStore.

usage: recipe_tensorstore_zarr3.py 'STACK/*.tif' OUT --levels N --shards X,Y,Z[;X,Y,Z...]|none

The same arrays as ours: one zarr v3 array per level at OUT/0, OUT/1, ..., shape (1, 1, z, y, x),
``sharding_indexed`` shards of the given voxels (one X,Y,Z per level, the last repeated), inner
chunks of `--chunk`^3 Blosc-zstd level 1 with byte shuffle, index at the end with crc32c
(``--shards none``: those chunks one file each, as unsharded ``--format ngff``). Level 1
is written from slabs one shard thick (every write covers whole shards; while TensorStore commits
slab i this process reads slab i+1); every next level is ``ts.downsample(prev, [1,1,2,2,2],
"mean")`` written to the next array. The OME group ``zarr.json`` is written last. Prints one JSON
line with the phase timings.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import tensorstore as ts

# isort: split
from _stack import CHUNK, XYZ, level_sizes, list_planes, read_slab, stack_shape


def array_spec(
    out: Path, level: int, dtype: np.dtype, size: XYZ, shard: XYZ | None, chunk: int
) -> Any:
    x, y, z = size
    blosc = {
        "name": "blosc",
        "configuration": {
            "cname": "zstd",
            "clevel": 1,
            "shuffle": "shuffle",
            "typesize": dtype.itemsize,
        },
    }
    inner = [{"name": "bytes", "configuration": {"endian": "little"}}, blosc]
    if shard is None:
        grid, codecs = [1, 1, chunk, chunk, chunk], inner
    else:
        grid = [1, 1, shard[2], shard[1], shard[0]]
        codecs = [
            {
                "name": "sharding_indexed",
                "configuration": {
                    "chunk_shape": [1, 1, chunk, chunk, chunk],
                    "codecs": inner,
                    "index_codecs": [
                        {"name": "bytes", "configuration": {"endian": "little"}},
                        {"name": "crc32c"},
                    ],
                    "index_location": "end",
                },
            }
        ]
    return {
        "driver": "zarr3",
        "kvstore": {"driver": "file", "path": f"{out}/{level - 1}/"},
        "metadata": {
            "shape": [1, 1, z, y, x],
            "data_type": dtype.name,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": grid}},
            "chunk_key_encoding": {"name": "default"},
            "fill_value": 0,
            "codecs": codecs,
            "dimension_names": ["t", "c", "z", "y", "x"],
        },
        "create": True,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", help="glob of the TIFF planes, e.g. 'stack/*.tif'")
    ap.add_argument("out", type=Path)
    ap.add_argument("--levels", type=int, required=True)
    ap.add_argument("--chunk", type=int, default=CHUNK)
    ap.add_argument("--shards", required=True, help="voxels per shard, x,y,z per level (;)")
    ap.add_argument("--read-threads", type=int, default=2)
    a = ap.parse_args()

    t0 = time.perf_counter()
    planes = list_planes(a.source)
    size, dtype = stack_shape(planes)
    sizes = level_sizes(size, a.levels)
    shards: list[Any] = (
        [None]
        if a.shards == "none"
        else [tuple(int(v) for v in s.split(",")) for s in a.shards.split(";")]
    )
    shards += [shards[-1]] * (a.levels - len(shards))
    a.out.mkdir(parents=True, exist_ok=True)
    context = ts.Context()

    base = ts.open(array_spec(a.out, 1, dtype, size, shards[0], a.chunk), context=context).result()
    x, y, z = size
    thick = a.chunk if shards[0] is None else shards[0][2]
    slab = np.empty((thick, y, x), dtype)
    pending: Any = None
    with ThreadPoolExecutor(a.read_threads) as pool:
        for z0 in range(0, z, thick):
            z1 = min(z, z0 + thick)
            data = read_slab(planes, z0, z1, slab, pool)
            write = base[0, 0, z0:z1].write(data)
            write.copy.result()  # the slab buffer may be reused once TensorStore has copied it
            if pending is not None:
                pending.result()
            pending = write.commit
        if pending is not None:
            pending.result()
    t_level1 = time.perf_counter() - t0

    prev = base
    for level in range(2, a.levels + 1):
        spec = array_spec(a.out, level, dtype, sizes[level - 1], shards[level - 1], a.chunk)
        store = ts.open(spec, context=context).result()
        store.write(ts.downsample(prev, [1, 1, 2, 2, 2], method="mean")).result()
        prev = store
    datasets = []
    for k in range(a.levels):
        grow = 2.0**k
        shift = (grow - 1) / 2  # the centre of a 2x mean's voxel, in level-0 voxels
        transforms = [
            {"type": "scale", "scale": [1, 1, grow, grow, grow]},
            {"type": "translation", "translation": [0, 0, shift, shift, shift]},
        ]
        datasets.append({"path": str(k), "coordinateTransformations": transforms})
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}]
    axes += [{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"]
    ome = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": datasets}]}
    group = {"zarr_format": 3, "node_type": "group", "attributes": {"ome": ome}}
    (a.out / "zarr.json").write_text(json.dumps(group, indent=2))
    total = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "recipe": "tensorstore-zarr3" + ("" if shards[0] is None else "-sharded"),
                "tensorstore": version("tensorstore"),
                "shards": [s and list(s) for s in shards[: a.levels]],
                "level1_s": round(t_level1, 3),
                "downsample_s": round(total - t_level1, 3),
                "total_s": round(total, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
