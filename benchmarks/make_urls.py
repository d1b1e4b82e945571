#!/usr/bin/env python3
# Copied from shared/bench/make_urls.py (the project may not read ../shared at run time); keep
# the two in sync if either changes. Verbatim except this header.
"""List every chunk URL path of a precomputed volume, shuffled, with its raw byte length.

Reads only the volume's `info` (any layout: the chunk grid comes from the scales), writes
OUT.txt ("/<scale key>/<x0-x1_y0-y1_z0-z1>\t<bytes>", for loadgen.py) and OUT.paths (paths only,
for wrk's chunks.lua).

usage: make_urls.py VOLUME_DIR OUT.txt [--seed 0]
"""

import argparse
import itertools
import json
import os
import random

import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("volume")
ap.add_argument("out")
ap.add_argument("--seed", type=int, default=0)
a = ap.parse_args()
info = json.load(open(os.path.join(a.volume, "info")))
item = np.dtype(info["data_type"]).itemsize * info.get("num_channels", 1)
lines = []
for s in info["scales"]:
    (cx, cy, cz), (X, Y, Z) = s["chunk_sizes"][0], s["size"]
    ox, oy, oz = s.get("voxel_offset", [0, 0, 0])
    for x0, y0, z0 in itertools.product(range(0, X, cx), range(0, Y, cy), range(0, Z, cz)):
        x1, y1, z1 = min(x0 + cx, X), min(y0 + cy, Y), min(z0 + cz, Z)
        name = f"{x0 + ox}-{x1 + ox}_{y0 + oy}-{y1 + oy}_{z0 + oz}-{z1 + oz}"
        lines.append(f"/{s['key']}/{name}\t{(x1 - x0) * (y1 - y0) * (z1 - z0) * item}")
random.Random(a.seed).shuffle(lines)
with open(a.out, "w") as f:
    f.write("\n".join(lines) + "\n")
with open(os.path.splitext(a.out)[0] + ".paths", "w") as f:
    f.write("\n".join(line.split("\t")[0] for line in lines) + "\n")
print(len(lines), "urls")
