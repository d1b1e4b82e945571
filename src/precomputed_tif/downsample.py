"""2x2x2 downsampling of (z, y, x) arrays: mean for images, mode for labels. Pure numpy.

Odd edges follow the original precomputed-tif: an output voxel at an odd edge summarises only the
input voxels that exist (fewer than 8). Integer means are truncated toward zero; float means are
computed in float64 and stored back as the input type.
"""

from __future__ import annotations

import numpy as np


def _accumulator(dtype: np.dtype) -> np.dtype:
    if dtype.kind == "f":
        return np.dtype(np.float64)
    if dtype.kind == "u":
        return np.dtype(np.uint64) if dtype.itemsize >= 4 else np.dtype(np.uint32)
    return np.dtype(np.int64) if dtype.itemsize >= 4 else np.dtype(np.int32)


def _pair_sum(a: np.ndarray, axis: int, acc: np.dtype) -> np.ndarray:
    """Sum neighbouring pairs along `axis`; an odd last element is carried alone."""
    n = a.shape[axis]
    first = [slice(None)] * a.ndim
    second = [slice(None)] * a.ndim
    first[axis] = slice(0, n - n % 2, 2)
    second[axis] = slice(1, n, 2)
    summed = np.add(a[tuple(first)], a[tuple(second)], dtype=acc)
    if n % 2 == 0:
        return summed
    last = [slice(None)] * a.ndim
    last[axis] = slice(n - 1, n)
    return np.concatenate([summed, a[tuple(last)].astype(acc)], axis=axis)


def _pair_counts(n: int) -> np.ndarray:
    counts = np.full(-(-n // 2), 2, np.int64)
    if n % 2:
        counts[-1] = 1
    return counts


_PLANES_PER_STEP = 16  # even, so only the true last plane can be an odd edge


def downsample_mean(block: np.ndarray) -> np.ndarray:
    """Mean of each 2x2x2 block of a (z, y, x) array, same dtype as the input.

    Works through the block a few planes at a time so the wide accumulators stay small.
    """
    nz, ny, nx = block.shape
    out = np.empty((-(-nz // 2), -(-ny // 2), -(-nx // 2)), block.dtype)
    for z in range(0, nz, _PLANES_PER_STEP):
        out[z // 2 : (z + _PLANES_PER_STEP) // 2] = _mean_of_pairs(block[z : z + _PLANES_PER_STEP])
    return out


def _mean_of_pairs(block: np.ndarray) -> np.ndarray:
    acc = _accumulator(block.dtype)
    total = _pair_sum(_pair_sum(_pair_sum(block, 2, acc), 1, acc), 0, acc)
    nz, ny, nx = block.shape
    if nz % 2 == 0 and ny % 2 == 0 and nx % 2 == 0:
        counts: np.ndarray | int = 8
    else:
        counts = (
            _pair_counts(nz)[:, None, None]
            * _pair_counts(ny)[None, :, None]
            * _pair_counts(nx)[None, None, :]
        )
    if block.dtype.kind == "f":
        return (total / counts).astype(block.dtype)
    if block.dtype.kind == "u":
        return (total // counts).astype(block.dtype)
    # numpy's // floors; the original truncates toward zero
    quotient = np.abs(total) // counts
    return np.where(total < 0, -quotient, quotient).astype(block.dtype)


def downsample_mode(block: np.ndarray) -> np.ndarray:
    """Most frequent value of each 2x2x2 block; ties go to the smallest value."""
    nz, ny, nx = block.shape
    oz, oy, ox = -(-nz // 2), -(-ny // 2), -(-nx // 2)
    candidates = []
    valid = []
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                part = block[dz::2, dy::2, dx::2]
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
    counts = np.zeros(values.shape, np.int8)
    for j in range(8):
        counts[:, j] = ((values == values[:, j : j + 1]) & present_mask).sum(axis=1)
    counts[~present_mask] = -1
    best = np.argmax(counts, axis=1)
    return values[np.arange(values.shape[0]), best].reshape(oz, oy, ox).astype(block.dtype)


def downsample(block: np.ndarray, *, segmentation: bool) -> np.ndarray:
    """The next level's voxels for `block`: mode for segmentation, mean otherwise."""
    return downsample_mode(block) if segmentation else downsample_mean(block)
