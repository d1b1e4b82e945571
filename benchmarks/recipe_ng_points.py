#!/usr/bin/env python3
"""Peer recipe: points written with the neuroglancer Python package's AnnotationWriter.

usage: recipe_ng_points.py POINTS.npy OUT

The way its documentation shows it: one `AnnotationWriter` (x, y, z in um, 1.8 x 1.8 x 2.0),
`add_point` per point, then `write(OUT)`. That writer buffers every annotation as a Python object,
writes one spatial cell holding all of them and one by_id file per point, unsharded.

Prints a JSON line after adding the points (so a run cut short by a time-out still says how far
it got) and one with the phase timings at the end.
"""

from __future__ import annotations

import argparse
import json
import time
from importlib.metadata import version
from pathlib import Path

import neuroglancer
import neuroglancer.write_annotations
import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("points", type=Path, help="N x 3 .npy, x y z in voxels")
    ap.add_argument("out", type=Path)
    a = ap.parse_args()

    t0 = time.perf_counter()
    points = np.load(a.points)
    writer = neuroglancer.write_annotations.AnnotationWriter(
        coordinate_space=neuroglancer.CoordinateSpace(
            names=["x", "y", "z"], units="um", scales=[1.8, 1.8, 2.0]
        ),
        annotation_type="point",
    )
    for point in points.tolist():
        writer.add_point(point)
    t_add = time.perf_counter() - t0
    print(json.dumps({"phase": "added", "points": len(points), "add_s": round(t_add, 3)}))
    print(flush=True)
    writer.write(a.out)
    total = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "recipe": "neuroglancer",
                "neuroglancer": version("neuroglancer"),
                "points": len(points),
                "add_s": round(t_add, 3),
                "write_s": round(total - t_add, 3),
                "total_s": round(total, 3),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
