"""Running one task: read its region, write it and the coarser levels made from it.

`run_task` is a top-level function of picklable arguments, so a process pool or a Dask cluster
runs it unchanged. It writes chunks and nothing else; recording progress is the driver's job.
"""

from __future__ import annotations

from dataclasses import dataclass

from .downsample import downsample
from .geometry import Box
from .plan import Task


@dataclass(frozen=True)
class TaskResult:
    index: int
    voxels_per_level: dict[int, int]


def run_task(task: Task) -> TaskResult:
    """Make every level of `task.stage` for `task.box`; returns the voxels written per level."""
    store = task.store
    pyramid = store.pyramid
    stage = task.stage
    box = task.box
    segmentation = pyramid.is_segmentation
    if stage.first == 1:
        assert task.source is not None
        local = Box(
            (box.start[0], box.start[1], box.start[2] - task.source_z0),
            (box.stop[0], box.stop[1], box.stop[2] - task.source_z0),
        )
        data = task.source.read(local)
    else:
        finer = pyramid.scale(stage.first - 1)
        data = downsample(
            store.read_region(stage.first - 1, box.scaled_up(2, finer.size)),
            segmentation=segmentation,
        )
    written = {}
    for level in stage.levels:
        if level != stage.first:
            data = downsample(data, segmentation=segmentation)
            box = box.scaled_down(2, pyramid.scale(level).size)
        writer = store.task_writer(level, task.index)
        writer.write_region(box, data)
        writer.close()
        written[level] = box.voxels
    return TaskResult(task.index, written)
