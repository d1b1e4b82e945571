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
    AlreadyConvertedError,
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
from .stores.ngff import ngff_folders

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
    """A digest of what the source is (its planes' stamps, or its shape), to match on resume.

    Planes are digested in the order they are taken, so another ``--order`` is another stack.
    """
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
    if old.get("format") != new.get("format"):
        return f"it is --format {old.get('format')}, this run makes --format {new.get('format')}"
    if old.get("source") != new.get("source"):
        return "its input stack differs: " + _describe_plane_changes(
            old.get("planes"), new.get("planes")
        )
    old_info, new_info = old.get("info", {}), new.get("info", {})
    for key in ("data_type", "type"):
        if old_info.get(key) != new_info.get(key):
            return f"its {key} is {old_info.get(key)}, this run makes {new_info.get(key)}"
    sharding = [
        [(sc.get("sharding"), sc.get("shard_size")) for sc in info.get("scales", [])]
        for info in (old_info, new_info)
    ]
    if sharding[0] != sharding[1] and len(sharding[0]) == len(sharding[1]):
        return "its sharding differs (--sharded, or another task memory)"
    return "its levels, sizes, chunk size or voxel size differ"


def _describe_plane_changes(old: Any, new: Any) -> str:
    """Which planes differ between two recorded plane lists, in a line."""
    if not isinstance(old, list) or not isinstance(new, list):
        return "the planes' names, sizes or order changed"

    def show(names: list[str]) -> str:
        return ", ".join(repr(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")

    old_names = [str(p[0]) for p in old]
    new_names = [str(p[0]) for p in new]
    added = [n for n in new_names if n not in set(old_names)]
    removed = [n for n in old_names if n not in set(new_names)]
    if added or removed:
        parts = [f"the run was of {len(old)} planes, now {len(new)}"]
        if added:
            parts.append(f"new: {show(added)}")
        if removed:
            parts.append(f"gone: {show(removed)}")
        return "; ".join(parts)
    if old_names != new_names:
        moved = [n for n, m in zip(new_names, old_names) if n != m]
        return f"the planes are taken in another order (first moved: {show(moved)}; see --order)"
    old_sizes = {str(p[0]): p[1] for p in old}
    changed = [
        f"{p[0]} ({old_sizes[p[0]]} -> {p[1]} bytes)" for p in new if old_sizes[p[0]] != p[1]
    ]
    if changed:
        return f"changed since the run started: {', '.join(changed[:3])}" + (
            f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        )
    return "the planes changed"


def _foreign_names(root: WritableLocation, known: set[str]) -> list[str]:
    return sorted(set(root.names()) - known)


def _foreign_message(dest: str, foreign: list[str], *, overwriting: bool) -> str:
    listed = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
    verb = "refusing to overwrite them" if overwriting else "they are not part of a volume"
    inside = dest.rstrip("/") + "/volume"
    return (
        f"--dest {dest!r} holds files of yours ({listed}); {verb}: give an empty or new "
        f"folder, e.g. --dest {inside!r}"
    )


def _volume_names(root: WritableLocation) -> set[str]:
    """Names a volume made by this tool (or the original) may leave in its folder."""
    known = {INFO_NAME, STATE_DIR, ".zgroup", ".zattrs", "zarr.json"}
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        known |= {s["key"] for s in json.loads(root.read(INFO_NAME) or b"")["scales"]}
    return known | ngff_folders(root)


def _clear_destination(root: WritableLocation, dest: str) -> None:
    """Remove a previous volume, refusing when the folder holds anything else."""
    run = _read_run(root)
    known = _volume_names(root)
    if run and "info" in run:
        known |= {s["key"] for s in run["info"]["scales"]}
        known |= {str(i) for i in range(len(run["info"]["scales"]))}  # ngff levels
    names = root.names()
    foreign = _foreign_names(root, known)
    if foreign:
        raise StoreExistsError(_foreign_message(dest, foreign, overwriting=True))
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
        elif same and run is not None and run.get("complete"):
            raise AlreadyConvertedError(
                f"{dest} already holds this volume, converted from the same stack with the same "
                "settings: nothing to do (--overwrite makes it again)"
            )
        elif same:
            raise StoreExistsError(
                f"--dest {dest!r} holds an unfinished conversion of this stack: run the same "
                "command with --resume to finish it (or --overwrite to start again)"
            )
        elif run:
            run.setdefault("planes", _recorded_planes(root))
            remedy = "run with --overwrite to replace it (or choose another --dest)"
            if resume and run.get("format") == wanted["format"]:
                remedy = (
                    "its finished parts cannot be kept: run the same command with --overwrite "
                    "instead of --resume to convert it again"
                )
            raise StoreExistsError(
                f"--dest {dest!r} holds a different volume ({_describe_difference(run, wanted)}); "
                + remedy
            )
        else:
            foreign = _foreign_names(root, _volume_names(root))
            if foreign:
                raise StoreExistsError(_foreign_message(dest, foreign, overwriting=False))
            raise StoreExistsError(
                f"--dest {dest!r} already holds a volume this tool did not start (made by the "
                "original tool, or by another program): run with --overwrite to replace it, or "
                "choose another --dest"
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


def _recorded_planes(root: WritableLocation) -> list[list[Any]]:
    """The plane stamps the run in `root` began with ([] when unknown)."""
    try:
        old = json.loads(root.read(_state_name(PLANES_FILE)) or b"[]")
    except (OSError, ValueError):
        return []
    return old if isinstance(old, list) else []


def _source_change(root: WritableLocation, wanted: dict[str, Any]) -> str:
    old, new = _recorded_planes(root), wanted.get("planes", [])
    return _changed_plane(old, new) or _describe_plane_changes(old, new)


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
            os.makedirs(os.path.join(root.path, STATE_DIR), exist_ok=True)
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


@dataclass
class StageRun:
    """One stage of a conversion as it runs: iterate `results` (to the end) to do its work.

    `tasks` in all, those in `done` finished by an earlier, interrupted run; `results` yields a
    `TaskResult` as each remaining task finishes, and finishes the levels when exhausted.
    """

    stage: Stage
    tasks: list[Task]
    done: set[int]
    results: Iterator[TaskResult]

    @property
    def n_todo(self) -> int:
        """Tasks `results` will yield."""
        return len(self.tasks) - len(self.done)


def iter_convert(
    source: PlaneSource,
    store: ChunkStore,
    *,
    executor: Executor,
    budget: Budget,
    resume: bool = False,
    overwrite: bool = False,
    repair: bool = False,
) -> Iterator[StageRun]:
    """`convert` one stage at a time, for callers that drive progress by iterating (a
    ``tqdm.tqdm`` over each stage's results). Each stage's `results` must be exhausted before
    the next stage is asked for; the ``info`` is written once the last stage is.

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
    if not run.get("complete"):
        for stage in stages:
            started = time.perf_counter()
            yield _start_stage(source, store, stage, executor, budget.n_workers)
            elapsed = time.perf_counter() - started
            log.debug("levels %d-%d done in %.1f s", stage.first, stage.last, elapsed)
    if repair:
        from .repair import repair_volume

        try:
            repair_volume(source, store, stages, executor, budget.n_workers, run)
        except IncompleteRunError:
            raise
        except Exception as exc:
            raise _incomplete(exc) from exc
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

    See `iter_convert` for `resume` and `repair`.
    """
    for stage_run in iter_convert(
        source,
        store,
        executor=executor,
        budget=budget,
        resume=resume,
        overwrite=overwrite,
        repair=repair,
    ):
        _consume(stage_run, store.pyramid, progress)


def make_levels(
    source: PlaneSource | None,
    store: ChunkStore,
    levels: range,
    *,
    executor: Executor,
    budget: Budget,
) -> Iterator[StageRun]:
    """Make `levels` of `store` now, one stage at a time (iterate each stage's `results`).

    Level 1 comes from `source`; a coarser first level from the level before it, read back from
    the store, whoever wrote it. No run record is kept and work left by an interrupted call is
    discarded first: this is the original's ``write_level_1`` / ``write_level_n``, for
    volumes whose ``info`` was written up front.
    """
    read_overhead = source.read_overhead_bytes if source is not None and levels.start == 1 else 0
    stages = plan_stages(
        store.pyramid,
        task_budget_bytes=budget.task_bytes,
        n_workers=budget.n_workers,
        read_overhead=read_overhead,
        levels=levels,
    )
    for stage in stages:
        marks = (_state_name(f"done-{stage.first}"), stage_complete_name(stage))
        for name in marks:
            store.files.remove(name)
        for level in stage.levels:
            store.discard_level_work(level)
        yield _start_stage(source, store, stage, executor, budget.n_workers)
        for name in marks:  # nothing to resume: the next call starts afresh anyway
            store.files.remove(name)
    store.clean_up()
    store.files.remove(_state_name(TMP_DIR))
    store.remove_empty_state()


def _consume(stage_run: StageRun, pyramid: Pyramid, progress: Progress | None) -> None:
    """Run a stage to its end, reporting voxels per level to `progress`."""
    stage, tasks, done = stage_run.stage, stage_run.tasks, stage_run.done
    if progress is not None:
        for level in stage.levels:
            sx, sy, sz = pyramid.scale(level).size
            already = sum(
                t.box.scaled_down(2 ** (level - stage.first), pyramid.scale(level).size).voxels
                for t in tasks
                if t.index in done
            )
            progress(level, already, sx * sy * sz)
    for result in stage_run.results:
        if progress is not None:
            for level, voxels in result.voxels_per_level.items():
                sx, sy, sz = pyramid.scale(level).size
                progress(level, voxels, sx * sy * sz)


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


def _start_stage(
    source: PlaneSource | None,
    store: ChunkStore,
    stage: Stage,
    executor: Executor,
    n_workers: int,
) -> StageRun:
    pyramid = store.pyramid
    tasks = stage_tasks(pyramid, stage, store, source)
    if store.files.stamp(stage_complete_name(stage)) is not None:
        return StageRun(stage, tasks, {t.index for t in tasks}, iter(()))
    done_log = _DoneLog(store.files, stage)
    done = done_log.read()
    results = _stage_results(store, stage, tasks, done, done_log, executor, n_workers)
    return StageRun(stage, tasks, done, results)


def _stage_results(
    store: ChunkStore,
    stage: Stage,
    tasks: list[Task],
    done: set[int],
    done_log: _DoneLog,
    executor: Executor,
    n_workers: int,
) -> Iterator[TaskResult]:
    try:
        yield from _run_stage_tasks(store, stage, tasks, done, done_log, executor, n_workers)
    except IncompleteRunError:
        raise
    except Exception as exc:
        raise _incomplete(exc) from exc


def _incomplete(exc: Exception) -> Exception:
    """`exc` as the one-line `IncompleteRunError` a user can act on, or itself (a bug)."""
    reason = describe_failure(exc)
    if reason is None:
        return exc
    return IncompleteRunError(f"{reason}; {RESUME_HINT}")


def _run_stage_tasks(
    store: ChunkStore,
    stage: Stage,
    tasks: list[Task],
    done: set[int],
    done_log: _DoneLog,
    executor: Executor,
    n_workers: int,
) -> Iterator[TaskResult]:
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

    commit_ready()
    try:
        todo = [t for t in tasks if t.index not in done]
        for result in run_in_order(executor, todo, window=2 * n_workers + 1):
            done_log.add(result.index)
            finished[result.index] = result
            commit_ready()
            yield result
    finally:
        done_log.close()
    for level in stage.levels:
        store.finish_level(level)
    store.files.write(stage_complete_name(stage), b"")
