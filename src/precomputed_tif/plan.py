"""Planning: cut a pyramid into stages and tasks that fit a memory budget.

A stage makes levels ``first..last`` from one read: planes for level 1, or the level before
``first`` read back from the store. Making several levels from one read saves re-reading the
largest level, at the price of taller regions; the planner takes the deepest stage whose tasks fit
the budget and still keep every worker busy. Tasks are plain picklable records: any executor can
run them, in any order, more than once.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from .errors import PlanError
from .geometry import XYZ, Box
from .pyramid import Pyramid, Scale, nested_shard_size
from .sharding import ShardingSpec
from .sources import PlaneSource
from .stores import ChunkStore

# Working memory of a task beyond the voxels it reads: the next level (1/8), chunk buffers.
_HEADROOM = 1.25
# Tasks smaller than this are not worth a stage of their own (a stage's dispatch and barrier
# cost about what their work does): such small work stays with one worker, not spread.
_SMALLEST_SPREAD_TASK = 16 << 20


@dataclass(frozen=True)
class Stage:
    """Levels ``first..last`` made together; tasks cover `region` voxels of level `first`."""

    first: int
    last: int
    region: XYZ

    @property
    def levels(self) -> range:
        return range(self.first, self.last + 1)


@dataclass(frozen=True)
class Task:
    """One unit of work: make `box` (at level ``stage.first``) and the boxes below it."""

    index: int
    stage: Stage
    box: Box
    store: ChunkStore
    source: PlaneSource | None
    source_z0: int = 0


def task_bytes(pyramid: Pyramid, stage_first: int, region: XYZ, read_overhead: int) -> int:
    """Peak memory of one task of a stage whose tasks cover `region` voxels of `stage_first`."""
    size = pyramid.scale(stage_first).size
    voxels = 1
    for r, s in zip(region, size):
        voxels *= min(r, s)
    # level first-1 is read to make level first: 8 times the voxels for factors 2, 2, 2
    read_factor = 1 if stage_first == 1 else math.prod(pyramid.factor(stage_first))
    voxel_bytes = pyramid.dtype.itemsize * pyramid.num_channels
    return int(voxels * voxel_bytes * (read_factor + _HEADROOM)) + read_overhead


def _region_for(
    pyramid: Pyramid, first: int, depth: int, budget: int, read_overhead: int, *, cut_x: bool
) -> XYZ | None:
    """The largest task region for a stage of `depth` levels that fits `budget`, or None.

    Regions keep whole rows (x) when they can: planes are read row by row, and a task that
    takes part of each row makes every task read more of the file than it uses.
    """
    scale = pyramid.scale(first)
    unit = _task_unit(pyramid, first, depth)
    extent = [-(-s // u) * u for s, u in zip(scale.size, unit)]
    region = [extent[0], extent[1], unit[2]]
    while task_bytes(pyramid, first, (region[0], region[1], region[2]), read_overhead) > budget:
        if not _cut(region, unit, cut_x=cut_x):
            return None
    return (region[0], region[1], region[2])


def _task_unit(pyramid: Pyramid, first: int, depth: int) -> XYZ:
    """The smallest task region of a stage of `depth` levels from `first`: a chunk of its last
    level, seen at its first."""
    chunk = pyramid.scale(first).chunk_size
    factor = pyramid.factor_between(first, first + depth - 1)
    return (chunk[0] * factor[0], chunk[1] * factor[1], chunk[2] * factor[2])


def _cut(region: list[int], unit: XYZ, *, cut_x: bool) -> bool:
    """Halve `region` in y (in x once y is one unit, when `cut_x`), in whole units; False when
    it cannot be cut further."""
    if region[1] > unit[1]:
        region[1] = max(unit[1], -(-region[1] // (2 * unit[1])) * unit[1])
    elif region[0] > unit[0] and cut_x:
        region[0] = max(unit[0], -(-region[0] // (2 * unit[0])) * unit[0])
    else:
        return False
    return True


def _spread(
    pyramid: Pyramid, first: int, depth: int, region: XYZ, n_workers: int, read_overhead: int
) -> XYZ:
    """`region` cut until its stage has a task for every worker, as far as the stage's chunks
    allow and while its tasks stay worth a task of their own. Levels small enough for one task
    were made by one worker while the others waited: the last 0.2-0.3 s of a run at
    1024x1024x256, on one of two cores."""
    last = first + depth - 1
    unit = _task_unit(pyramid, first, depth)
    cut = list(region)
    while count_tasks(pyramid, Stage(first, last, (cut[0], cut[1], cut[2]))) < n_workers:
        smaller = list(cut)
        # a stage from planes keeps whole rows (see _region_for); one from chunks need not
        if not _cut(smaller, unit, cut_x=first > 1):
            break
        smaller_xyz = (smaller[0], smaller[1], smaller[2])
        if task_bytes(pyramid, first, smaller_xyz, read_overhead) < _SMALLEST_SPREAD_TASK:
            break
        cut = smaller
    return (cut[0], cut[1], cut[2])


def count_tasks(pyramid: Pyramid, stage: Stage) -> int:
    size = pyramid.scale(stage.first).size
    n = 1
    for s, r in zip(size, stage.region):
        n *= -(-s // r)
    return n


def plan_stages(
    pyramid: Pyramid,
    *,
    task_budget_bytes: int,
    n_workers: int,
    read_overhead: int = 0,
    levels: range | None = None,
) -> tuple[Stage, ...]:
    """Stages covering every level (or only `levels`), each task within `task_budget_bytes`."""
    levels = levels if levels is not None else range(1, pyramid.n_levels + 1)
    stages = []
    first = levels.start
    while first < levels.stop:
        overhead = read_overhead if first == 1 else 0
        last = levels.stop - 1
        chosen = _choose_stage(
            pyramid, first, last, task_budget_bytes, n_workers, overhead, cut_x=False
        )
        if chosen is None:
            chosen = _choose_stage(
                pyramid, first, last, task_budget_bytes, n_workers, overhead, cut_x=True
            )
        if chosen is None:
            need = task_bytes(pyramid, first, pyramid.scale(first).chunk_size, read_overhead)
            raise PlanError(
                f"the memory budget allows {task_budget_bytes / 2**20:.1f} MiB per worker; "
                f"a task of level {first} needs at least {need / 2**20:.1f} MiB: "
                "raise --memory or lower --n-cores"
            )
        stages.append(chosen)
        first = chosen.last + 1
    return tuple(stages)


def _shard_block_stage(pyramid: Pyramid, level: int) -> Stage:
    """A sharded level is made a shard at a time: the task region is one shard's block; the
    stage goes on through the next levels whose shards are that block downsampled."""
    from .sharding import ShardingSpec, block_voxels, halved_region, region_is_shard_block

    def spec(scale: Scale) -> ShardingSpec:
        return ShardingSpec.from_json(scale.sharding_json or {})

    scale = pyramid.scale(level)
    first_region = region = block_voxels(scale.grid_shape, scale.chunk_size, spec(scale))
    last = level
    while last < pyramid.n_levels:
        finer, coarser = pyramid.scale(last), pyramid.scale(last + 1)
        below = halved_region(region, finer.size, coarser.size, pyramid.factor(last + 1))
        if coarser.sharding is None or below is None:
            break
        args = (coarser.grid_shape, coarser.chunk_size, coarser.size, below, spec(coarser))
        if not region_is_shard_block(*args):
            break
        region, last = below, last + 1
    return Stage(level, last, first_region)


def _zarr_shard_stage(pyramid: Pyramid, level: int) -> Stage:
    """A zarr-sharded level is made a shard at a time (a shard is written whole by one task);
    the stage goes on through the next levels whose shard is that shard downsampled."""
    shard_size = pyramid.scale(level).shard_size
    assert shard_size is not None
    last = level
    while last < pyramid.n_levels:
        finer, coarser = pyramid.scale(last), pyramid.scale(last + 1)
        if coarser.shard_size != nested_shard_size(finer, coarser, pyramid.factor(last + 1)):
            break
        last += 1
    return Stage(level, last, shard_size)


def _choose_stage(
    pyramid: Pyramid,
    first: int,
    last: int,
    budget: int,
    n_workers: int,
    overhead: int,
    *,
    cut_x: bool,
) -> Stage | None:
    """The deepest stage from `first` (up to `last`) that fits `budget` and keeps every
    worker busy."""
    if pyramid.scale(first).sharding is not None:
        return _shard_block_stage(pyramid, first)
    if pyramid.scale(first).shard_size is not None:
        return _zarr_shard_stage(pyramid, first)
    shallow = _region_for(pyramid, first, 1, budget, overhead, cut_x=cut_x)
    if shallow is None:
        return None
    shallow = _spread(pyramid, first, 1, shallow, n_workers, overhead)
    shallow_tasks = count_tasks(pyramid, Stage(first, first, shallow))
    for depth in range(last - first + 1, 1, -1):
        region = _region_for(pyramid, first, depth, budget, overhead, cut_x=cut_x)
        if region is None:
            continue
        region = _spread(pyramid, first, depth, region, n_workers, overhead)
        stage = Stage(first, first + depth - 1, region)
        if count_tasks(pyramid, stage) >= min(n_workers, shallow_tasks):
            return stage
    return Stage(first, first, shallow)


def stage_boxes(pyramid: Pyramid, stage: Stage) -> list[Box]:
    """The boxes (of level ``stage.first``) of the stage's tasks, in task order: z-major, so
    consecutive tasks read consecutive planes."""
    size = pyramid.scale(stage.first).size
    rx, ry, rz = stage.region
    starts = itertools.product(range(0, size[2], rz), range(0, size[1], ry), range(0, size[0], rx))
    return [
        Box((x, y, z), (min(x + rx, size[0]), min(y + ry, size[1]), min(z + rz, size[2])))
        for z, y, x in starts
    ]


def stage_tasks(
    pyramid: Pyramid, stage: Stage, store: ChunkStore, source: PlaneSource | None
) -> list[Task]:
    """The tasks of `stage`, in the order of `stage_boxes` (`source` is read by stages that
    start at level 1 only)."""
    tasks = []
    for index, box in enumerate(stage_boxes(pyramid, stage)):
        if stage.first == 1:
            assert source is not None, "level 1 is made from a source"
            z0, z1 = box.start[2], box.stop[2]
            tasks.append(Task(index, stage, box, store, source.sub_stack(z0, z1), z0))
        else:
            tasks.append(Task(index, stage, box, store, None))
    return tasks


@dataclass(frozen=True)
class LevelPlan:
    """What one level will hold on disk."""

    level: int
    key: str
    size: XYZ
    chunks: int
    files: int
    raw_bytes: int


def _shard_files(grid_shape: tuple[int, ...], spec: ShardingSpec) -> int:
    """Shard files a level makes: blocks of chunks when hashed by identity (ours), else bounded
    by the shard count."""
    from .sharding import block_of_low_bits

    n_chunks = math.prod(grid_shape)
    if spec.hash != "identity":
        return min(n_chunks, 2**spec.shard_bits)
    block = block_of_low_bits(grid_shape, spec.preshift_bits + spec.minishard_bits)
    return math.prod(-(-g // b) for g, b in zip(grid_shape, block))


def level_plans(pyramid: Pyramid, format_name: str) -> list[LevelPlan]:
    """Chunks, files and uncompressed bytes of every level (no pixel is read)."""
    plans = []
    for level, scale in enumerate(pyramid.scales, start=1):
        sx, sy, sz = scale.size
        raw = sx * sy * sz * pyramid.dtype.itemsize
        if format_name == "blockfs":
            files = 2
        elif scale.sharding is not None:
            files = _shard_files(
                scale.grid_shape, ShardingSpec.from_json(scale.sharding_json or {})
            )
        elif scale.shard_size is not None:
            files = math.prod(-(-s // b) for s, b in zip(scale.size, scale.shard_size))
        else:
            files = scale.n_chunks
        plans.append(LevelPlan(level, scale.key, scale.size, scale.n_chunks, files, raw))
    return plans


def describe_plan(
    pyramid: Pyramid, stages: tuple[Stage, ...], format_name: str, read_overhead: int = 0
) -> list[str]:
    """The plan as lines a person reads before a long run starts."""
    lines = []
    for stage in stages:
        lines.append(
            f"levels {stage.first}-{stage.last}: {count_tasks(pyramid, stage)} tasks of "
            f"{'x'.join(map(str, stage.region))} voxels, about "
            f"{task_bytes(pyramid, stage.first, stage.region, read_overhead) / 2**20:.1f} MiB each"
        )
    total_files = 0
    total_bytes = 0
    for plan in level_plans(pyramid, format_name):
        total_files += plan.files
        total_bytes += plan.raw_bytes
        lines.append(
            f"level {plan.level} ({plan.key}): {'x'.join(map(str, plan.size))} voxels, "
            f"{plan.chunks} chunks in {plan.files} files, {plan.raw_bytes / 2**30:.2f} GiB raw"
        )
    lines.append(f"in all: {total_files} files, {total_bytes / 2**30:.2f} GiB before compression")
    return lines
