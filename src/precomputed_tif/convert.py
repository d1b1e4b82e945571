"""The conversion driver: plan, submit tasks to an executor, record progress, finish levels.

State lives in ``DEST/.precomputed-tif/``: ``run.json`` (what is being made, and the plan),
``planes.json`` (each plane's stamp, to refuse a changed source by name), one ``done-<level>`` log
per stage listing finished tasks and a ``done-<level>.complete`` marker once the stage is. The
``info`` file is written last, so an interrupted run never looks like a volume; ``resume=True``
reruns only unfinished tasks with the recorded plan, and because every task rewrites the same
bytes the result is identical to an uninterrupted run. The driver never touches voxels: it sends
task records and receives counts.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import dataclass
from typing import Any

from .errors import (
    RESUME_HINT,
    IncompleteRunError,
    PrecomputedTifError,
    SourceError,
    StoreExistsError,
)
from .locations import LocalLocation, WritableLocation
from .plan import Stage, Task, describe_plan, plan_stages, stage_tasks
from .pyramid import Pyramid
from .run import EXACT_DIR, TaskResult, exact_copy, needs_exact_copy, run_task
from .sources import PlaneSource, PlaneStamp
from .stores import ChunkStore
from .stores.base import INFO_NAME, STATE_DIR, TMP_DIR
from .stores.blockfs import PartDamagedError

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
PLANES_FILE = "planes.json"
STATE_VERSION = 1

# progress(level, voxels just finished, voxels in the level)
Progress = Callable[[int, int, int], None]


@dataclass(frozen=True)
class Budget:
    """How much work may run at once: workers, and the memory each task may use."""

    n_workers: int
    task_bytes: int


def source_stamps(source: PlaneSource) -> list[list[Any]]:
    """Name, size, modification time (and a content sample where times are coarse) of every
    plane file, as the header pass found them."""
    stamps: tuple[PlaneStamp, ...] = getattr(source, "stamps", ())
    return [stamp.to_json() for stamp in stamps]


def source_fingerprint(source: PlaneSource) -> str:
    """A digest of what the source is (its planes' stamps, or its shape), to match on resume."""
    digest = hashlib.sha256()
    digest.update(repr((type(source).__name__, source.size, source.dtype.str)).encode())
    digest.update(json.dumps(source_stamps(source)).encode())
    return digest.hexdigest()


def _changed_plane(old: list[list[Any]], new: list[list[Any]]) -> str | None:
    """Which plane differs between two stamp lists, said the way a user can act on it."""
    before = {str(s[0]): s for s in old}
    for stamp in new:
        was = before.pop(str(stamp[0]), None)
        if was is None:
            return f"plane {stamp[0]!r} was not there"
        if was[1] != stamp[1]:
            return f"plane {stamp[0]!r} changed size ({was[1]} bytes, now {stamp[1]})"
        if list(was) != list(stamp):
            return f"plane {stamp[0]!r} was modified"
    if before:
        return f"plane {next(iter(before))!r} is gone"
    return None


def _state_name(name: str) -> str:
    return f"{STATE_DIR}/{name}"


def _read_run(root: WritableLocation) -> dict[str, Any] | None:
    try:
        content = root.read(_state_name(RUN_FILE))
    except OSError:
        return {}
    if content is None:
        return None
    try:
        run = json.loads(content)
    except ValueError:
        return {}
    return run if isinstance(run, dict) else {}


def _describe_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    for key in ("format", "source"):
        if old.get(key) != new.get(key):
            what = "input stack" if key == "source" else key
            return f"its {what} differs ({old.get(key)!s:.16} vs {new.get(key)!s:.16})"
    old_info, new_info = old.get("info", {}), new.get("info", {})
    for key in ("data_type", "type"):
        if old_info.get(key) != new_info.get(key):
            return f"its {key} is {old_info.get(key)}, this run makes {new_info.get(key)}"
    return "its levels, sizes, chunk size or voxel size differ"


def _clear_destination(root: WritableLocation, dest: str) -> None:
    """Remove a previous volume, refusing when the folder holds anything else."""
    run = _read_run(root)
    known = {INFO_NAME, STATE_DIR, ".zgroup"}
    if run and "info" in run:
        known |= {s["key"] for s in run["info"]["scales"]}
    else:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            known |= {s["key"] for s in json.loads(root.read(INFO_NAME) or b"")["scales"]}
    names = root.names()
    foreign = sorted(set(names) - known)
    if foreign:
        raise StoreExistsError(
            f"--dest {dest!r} holds files that are not part of a volume ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}); refusing to overwrite: choose an empty folder"
        )
    for name in names:
        root.remove(name)


def prepare_destination(
    root: WritableLocation, wanted: dict[str, Any], *, resume: bool, overwrite: bool
) -> dict[str, Any]:
    """Check `root` against the run we want; returns the run record to follow (maybe resumed)."""
    dest = root.url
    if root.names():
        run = _read_run(root)
        same = (
            run is not None
            and run.get("version") == STATE_VERSION
            and all(run.get(k) == wanted[k] for k in ("format", "source", "info"))
        )
        if overwrite:
            _clear_destination(root, dest)
        elif resume and run and _same_except_source(run, wanted):
            raise SourceError(
                f"cannot resume into --dest {dest!r}: {_source_change(root, wanted)} since the "
                "run began; restore the planes it began with, or add --overwrite to start again"
            )
        elif same and resume:
            assert run is not None
            log.info("resuming the conversion recorded in %s/%s", dest, _state_name(RUN_FILE))
            return run
        elif same:
            assert run is not None
            state = "a finished" if run.get("complete") else "an unfinished"
            hint = "nothing to do" if run.get("complete") else "add --resume to finish it"
            raise StoreExistsError(
                f"--dest {dest!r} already holds {state} conversion of this stack: {hint}, "
                "or add --overwrite to start again"
            )
        elif run:
            raise StoreExistsError(
                f"--dest {dest!r} holds a different volume ({_describe_difference(run, wanted)}); "
                "choose another folder or add --overwrite to replace it"
            )
        else:
            what = "a volume" if root.stamp(INFO_NAME) is not None else "files"
            raise StoreExistsError(
                f"--dest {dest!r} already holds {what} not made by this tool's current run; "
                "choose an empty folder or add --overwrite to replace it"
            )
    root.write(_state_name(PLANES_FILE), json.dumps(wanted.pop("planes", [])).encode())
    root.write(_state_name(RUN_FILE), json.dumps(wanted, indent=1).encode())
    return wanted


def _same_except_source(run: dict[str, Any], wanted: dict[str, Any]) -> bool:
    return (
        run.get("version") == STATE_VERSION
        and run.get("source") != wanted["source"]
        and all(run.get(k) == wanted[k] for k in ("format", "info"))
    )


def _source_change(root: WritableLocation, wanted: dict[str, Any]) -> str:
    try:
        old = json.loads(root.read(_state_name(PLANES_FILE)) or b"[]")
    except ValueError:
        old = []
    return _changed_plane(old, wanted.get("planes", [])) or "the input stack changed"


def _stage_to_json(stage: Stage) -> dict[str, Any]:
    return {"first": stage.first, "last": stage.last, "region": list(stage.region)}


def _stage_from_json(obj: dict[str, Any]) -> Stage:
    x, y, z = obj["region"]
    return Stage(int(obj["first"]), int(obj["last"]), (int(x), int(y), int(z)))


class _DoneLog:
    """Which tasks of a stage are finished, kept beside the volume so any machine can resume.

    In a folder it is one append-only file (a torn last line is ignored on resume); object
    stores cannot append, so there every finished task leaves an empty marker object.
    """

    def __init__(self, root: WritableLocation, stage: Stage) -> None:
        self.root = root
        self.name = _state_name(f"done-{stage.first}")
        self.file = None
        if isinstance(root, LocalLocation):
            self.file = open(os.path.join(root.path, *self.name.split("/")), "a", encoding="ascii")

    def read(self) -> set[int]:
        if self.file is None:
            return {int(name) for name in self.root.names(self.name) if name.isdigit()}
        content = (self.root.read(self.name) or b"").decode("ascii", errors="replace")
        return {int(line) for line in content.split("\n") if line.strip().isdigit()}

    def add(self, index: int) -> None:
        if self.file is None:
            self.root.write(f"{self.name}/{index}", b"")
            return
        self.file.write(f"\n{index}\n")
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            os.fsync(self.file.fileno())
            self.file.close()


def run_in_order(executor: Executor, tasks: list[Task], window: int) -> Iterator[TaskResult]:
    """Submit tasks in order with at most `window` in flight; yield results as they finish."""
    pending: set[Future[TaskResult]] = set()
    queue = iter(tasks)
    try:
        for task in queue:
            pending.add(executor.submit(run_task, task))
            if len(pending) >= window:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
    finally:
        for future in pending:
            future.cancel()


def convert(
    source: PlaneSource,
    store: ChunkStore,
    *,
    executor: Executor,
    budget: Budget,
    resume: bool = False,
    overwrite: bool = False,
    repair: bool = False,
    progress: Progress | None = None,
) -> None:
    """Convert `source` into `store` (whose pyramid says what to make), running on `executor`.

    `resume` finishes an interrupted run; `repair` (which implies it) then checks every chunk and
    makes the damaged or missing ones again, with the coarser chunks made from them. A worker or
    storage failure raises `IncompleteRunError`: the run state stays and a resumed run finishes.
    """
    pyramid: Pyramid = store.pyramid
    wanted = {
        "version": STATE_VERSION,
        "format": store.format_name,
        "source": source_fingerprint(source),
        "info": pyramid.to_info(),
    }
    stages = plan_stages(
        pyramid,
        task_budget_bytes=budget.task_bytes,
        n_workers=budget.n_workers,
        read_overhead=source.read_overhead_bytes,
    )
    wanted["stages"] = [_stage_to_json(s) for s in stages]
    wanted["planes"] = source_stamps(source)
    run = prepare_destination(store.files, wanted, resume=resume or repair, overwrite=overwrite)
    stages = tuple(_stage_from_json(s) for s in run["stages"])
    store.files.remove(_state_name(TMP_DIR))  # what writes killed mid-way left behind
    _warn_about_crowded_folders(store)
    for line in describe_plan(pyramid, stages, store.format_name, source.read_overhead_bytes):
        log.info("%s", line)
    try:
        if not run.get("complete"):
            for stage in stages:
                started = time.perf_counter()
                _run_stage(source, store, stage, executor, budget.n_workers, progress)
                elapsed = time.perf_counter() - started
                log.info("levels %d-%d done in %.1f s", stage.first, stage.last, elapsed)
        if repair:
            from .repair import repair_volume

            repair_volume(source, store, stages, executor, budget.n_workers, run)
    except IncompleteRunError:
        raise
    except Exception as exc:
        reason = describe_failure(exc)
        if reason is None:
            raise
        raise IncompleteRunError(f"{reason}; {RESUME_HINT}") from exc
    store.write_info()
    run["complete"] = True
    store.files.write(_state_name(RUN_FILE), json.dumps(run, indent=1).encode())
    store.clean_up()
    store.files.remove(_state_name(EXACT_DIR))
    store.files.remove(_state_name(TMP_DIR))


def mark_incomplete(store: ChunkStore, run: dict[str, Any]) -> None:
    """Make a finished volume look unfinished again (before repairing it)."""
    run["complete"] = False
    store.files.write(_state_name(RUN_FILE), json.dumps(run, indent=1).encode())
    store.files.remove(INFO_NAME)


def describe_failure(exc: BaseException) -> str | None:
    """What went wrong, in a user's words, when a run stops for a reason outside our code (a
    worker killed, a disk full, an object store gone); None for anything else (a bug)."""
    from concurrent.futures import BrokenExecutor, CancelledError

    name = type(exc).__name__
    module = type(exc).__module__.split(".")[0]
    if isinstance(exc, PrecomputedTifError):
        return str(exc)
    if isinstance(exc, BrokenExecutor):
        return "a worker process died (killed, or out of memory)"
    if name == "KilledWorker":
        return "Dask workers died while running a task (killed, or out of memory)"
    if isinstance(exc, CancelledError) or name in ("CommClosedError", "FutureCancelledError"):
        return f"the Dask cluster lost a task ({name})"
    if isinstance(exc, OSError):
        if exc.errno == errno.ENOSPC:
            where = f" writing {exc.filename!r}" if exc.filename else ""
            return f"no space left on the device{where}"
        return f"cannot read or write the volume: {exc}"
    if module in ("botocore", "aiobotocore", "s3fs", "gcsfs", "aiohttp", "fsspec"):
        return f"the object store failed: {exc}"
    if isinstance(exc, MemoryError):
        return "a task ran out of memory: lower --task-memory or raise --memory"
    return None


CROWDED_FOLDER = 100_000


def _warn_about_crowded_folders(store: ChunkStore) -> None:
    """File-per-chunk layouts that put more files in one folder than file systems like."""
    if store.format_name not in ("tiff", "precomputed"):
        return  # zarr spreads chunks over zi/yi folders; blockfs writes a handful of files
    remedy = (
        "--sharded stores the same in a few shard files"
        if store.format_name == "precomputed"
        else "--format blockfs stores the same in a few large files"
    )
    for level, scale in enumerate(store.pyramid.scales, start=1):
        if scale.n_chunks > CROWDED_FOLDER and scale.sharding is None:
            log.warning(
                "level %d puts %d chunk files in one folder (file systems slow down past about "
                "%d); %s",
                level,
                scale.n_chunks,
                CROWDED_FOLDER,
                remedy,
            )


def prepare_stage(store: ChunkStore, stage: Stage) -> None:
    """Folders and metadata the stage's tasks write into (the exact copy's too)."""
    for level in stage.levels:
        store.prepare_level(level)
    if needs_exact_copy(store.pyramid, stage.last):
        exact_copy(store).prepare_level(stage.last)


def stage_complete_name(stage: Stage) -> str:
    """Written once every level of the stage is finished: a resumed run skips the stage."""
    return _state_name(f"done-{stage.first}.complete")


def _run_stage(
    source: PlaneSource,
    store: ChunkStore,
    stage: Stage,
    executor: Executor,
    n_workers: int,
    progress: Progress | None,
) -> None:
    pyramid = store.pyramid
    if store.files.stamp(stage_complete_name(stage)) is not None:
        if progress is not None:
            for level in stage.levels:
                sx, sy, sz = pyramid.scale(level).size
                progress(level, sx * sy * sz, sx * sy * sz)
        return
    tasks = stage_tasks(pyramid, stage, store, source)
    done_log = _DoneLog(store.files, stage)
    done = done_log.read()
    prepare_stage(store, stage)
    finished: dict[int, TaskResult | None] = {i: None for i in done}
    next_commit = 0

    def commit(index: int) -> None:
        for level in stage.levels:
            try:
                store.commit_task(level, index)
            except PartDamagedError as exc:
                # the done log outlived the task's output (a lost write): make it again
                log.warning("%s: running task %d of levels %s again", exc, index, stage.levels)
                executor.submit(run_task, tasks[index]).result()
                store.commit_task(level, index)

    def commit_ready() -> None:
        nonlocal next_commit
        while next_commit < len(tasks) and next_commit in finished:
            commit(next_commit)
            next_commit += 1

    if progress is not None:
        totals = {level: pyramid.scale(level).size for level in stage.levels}
        for level, (sx, sy, sz) in totals.items():
            already = sum(
                t.box.scaled_down(2 ** (level - stage.first), pyramid.scale(level).size).voxels
                for t in tasks
                if t.index in done
            )
            progress(level, already, sx * sy * sz)
    commit_ready()
    try:
        todo = [t for t in tasks if t.index not in done]
        for result in run_in_order(executor, todo, window=2 * n_workers + 1):
            done_log.add(result.index)
            finished[result.index] = result
            if progress is not None:
                for level, voxels in result.voxels_per_level.items():
                    sx, sy, sz = pyramid.scale(level).size
                    progress(level, voxels, sx * sy * sz)
            commit_ready()
    finally:
        done_log.close()
    for level in stage.levels:
        store.finish_level(level)
    store.files.write(stage_complete_name(stage), b"")
