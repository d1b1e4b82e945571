"""Running one task: read its region, write it and the coarser levels made from it.

`run_task` is a top-level function of picklable arguments, so a process pool or a Dask cluster
runs it unchanged. It writes chunks and nothing else; recording progress is the driver's job.
Every level is computed from exact voxels: when a stage's last level is stored lossily (jpeg), the
task also keeps a lossless copy of it in the run state for the next stage to read, so the output
never depends on how the run was cut into stages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .downsample import downsample
from .geometry import XYZ, Box
from .heap import make_room_for_task
from .plan import Task, task_bytes
from .pyramid import Pyramid
from .stores import ChunkStore
from .stores.base import STATE_DIR
from .stores.zarr_v2 import ZarrStore

LOSSY_ENCODINGS = ("jpeg",)
EXACT_DIR = "exact"


@dataclass(frozen=True)
class TaskResult:
    index: int
    voxels_per_level: dict[int, int]


def needs_exact_copy(pyramid: Pyramid, level: int) -> bool:
    """Whether a coarser level is made from `level`, whose stored voxels are not exact."""
    return level < pyramid.n_levels and pyramid.scale(level).encoding in LOSSY_ENCODINGS


def exact_copy(store: ChunkStore) -> ChunkStore:
    """Lossless copies of lossily stored levels, kept in the run state until the run ends."""
    return ZarrStore(f"{store.path.rstrip('/')}/{STATE_DIR}/{EXACT_DIR}", store.pyramid)


def downsample_channels(data: np.ndarray, factor: XYZ, *, method: str) -> np.ndarray:
    """`downsample` of (z, y, x) data, or of each channel of (z, y, x, c) data."""
    if data.ndim == 3:
        return downsample(data, factor, method=method)
    channels = [downsample(data[..., c], factor, method=method) for c in range(data.shape[3])]
    return np.stack(channels, axis=3)


def downsampled_region(store: ChunkStore, level: int, box: Box, *, method: str) -> np.ndarray:
    """`box` of `level` made from the finer level's voxels, read one slab of its chunks' depth
    at a time: the whole finer region at once (8 times the box) was most of a task's memory.

    Slabs start at multiples of the z factor, so each output plane comes from the same input
    planes as when the region is downsampled whole, and the bytes are the same.
    """
    pyramid = store.pyramid
    finer = pyramid.scale(level - 1)
    factor = pyramid.factor(level)
    region = box.scaled_up(factor, finer.size)
    step = math.lcm(finer.chunk_size[2], factor[2])
    channels = pyramid.num_channels
    out = np.empty(box.numpy_shape + ((channels,) if channels > 1 else ()), pyramid.dtype)
    (x0, y0, z0), (x1, y1, z1) = region.start, region.stop
    for slab_z0 in range(z0, z1, step):
        slab = Box((x0, y0, slab_z0), (x1, y1, min(slab_z0 + step, z1)))
        data = downsample_channels(
            store.read_region(level - 1, slab, keep=False), factor, method=method
        )
        first = (slab_z0 - z0) // factor[2]
        out[first : first + data.shape[0]] = data
    return out


def run_task(task: Task) -> TaskResult:
    """Make every level of `task.stage` for `task.box`; returns the voxels written per level."""
    store = task.store
    pyramid = store.pyramid
    stage = task.stage
    box = task.box
    method = pyramid.downsample_method
    make_room_for_task(task_bytes(pyramid, stage.first, stage.region, 0))
    if stage.first == 1:
        assert task.source is not None
        local = Box(
            (box.start[0], box.start[1], box.start[2] - task.source_z0),
            (box.stop[0], box.stop[1], box.stop[2] - task.source_z0),
        )
        data = task.source.read(local)
    else:
        exact = exact_copy(store) if needs_exact_copy(pyramid, stage.first - 1) else store
        data = downsampled_region(exact, stage.first, box, method=method)
    written = {}
    for level in stage.levels:
        if level != stage.first:
            factor = pyramid.factor(level)
            data = downsample_channels(data, factor, method=method)
            box = box.scaled_down(factor, pyramid.scale(level).size)
        targets = [store]
        if level == stage.last and needs_exact_copy(pyramid, level):
            targets.append(exact_copy(store))
        for target in targets:
            writer = target.task_writer(level, task.index)
            writer.write_region(box, data)
            writer.close()
        written[level] = box.voxels
    return TaskResult(task.index, written)
