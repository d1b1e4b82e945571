"""Downsampling of (z, y, x) arrays by 1 or 2 per axis: mean, mode, max, min or stride. Pure numpy.

Odd edges follow the original precomputed-tif: an output voxel at an odd edge summarises only the
input voxels that exist (fewer than the full block). Integer means are truncated toward zero; float
means are computed in float64 and stored back as the input type. Mode takes the most frequent
value (ties to the smallest), max and min the extreme value, stride the block's first voxel (the
one at its lowest x, y, z, which always exists). Factors are xyz, as everywhere in Neuroglancer's
words; an axis of factor 1 is left as it is.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from .geometry import XYZ

METHODS = ("mean", "mode", "max", "min", "stride")


def default_method(segmentation: bool) -> str:
    """The method a volume is downsampled by when none is named: mode for labels, else mean."""
    return "mode" if segmentation else "mean"


def _accumulator(dtype: np.dtype) -> np.dtype:
    if dtype.kind == "f":
        return np.dtype(np.float64)
    if dtype.kind == "u":
        return np.dtype(np.uint64) if dtype.itemsize >= 4 else np.dtype(np.uint32)
    return np.dtype(np.int64) if dtype.itemsize >= 4 else np.dtype(np.int32)


def _pair_reduce(
    a: np.ndarray, axis: int, combine: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> np.ndarray:
    """Combine neighbouring pairs along `axis`; an odd last element is carried alone."""
    n = a.shape[axis]
    first = [slice(None)] * a.ndim
    second = [slice(None)] * a.ndim
    first[axis] = slice(0, n - n % 2, 2)
    second[axis] = slice(1, n, 2)
    combined = combine(a[tuple(first)], a[tuple(second)])
    if n % 2 == 0:
        return combined
    last = [slice(None)] * a.ndim
    last[axis] = slice(n - 1, n)
    return np.concatenate([combined, a[tuple(last)].astype(combined.dtype)], axis=axis)


def _pair_counts(n: int, factor: int) -> np.ndarray:
    counts = np.full(-(-n // factor), factor, np.int64)
    if n % factor:
        counts[-1] = n % factor
    return counts


def _halved_axes(factors: XYZ) -> list[int]:
    """The numpy axes (z=0, y=1, x=2) that `factors` (xyz) halve."""
    fx, fy, fz = factors
    return [axis for axis, f in zip((0, 1, 2), (fz, fy, fx)) if f == 2]


def _out_shape(shape: tuple[int, ...], factors: XYZ) -> tuple[int, int, int]:
    fx, fy, fz = factors
    nz, ny, nx = shape
    return (-(-nz // fz), -(-ny // fy), -(-nx // fx))


_PLANES_PER_STEP = 16  # even, so only the true last plane can be an odd edge


def _in_steps(
    block: np.ndarray, factors: XYZ, reduce: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """`reduce` applied a few planes at a time, so wide accumulators and copies stay small."""
    fz = factors[2]
    out = np.empty(_out_shape(block.shape, factors), block.dtype)
    for z in range(0, block.shape[0], _PLANES_PER_STEP):
        out[z // fz : (z + _PLANES_PER_STEP) // fz] = reduce(block[z : z + _PLANES_PER_STEP])
    return out


def downsample_mean(block: np.ndarray, factors: XYZ = (2, 2, 2)) -> np.ndarray:
    """Mean of each block of `factors` (xyz) voxels of a (z, y, x) array, in the input's dtype."""

    def mean(part: np.ndarray) -> np.ndarray:
        acc = _accumulator(part.dtype)

        def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return np.add(a, b, dtype=acc)

        total = part  # the first pair sum widens it to `acc`
        for axis in _halved_axes(factors):
            total = _pair_reduce(total, axis, add)
        fx, fy, fz = factors
        nz, ny, nx = part.shape
        if nz % fz == 0 and ny % fy == 0 and nx % fx == 0:
            counts: np.ndarray | int = fx * fy * fz
        else:
            counts = (
                _pair_counts(nz, fz)[:, None, None]
                * _pair_counts(ny, fy)[None, :, None]
                * _pair_counts(nx, fx)[None, None, :]
            )
        if part.dtype.kind == "f":
            return (total / counts).astype(part.dtype)
        if part.dtype.kind == "u":
            return (total // counts).astype(part.dtype)
        # numpy's // floors; the original truncates toward zero
        quotient = np.abs(total) // counts
        return np.where(total < 0, -quotient, quotient).astype(part.dtype)

    return _in_steps(block, factors, mean)


def _extreme(block: np.ndarray, factors: XYZ, combine: np.ufunc) -> np.ndarray:
    def reduce(part: np.ndarray) -> np.ndarray:
        for axis in _halved_axes(factors):
            part = _pair_reduce(part, axis, combine)
        return part

    return _in_steps(block, factors, reduce)


def downsample_max(block: np.ndarray, factors: XYZ = (2, 2, 2)) -> np.ndarray:
    """Largest value of each block of `factors` voxels: thin bright structures survive."""
    return _extreme(block, factors, np.maximum)


def downsample_min(block: np.ndarray, factors: XYZ = (2, 2, 2)) -> np.ndarray:
    """Smallest value of each block of `factors` voxels."""
    return _extreme(block, factors, np.minimum)


def downsample_stride(block: np.ndarray, factors: XYZ = (2, 2, 2)) -> np.ndarray:
    """The first voxel (lowest x, y, z) of each block of `factors` voxels."""
    fx, fy, fz = factors
    return np.ascontiguousarray(block[::fz, ::fy, ::fx])


def downsample_mode(block: np.ndarray, factors: XYZ = (2, 2, 2)) -> np.ndarray:
    """Most frequent value of each block of `factors` voxels; ties go to the smallest value."""
    fx, fy, fz = factors
    oz, oy, ox = _out_shape(block.shape, factors)
    candidates = []
    valid = []
    for dz, dy, dx in itertools.product(range(fz), range(fy), range(fx)):
        part = block[dz::fz, dy::fy, dx::fx]
        padded = np.zeros((oz, oy, ox), block.dtype)
        present = np.zeros((oz, oy, ox), bool)
        padded[: part.shape[0], : part.shape[1], : part.shape[2]] = part
        present[: part.shape[0], : part.shape[1], : part.shape[2]] = True
        candidates.append(padded.ravel())
        valid.append(present.ravel())
    values = np.stack(candidates, axis=1)
    present_mask = np.stack(valid, axis=1)
    # absent voxels take the largest possible value so they sort last and never win a tie
    sentinel = np.iinfo(block.dtype).max if block.dtype.kind in "ui" else np.inf
    values = np.where(present_mask, values, sentinel)
    order = np.argsort(values, axis=1, kind="stable")
    values = np.take_along_axis(values, order, axis=1)
    present_mask = np.take_along_axis(present_mask, order, axis=1)
    n = values.shape[1]
    counts = np.zeros(values.shape, np.int8)
    for j in range(n):
        counts[:, j] = ((values == values[:, j : j + 1]) & present_mask).sum(axis=1)
    counts[~present_mask] = -1
    best = np.argmax(counts, axis=1)
    return values[np.arange(values.shape[0]), best].reshape(oz, oy, ox).astype(block.dtype)


_FUNCTIONS: dict[str, Callable[[np.ndarray, XYZ], np.ndarray]] = {
    "mean": downsample_mean,
    "mode": downsample_mode,
    "max": downsample_max,
    "min": downsample_min,
    "stride": downsample_stride,
}


def downsample(block: np.ndarray, factors: XYZ = (2, 2, 2), *, method: str = "mean") -> np.ndarray:
    """The next level's voxels for the (z, y, x) `block`, made by `method` over `factors` (xyz)."""
    return _FUNCTIONS[method](block, factors)
