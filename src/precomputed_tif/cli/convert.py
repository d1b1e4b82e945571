"""``precomputed-tif``: convert a TIFF z-stack into a multi-resolution precomputed volume.

Besides parsing, this is where a run meets its user: the progress bars (log lines go through
them), Ctrl-C (any number of presses ends the run within seconds, resumable), the summary at the
end, and refusals that say which command works instead.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import logging
import math
import os
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

from ._common import (
    DEFAULT_VOXEL_SIZE_UM,
    EXIT_INTERRUPTED,
    Parser,
    add_log_argument,
    add_voxel_size_argument,
    describe_os_error,
    format_size,
    parse_size,
    parse_xyz,
    positive_int,
    run_command,
    setup_logging,
)

log = logging.getLogger("precomputed_tif")

PARENT_OVERHEAD = 200 * 2**20  # the driver process: interpreter, numpy, task bookkeeping
WORKER_OVERHEAD = 120 * 2**20  # each worker: interpreter, numpy, tifffile, codecs
DEFAULT_TASK_BYTES = 256 * 2**20  # larger tasks barely run faster and cost memory (benchmarks/)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="precomputed-tif",
        description="Convert a stack of TIFF planes into a Neuroglancer precomputed volume.",
    )
    parser.add_argument(
        "--source",
        action="append",
        help="glob of TIFF planes (quote it), a folder of them, or one multi-page TIFF; give it "
        "once per channel for several channels (RGB planes and ImageJ hyperstacks are several "
        "channels already)",
    )
    parser.add_argument(
        "--channel-names",
        type=_names,
        metavar="A,B,...",
        help="names of the channels, in order (default: the folders' names; red, green, blue "
        "for RGB planes)",
    )
    parser.add_argument(
        "--order",
        default="natural",
        choices=["natural", "alphabetical"],
        help="plane order: natural takes numbers in names by value (img_2 before img_10; the "
        "same as alphabetical for zero-padded names), alphabetical as the original tool "
        "(default natural)",
    )
    parser.add_argument(
        "--example",
        action="store_true",
        help="convert the small example stack that comes with the package (31 planes of "
        "synthetic nuclei) instead of --source",
    )
    parser.add_argument("--dest", help="folder to write the volume into")
    parser.add_argument(
        "--levels",
        type=positive_int,
        default=None,
        help="number of levels, level 1 being full resolution and level N the mipmap factor "
        "2^(N-1) with the default --factors (default: until the coarsest fits in one chunk)",
    )
    parser.add_argument(
        "--factors",
        default=(2, 2, 2),
        type=_factors,
        metavar="X,Y,Z|auto",
        help="what each level halves: 2 (halve) or 1 (keep) per axis, e.g. 2,2,1 keeps z; auto "
        "halves the axes whose voxels are well below the coarsest until voxels are "
        "near-isotropic, then all three (default 2,2,2)",
    )
    parser.add_argument(
        "--downsample",
        default=None,
        choices=["mean", "mode", "max", "min", "stride"],
        help="how a level is made from the one before: mean (default for images), mode (most "
        "frequent value; default with --segmentation), max (keeps thin bright structures), "
        "min, or stride (the first voxel of each block)",
    )
    parser.add_argument(
        "--format",
        default="tiff",
        choices=["tiff", "zarr", "blockfs", "precomputed", "ngff"],
        help="chunk storage: tiff (a 3D TIFF per chunk), zarr, blockfs (few large files), "
        "precomputed (Neuroglancer's own files, served by any static web server), or ngff "
        "(an OME-Zarr image that Neuroglancer, napari and other OME-Zarr tools open)",
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
        help="few files per level: --format precomputed as neuroglancer_uint64_sharded_v1 "
        "shards, --format ngff as OME-Zarr 0.5 on zarr v3 with sharding_indexed shards",
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
    add_voxel_size_argument(parser, recorded=True)
    parser.add_argument(
        "--chunk-size",
        default="64,64,64",
        type=parse_xyz(int),
        help="chunk size in voxels, x,y,z (default 64,64,64)",
    )
    parser.add_argument(
        "--n-cores",
        type=positive_int,
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
        type=positive_int,
        metavar="N",
        help="start a local Dask cluster of N worker processes instead of a process pool",
    )
    parser.add_argument(
        "--resume", action="store_true", help="finish an interrupted conversion into --dest"
    )
    parser.add_argument(
        "--repair",
        action="store_true",
        help="with --resume: then check every chunk and make the missing or damaged ones again, "
        "with the coarser chunks made from them",
    )
    parser.add_argument(
        "--verify",
        metavar="DEST",
        help="check that every chunk of every level of the volume at DEST is there and decodes "
        "(with --source, also recompute a sample from the planes); exit status 1 if not",
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


def _factors(text: str) -> tuple[int, ...] | str:
    """``auto`` or integers per axis; `plan_pyramid` says which values are allowed."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected 1 or 2 per axis (x,y,z, e.g. 2,2,1) or auto"
        ) from None


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",")]


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


def _lent(dask: Any) -> Any:
    """The Dask executor for one volume's run, the cluster staying up for the next channel."""
    return contextlib.nullcontext(dask.__enter__())


def _voxel_size_um(given: tuple | str | None, source: Any) -> tuple[float, float, float]:
    """The voxel size to write: `given` (x, y, z microns, or ``auto`` for the one the planes
    record), or the original's default, saying so when the planes record another."""
    from ..errors import PlanError
    from ..sources import recorded_voxel_size_of

    if isinstance(given, tuple):
        return given
    if source is None:
        if given == "auto":
            raise PlanError("--voxel-size auto reads the size the planes record: give --source")
        return DEFAULT_VOXEL_SIZE_UM
    recorded = recorded_voxel_size_of(source)
    if given == "auto":
        if recorded is None:
            raise PlanError(
                "--voxel-size auto: the planes record no voxel size (no ImageJ calibration or "
                "OME-XML physical size); give --voxel-size x,y,z in microns"
            )
        if recorded.z_um is None:
            raise PlanError(
                f"--voxel-size auto: the planes record {recorded.x_um:g} x {recorded.y_um:g} µm "
                f"in x and y but no z step; give --voxel-size "
                f"{recorded.x_um:g},{recorded.y_um:g},Z with Z in microns"
            )
        found = (recorded.x_um, recorded.y_um, recorded.z_um)
        log.info("voxel size %s, from the planes' %s metadata", recorded.describe(), recorded.where)
        return found
    default = DEFAULT_VOXEL_SIZE_UM
    if recorded is not None and not all(
        math.isclose(r, d, rel_tol=1e-6)
        for r, d in zip((recorded.x_um, recorded.y_um, recorded.z_um), default)
        if r is not None
    ):
        log.info(
            "the planes' %s metadata records voxels of %s; this volume takes the default "
            "%s µm (give --voxel-size auto to use the recorded size)",
            recorded.where,
            recorded.describe(),
            " x ".join(f"{d:g}" for d in default),
        )
    return default


def _nanometres(microns: float) -> int | float:
    """`microns` in nanometres for the info's resolution, whole when it is (``2.01`` is 2010,
    not the 2009 that truncating ``2.01 * 1000`` gives)."""
    nm = round(float(microns) * 1000, 6)
    return int(nm) if nm.is_integer() else nm


def _with_channels(pyramid: Any, channels: int, args: argparse.Namespace) -> Any:
    """`pyramid` holding `channels` values per voxel (a ``c`` axis, or ``num_channels``)."""
    from ..errors import PlanError

    if args.format == "precomputed" and args.encoding == "jpeg" and channels not in (1, 3):
        raise PlanError(f"--encoding jpeg holds 1 or 3 channels, not {channels}: choose png or raw")
    if args.format == "precomputed" and args.encoding == "compressed_segmentation":
        raise PlanError("--encoding compressed_segmentation holds one channel per volume")
    if args.segmentation:
        raise PlanError("--segmentation labels are one channel: give one --source of labels")
    return dataclasses.replace(pyramid, num_channels=channels)


def _one_volume(args: argparse.Namespace, source: Any) -> bool:
    """Whether several channels go into one volume: a ``c`` axis (ngff), or the samples of one
    RGB stack as a ``num_channels`` precomputed volume that Neuroglancer shows in colour."""
    from ..channels import ChannelStack

    if args.format == "ngff":
        return True
    return (
        args.format == "precomputed"
        and not isinstance(source, ChannelStack)
        and (getattr(source, "samples", 1) > 1)
    )


def _separate_channels(
    args: argparse.Namespace, channels: list[Any], convert_one: Any, quiet: bool
) -> int:
    """Each channel as a volume in ``DEST/NAME``, then ``DEST/sources.json`` listing them."""
    from ..channel_volumes import channel_record, prepare_channel_dest, write_sources
    from ..errors import PlanError
    from ..locations import is_remote

    if is_remote(args.dest):
        raise PlanError(
            "several channels go to a local folder each, listed by a sources.json; for an "
            "object store use --format ngff (one image with a channel axis)"
        )
    dest = os.path.abspath(args.dest)
    started = time.perf_counter()
    if not args.dry_run:
        _check_dest(dest)
        record = channel_record(channels, args.format)
        finished = prepare_channel_dest(
            dest, record, resume=args.resume or args.repair, overwrite=args.overwrite
        )
        if finished:
            print(
                f"precomputed-tif: {dest} already holds these {len(channels)} channels, "
                "converted with the same settings: nothing to do (--overwrite makes them again)",
                file=sys.stderr,
            )
            return 0
    for channel in channels:
        log.info("channel %s -> %s", channel.name, os.path.join(dest, channel.name))
        status = convert_one(channel.source, os.path.join(dest, channel.name), [], summary=False)
        if status != 0 or args.dry_run:
            if args.dry_run:
                print(f"(each of the {len(channels)} channels as above, one after another)")
            return status
    config = write_sources(dest, channels)
    if not quiet:
        x, y, z = channels[0].source.size
        seconds = time.perf_counter() - started
        size = x * y * z * channels[0].source.dtype.itemsize * len(channels)
        print(
            f"done in {seconds:.1f} s: {len(channels)} channels "
            f"({', '.join(c.name for c in channels)}), {size / 1e6:.1f} MB, "
            f"{size / 1e6 / max(seconds, 1e-6):.1f} MB/s"
        )
        print(f"serve and view them: precomputed-webserver --config {shlex.quote(config)} --viewer")
    return 0


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
    n_workers = args.n_cores
    usable = memory - PARENT_OVERHEAD - n_workers * WORKER_OVERHEAD
    while n_workers > 1 and usable // n_workers < 64 * 2**20:
        n_workers -= 1
        usable = memory - PARENT_OVERHEAD - n_workers * WORKER_OVERHEAD
    if usable <= 0:
        what = (
            f"--memory {args.memory_text or format_size(memory)}"
            if args.memory is not None
            else f"the free memory ({format_size(memory)})"
        )
        raise PlanError(
            f"{what} is too small: the processes alone need about "
            f"{format_size(PARENT_OVERHEAD + WORKER_OVERHEAD)}; give --memory 1G or more"
        )
    if n_workers < args.n_cores:
        if args.memory is not None:
            log.warning(
                "--memory %s allows %d worker(s), not %d", args.memory_text, n_workers, args.n_cores
            )
        else:
            log.warning(
                "the free memory (%s, half of what is available) allows %d worker(s), not %d; "
                "--memory sets the budget",
                format_size(memory),
                n_workers,
                args.n_cores,
            )
    task_bytes = min(usable // n_workers, DEFAULT_TASK_BYTES)
    if args.task_memory is not None:
        task_bytes = min(args.task_memory, usable // n_workers)
    return Budget(n_workers=n_workers, task_bytes=task_bytes)


class _Bars:
    """Progress by level: tqdm bars on a terminal, else one log line per finished level.

    A stage's levels share the screen (positions 0, 1, ...) and are closed together, in order,
    when the last finishes, so nothing stale is left below the prompt.
    """

    def __init__(self, enabled: bool, pyramid: Any) -> None:
        self.enabled = enabled
        self.pyramid = pyramid
        self.done: dict[int, int] = {}
        self.started: dict[int, float] = {}
        self.active: dict[int, Any] = {}

    def __call__(self, level: int, voxels: int, total: int) -> None:
        if level not in self.started:
            self.started[level] = time.perf_counter()
            self.done[level] = 0
            if self.enabled:
                self.active[level] = self._bar(level, total)
        self.done[level] += voxels
        bar = self.active.get(level)
        if bar is not None:
            bar.update(voxels)
        if self.done[level] >= total and voxels:
            self._finished(level)

    def _bar(self, level: int, total: int) -> Any:
        import tqdm  # looked up at call time: a front end may replace tqdm.tqdm

        return tqdm.tqdm(
            total=total,
            desc=_level_name(self.pyramid, level),
            unit="vox",
            unit_scale=True,
            position=len(self.active),
            leave=True,
            dynamic_ncols=True,
        )

    def _finished(self, level: int) -> None:
        elapsed = time.perf_counter() - self.started[level]
        if not self.enabled:
            x, y, z = self.pyramid.scale(level).size
            log.info(
                "%s written: %dx%dx%d voxels in %.1f s",
                _level_name(self.pyramid, level),
                x,
                y,
                z,
                elapsed,
            )
            return
        bar = self.active[level]
        bar.refresh()
        if all(self.done[lv] >= b.total for lv, b in self.active.items()):
            self.close()

    def close(self) -> None:
        for bar in self.active.values():
            bar.close()
        self.active.clear()

    @contextlib.contextmanager
    def showing(self) -> Iterator[None]:
        """While bars may show, route log records through tqdm so they do not tear the bars."""
        if not self.enabled:
            yield
            return
        import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        try:
            with logging_redirect_tqdm(tqdm_class=tqdm.tqdm):
                yield
        finally:
            self.close()


def _level_name(pyramid: Any, level: int) -> str:
    """The one way levels are named to users: ``level 3 (4_4_4)``."""
    return f"level {level} ({pyramid.scale(level).key})"


def _check_dest(dest: str) -> None:
    """A local --dest that cannot become a folder we write, said before any work."""
    from ..errors import PlanError

    if os.path.exists(dest) and not os.path.isdir(dest):
        raise PlanError(f"--dest {dest!r} is a file, not a folder: give a folder (made if missing)")
    parent = dest
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise PlanError(f"--dest {dest!r} lies under {parent!r}, which is a file, not a folder")
    flags = os.statvfs(parent).f_flag
    if flags & os.ST_RDONLY:
        raise PlanError(
            f"--dest {dest!r} is on a read-only file system: choose a folder on a writable disk"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PlanError(f"--dest {dest!r}: you may not write in {parent!r}: choose another folder")


def _interrupt_once() -> Any:
    """Ctrl-C raises KeyboardInterrupt once; later presses only say the run is stopping.

    The first press unwinds the run (the pool stops its workers at once); a second press must
    not interrupt that clean-up half way, which is what left runs hanging.
    """

    def again(signum: int, frame: Any) -> None:
        os.write(2, b"precomputed-tif: stopping...\n")

    def first(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, again)
        raise KeyboardInterrupt

    return signal.signal(signal.SIGINT, first)


def _summary(
    args: argparse.Namespace, dest: str, pyramid: Any, source: Any, seconds: float
) -> list[str]:
    """What a user wants after a run: time, speed, what each level holds, how to look at it."""
    from ..locations import is_remote

    x, y, z = source.size
    read = x * y * z * source.dtype.itemsize * source.num_channels
    lines = [
        f"done in {seconds:.1f} s: {read / 1e6:.1f} MB of {source.dtype.name} voxels, "
        f"{read / 1e6 / max(seconds, 1e-6):.1f} MB/s"
    ]
    if not is_remote(dest):
        total_bytes = total_files = 0
        for level in range(1, pyramid.n_levels + 1):
            # OME-Zarr names its levels 0, 1, ...; the other layouts by their scale keys
            folder = str(level - 1) if args.format == "ngff" else pyramid.scale(level).key
            n_bytes, n_files = _folder_usage(os.path.join(dest, folder))
            total_bytes += n_bytes
            total_files += n_files
            sx, sy, sz = pyramid.scale(level).size
            lines.append(
                f"  {_level_name(pyramid, level):<22} {sx}x{sy}x{sz:<8} "
                f"{format_size(n_bytes):>10} in {_files(n_files)}"
            )
        lines.append(
            f"  {'all levels':<22} {'':<14}{format_size(total_bytes):>10} in {_files(total_files)}"
        )
    lines.append(f"serve and view it: {_serve_command(dest)}")
    return lines


def _files(n: int) -> str:
    return "1 file" if n == 1 else f"{n} files"


def _serve_command(dest: str) -> str:
    return f"precomputed-webserver -d {shlex.quote(dest)} --viewer"


def _folder_usage(folder: str) -> tuple[int, int]:
    n_bytes = n_files = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                n_bytes += os.path.getsize(os.path.join(root, name))
                n_files += 1
    return n_bytes, n_files


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        planes = [e for e in extra if e.lower().endswith((".tif", ".tiff")) or os.path.isfile(e)]
        if planes and args.source is not None:
            example = os.path.join(os.path.dirname(args.source[-1]) or ".", "*.tif")
            parser.error(
                f"--source got {len(planes) + 1} file names: the shell expanded the glob; quote "
                f"the glob, e.g. --source '{example}'"
            )
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.source is not None and args.example:
        parser.error("give --source or --example, not both")
    if args.verify is None and args.dest is None:
        parser.error("the following arguments are required: --dest")
    args.memory_text = _memory_text(argv)
    return args


def _memory_text(argv: list[str] | None) -> str:
    """--memory as the user typed it, to echo back (1K, not "0M")."""
    words = list(sys.argv[1:] if argv is None else argv)
    for i, word in enumerate(words):
        if word == "--memory" and i + 1 < len(words):
            return words[i + 1]
        if word.startswith("--memory="):
            return word.split("=", 1)[1]
    return ""


MAX_PROBLEMS_SHOWN = 100


def _verify(args: argparse.Namespace) -> int:
    """``--verify DEST``: the verdict on one line, then what is missing or damaged; a folder of
    channels (``DEST/sources.json``) is verified channel by channel."""
    from ..channel_volumes import listed_volumes
    from ..channels import open_channels, stack_channels
    from ..errors import PlanError

    channels = None
    if args.source is not None:
        channels = open_channels(args.source, names=args.channel_names, order=args.order)
    volumes = listed_volumes(args.verify)
    if volumes is None:
        source = None
        if channels is not None:
            source = channels[0].source if len(channels) == 1 else stack_channels(channels)
        return _verify_one(args, args.verify, source, "")
    if channels is not None and [c.name for c in channels] != [n for n, _ in volumes]:
        raise PlanError(
            f"--source gives channels {', '.join(c.name for c in channels)}; {args.verify!r} "
            f"holds {', '.join(n for n, _ in volumes)} (see --channel-names)"
        )
    status = 0
    for i, (name, folder) in enumerate(volumes):
        source = channels[i].source if channels is not None else None
        status = max(status, _verify_one(args, folder, source, f"channel {name}: "))
    return status


def _verify_one(args: argparse.Namespace, dest: str, source: Any, prefix: str) -> int:
    from .. import open_store
    from ..errors import PlanError
    from ..executors import process_pool
    from ..verify import verify_store

    store = open_store(dest)
    if source is not None and source.size != store.pyramid.scale(1).size:
        raise PlanError(
            f"--source holds {'x'.join(map(str, source.size))} voxels; the volume at "
            f"{dest!r} holds {'x'.join(map(str, store.pyramid.scale(1).size))}"
        )
    if source is not None and source.num_channels != store.pyramid.num_channels:
        raise PlanError(
            f"--source holds {source.num_channels} channels; the volume at {dest!r} holds "
            f"{store.pyramid.num_channels}"
        )
    with process_pool(max(1, args.n_cores)) as pool:
        report = verify_store(store, executor=pool, source=source)
    print(prefix + report.verdict)
    for problem in report.problems[:MAX_PROBLEMS_SHOWN]:
        print(f"  {problem}")
    if len(report.problems) > MAX_PROBLEMS_SHOWN:
        print(f"  ... and {len(report.problems) - MAX_PROBLEMS_SHOWN} more")
    return 0 if report.ok else 1


def main(argv: list[str] | None = None, *, in_process: bool = False) -> int:
    """The command line; `in_process` (`precomputed_tif.main.main`) lets errors and Ctrl-C
    reach the caller as exceptions, and shows progress by iterating ``tqdm.tqdm``."""
    args = _parse(argv)
    setup_logging(args.log)
    if args.verify is not None:
        verify = lambda: _verify(args)  # noqa: E731
        return verify() if in_process else run_command(verify, "precomputed-tif")
    command = sys.argv[1:] if argv is None else list(argv)
    quiet = logging.getLogger("precomputed_tif").getEffectiveLevel() > logging.INFO

    dask: Any = None
    budget: Any = None

    def work() -> int:
        nonlocal dask, budget
        from ..channels import open_channels, stack_channels
        from ..errors import PlanError

        if args.dask_scheduler or args.dask_workers:
            from ..executors import DaskExecutor

            per_worker = args.memory
            if per_worker is not None and args.dask_workers:
                per_worker = per_worker // args.dask_workers
            dask = DaskExecutor(args.dask_scheduler, args.dask_workers, per_worker)
            budget = _dask_budget(args, dask, per_worker)
        else:
            budget = _budget(args)
            if not args.dry_run:
                from ..executors import start_pool_server_early

                start_pool_server_early()
        if args.example:
            from ..example import example_planes

            args.source = [example_planes()]
        if (args.source is None) == (args.shape is None):
            raise PlanError(
                "give --source (a quoted glob of TIFF planes), --example, or with --dry-run "
                "--shape X,Y,Z"
            )
        if args.channel_names is not None and args.source is None:
            raise PlanError("--channel-names names the channels of --source")
        channels = None
        if args.shape is not None:
            if not args.dry_run:
                raise PlanError("--shape plans a stack that does not exist: add --dry-run")
            source = _shape_source(args.shape, args.dtype)
        else:
            channels = open_channels(args.source, names=args.channel_names, order=args.order)
            source = channels[0].source if len(channels) == 1 else stack_channels(channels)
        args.voxel_size = _voxel_size_um(args.voxel_size, channels[0].source if channels else None)
        try:
            if channels is not None and len(channels) > 1 and not _one_volume(args, source):
                return _separate_channels(args, channels, one, quiet)
            names = [c.name for c in channels] if channels and len(channels) > 1 else []
            return one(source, args.dest, names, summary=True)
        finally:
            if dask is not None:  # after every channel: one cluster serves them all
                dask.__exit__(None, None, None)

    def one(source: Any, dest_arg: str, channel_names: list[str], *, summary: bool) -> int:
        """Convert `source` into `dest_arg`; the status a run of it would exit with."""
        from .. import convert, create_store, plan_pyramid
        from ..convert import iter_convert
        from ..errors import AlreadyConvertedError, PlanError
        from ..executors import process_pool
        from ..locations import is_remote
        from ._tqdm_loop import drive_with_tqdm

        voxel_size_nm = tuple(_nanometres(v) for v in args.voxel_size)
        pyramid = plan_pyramid(
            source.size,
            source.dtype.name,
            voxel_size_nm=voxel_size_nm,  # type: ignore[arg-type]
            chunk_size=args.chunk_size,
            levels=args.levels,
            segmentation=args.segmentation,
            encoding=args.encoding if args.format == "precomputed" else "raw",
            factors=args.factors,
            downsampling=args.downsample,
        )
        if source.num_channels > 1:
            pyramid = _with_channels(pyramid, source.num_channels, args)
        x, y, z = source.size
        log.info(
            "%d planes of %dx%d %s -> %s, %d levels, format %s",
            z,
            x,
            y,
            source.dtype.name,
            dest_arg,
            pyramid.n_levels,
            args.format,
        )
        if args.format == "ngff" and (args.encoding != "raw" or args.gzip):
            raise PlanError(
                "--encoding and --gzip apply to --format precomputed only; --format ngff writes "
                "Blosc-zstd chunks and takes --sharded, --chunk-size, --levels and --segmentation"
            )
        if args.format not in ("precomputed", "ngff") and (
            args.encoding != "raw" or args.gzip or args.sharded
        ):
            raise PlanError(
                "--encoding and --gzip apply to --format precomputed only, --sharded to "
                "--format precomputed and ngff"
            )
        if args.sharded and args.gzip:
            raise PlanError("--gzip is for unsharded files: shards compress their chunks already")
        if args.shard_data_encoding != "gzip" and not args.sharded:
            raise PlanError("--shard-data-encoding applies to --sharded output only")
        if args.sharded and args.format == "ngff":
            if args.shard_data_encoding != "gzip":
                raise PlanError(
                    "--shard-data-encoding applies to --format precomputed; ngff shards hold "
                    "Blosc-zstd chunks"
                )
            pyramid = pyramid.zarr_sharded(budget.task_bytes)
        elif args.sharded:
            pyramid = pyramid.sharded(budget.task_bytes, args.shard_data_encoding)
        remote = is_remote(dest_arg)
        dest = dest_arg if remote else os.path.abspath(dest_arg)
        if not remote and not args.dry_run:
            _check_dest(dest)
        store = create_store(args.format, dest, pyramid, gzip_files=args.gzip)
        if channel_names and args.format == "ngff":
            store = dataclasses.replace(store, channel_names=tuple(channel_names))  # type: ignore[call-arg]
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
            return 0
        if in_process:
            pool = _lent(dask) if dask is not None else process_pool(budget.n_workers)
            with pool as executor:
                stage_runs = iter_convert(
                    source,
                    store,
                    executor=executor,
                    budget=budget,
                    resume=args.resume,
                    overwrite=args.overwrite,
                    repair=args.repair,
                )
                # the caller's own logging set-up (if any) does not hide the bars; --log does
                show = logging.getLevelName(args.log) <= logging.INFO
                try:
                    drive_with_tqdm(stage_runs, show=show)
                except AlreadyConvertedError as exc:
                    log.info("%s", exc)  # finding the work done is success, as on the CLI
            return 0
        bars = _Bars(sys.stderr.isatty() and not quiet, pyramid)
        started = time.perf_counter()
        previous_handler = _interrupt_once()
        interrupted = False
        try:
            pool = _lent(dask) if dask is not None else process_pool(budget.n_workers)
            with bars.showing(), pool as executor:
                convert(
                    source,
                    store,
                    executor=executor,
                    budget=budget,
                    resume=args.resume,
                    overwrite=args.overwrite,
                    repair=args.repair,
                    progress=bars,
                )
        except AlreadyConvertedError as exc:
            print(f"precomputed-tif: {exc}", file=sys.stderr)
            if not quiet and summary:
                print(f"serve and view it: {_serve_command(dest)}")
            return 0
        except KeyboardInterrupt:
            # later presses are absorbed while Python exits: ignored, not handled, because
            # Python's finalization restores the default for handled signals (killing us)
            interrupted = True
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            again = [*command, "--resume"] if "--resume" not in command else command
            print(
                "precomputed-tif: interrupted; the volume is incomplete. To finish it, run: "
                + shlex.join(["precomputed-tif", *again]),
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
        except OSError as exc:
            if remote or exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR):
                raise
            raise PlanError(describe_os_error(exc, f"--dest {dest_arg!r}")) from exc
        finally:
            if not interrupted:
                signal.signal(signal.SIGINT, previous_handler)
        if args.gzip:
            from ..stores.precomputed import gzip_note

            log.info("--gzip: %s", gzip_note(dest))
        if not quiet and summary:
            print("\n".join(_summary(args, dest, pyramid, source, time.perf_counter() - started)))
        return 0

    return work() if in_process else run_command(work, "precomputed-tif")


if __name__ == "__main__":
    sys.exit(main())
