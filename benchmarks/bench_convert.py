#!/usr/bin/env python3
"""Conversion benchmark: precomputed-tif against TensorStore, CloudVolume, the I/O floor and,
optionally, the original precomputed-tif.

usage: bench_convert.py [--x 1024 --y 1024 --z 256] [--workdir DIR] [--stack DIR]
                        [--original VENV_BIN] [--formats tiff,zarr,blockfs] [--repeat 1]
                        [--levels N] [--n-cores N] [--only ROWS] [--keep] [--settle S]
                        [--delete-each]

Makes the stack with make_stack.py (cached in the workdir), warms the page cache by reading every
plane once, then runs each contender as its own subprocess, round after round (every contender
once per round, so a round's ratios compare runs made minutes apart), measuring wall time and the
peak RSS of its whole process tree (see _measure.py). Prints the best round, then every ratio per
round with its median and spread, then one JSON line with every figure.
The TensorStore and CloudVolume outputs, and ours in --format precomputed, are checked against a
numpy reference computed from the planes (one level-1 chunk, one level-3 chunk); a mismatch is
printed loudly.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

# isort: split
from _measure import RunResult, last_json, run_measured, tree_size
from _stack import (
    CHUNK,
    XYZ,
    default_levels,
    level_sizes,
    list_planes,
    pyramid_bytes,
    reference_chunk,
    stack_shape,
)

HERE = Path(__file__).resolve().parent
FORMATS = ("tiff", "zarr", "blockfs")  # the default --formats
# every --formats name: our precomputed-tif flags for it
FORMAT_FLAGS = {
    "tiff": ["--format", "tiff"],
    "zarr": ["--format", "zarr"],
    "blockfs": ["--format", "blockfs"],
    "precomputed": ["--format", "precomputed"],
    "precomputed-sharded": ["--format", "precomputed", "--sharded"],
    # one gzipped file per chunk: what the gzip shards cost over files of the same bytes
    "precomputed-gzip": ["--format", "precomputed", "--gzip"],
    # OME-Zarr; both rows with the same task memory, so their shards and tasks compare
    "ngff": ["--format", "ngff", "--task-memory", "{ngff_task_memory}"],
    "ngff-sharded": ["--format", "ngff", "--sharded", "--task-memory", "{ngff_task_memory}"],
    "precomputed-sharded-raw": [
        *("--format", "precomputed", "--sharded", "--shard-data-encoding", "raw"),
    ],
    # --factors auto on a light-sheet voxel size (z kept at first: 2_2_1, 4_4_1, 8_8_2, ...),
    # against the same format with the default 2,2,2 (more voxels per level, other stages)
    "auto-blockfs": ["--format", "blockfs", "--factors", "auto", "--voxel-size", "0.66,0.66,2.0"],
    "auto-precomputed": [
        *("--format", "precomputed", "--factors", "auto", "--voxel-size", "0.66,0.66,2.0"),
    ],
    # the same tasks on a local Dask cluster of 2 worker processes (its overhead vs the pool)
    "blockfs-dask2": ["--format", "blockfs", "--dask-workers", "2"],
    # ... and on a cluster already running (as on a lab's cluster): no start-up in the figure;
    # its 2 workers live in this benchmark's process tree, so the row's peak RSS is the client's
    "blockfs-dask-running": ["--format", "blockfs", "--dask-scheduler", "{scheduler}"],
    # three channels (the stack given three times, as a, b, c): compared with the one-channel
    # row of its format, the target being at most 3.3x (1.1x per channel)
    "ngff-3ch": ["--format", "ngff", "--task-memory", "{ngff_task_memory}"],
    "zarr-3ch": ["--format", "zarr"],
}
CHANNELS = 3
ORIGINAL_FORMATS = ("tiff", "zarr", "blockfs")  # the original has no --format precomputed
# the TensorStore row each row's "vs TS" compares with (default: tensorstore); TensorStore's
# gzip shards take minutes (its gzip level is fixed and slow), so the sharded rows are compared
# with its raw shards, and its gzip row runs only when named in --only
TS_PEER = {
    "ours-precomputed-sharded": "tensorstore-sharded",
    "ours-precomputed-sharded-raw": "tensorstore-sharded",
    "tensorstore-sharded": None,
    "tensorstore-sharded-gzip": None,
    "ours-ngff": "tensorstore-zarr3",  # one file per chunk, as ours
    "ours-ngff-sharded": "tensorstore-zarr3-sharded",
    "tensorstore-zarr3": None,
    "tensorstore-zarr3-sharded": None,
}
OPT_IN_ROWS = ("tensorstore-sharded-gzip",)
NGFF_TASK_MEMORY = "128M"
ROUNDINGS = ("floor", "nearest")


@dataclass
class Contender:
    name: str
    argv: list[str] | None  # None: skipped
    skip_reason: str = ""
    env: dict[str, str] | None = None  # None: ours
    out: Path | None = None
    fmt: str | None = None  # for ours and the original
    check: bool = False  # compare chunks with the numpy reference
    runs: list[RunResult] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    files: int = 0
    out_bytes: int = 0
    details: list[dict[str, Any]] = field(default_factory=list)  # the recipes' JSON, per run

    def best_index(self) -> int | None:
        ok = [i for i, r in enumerate(self.runs) if r.ok]
        return min(ok, key=lambda i: self.runs[i].wall_s) if ok else None

    def best(self) -> RunResult | None:
        i = self.best_index()
        return None if i is None else self.runs[i]

    def median_wall(self) -> float | None:
        walls = [r.wall_s for r in self.runs if r.ok]
        return float(statistics.median(walls)) if walls else None


# ---------------------------------------------------------------------------------------------
# setup


def ensure_stack(workdir: Path, x: int, y: int, z: int) -> Path:
    """The cached stack for this size (made with make_stack.py on first use)."""
    stack = workdir / f"stack_{x}x{y}x{z}"
    marker = stack / ".complete"
    if not marker.exists():
        if stack.exists():
            shutil.rmtree(stack)
        print(f"making the stack in {stack} ...", flush=True)
        cmd = [sys.executable, str(HERE / "make_stack.py"), str(stack)]
        subprocess.run([*cmd, "--x", str(x), "--y", str(y), "--z", str(z)], check=True)
        marker.write_text("ok\n")
    return stack


def warm_page_cache(planes: list[str]) -> float:
    t0 = time.perf_counter()
    buf = bytearray(1 << 22)
    for path in planes:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
    return time.perf_counter() - t0


def have(*modules: str) -> list[str]:
    """The modules among `modules` that cannot be imported here."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def find_ours(explicit: str | None, cwd: Path) -> tuple[list[str] | None, str]:
    """The command for our precomputed-tif, and a note on where it was found."""
    if explicit:
        return [explicit], explicit
    beside = Path(sys.executable).parent / "precomputed-tif"
    if beside.exists():
        return [str(beside)], str(beside)
    on_path = shutil.which("precomputed-tif")
    if on_path:
        return [on_path], on_path
    probe = subprocess.run(
        [sys.executable, "-m", "precomputed_tif", "--help"],
        cwd=cwd,
        capture_output=True,
        check=False,
    )
    if probe.returncode == 0:
        return [sys.executable, "-m", "precomputed_tif"], "python -m precomputed_tif"
    return None, "skipped: precomputed-tif not found (not on PATH, no python -m precomputed_tif)"


def compile_ours() -> None:
    """Byte-compile our package where this interpreter imports it from, as ``pip install`` does.

    An editable install under ``PYTHONDONTWRITEBYTECODE`` (or ``python -B``) keeps no ``.pyc``,
    so every run, and every worker, would compile the package again: 0.4 s of a 3 s run at S
    that no installed peer pays.
    """
    import compileall

    spec = importlib.util.find_spec("precomputed_tif")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            compileall.compile_dir(folder, quiet=1)


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def ngff_shards(size: XYZ, dtype: np.dtype, levels: int, task_memory: str) -> str:
    """The shard shapes (x,y,z per level, ';'-joined) ours writes with this task memory."""
    from precomputed_tif import plan_pyramid
    from precomputed_tif.cli._common import parse_size

    pyramid = plan_pyramid(
        size, dtype.name, voxel_size_nm=(1000, 1000, 1000), chunk_size=(CHUNK,) * 3, levels=levels
    ).zarr_sharded(parse_size(task_memory))
    return ";".join(",".join(map(str, s.shard_size or ())) for s in pyramid.scales)


# ---------------------------------------------------------------------------------------------
# the correctness check


def read_chunk(root: Path, level: int, start: XYZ, stop: XYZ, dtype: np.dtype) -> np.ndarray | None:
    """A chunk of a raw-encoded precomputed output as (z, y, x), sharded or not, or of an
    OME-Zarr output (5-D, t and c of size 1; read through TensorStore).

    The scale is the level-th one listed in the info (keys differ between writers). Unsharded:
    the chunk file itself. Sharded: read through TensorStore (which also checks the sharding).
    """
    if (root / "zarr.json").exists() or (root / ".zattrs").exists():
        import tensorstore as ts

        driver = "zarr3" if (root / "zarr.json").exists() else "zarr"
        spec = {"driver": driver, "kvstore": {"driver": "file", "path": f"{root}/{level - 1}/"}}
        array = ts.open(spec, read=True).result()
        region = array[0, 0, start[2] : stop[2], start[1] : stop[1], start[0] : stop[0]]
        return np.asarray(region.read().result())
    info = json.loads((root / "info").read_text())
    scale = info["scales"][level - 1]
    if "sharding" not in scale:
        name = f"{start[0]}-{stop[0]}_{start[1]}-{stop[1]}_{start[2]}-{stop[2]}"
        path = root / scale["key"] / name
        zipped = path.with_name(name + ".gz")  # --gzip: CloudVolume's name for a gzipped chunk
        if zipped.exists():
            data = np.frombuffer(gzip.decompress(zipped.read_bytes()), dtype=dtype)
        elif path.exists():
            data = np.fromfile(path, dtype=dtype)
        else:
            return None
        shape = (stop[2] - start[2], stop[1] - start[1], stop[0] - start[0])
        if data.size != math.prod(shape):
            raise ValueError(f"{path}: {data.size} voxels, expected {math.prod(shape)}")
        return data.reshape(shape)
    import tensorstore as ts

    store = ts.open(
        {
            "driver": "neuroglancer_precomputed",
            "kvstore": {"driver": "file", "path": str(root)},
            "scale_index": level - 1,
        },
        read=True,
    ).result()
    o = store.domain.origin
    box = store[
        o[0] + start[0] : o[0] + stop[0],
        o[1] + start[1] : o[1] + stop[1],
        o[2] + start[2] : o[2] + stop[2],
        0,
    ]
    return np.ascontiguousarray(box.read().result().T)


class Reference:
    """Reference chunks from the planes, computed once per (level, chunk, rounding)."""

    def __init__(self, planes: list[str], size: XYZ, levels: int) -> None:
        self.planes = planes
        self.size = size
        sizes = level_sizes(size, levels)
        grid1 = [-(-s // CHUNK) for s in sizes[0]]
        # level 1: a chunk in the middle; level 3: the last chunk (covers odd edges, if any)
        self.targets: list[tuple[int, XYZ]] = [(1, (grid1[0] // 2, grid1[1] // 2, grid1[2] // 2))]
        if levels >= 3:
            grid3 = [-(-s // CHUNK) for s in sizes[2]]
            self.targets.append((3, (grid3[0] - 1, grid3[1] - 1, grid3[2] - 1)))
        self._cache: dict[tuple[int, XYZ, str], tuple[XYZ, XYZ, np.ndarray]] = {}

    def get(self, level: int, index: XYZ, rounding: str) -> tuple[XYZ, XYZ, np.ndarray]:
        key = (level, index, rounding)
        if key not in self._cache:
            self._cache[key] = reference_chunk(self.planes, self.size, level, index, rounding)
        return self._cache[key]

    def check(self, root: Path, dtype: np.dtype) -> tuple[bool, str]:
        """Compare the target chunks of a raw precomputed output; (all ok, summary)."""
        notes = []
        ok = True
        for level, index in self.targets:
            start, stop, _ = self.get(level, index, "floor")
            got = read_chunk(root, level, start, stop, dtype)
            if got is None:
                ok = False
                notes.append(f"L{level}{list(index)}: chunk file missing")
                continue
            matched = None
            worst = ""
            for rounding in ROUNDINGS:
                ref = self.get(level, index, rounding)[2]
                if ref.shape == got.shape and np.array_equal(ref, got):
                    matched = rounding
                    break
                if ref.shape != got.shape:
                    worst = f"shape {got.shape} != {ref.shape}"
                else:
                    diff = np.abs(ref.astype(np.int64) - got.astype(np.int64))
                    worst = f"{int((diff > 0).sum())} voxels differ, max |diff| {int(diff.max())}"
            if matched is None:
                ok = False
                notes.append(f"L{level}{list(index)}: MISMATCH ({worst})")
            elif level == 1:
                notes.append(f"L{level} ok")
            else:
                notes.append(f"L{level} ok ({matched})")
        return ok, ", ".join(notes)


# ---------------------------------------------------------------------------------------------
# running


# when the last run ended or output was deleted (time.monotonic()): `settle` counts from it
_last_quiet_start = -math.inf


def remove_output(path: Path) -> None:
    global _last_quiet_start
    shutil.rmtree(path, ignore_errors=True)
    _last_quiet_start = time.monotonic()


class SpentOutputs:
    """Outputs of finished runs, moved aside (a rename frees no inode) and deleted when the
    benchmark ends, while the disk keeps `reserve_bytes` free; past that, deleted at once.

    Deleting thousands of files makes ext4 without a journal skip and check each freed inode for
    minutes when it next allocates nearby (`settle`): a cost of the benchmark's own clean-up, paid
    by whichever run comes next, and by no conversion into a fresh folder.
    """

    def __init__(self, folder: Path, reserve_bytes: int, delete_each: bool) -> None:
        self.folder, self.reserve_bytes, self.delete_each = folder, reserve_bytes, delete_each
        self.count = 0

    def put(self, path: Path) -> None:
        if not path.exists():
            return
        if not self.delete_each and shutil.disk_usage(path.parent).free < self.reserve_bytes:
            self.delete_each = True
            print(f"  (disk nearly full: outputs are deleted after each run from {path.name} on)")
        if self.delete_each:
            remove_output(path)
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self.count += 1
        path.rename(self.folder / f"{self.count:04d}-{path.name}")

    def clear(self) -> None:
        if self.folder.exists():
            remove_output(self.folder)


def settle(settle_s: float) -> None:
    """Flush, then wait until `settle_s` have passed since the last run ended or the last output
    was deleted: every run starts after the same pause.

    ext4 without a journal (this VM's disk; some clusters' scratch) will not reuse an inode freed
    in the last 5 s (300 s while its inode-table block is dirty), and checks every such inode it
    passes when it allocates one. A run started right after the previous run's thousands of files
    were deleted spent 15% of its CPU in that scan (perf: `recently_deleted`,
    `find_get_block_common`, zarr at S), a cost of the benchmark's own clean-up that no conversion
    into a fresh folder pays. After `sync` the blocks are clean, so 5 s is enough for the last
    deletion; inodes freed in the 300 s before it count again once a run dirties their block, which
    is why finished outputs are moved aside rather than deleted (`SpentOutputs`).
    """
    os.sync()  # also: no dirty pages from the previous run are flushed on this run's time
    wait = settle_s - (time.monotonic() - _last_quiet_start)
    if wait > 0:
        time.sleep(wait)


def run_one(c: Contender, timeout_s: float, cwd: Path, settle_s: float) -> RunResult:
    global _last_quiet_start
    assert c.argv is not None and c.out is not None
    if c.out.exists():
        remove_output(c.out)
    if c.name.startswith(("ours", "original")):
        c.out.parent.mkdir(parents=True, exist_ok=True)
    else:
        c.out.mkdir(parents=True)
    settle(settle_s)
    print(f"  running {c.name} ...", end=" ", flush=True)
    result = run_measured(c.argv, cwd=cwd, env=c.env, timeout_s=timeout_s)
    _last_quiet_start = time.monotonic()
    if result.ok:
        print(f"{result.wall_s:.2f} s, {result.peak_rss_mib:.0f} MiB", flush=True)
    else:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        print(f"FAILED (exit {result.returncode})", flush=True)
        for line in tail:
            print(f"    | {line}", flush=True)
    return result


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def peers_of(c: Contender, by_name: dict[str, Contender]) -> list[str]:
    """The rows an `ours-*` row is compared with, round by round."""
    if not c.name.startswith("ours-"):
        return []
    peers = [f"original-{c.fmt}", TS_PEER.get(c.name, "tensorstore") or "", "floor"]
    if c.name.startswith("ours-precomputed-sharded"):
        peers.append("ours-precomputed")  # what sharding costs over one file per chunk
    if c.name == "ours-precomputed-sharded":
        peers.append("ours-precomputed-gzip")  # ... over one file per chunk, gzipped the same
    if c.name.startswith("ours-auto-"):
        peers.append(c.name.replace("auto-", ""))  # what --factors auto costs over 2,2,2
    if c.name.endswith("-3ch"):
        peers.append(c.name.removesuffix("-3ch"))  # per channel: this ratio / CHANNELS
    return [p for p in peers if p in by_name and any(r.ok for r in by_name[p].runs)]


def round_ratios(c: Contender, peer: Contender) -> list[float | None]:
    """wall(c) / wall(peer) in each round both ran in (None where either failed)."""
    return [
        a.wall_s / b.wall_s if a.ok and b.ok and b.wall_s else None
        for a, b in zip(c.runs, peer.runs)
    ]


def spread(values: list[float | None]) -> str:
    ok = [v for v in values if v is not None]
    if not ok:
        return "-"
    rounds = ", ".join("-" if v is None else f"{v:.2f}" for v in values)
    if len(ok) == 1:
        return rounds
    return f"{rounds}  (median {statistics.median(ok):.2f}, {min(ok):.2f}-{max(ok):.2f})"


def fmt_ratio(r: float | None) -> str:
    return f"{r:.2f}x" if r is not None else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--x", type=int, default=1024)
    ap.add_argument("--y", type=int, default=1024)
    ap.add_argument("--z", type=int, default=256)
    ap.add_argument("--workdir", type=Path, default=None, help="default: a new temporary folder")
    ap.add_argument("--stack", type=Path, default=None, help="use this folder of planes as is")
    ap.add_argument("--original", default=None, help="bin folder of a venv holding the original")
    ap.add_argument("--ours", default=None, help="our precomputed-tif executable (default: found)")
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--levels", type=int, default=None, help="default: until one chunk")
    ap.add_argument("--n-cores", type=int, default=None, help="passed to precomputed-tif")
    ap.add_argument("--timeout", type=float, default=3600.0, help="per run, seconds")
    ap.add_argument(
        "--only",
        default=None,
        help="run only these rows, comma-separated (e.g. tensorstore,ours-precomputed)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the outputs")
    ap.add_argument(
        "--delete-each",
        action="store_true",
        help="delete each output right after its run (default: moved aside, deleted at the end "
        "while the disk has room; see SpentOutputs)",
    )
    ap.add_argument(
        "--settle",
        type=float,
        default=6.0,
        help="seconds between a run's end (or deleting an output) and the next run (see settle)",
    )
    a = ap.parse_args()

    formats = [f.strip() for f in a.formats.split(",") if f.strip()]
    unknown = set(formats) - set(FORMAT_FLAGS)
    if unknown:
        raise SystemExit(f"unknown formats: {sorted(unknown)}")
    workdir = (a.workdir or Path(tempfile.mkdtemp(prefix="bench_convert_"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    outroot = workdir / "out"

    stack = a.stack.resolve() if a.stack else ensure_stack(workdir, a.x, a.y, a.z)
    pattern = str(stack / "*.tif")
    planes = list_planes(pattern)
    size, dtype = stack_shape(planes)
    levels = a.levels if a.levels is not None else default_levels(size)
    warm_s = warm_page_cache(planes)
    raw_pyramid_bytes = pyramid_bytes(size, levels, dtype.itemsize)
    print(
        f"stack {size[0]}x{size[1]}x{size[2]} {dtype.name}, {len(planes)} planes, "
        f"{levels} levels, pyramid {raw_pyramid_bytes / 2**20:.0f} MiB"
        f"; page cache warmed in {warm_s:.2f} s; {os.cpu_count()} CPUs",
        flush=True,
    )

    py = sys.executable
    lv = ["--levels", str(levels)]
    contenders: list[Contender] = []

    def recipe(name: str, script: str, modules: tuple[str, ...], extra: list[str]) -> None:
        missing = have(*modules)
        out = outroot / name
        if missing:
            reason = f"skipped: not installed ({', '.join(missing)})"
            contenders.append(Contender(name, None, reason))
        else:
            argv = [py, str(HERE / script), pattern, str(out), *extra]
            contenders.append(Contender(name, argv, out=out, check=name != "floor"))

    recipe("tensorstore", "recipe_tensorstore.py", ("tensorstore",), lv)
    sharded = [*lv, "--sharded", "--shard-data-encoding"]
    recipe("tensorstore-sharded", "recipe_tensorstore.py", ("tensorstore",), [*sharded, "raw"])
    ts_gzip = [*sharded, "gzip"]
    recipe("tensorstore-sharded-gzip", "recipe_tensorstore.py", ("tensorstore",), ts_gzip)
    if any(f.startswith("ngff") for f in formats):
        shards = ngff_shards(size, dtype, levels, NGFF_TASK_MEMORY)
        zarr3 = ("tensorstore", "precomputed_tif")
        recipe("tensorstore-zarr3", "recipe_tensorstore_zarr3.py", zarr3, [*lv, "--shards", "none"])
        recipe(
            "tensorstore-zarr3-sharded",
            "recipe_tensorstore_zarr3.py",
            ("tensorstore", "precomputed_tif"),
            [*lv, "--shards", shards],
        )
    recipe("cloudvolume", "recipe_cloudvolume.py", ("cloudvolume", "tinybrain"), lv)
    recipe("floor", "recipe_floor.py", (), lv)

    cores = ["--n-cores", str(a.n_cores)] if a.n_cores else []
    ours_cmd, ours_note = find_ours(a.ours, workdir)
    compile_ours()
    for f in formats:
        name = f"ours-{f}"
        if ours_cmd is None:
            contenders.append(Contender(name, None, ours_note, fmt=f))
            continue
        out = outroot / name
        flags = [v.replace("{ngff_task_memory}", NGFF_TASK_MEMORY) for v in FORMAT_FLAGS[f]]
        sources = ["--source", pattern]
        if f.endswith("-3ch"):
            names = ",".join("abcdefgh"[:CHANNELS])
            sources = [*sources * CHANNELS, "--channel-names", names]
        argv = [*ours_cmd, *sources, "--dest", str(out), *flags, *lv, *cores]
        # the same data as the peers': check them (a channel row holds other arrays)
        check = f.startswith(("precomputed", "ngff")) and not f.endswith("-3ch")
        contenders.append(Contender(name, argv, out=out, fmt=f, check=check))
    if a.original:
        exe = Path(a.original) / "precomputed-tif"
        for f in formats:
            name = f"original-{f}"
            if f not in ORIGINAL_FORMATS:
                continue
            if not exe.exists():
                contenders.append(Contender(name, None, f"skipped: {exe} not found", fmt=f))
                continue
            out = outroot / name
            argv = [str(exe), "--source", pattern, "--dest", str(out), "--format", f, *lv, *cores]
            # its own venv's packages only: a PYTHONPATH that points at ours would shadow it
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            contenders.append(Contender(name, argv, out=out, fmt=f, env=env))

    if a.only:
        only = {r.strip() for r in a.only.split(",") if r.strip()}
        unknown_rows = only - {c.name for c in contenders}
        if unknown_rows:
            raise SystemExit(f"--only: unknown rows {sorted(unknown_rows)} (add --formats?)")
        contenders = [c for c in contenders if c.name in only]
    else:
        contenders = [c for c in contenders if c.name not in OPT_IN_ROWS]

    cluster = None
    if any("{scheduler}" in (c.argv or []) for c in contenders):
        from distributed import LocalCluster

        cluster = LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        )
        for c in contenders:
            if c.argv is not None:
                c.argv = [cluster.scheduler_address if v == "{scheduler}" else v for v in c.argv]

    reference = Reference(planes, size, levels)
    mismatches = []
    # room for the next run's output (at most the raw pyramid) twice over, and 2 GiB besides
    reserve = 2 * raw_pyramid_bytes + (2 << 30)
    spent = SpentOutputs(workdir / "spent", reserve, a.delete_each)
    spent.clear()  # a killed benchmark's
    for rep in range(a.repeat):
        print(f"round {rep + 1}/{a.repeat}", flush=True)
        for c in contenders:
            if c.argv is None:
                continue
            assert c.out is not None
            result = run_one(c, a.timeout, workdir, a.settle)
            c.runs.append(result)
            c.details.append(last_json(result.stdout) if result.ok else {})
            if result.ok:
                c.files, c.out_bytes = tree_size(c.out) if c.out.exists() else (0, 0)
                if c.check:
                    ok, note = reference.check(c.out, dtype)
                    c.checks.append(note)
                    if not ok:
                        mismatches.append(f"{c.name}: {note}")
                        print(f"\n!!!!! {c.name}: OUTPUT MISMATCH: {note} !!!!!\n", flush=True)
            if not a.keep:
                spent.put(c.out)

    if cluster is not None:
        cluster.close()
    spent.clear()
    report(contenders, size, levels, dtype, mismatches, ours_note, a, workdir)


def report(
    contenders: list[Contender],
    size: XYZ,
    levels: int,
    dtype: np.dtype,
    mismatches: list[str],
    ours_note: str,
    a: argparse.Namespace,
    workdir: Path,
) -> None:
    by_name = {c.name: c for c in contenders}

    def wall(name: str) -> float | None:
        c = by_name.get(name)
        best = c.best() if c else None
        return best.wall_s if best else None

    def ts_wall(name: str) -> float | None:
        peer = TS_PEER.get(name, "tensorstore")
        return wall(peer) if peer and peer != name else None

    floor_wall = wall("floor")
    header = (
        f"{'name':<26}{'wall s':>8}{'peak MiB':>10}{'files':>8}{'out MiB':>9}"
        f"{'vs TS':>8}{'vs orig':>9}{'vs floor':>10}  notes"
    )
    print()
    print(header)
    print("-" * len(header))
    rows: dict[str, Any] = {}
    for c in contenders:
        best_i = c.best_index()
        if c.argv is None or best_i is None:
            reason = c.skip_reason
            if c.argv is not None:
                reason = f"failed (exit {c.runs[-1].returncode})" if c.runs else "not run"
            print(
                f"{c.name:<26}{'-':>8}{'-':>10}{'-':>8}{'-':>9}{'-':>8}{'-':>9}{'-':>10}  {reason}"
            )
            rows[c.name] = {"status": reason}
            continue
        best = c.runs[best_i]
        detail = c.details[best_i]
        vs_ts = ratio(best.wall_s, ts_wall(c.name))
        vs_floor = ratio(best.wall_s, floor_wall) if c.name != "floor" else None
        vs_orig = (
            ratio(best.wall_s, wall(f"original-{c.fmt}")) if c.name.startswith("ours") else None
        )
        notes = []
        if c.name == "floor" and detail:
            notes.append(f"read {detail.get('read_s')} s + write {detail.get('write_s')} s")
        elif detail.get("level1_s") is not None:
            notes.append(f"level 1 {detail['level1_s']} s + downsample {detail['downsample_s']} s")
        if c.checks:
            notes.append(c.checks[-1])
        print(
            f"{c.name:<26}{best.wall_s:>8.2f}{best.peak_rss_mib:>10.0f}{c.files:>8}"
            f"{c.out_bytes / 2**20:>9.1f}{fmt_ratio(vs_ts):>8}{fmt_ratio(vs_orig):>9}"
            f"{fmt_ratio(vs_floor):>10}  {'; '.join(notes)}"
        )
        rows[c.name] = {
            "status": "ok",
            "wall_s": round(best.wall_s, 3),
            "median_wall_s": round(c.median_wall() or 0.0, 3),
            "walls_s": [round(r.wall_s, 3) for r in c.runs],
            "peak_rss_mib": round(best.peak_rss_mib, 1),
            "peak_rss_mib_max": round(max(r.peak_rss_mib for r in c.runs if r.ok), 1),
            "peak_rss_mib_rounds": [round(r.peak_rss_mib, 1) if r.ok else None for r in c.runs],
            "files": c.files,
            "output_mib": round(c.out_bytes / 2**20, 2),
            "vs_tensorstore": round(vs_ts, 3) if vs_ts else None,
            "vs_original": round(vs_orig, 3) if vs_orig else None,
            "vs_floor": round(vs_floor, 3) if vs_floor else None,
            "check": c.checks[-1] if c.checks else None,
            "detail": detail,
        }
    print()
    print("per round (ours / peer, each round's own runs; median and spread over the rounds):")
    round_table: dict[str, list[float | None]] = {}
    for c in contenders:
        for peer in peers_of(c, by_name):
            values = round_ratios(c, by_name[peer])
            round_table[f"{c.name} / {peer}"] = values
            print(f"  {c.name + ' / ' + peer:<58}{spread(values)}")
    print("peak tree RSS MiB per round:")
    for c in contenders:
        if any(r.ok for r in c.runs):
            peaks = ", ".join(f"{r.peak_rss_mib:.0f}" if r.ok else "-" for r in c.runs)
            print(f"  {c.name:<30}{peaks}")
    print()
    print(f"precomputed-tif: {ours_note}")
    print("wall = best of the rounds; vs X = wall / wall of X (below 1 is faster than X)")
    print(
        "vs TS: ours-precomputed-sharded* against tensorstore-sharded (raw shards), others "
        "against tensorstore"
    )
    if mismatches:
        print("!!!!! OUTPUT MISMATCHES:")
        for m in mismatches:
            print(f"!!!!!   {m}")
    summary = {
        "benchmark": "convert",
        "size_xyz": list(size),
        "dtype": dtype.name,
        "levels": levels,
        "pyramid_mib": round(pyramid_bytes(size, levels, dtype.itemsize) / 2**20, 2),
        "repeat": a.repeat,
        "settle_s": a.settle,
        "outputs_deleted": "after each run" if a.delete_each else "at the end, while room",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "versions": {
            p: package_version(p)
            for p in ("tensorstore", "cloud-volume", "tinybrain", "tifffile", "numpy")
        },
        "workdir": str(workdir),
        "mismatches": mismatches,
        "runs": rows,
        "round_ratios": {
            k: [None if v is None else round(v, 3) for v in vs] for k, vs in round_table.items()
        },
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
