"""Shared bits of the benchmark recipes: the plane list, slab reading, pyramid geometry, and an
independent numpy reference for checking chunks of a precomputed "raw" pyramid.

Arrays read from the planes are (z, y, x); Neuroglancer sizes and chunk names are x, y, z.
"""

from __future__ import annotations

import glob
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tifffile

XYZ = tuple[int, int, int]
CHUNK = 64


def list_planes(pattern: str) -> list[str]:
    """The TIFF planes matched by `pattern`, in name order (img_0000.tif, img_0001.tif, ...)."""
    planes = sorted(glob.glob(pattern))
    if not planes:
        raise SystemExit(f"no files match {pattern!r}")
    return planes


def stack_shape(planes: Sequence[str]) -> tuple[XYZ, np.dtype]:
    """(x, y, z) size of the stack and its dtype, from the first plane."""
    with tifffile.TiffFile(planes[0]) as tif:
        page = tif.pages[0]
        y, x = page.shape[:2]
        dtype = np.dtype(page.dtype)
    return (x, y, len(planes)), dtype


def read_slab(
    planes: Sequence[str], z0: int, z1: int, out: np.ndarray, pool: ThreadPoolExecutor | None
) -> np.ndarray:
    """Read planes z0..z1 into out[: z1 - z0] (shape (z, y, x)); return that view."""
    view = out[: z1 - z0]

    def one(i: int) -> None:
        tifffile.imread(planes[z0 + i], out=view[i])

    if pool is None:
        for i in range(z1 - z0):
            one(i)
    else:
        list(pool.map(one, range(z1 - z0)))
    return view


def default_levels(size: XYZ, chunk: int = CHUNK) -> int:
    """Levels until the coarsest one fits in one chunk (1024x1024x256 -> 5)."""
    levels = 1
    while any(s > chunk for s in size):
        size = halve(size)
        levels += 1
    return levels


def halve(size: XYZ) -> XYZ:
    return (-(-size[0] // 2), -(-size[1] // 2), -(-size[2] // 2))


def level_sizes(size: XYZ, levels: int) -> list[XYZ]:
    """Sizes of levels 1..levels (each the previous halved, rounding up)."""
    sizes = [size]
    for _ in range(levels - 1):
        sizes.append(halve(sizes[-1]))
    return sizes


def level_key(level: int) -> str:
    r = 2 ** (level - 1)
    return f"{r}_{r}_{r}"


def pyramid_bytes(size: XYZ, levels: int, itemsize: int) -> int:
    return sum(math.prod(s) for s in level_sizes(size, levels)) * itemsize


# ---------------------------------------------------------------------------------------------
# Independent reference (used by bench_convert.py to check the peers' output)


def chunk_box(index: XYZ, size: XYZ, chunk: int = CHUNK) -> tuple[XYZ, XYZ]:
    """(start, stop) in x, y, z of chunk `index` of a level of `size`."""
    start = (index[0] * chunk, index[1] * chunk, index[2] * chunk)
    stop = (
        min(size[0], start[0] + chunk),
        min(size[1], start[1] + chunk),
        min(size[2], start[2] + chunk),
    )
    return start, stop


def read_raw_chunk(
    root: str | Path, level: int, start: XYZ, stop: XYZ, dtype: np.dtype
) -> np.ndarray | None:
    """A chunk of an unsharded, raw-encoded, single-channel precomputed volume as (z, y, x).

    None if the chunk file is missing. (Raw chunks are stored x-fastest, i.e. a C-order
    (channel, z, y, x) array.)
    """
    name = f"{start[0]}-{stop[0]}_{start[1]}-{stop[1]}_{start[2]}-{stop[2]}"
    path = Path(root) / level_key(level) / name
    if not path.exists():
        return None
    shape = (stop[2] - start[2], stop[1] - start[1], stop[0] - start[0])
    data = np.fromfile(path, dtype=dtype)
    if data.size != math.prod(shape):
        raise ValueError(f"{path}: {data.size} voxels, expected {math.prod(shape)}")
    return data.reshape(shape)


def read_region(planes: Sequence[str], start: XYZ, stop: XYZ) -> np.ndarray:
    """Voxels [start, stop) of the stack as (z, y, x), memory-mapping the planes if possible."""
    rows = []
    for z in range(start[2], stop[2]):
        plane: np.ndarray
        try:
            plane = tifffile.memmap(planes[z], mode="r")
        except ValueError:  # compressed or not contiguous: read it whole
            plane = tifffile.imread(planes[z])
        rows.append(np.array(plane[start[1] : stop[1], start[0] : stop[0]]))
    return np.stack(rows)


def reference_downsample(block: np.ndarray, rounding: str) -> np.ndarray:
    """2x2x2 mean of a (z, y, x) integer block; odd edges average only the voxels that exist.

    rounding: "floor" (integer division, as the original precomputed-tif) or "nearest" (round
    half to even).
    """
    total = block.astype(np.int64)
    counts = np.ones(block.shape, np.int64)
    for axis in range(3):
        n = total.shape[axis]
        if n % 2:
            pad = [(0, 0)] * 3
            pad[axis] = (0, 1)
            total = np.pad(total, pad)
            counts = np.pad(counts, pad)
        shape = list(total.shape)
        shape[axis : axis + 1] = [shape[axis] // 2, 2]
        total = total.reshape(shape).sum(axis=axis + 1)
        counts = counts.reshape(shape).sum(axis=axis + 1)
    if rounding == "floor":
        mean = total // counts
    elif rounding == "nearest":
        mean = np.rint(total / counts).astype(np.int64)
    else:
        raise ValueError(rounding)
    return mean.astype(block.dtype)


def reference_chunk(
    planes: Sequence[str], size: XYZ, level: int, index: XYZ, rounding: str
) -> tuple[XYZ, XYZ, np.ndarray]:
    """(start, stop, data) of chunk `index` at `level`, computed from the planes by cascading
    2x2x2 means level by level (as every tool under test does)."""
    sizes = level_sizes(size, level)
    start, stop = chunk_box(index, sizes[-1])
    f = 2 ** (level - 1)
    base_start = (start[0] * f, start[1] * f, start[2] * f)
    base_stop = (
        min(size[0], stop[0] * f),
        min(size[1], stop[1] * f),
        min(size[2], stop[2] * f),
    )
    data = read_region(planes, base_start, base_stop)
    for _ in range(level - 1):
        data = reference_downsample(data, rounding)
    return start, stop, data
