#!/usr/bin/env python3
"""Reader recipe: read one region of one level of a precomputed volume, with one library.

usage: recipe_read.py READER SOURCE --level L --box z0,z1,y0,y1,x0,x1

READER is `ours` (`precomputed_tif.open_volume(SOURCE)[L][z0:z1, y0:y1, x0:x1]`), `tensorstore`
(the `neuroglancer_precomputed` driver over the `file` kvstore, or the `http` one for an http URL;
scale L-1) or `cloudvolume` (`CloudVolume(url, mip=L-1)[x0:x1, y0:y1, z0:z1]`). SOURCE is a folder
or an http(s) URL. Prints one JSON line: shape (z, y, x), dtype, the sha256 of the (z, y, x)
C-order bytes, and the time to open and to read.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time

import numpy as np


def read_ours(source: str, level: int, box: list[int]) -> tuple[np.ndarray, float]:
    from precomputed_tif import open_volume

    z0, z1, y0, y1, x0, x1 = box
    t0 = time.perf_counter()
    volume = open_volume(source)
    t_open = time.perf_counter() - t0
    return np.asarray(volume[level][z0:z1, y0:y1, x0:x1]), t_open


def read_tensorstore(source: str, level: int, box: list[int]) -> tuple[np.ndarray, float]:
    import tensorstore as ts

    z0, z1, y0, y1, x0, x1 = box
    if source.startswith(("http://", "https://")):
        kvstore = {"driver": "http", "base_url": source.rstrip("/") + "/"}
    else:
        kvstore = {"driver": "file", "path": os.path.abspath(source) + "/"}
    t0 = time.perf_counter()
    spec = {"driver": "neuroglancer_precomputed", "kvstore": kvstore, "scale_index": level - 1}
    store = ts.open(spec, read=True).result()
    t_open = time.perf_counter() - t0
    o = store.domain.origin
    region = store[o[0] + x0 : o[0] + x1, o[1] + y0 : o[1] + y1, o[2] + z0 : o[2] + z1, 0]
    # read the (z, y, x) view: TensorStore fills a C-order array in the chunks' own x-fastest
    # layout, so there is no transposing copy afterwards
    return region.T.read().result(), t_open


def read_cloudvolume(source: str, level: int, box: list[int]) -> tuple[np.ndarray, float]:
    from cloudvolume import CloudVolume

    z0, z1, y0, y1, x0, x1 = box
    url = source if "://" in source else "file://" + os.path.abspath(source)
    t0 = time.perf_counter()
    volume = CloudVolume(url, mip=level - 1, progress=False, fill_missing=False, parallel=1)
    t_open = time.perf_counter() - t0
    off = volume.voxel_offset
    data = volume[off[0] + x0 : off[0] + x1, off[1] + y0 : off[1] + y1, off[2] + z0 : off[2] + z1]
    return np.ascontiguousarray(np.asarray(data)[..., 0].T), t_open


READERS = {"ours": read_ours, "tensorstore": read_tensorstore, "cloudvolume": read_cloudvolume}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reader", choices=sorted(READERS))
    ap.add_argument("source", help="volume folder or http(s) URL")
    ap.add_argument("--level", type=int, default=1, help="1 = full resolution")
    ap.add_argument("--box", required=True, help="z0,z1,y0,y1,x0,x1 (stops exclusive)")
    a = ap.parse_args()
    box = [int(v) for v in a.box.split(",")]
    if len(box) != 6:
        raise SystemExit("--box needs 6 numbers: z0,z1,y0,y1,x0,x1")

    t0 = time.perf_counter()
    data, t_open = READERS[a.reader](a.source, a.level, box)
    total = time.perf_counter() - t0
    digest = hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()
    print(
        json.dumps(
            {
                "reader": a.reader,
                "shape_zyx": list(data.shape),
                "dtype": data.dtype.name,
                "sha256": digest,
                "open_s": round(t_open, 4),
                "read_s": round(total - t_open, 4),
                "total_s": round(total, 4),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
