#!/usr/bin/env python3
"""Reader benchmark: read a region of a precomputed volume with our reader, TensorStore and
CloudVolume, from the folder and over HTTP from precomputed-webserver.

usage: bench_read.py [--stack /tmp/benchstack] [--workdir DIR] [--level 1] [--size 512]
                     [--repeat 1] [--only ROWS] [--no-http]

Converts the stack with our precomputed-tif to `--format precomputed` (raw, unsharded) and to
`--format precomputed --sharded` (cached in the workdir), reads every file of both once (page
cache), then per volume runs each reader as a fresh subprocess (recipe_read.py) reading a
`size`^3 region (z, y, x from the level's centre, clipped to it), measuring wall time and the
peak RSS of its process tree (_measure.py). Over HTTP: starts `precomputed-webserver -d VOLUME
-p 0` and reads from its URL. Every reader's array must hash the same as the planes' own voxels
(level 1) or as our file reader's (other levels). Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import psutil

# isort: split
from _measure import RunResult, last_json, run_measured
from _stack import list_planes, read_region, stack_shape

HERE = Path(__file__).resolve().parent
VOLUMES = {"precomputed": [], "precomputed-sharded": ["--sharded"]}
READERS = ("ours", "tensorstore", "cloudvolume")
HTTP_READERS = ("ours", "tensorstore")


@dataclass
class Row:
    volume: str
    name: str
    reader: str
    status: str = "ok"
    runs: list[RunResult] = field(default_factory=list)
    details: list[dict[str, Any]] = field(default_factory=list)
    check: str = ""

    def best_index(self) -> int | None:
        ok = [i for i, r in enumerate(self.runs) if r.ok and self.details[i]]
        return min(ok, key=lambda i: self.runs[i].wall_s) if ok else None


def tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def ensure_volume(workdir: Path, stack: Path, name: str, flags: list[str]) -> Path:
    dest = workdir / name
    marker = workdir / f".{name}.complete"
    if not marker.exists():
        subprocess.run(["rm", "-rf", "--", str(dest)], check=True)
        print(f"converting {stack} to {dest} ...", end=" ", flush=True)
        t0 = time.perf_counter()
        argv = [tool("precomputed-tif"), "--source", str(stack / "*.tif"), "--dest", str(dest)]
        subprocess.run([*argv, "--format", "precomputed", *flags, "--log", "WARNING"], check=True)
        marker.write_text("ok\n")
        print(f"{time.perf_counter() - t0:.1f} s", flush=True)
    return dest


def warm(folder: Path) -> None:
    buf = bytearray(1 << 22)
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            with open(os.path.join(dirpath, name), "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass


def region_box(shape_zyx: tuple[int, int, int], size: int) -> list[int]:
    """z0, z1, y0, y1, x0, x1 of a size^3 box around the centre, clipped to the level."""
    box = []
    for n in shape_zyx:
        start = max(0, n // 2 - size // 2)
        stop = min(n, start + size)
        start = max(0, stop - size)
        box += [start, stop]
    return box


@contextlib.contextmanager
def webserver(volume: Path):
    """precomputed-webserver on a free port, in its own session; yields its URL."""
    argv = [tool("precomputed-webserver"), "-d", str(volume), "-p", "0", "--log", "WARNING"]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(30)
        match = re.search(r"http://\S+", line[0]) if line else None
        if match is None:
            raise RuntimeError(f"webserver did not say where it serves: {line!r}")
        # keep draining its output so it never blocks on a full pipe
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        yield match.group(0).rstrip("/"), proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run_row(row: Row, source: str, level: int, box: list[int], timeout: float) -> None:
    box_arg = ",".join(str(v) for v in box)
    argv = [sys.executable, str(HERE / "recipe_read.py"), row.reader, source]
    print(f"  {row.volume} {row.name} ...", end=" ", flush=True)
    result = run_measured([*argv, "--level", str(level), "--box", box_arg], timeout_s=timeout)
    detail = last_json(result.stdout) if result.ok else {}
    row.runs.append(result)
    row.details.append(detail)
    if result.ok and detail:
        print(f"{result.wall_s:.2f} s, {result.peak_rss_mib:.0f} MiB", flush=True)
    else:
        row.status = f"failed (exit {result.returncode})"
        print(row.status, flush=True)
        for line in (result.stderr or result.stdout).strip().splitlines()[-4:]:
            print(f"    | {line}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stack", type=Path, default=Path("/tmp/benchstack"))
    ap.add_argument("--workdir", type=Path, default=None, help="default: a new temporary folder")
    ap.add_argument("--level", type=int, default=1)
    ap.add_argument("--size", type=int, default=512, help="edge of the region read, voxels")
    ap.add_argument("--repeat", type=int, default=1, help="rounds; the table shows the best")
    ap.add_argument("--only", default=None, help="rows, e.g. ours,tensorstore-http")
    ap.add_argument("--no-http", action="store_true")
    ap.add_argument("--timeout", type=float, default=600.0, help="per run, seconds")
    a = ap.parse_args()

    workdir = (a.workdir or Path(tempfile.mkdtemp(prefix="bench_read_"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    stack = a.stack.resolve()
    planes = list_planes(str(stack / "*.tif"))
    (sx, sy, sz), dtype = stack_shape(planes)
    volumes = {name: ensure_volume(workdir, stack, name, f) for name, f in VOLUMES.items()}
    for folder in volumes.values():
        warm(folder)
    info = json.loads((volumes["precomputed"] / "info").read_text())
    lx, ly, lz = info["scales"][a.level - 1]["size"]
    box = region_box((lz, ly, lx), a.size)
    z0, z1, y0, y1, x0, x1 = box
    region_bytes = (z1 - z0) * (y1 - y0) * (x1 - x0) * dtype.itemsize
    print(
        f"stack {sx}x{sy}x{sz} {dtype.name}; level {a.level} is {lx}x{ly}x{lz}; region "
        f"z {z0}:{z1}, y {y0}:{y1}, x {x0}:{x1} ({region_bytes / 2**20:.0f} MiB); "
        f"{os.cpu_count()} CPUs; volumes cached in {workdir}",
        flush=True,
    )
    reference = None
    if a.level == 1:
        import hashlib

        ref = read_region(planes, (x0, y0, z0), (x1, y1, z1))
        reference = hashlib.sha256(np.ascontiguousarray(ref).tobytes()).hexdigest()

    have_cv = True
    try:
        cv_version: str | None = version("cloud-volume")
    except PackageNotFoundError:
        have_cv, cv_version = False, None
    only = {r.strip() for r in a.only.split(",")} if a.only else None
    rows: list[Row] = []
    server_rss: dict[str, float] = {}
    for rep in range(a.repeat):
        print(f"round {rep + 1}/{a.repeat}", flush=True)
        for vname, folder in volumes.items():
            plan = [(r, r, str(folder)) for r in READERS]
            if not a.no_http:
                plan += [(f"{r}-http", r, "") for r in HTTP_READERS]
            with contextlib.ExitStack() as stack_ctx:
                url = None
                server = None
                for name, reader, source in plan:
                    if only is not None and name not in only:
                        continue
                    row = next((r for r in rows if (r.volume, r.name) == (vname, name)), None)
                    if row is None:
                        row = Row(vname, name, reader)
                        rows.append(row)
                    if reader == "cloudvolume" and not have_cv:
                        row.status = "skipped: cloud-volume not installed"
                        continue
                    if name.endswith("-http"):
                        if url is None:
                            url, server = stack_ctx.enter_context(webserver(folder))
                        source = url
                    run_row(row, source, a.level, box, a.timeout)
                if server is not None:
                    with contextlib.suppress(psutil.Error):
                        rss = psutil.Process(server.pid).memory_info().rss / 2**20
                        server_rss[vname] = round(rss, 1)

    # the check: everyone's array hashes like the planes' voxels (or like ours, from the folder)
    mismatches = []
    for vname in volumes:
        ours = next((r for r in rows if (r.volume, r.name) == (vname, "ours")), None)
        expected = reference
        if expected is None and ours is not None and ours.best_index() is not None:
            expected = ours.details[ours.best_index()]["sha256"]
        for row in rows:
            if row.volume != vname or row.best_index() is None:
                continue
            digests = {d["sha256"] for d in row.details if d}
            shapes = {tuple(d["shape_zyx"]) for d in row.details if d}
            if expected is not None and digests == {expected} and len(shapes) == 1:
                row.check = "ok (= planes)" if reference else "ok (= ours)"
            else:
                row.check = f"MISMATCH (sha256 {sorted(digests)[0][:12]}..., shape {shapes})"
                mismatches.append(f"{vname} {row.name}")
                print(f"\n!!!!! {vname} {row.name}: {row.check} !!!!!\n", flush=True)
    report(rows, box, region_bytes, mismatches, server_rss, a, workdir, cv_version, reference)


def report(
    rows: list[Row],
    box: list[int],
    region_bytes: int,
    mismatches: list[str],
    server_rss: dict[str, float],
    a: argparse.Namespace,
    workdir: Path,
    cv_version: str | None,
    reference: str | None,
) -> None:
    def wall(volume: str, name: str) -> float | None:
        for r in rows:
            if (r.volume, r.name) == (volume, name) and r.best_index() is not None:
                return r.runs[r.best_index()].wall_s
        return None

    header = (
        f"{'volume':<21}{'reader':<18}{'wall s':>8}{'peak MiB':>10}{'open s':>8}{'read s':>8}"
        f"{'MB/s':>8}{'vs TS':>8}  check"
    )
    print()
    print(header)
    print("-" * len(header))
    out_rows = []
    for r in rows:
        i = r.best_index()
        if i is None:
            print(
                f"{r.volume:<21}{r.name:<18}{'-':>8}{'-':>10}{'-':>8}{'-':>8}{'-':>8}{'-':>8}"
                f"  {r.status}"
            )
            out_rows.append({"volume": r.volume, "row": r.name, "status": r.status})
            continue
        res, d = r.runs[i], r.details[i]
        peer = "tensorstore-http" if r.name.endswith("-http") else "tensorstore"
        ts_wall = wall(r.volume, peer) if r.name != peer else None
        vs = res.wall_s / ts_wall if ts_wall else None
        mbs = region_bytes / 1e6 / d["read_s"] if d["read_s"] else None
        print(
            f"{r.volume:<21}{r.name:<18}{res.wall_s:>8.2f}{res.peak_rss_mib:>10.0f}"
            f"{d['open_s']:>8.3f}{d['read_s']:>8.3f}{mbs or 0:>8.0f}"
            f"{(f'{vs:.2f}x' if vs else '-'):>8}  {r.check}"
        )
        out_rows.append(
            {
                "volume": r.volume,
                "row": r.name,
                "status": r.status,
                "wall_s": round(res.wall_s, 3),
                "walls_s": [round(x.wall_s, 3) for x in r.runs],
                "peak_rss_mib": round(res.peak_rss_mib, 1),
                "open_s": d["open_s"],
                "read_s": d["read_s"],
                "read_mb_s": round(mbs, 1) if mbs else None,
                "vs_tensorstore": round(vs, 3) if vs else None,
                "check": r.check,
                "sha256": d["sha256"],
            }
        )
    print()
    print("wall = whole subprocess (Python start-up and imports included), best of the rounds;")
    print("open s / read s = inside it; MB/s = region bytes / read s; vs TS = wall / wall of")
    print("TensorStore on the same volume and transport; peak MiB = the reader's process tree")
    if server_rss:
        print(f"webserver RSS after its rows (MiB): {server_rss}")
    if mismatches:
        print(f"!!!!! MISMATCHES: {mismatches}")
    versions = {p: None for p in ("tensorstore", "cloud-volume", "numpy")}
    for p in versions:
        with contextlib.suppress(PackageNotFoundError):
            versions[p] = version(p)
    summary = {
        "benchmark": "read",
        "level": a.level,
        "box_zyx": box,
        "region_mib": round(region_bytes / 2**20, 2),
        "reference_sha256": reference,
        "repeat": a.repeat,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "versions": versions,
        "workdir": str(workdir),
        "server_rss_mib": server_rss,
        "mismatches": mismatches,
        "runs": out_rows,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
