"""Running one task: read its region, write it and the coarser levels made from it.

`run_task` is a top-level function of picklable arguments, so a process pool or a Dask cluster
runs it unchanged. It writes chunks and nothing else; recording progress is the driver's job.
Every level is computed from exact voxels: when a stage's last level is stored lossily (jpeg), the
task also keeps a lossless copy of it in the run state for the next stage to read, so the output
never depends on how the run was cut into stages.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .downsample import downsample
from .geometry import XYZ, Box
from .plan import Task
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


def run_task(task: Task) -> TaskResult:
    """Make every level of `task.stage` for `task.box`; returns the voxels written per level."""
    store = task.store
    pyramid = store.pyramid
    stage = task.stage
    box = task.box
    method = pyramid.downsample_method
    if stage.first == 1:
        assert task.source is not None
        local = Box(
            (box.start[0], box.start[1], box.start[2] - task.source_z0),
            (box.stop[0], box.stop[1], box.stop[2] - task.source_z0),
        )
        data = task.source.read(local)
    else:
        finer = pyramid.scale(stage.first - 1)
        exact = exact_copy(store) if needs_exact_copy(pyramid, stage.first - 1) else store
        factor = pyramid.factor(stage.first)
        data = downsample_channels(
            exact.read_region(stage.first - 1, box.scaled_up(factor, finer.size)),
            factor,
            method=method,
        )
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
