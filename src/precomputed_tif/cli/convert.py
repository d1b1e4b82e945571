"""``precomputed-tif``: convert a TIFF z-stack into a multi-resolution precomputed volume."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from typing import Any

from ._common import (
    add_log_argument,
    add_voxel_size_argument,
    parse_size,
    parse_xyz,
    run_command,
    setup_logging,
)

log = logging.getLogger("precomputed_tif")

PARENT_OVERHEAD = 200 * 2**20  # the driver process: interpreter, numpy, task bookkeeping
WORKER_OVERHEAD = 120 * 2**20  # each worker: interpreter, numpy, tifffile, codecs
DEFAULT_TASK_BYTES = 256 * 2**20  # larger tasks barely run faster and cost memory (benchmarks/)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="precomputed-tif",
        description="Convert a stack of TIFF planes into a Neuroglancer precomputed volume.",
    )
    parser.add_argument(
        "--source",
        help="glob of TIFF planes (sorted alphabetically), a folder of them, "
        "or one multi-page TIFF",
    )
    parser.add_argument("--dest", required=True, help="folder to write the volume into")
    parser.add_argument(
        "--levels",
        type=int,
        default=None,
        help="number of mipmap levels (default: until the coarsest fits in one chunk)",
    )
    parser.add_argument(
        "--format",
        default="tiff",
        choices=["tiff", "zarr", "blockfs", "precomputed"],
        help="chunk storage: tiff (a 3D TIFF per chunk), zarr, blockfs (few large files), or "
        "precomputed (Neuroglancer's own files, served by any static web server)",
    )
    parser.add_argument(
        "--encoding",
        default="raw",
        choices=["raw", "jpeg", "png", "compressed_segmentation"],
        help="chunk encoding for --format precomputed (default raw)",
    )
    parser.add_argument(
        "--sharded",
        action="store_true",
        help="--format precomputed as neuroglancer_uint64_sharded_v1 shards: few files per level",
    )
    parser.add_argument(
        "--shard-data-encoding",
        default="gzip",
        choices=["gzip", "raw"],
        help="with --sharded: gzip each raw or compressed_segmentation chunk inside the shards "
        "(default), or store it raw (larger files, no compression time)",
    )
    parser.add_argument(
        "--gzip",
        action="store_true",
        help="gzip raw and compressed_segmentation chunk files (--format precomputed)",
    )
    add_voxel_size_argument(parser)
    parser.add_argument(
        "--chunk-size",
        default="64,64,64",
        type=parse_xyz(int),
        help="chunk size in voxels, x,y,z (default 64,64,64)",
    )
    parser.add_argument(
        "--n-cores",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes (default: all cores)",
    )
    parser.add_argument(
        "--memory",
        type=parse_size,
        default=None,
        help="memory budget for all processes, e.g. 2G or 500M (default: half the free memory)",
    )
    parser.add_argument(
        "--task-memory",
        type=parse_size,
        default=None,
        help="memory for one task, e.g. 256M (default: derived from --memory and --n-cores)",
    )
    parser.add_argument(
        "--segmentation",
        action="store_true",
        help="the stack holds labels: mark it a segmentation and downsample by "
        "the most frequent label",
    )
    dask = parser.add_mutually_exclusive_group()
    dask.add_argument(
        "--dask-scheduler",
        metavar="ADDRESS",
        help="run the tasks on this Dask cluster (workers must see --source and --dest); "
        "--memory is then the budget of each worker",
    )
    dask.add_argument(
        "--dask-workers",
        type=int,
        metavar="N",
        help="start a local Dask cluster of N worker processes instead of a process pool",
    )
    parser.add_argument(
        "--resume", action="store_true", help="finish an interrupted conversion into --dest"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (tasks, memory per task, files, output size) and stop; reads only "
        "the planes' headers and writes nothing",
    )
    parser.add_argument(
        "--shape",
        type=parse_xyz(int),
        metavar="X,Y,Z",
        help="with --dry-run instead of --source: plan a stack of this many voxels that does "
        "not exist yet",
    )
    parser.add_argument(
        "--dtype",
        default="uint16",
        help="the voxel type of a --shape stack (default uint16)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a different volume already in --dest"
    )
    add_log_argument(parser)
    return parser


def _shape_source(shape: tuple[int, int, int], dtype: str) -> Any:
    import numpy as np

    from ..errors import PlanError
    from ..sources import ShapeSource

    try:
        np.dtype(dtype)
    except TypeError as exc:
        raise PlanError(f"--dtype {dtype!r} is not a numpy type name (uint8, uint16, ...)") from exc
    if min(shape) < 1:
        raise PlanError(f"--shape {shape} must be positive in x, y and z")
    return ShapeSource(shape, np.dtype(dtype).name)


def _dask_budget(args: argparse.Namespace, dask: Any, per_worker: int | None) -> Any:
    """Tasks as large as each worker's memory allows (its own limit unless --memory says)."""
    from ..convert import Budget

    memory = per_worker if per_worker is not None else dask.memory_per_task()
    if memory is None:
        memory = _default_memory()
    task_bytes = min(max(memory - WORKER_OVERHEAD, 16 * 2**20), DEFAULT_TASK_BYTES)
    if args.task_memory is not None:
        task_bytes = min(task_bytes, args.task_memory)
    log.info(
        "Dask: %d workers with %.0f MiB each for a task; tasks of at most %.0f MiB",
        dask.n_workers,
        memory / 2**20,
        task_bytes / 2**20,
    )
    return Budget(n_workers=dask.n_workers, task_bytes=task_bytes)


def _default_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().available * 0.5)


def _budget(args: argparse.Namespace) -> Any:
    from ..convert import Budget
    from ..errors import PlanError

    memory = args.memory if args.memory is not None else _default_memory()
    n_workers = max(1, args.n_cores)
    usable = memory - PARENT_OVERHEAD - n_workers * WORKER_OVERHEAD
    while n_workers > 1 and usable // n_workers < 64 * 2**20:
        n_workers -= 1
        usable = memory - PARENT_OVERHEAD - n_workers * WORKER_OVERHEAD
    if usable <= 0:
        raise PlanError(
            f"--memory {memory / 2**20:.0f}M is too small: the processes alone need about "
            f"{(PARENT_OVERHEAD + WORKER_OVERHEAD) / 2**20:.0f}M"
        )
    if n_workers < args.n_cores:
        log.warning("--memory allows %d worker(s), not %d", n_workers, args.n_cores)
    task_bytes = min(usable // n_workers, DEFAULT_TASK_BYTES)
    if args.task_memory is not None:
        task_bytes = min(args.task_memory, usable // n_workers)
    return Budget(n_workers=n_workers, task_bytes=task_bytes)


class _Bars:
    """One tqdm bar per level, created when the level starts."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bars: dict[int, Any] = {}

    def __call__(self, level: int, voxels: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self.bars.get(level)
        if bar is None:
            bar = tqdm(
                total=total,
                desc=f"level {level}",
                unit="vox",
                unit_scale=True,
                position=len(self.bars),
                leave=True,
                dynamic_ncols=True,
            )
            self.bars[level] = bar
        bar.update(voxels)
        if bar.n >= total:
            bar.close()  # stops its clock: the rate shown stays this level's own

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _logging_beside(bars: _Bars) -> contextlib.AbstractContextManager[Any]:
    """Route log lines through tqdm while bars are drawn, so they do not tear the bars."""
    if not bars.enabled:
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log)

    def work() -> int:
        from .. import convert, create_store, open_source, plan_pyramid
        from ..errors import PlanError
        from ..executors import process_pool
        from ..locations import is_remote

        dask = None
        if args.dask_scheduler or args.dask_workers:
            from ..executors import DaskExecutor

            per_worker = args.memory
            if per_worker is not None and args.dask_workers:
                per_worker = per_worker // args.dask_workers
            dask = DaskExecutor(args.dask_scheduler, args.dask_workers, per_worker)
            budget = _dask_budget(args, dask, per_worker)
        else:
            budget = _budget(args)
        if (args.source is None) == (args.shape is None):
            raise PlanError("give --source (or, with --dry-run, --shape X,Y,Z)")
        if args.shape is not None:
            if not args.dry_run:
                raise PlanError("--shape plans a stack that does not exist: add --dry-run")
            source = _shape_source(args.shape, args.dtype)
        else:
            source = open_source(args.source)
        voxel_size_nm = tuple(int(float(v) * 1000) for v in args.voxel_size)
        pyramid = plan_pyramid(
            source.size,
            source.dtype.name,
            voxel_size_nm=voxel_size_nm,  # type: ignore[arg-type]
            chunk_size=args.chunk_size,
            levels=args.levels,
            segmentation=args.segmentation,
            encoding=args.encoding if args.format == "precomputed" else "raw",
        )
        x, y, z = source.size
        log.info(
            "%d planes of %dx%d %s -> %s, %d levels, format %s",
            z,
            x,
            y,
            source.dtype.name,
            args.dest,
            pyramid.n_levels,
            args.format,
        )
        if args.format != "precomputed" and (args.encoding != "raw" or args.gzip or args.sharded):
            raise PlanError("--encoding, --gzip and --sharded apply to --format precomputed only")
        if args.sharded and args.gzip:
            raise PlanError("--gzip is for unsharded files: shards compress their chunks already")
        if args.shard_data_encoding != "gzip" and not args.sharded:
            raise PlanError("--shard-data-encoding applies to --sharded output only")
        if args.sharded:
            pyramid = pyramid.sharded(budget.task_bytes, args.shard_data_encoding)
        dest = args.dest if is_remote(args.dest) else os.path.abspath(args.dest)
        store = create_store(args.format, dest, pyramid, gzip_files=args.gzip)
        if args.dry_run:
            from ..plan import describe_plan, plan_stages

            stages = plan_stages(
                pyramid,
                task_budget_bytes=budget.task_bytes,
                n_workers=budget.n_workers,
                read_overhead=source.read_overhead_bytes,
            )
            print(
                f"{budget.n_workers} workers, tasks of at most {budget.task_bytes / 2**20:.0f} MiB"
            )
            for line in describe_plan(pyramid, stages, args.format, source.read_overhead_bytes):
                print(line)
            if dask is not None:
                dask.__exit__(None, None, None)
            return 0
        bars = _Bars(enabled=sys.stderr.isatty() and log.getEffectiveLevel() <= logging.INFO)
        try:
            pool = dask if dask is not None else process_pool(budget.n_workers)
            with _logging_beside(bars), pool as executor:
                convert(
                    source,
                    store,
                    executor=executor,
                    budget=budget,
                    resume=args.resume,
                    overwrite=args.overwrite,
                    progress=bars,
                )
        except KeyboardInterrupt:
            bars.close()
            print(
                "precomputed-tif: interrupted; the volume is incomplete. Run the same command "
                "with --resume to finish it.",
                file=sys.stderr,
            )
            return 130
        bars.close()
        log.info("done: %s", args.dest)
        return 0

    return run_command(work, "precomputed-tif")


if __name__ == "__main__":
    sys.exit(main())
