"""Shared test helpers: an independent numpy reference pyramid and stack writers."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import tifffile

DATA = Path(__file__).parent / "data"


def reference_level(previous: np.ndarray, segmentation: bool = False) -> np.ndarray:
    """The next level by the rule, written plainly: each output voxel from its 2x2x2 block."""
    nz, ny, nx = previous.shape
    out_shape = (-(-nz // 2), -(-ny // 2), -(-nx // 2))
    if segmentation:
        out = np.zeros(out_shape, previous.dtype)
        for z in range(out_shape[0]):
            for y in range(out_shape[1]):
                for x in range(out_shape[2]):
                    block = previous[2 * z : 2 * z + 2, 2 * y : 2 * y + 2, 2 * x : 2 * x + 2]
                    values, counts = np.unique(block, return_counts=True)
                    out[z, y, x] = values[np.argmax(counts)]  # unique sorts: ties -> smallest
        return out
    total = np.zeros(out_shape, np.float64 if previous.dtype.kind == "f" else object)
    count = np.zeros(out_shape, np.int64)
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                part = previous[dz::2, dy::2, dx::2]
                sz, sy, sx = part.shape
                if previous.dtype.kind == "f":
                    total[:sz, :sy, :sx] += part.astype(np.float64)
                else:
                    total[:sz, :sy, :sx] += part.astype(object)
                count[:sz, :sy, :sx] += 1
    if previous.dtype.kind == "f":
        return (total / count).astype(previous.dtype)
    # integer mean truncated toward zero, in exact Python integers
    flat = [(t // c) if t >= 0 else -((-t) // c) for t, c in zip(total.ravel(), count.ravel())]
    return np.array(flat, dtype=object).reshape(out_shape).astype(previous.dtype)


def reference_pyramid(
    stack: np.ndarray, levels: int, segmentation: bool = False
) -> list[np.ndarray]:
    pyramid = [stack]
    for _ in range(levels - 1):
        pyramid.append(reference_level(pyramid[-1], segmentation))
    return pyramid


def write_planes(
    folder: Path, stack: np.ndarray, names: Sequence[str] | None = None, **imwrite_args: object
) -> str:
    """Write one TIFF per z plane; returns a glob matching them."""
    folder.mkdir(parents=True, exist_ok=True)
    for z, plane in enumerate(stack):
        name = names[z] if names else f"plane_{z:04d}.tif"
        tifffile.imwrite(folder / name, plane, **imwrite_args)  # type: ignore[arg-type]
    return os.path.join(str(folder), "*.tif")


def random_stack(shape: tuple[int, int, int], dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.normal(100, 50, shape).astype(dt)
    info = np.iinfo(dt)
    low, high = max(info.min, -(2**40)), min(info.max, 2**40)
    return rng.integers(low, high, shape, dtype=dt, endpoint=True)


@pytest.fixture
def stardist_glob() -> str:
    return str(DATA / "stacks" / "stardist_img3d" / "planes" / "*.tif")


def convert_stack(
    source_glob: str,
    dest: str,
    fmt: str,
    *,
    chunk=(16, 16, 16),
    levels=None,
    segmentation=False,
    task_bytes=2**30,
    voxel_size_nm=(1800, 1800, 2000),
    executor=None,
    factors=(2, 2, 2),
):
    """Convert in process (serially unless given an executor); returns the pyramid."""
    from precomputed_tif import Budget, convert, create_store, open_source, plan_pyramid
    from precomputed_tif.executors import SerialExecutor

    source = open_source(source_glob)
    pyramid = plan_pyramid(
        source.size,
        source.dtype.name,
        voxel_size_nm=voxel_size_nm,
        chunk_size=chunk,
        levels=levels,
        segmentation=segmentation,
        factors=factors,
    )
    store = create_store(fmt, dest, pyramid)
    convert(
        source,
        store,
        executor=executor or SerialExecutor(),
        budget=Budget(n_workers=2, task_bytes=task_bytes),
    )
    return pyramid
