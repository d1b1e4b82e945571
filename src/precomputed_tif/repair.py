"""Repairing a volume: make again exactly the tasks whose chunks are missing or damaged, and the
tasks whose input those chunks were, so the result is the bytes of an uninterrupted run.

A task is the unit: it rewrites all its chunks (the intact ones with the same bytes). Layouts that
gather tasks into shared files rebuild those files in `ChunkStore.repair_level`. A level stored
lossily is an input only through its exact copy, so the tasks that made that copy run again too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import Executor
from typing import Any

from .convert import mark_incomplete, prepare_stage, run_in_order
from .errors import StoreError
from .geometry import Box
from .plan import Stage, stage_boxes, stage_tasks
from .pyramid import Pyramid
from .run import needs_exact_copy
from .sources import PlaneSource
from .stores import ChunkStore
from .verify import Problem, verify_store

log = logging.getLogger(__name__)


def _touches(box: Box, others: Iterable[Box]) -> bool:
    return any(not box.intersect(other).is_empty() for other in others)


def _level_box(pyramid: Pyramid, stage: Stage, box: Box, level: int) -> Box:
    return box.scaled_down(2 ** (level - stage.first), pyramid.scale(level).size)


def tasks_to_redo(
    pyramid: Pyramid, stages: tuple[Stage, ...], problems: Iterable[Problem]
) -> dict[int, set[int]]:
    """Task indices to run again per stage (keyed by its first level)."""
    bad: dict[int, list[Box]] = {}
    for problem in problems:
        bad.setdefault(problem.level, []).append(problem.box)
    rewritten: dict[int, list[Box]] = {}
    redo: dict[int, set[int]] = {}
    boxes = {stage.first: stage_boxes(pyramid, stage) for stage in stages}
    for stage in stages:
        chosen = set()
        for index, box in enumerate(boxes[stage.first]):
            damaged = any(
                _touches(_level_box(pyramid, stage, box, level), bad.get(level, ()))
                for level in stage.levels
            )
            if (
                damaged
                or stage.first > 1
                and _touches(
                    box.scaled_up(2, pyramid.scale(stage.first - 1).size),
                    rewritten.get(stage.first - 1, ()),
                )
            ):
                chosen.add(index)
        for index in chosen:
            for level in stage.levels:
                made = _level_box(pyramid, stage, boxes[stage.first][index], level)
                rewritten.setdefault(level, []).append(made)
        redo[stage.first] = chosen
    # a lossy level is read through its exact copy, which the finished run no longer has
    for before, stage in reversed(list(zip(stages, stages[1:]))):
        if not needs_exact_copy(pyramid, before.last) or not redo[stage.first]:
            continue
        inputs = [
            boxes[stage.first][i].scaled_up(2, pyramid.scale(before.last).size)
            for i in redo[stage.first]
        ]
        for index, box in enumerate(boxes[before.first]):
            if _touches(_level_box(pyramid, before, box, before.last), inputs):
                redo[before.first].add(index)
    return redo


def repair_volume(
    source: PlaneSource,
    store: ChunkStore,
    stages: tuple[Stage, ...],
    executor: Executor,
    n_workers: int,
    run: dict[str, Any],
) -> None:
    """Verify `store`; make again what is missing or damaged and what was made from it."""
    report = verify_store(store, executor=executor)
    if report.ok:
        log.info("%s: nothing to repair", report.verdict)
        return
    for problem in report.problems[:20]:
        log.warning("%s", problem)
    log.warning("%s; making them again", report.verdict)
    mark_incomplete(store, run)
    pyramid = store.pyramid
    redo = tasks_to_redo(pyramid, stages, report.problems)
    for stage in stages:
        indices = redo[stage.first]
        if not indices:
            continue
        log.info("levels %d-%d: making %d tasks again", stage.first, stage.last, len(indices))
        tasks = stage_tasks(pyramid, stage, store, source)
        prepare_stage(store, stage)
        for _ in run_in_order(executor, [tasks[i] for i in sorted(indices)], 2 * n_workers + 1):
            pass
        for level in stage.levels:
            boxes = [_level_box(pyramid, stage, t.box, level) for t in tasks]
            store.repair_level(level, boxes, indices)
    after = verify_store(store, executor=executor)
    if not after.ok:
        raise StoreError(f"repairing left {after.problems[0]} ({after.verdict})")
