#!/usr/bin/env python3
"""Serving benchmark: precomputed-webserver against nginx (static raw chunk files) and,
optionally, the original precomputed-webserver, under concurrent chunk requests on loopback.

usage: bench_serve.py [--workdir DIR] [--stack DIR] [--duration 10] [--concurrency 1,8,64]
                      [--only nginx,ours-raw,...] [--server-threads N] [--original BIN]
                      [--no-wrk] [--warmup 3]

Converts the stack with our precomputed-tif to tiff, zarr and blockfs (cached in the workdir) and
writes a `raw` copy of the pyramid (Neuroglancer's unsharded raw chunk files + info) with our read
API. Lists every chunk URL (make_urls.py, shuffled). Then, per row: starts the server on a free
127.0.0.1 port, checks a few chunks byte for byte against the raw copy, warms it, and runs
loadgen.py at each concurrency (and wrk at concurrency 8, when installed). Prints a table of
req/s, MB/s, p50/p99 latency, errors and server CPU per request, the ratios and targets, the
gzip trade-off for chunks of this volume, then one JSON line with every figure. Every server it
starts is killed at exit (Ctrl-C included).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gzip
import json
import os
import platform
import random
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

# isort: split
from _measure import run_measured, tree_size
from _stack import default_levels, list_planes, pyramid_bytes, stack_shape
from bench_convert import ensure_stack, find_ours, fmt_ratio, last_json, package_version, ratio

HERE = Path(__file__).resolve().parent
ROWS = (
    "nginx",
    "ours-raw",
    "ours-blockfs",
    "ours-zarr",
    "ours-tiff",
    "original-blockfs",
    "original-tiff",
)
CONVERTED = ("blockfs", "zarr", "tiff")
DEFAULT_ORIGINAL = "/tmp/origvenv/bin/precomputed-webserver"
LINK_BYTES_PER_S = 125e6  # 1 Gbit/s
TARGET_P99_MS = 100.0
OTHER_CPU_WARN_PCT = 20.0  # CPU used by other jobs during a run, above which we warn


@dataclass
class Row:
    name: str
    kind: str  # nginx, ours, original
    fmt: str  # raw, blockfs, zarr, tiff
    folder: Path | None = None
    skip: str = ""
    runs: list[dict[str, Any]] = field(default_factory=list)
    content: str = ""
    warmup: dict[str, Any] = field(default_factory=dict)
    peak_rss_mib: float = 0.0
    base_url: str = ""

    def run(self, tool: str, concurrency: int) -> dict[str, Any] | None:
        for r in self.runs:
            if r["tool"] == tool and r["concurrency"] == concurrency:
                return r
        return None

    def req_s(self, tool: str, concurrency: int) -> float | None:
        r = self.run(tool, concurrency)
        return r["req_per_s"] if r and r.get("req_per_s") else None

    def no_cors(self) -> int:
        return sum(r.get("no_cors_header", 0) for r in self.runs)

    def total_errors(self) -> int:
        return sum(r["n_errors"] for r in self.runs)


# ---------------------------------------------------------------------------------------------
# processes: every server is started in its own session and killed (with its children) at exit


class Servers:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], cwd: Path, logs: Path) -> subprocess.Popen[bytes]:
        with open(logs.with_suffix(".out"), "wb") as out, open(logs.with_suffix(".err"), "wb") as e:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=e,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM the server's process group (it is its own session), SIGKILL if it lingers."""
        for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=wait_s)
        # nginx workers or other children left in the group after the leader exited
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.procs):
            self.stop(proc)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> str:
    """'' once GET /info answers 200, else why not."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"exited with {proc.returncode} before answering"
        try:
            status, _ = http_get(base + "/info", timeout=2.0)
            if status == 200:
                return ""
            last = f"GET /info: {status}"
        except OSError as exc:
            last = f"GET /info: {exc}"
        time.sleep(0.1)
    return f"not ready after {timeout_s:.0f} s ({last})"


def busy_cpu_s() -> float:
    """Busy CPU seconds of the whole machine, all CPUs summed."""
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    return sum(t) - idle - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)


def children_cpu_s() -> float:
    """CPU seconds of this script's finished children (loadgen, wrk)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def tree_cpu_rss(pid: int) -> tuple[float, int]:
    """(CPU seconds, RSS bytes) of the process and its descendants."""
    try:
        proc = psutil.Process(pid)
        members = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0.0, 0
    cpu = 0.0
    rss = 0
    for m in members:
        with contextlib.suppress(psutil.Error):
            t = m.cpu_times()
            cpu += t.user + t.system
            rss += m.memory_info().rss
    return cpu, rss


# ---------------------------------------------------------------------------------------------
# setup: volumes, the raw copy, the URL list


def cache_key(stack: Path, size: tuple[int, int, int], levels: int, tool: str) -> dict[str, Any]:
    return {"stack": str(stack), "size": list(size), "levels": levels, "tool": tool}


def ensure_volume(
    workdir: Path, fmt: str, key: dict[str, Any], make: Callable[[Path], str]
) -> tuple[Path | None, str]:
    """workdir/volumes/FMT, made by `make(dest)` unless a matching one is cached.

    `make` returns '' or an error. Returns (folder or None, note)."""
    dest = workdir / "volumes" / fmt
    marker = workdir / "volumes" / f"{fmt}.json"
    if dest.exists() and marker.exists():
        with contextlib.suppress(ValueError):
            if json.loads(marker.read_text()) == key:
                return dest, "cached"
    if dest.exists():
        shutil.rmtree(dest)
    marker.unlink(missing_ok=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    err = make(dest)
    if err:
        shutil.rmtree(dest, ignore_errors=True)
        return None, err
    marker.write_text(json.dumps(key))
    return dest, f"made in {time.perf_counter() - t0:.1f} s"


def write_raw_copy(src: Path, dest: Path) -> str:
    """Neuroglancer's unsharded raw chunk files + info for the volume at `src`, read with our
    read API (`precomputed_tif.open_volume`)."""
    try:
        from precomputed_tif import open_volume
    except ImportError as exc:
        return f"precomputed_tif is not importable here ({exc}); pip install -e ."
    volume = open_volume(str(src))
    info = json.loads((src / "info").read_text())
    dtype = np.dtype(info["data_type"]).newbyteorder("<")
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for level, scale in enumerate(info["scales"], start=1):
        scale["encoding"] = "raw"
        scale.pop("sharding", None)
        (cx, cy, cz), (nx, ny, nz) = scale["chunk_sizes"][0], scale["size"]
        ox, oy, oz = scale.get("voxel_offset", [0, 0, 0])
        folder = partial / scale["key"]
        folder.mkdir(parents=True)
        for z0 in range(0, nz, cz):
            z1 = min(z0 + cz, nz)
            slab = volume[level][z0:z1, :, :]  # (z, y, x): raw chunks are x-fastest
            for y0 in range(0, ny, cy):
                y1 = min(y0 + cy, ny)
                for x0 in range(0, nx, cx):
                    x1 = min(x0 + cx, nx)
                    block = np.ascontiguousarray(slab[:, y0:y1, x0:x1], dtype=dtype)
                    name = f"{x0 + ox}-{x1 + ox}_{y0 + oy}-{y1 + oy}_{z0 + oz}-{z1 + oz}"
                    (folder / name).write_bytes(block.tobytes())
    (partial / "info").write_text(json.dumps(info, indent=2))
    partial.rename(dest)
    return ""


def volume_size(folder: Path | None) -> str:
    if folder is None:
        return ""
    files, nbytes = tree_size(folder)
    return f", {files} files, {nbytes / 2**20:.0f} MiB in {folder}"


def convert(
    ours_cmd: list[str], pattern: str, fmt: str, levels: int, dest: Path, *more: str
) -> str:
    argv = [*ours_cmd, "--source", pattern, "--dest", str(dest), "--format", fmt, *more]
    result = run_measured([*argv, "--levels", str(levels), "--log", "WARNING"], timeout_s=3600)
    if result.ok:
        return ""
    tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
    return f"conversion failed (exit {result.returncode}): {' | '.join(tail)}"


def read_urls(path: Path) -> list[tuple[str, int]]:
    items = []
    for line in path.read_text().splitlines():
        p, n = line.split("\t")
        items.append((p, int(n)))
    return items


def write_rotated(items: list[tuple[str, int]], start: int, stem: Path) -> tuple[Path, Path]:
    """The URL list starting at `start` (so each run continues the walk where the last stopped
    and a chunk cache cannot serve a run the chunks the previous one just asked for)."""
    start %= len(items)
    rot = items[start:] + items[:start]
    txt, paths = stem.with_suffix(".txt"), stem.with_suffix(".paths")
    txt.write_text("".join(f"{p}\t{n}\n" for p, n in rot))
    paths.write_text("".join(f"{p}\n" for p, _ in rot))
    return txt, paths


def warm_folder(folder: Path) -> float:
    """Read every file under `folder` once (page cache), like bench_convert warms the planes."""
    t0 = time.perf_counter()
    buf = bytearray(1 << 22)
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            with open(os.path.join(dirpath, name), "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass
    return time.perf_counter() - t0


def make_world_readable_path(folder: Path) -> None:
    """nginx workers started by root run as nobody: they need to reach the raw folder."""
    for p in [folder, *folder.parents]:
        try:
            mode = p.stat().st_mode
        except OSError:
            return
        if not mode & 0o001:
            print(f"  note: {p} is not world-searchable; nginx workers (nobody) may get 403")
            return


# ---------------------------------------------------------------------------------------------
# load


def run_loadgen(
    base: str, urls: Path, concurrency: int, duration: float, timeout: float, label: str
) -> dict[str, Any]:
    argv = [sys.executable, str(HERE / "loadgen.py"), base, str(urls)]
    argv += ["--concurrency", str(concurrency), "--duration", str(duration)]
    argv += ["--timeout", str(timeout), "--label", label]
    try:
        p = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration + timeout + 60, check=False
        )
    except subprocess.TimeoutExpired:
        return {"failed": "loadgen did not finish"}
    result = last_json(p.stdout)
    if not result:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        return {"failed": f"loadgen exit {p.returncode}: {' | '.join(tail)}"}
    result["n_errors"] = sum(result["errors"].values())
    result["issued"] = result["ok"] + result["n_errors"]
    return result


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_BYTES = {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(text)
    return round(float(m.group(1)) * _UNITS[m.group(2)], 2)


def run_wrk(
    wrk: str,
    base: str,
    paths: Path,
    concurrency: int,
    duration: float,
    script: Path = HERE / "chunks.lua",
) -> dict[str, Any]:
    argv = [wrk, "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "--latency"]
    argv += ["-s", str(script), base, "--", str(paths)]
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    except subprocess.TimeoutExpired:
        return {"failed": "wrk did not finish"}
    out = p.stdout
    total = re.search(r"(\d+) requests in ([\d.]+\w+)", out)
    rate = re.search(r"Requests/sec:\s*([\d.]+)", out)
    transfer = re.search(r"Transfer/sec:\s*([\d.]+)(\w+)", out)
    if not (total and rate and transfer):
        tail = (p.stderr or out).strip().splitlines()[-3:]
        return {"failed": f"wrk exit {p.returncode}: {' | '.join(tail)}"}
    requests, elapsed = total.groups()
    req_s = float(rate.group(1))
    tv, tu = transfer.groups()
    pct = dict(re.findall(r"^\s*(50|90|99)%\s+(\S+)", out, flags=re.M))
    errors: dict[str, int] = {}
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        for kind, n in zip(("connect", "read", "write", "timeout"), sock.groups()):
            if int(n):
                errors[kind] = int(n)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors["non_2xx"] = int(non2xx.group(1))
    n_err = sum(errors.values())
    return {
        "concurrency": concurrency,
        "elapsed_s": round(_ms(elapsed) / 1000, 2),
        "ok": int(requests) - errors.get("non_2xx", 0),
        "errors": errors,
        "n_errors": n_err,
        "issued": int(requests),
        "req_per_s": req_s,
        "MB_per_s": round(float(tv) * _BYTES.get(tu, 1) / 1e6, 1),
        "p50_ms": _ms(pct["50"]) if "50" in pct else None,
        "p90_ms": _ms(pct["90"]) if "90" in pct else None,
        "p99_ms": _ms(pct["99"]) if "99" in pct else None,
    }


def check_content(base: str, raw: Path | None, items: list[tuple[str, int]]) -> str:
    """Fetch a few chunks (first of the list, the coarsest level's) and compare with the raw
    copy byte for byte."""
    if raw is None:
        return "not checked (no raw copy)"
    picks = items[:4] + [min(items, key=lambda it: it[1])]
    coarsest = max(items, key=lambda it: int(it[0].split("/")[1].split("_")[0]))
    picks.append(coarsest)
    bad = []
    for path, _ in picks:
        try:
            status, body = http_get(base + path, timeout=10.0)
        except OSError as exc:
            bad.append(f"{path}: {exc}")
            continue
        if status != 200:
            bad.append(f"{path}: status {status}")
        elif body != (raw / path.lstrip("/")).read_bytes():
            bad.append(f"{path}: bytes differ")
    return f"MISMATCH {'; '.join(bad[:2])}" if bad else f"ok ({len(picks)} chunks)"


# ---------------------------------------------------------------------------------------------
# gzip


def gzip_tradeoff(raw: Path, items: list[tuple[str, int]], samples: int, seed: int) -> dict:
    """Mean time to gzip (level 1, as our server does) a chunk of this volume, and the ratio."""
    try:
        from precomputed_tif.serve.http import gzip_bytes
    except ImportError:

        def gzip_bytes(data: bytes, level: int = 1) -> bytes:
            return gzip.compress(data, compresslevel=level, mtime=0)

    picks = random.Random(seed).sample(items, min(samples, len(items)))
    datas = [(raw / p.lstrip("/")).read_bytes() for p, _ in picks]
    gzip_bytes(datas[0])  # warm up
    raw_n = gz_n = 0
    t_gz = t_gunzip = 0.0
    for d in datas:
        t0 = time.perf_counter()
        z = gzip_bytes(d)
        t1 = time.perf_counter()
        back = zlib.decompress(z, wbits=31)
        t2 = time.perf_counter()
        assert back == d
        raw_n += len(d)
        gz_n += len(z)
        t_gz += t1 - t0
        t_gunzip += t2 - t1
    n = len(datas)
    mean_raw, mean_gz = raw_n / n, gz_n / n
    gz_s, gunzip_s = t_gz / n, t_gunzip / n
    saved_s = (mean_raw - mean_gz) / LINK_BYTES_PER_S
    cores = os.cpu_count() or 1
    return {
        "chunks": n,
        "mean_raw_bytes": round(mean_raw),
        "mean_gzip_bytes": round(mean_gz),
        "ratio": round(mean_raw / mean_gz, 3),
        "gzip_ms": round(gz_s * 1e3, 3),
        "gunzip_ms": round(gunzip_s * 1e3, 3),
        "gzip_MB_per_s_per_core": round(mean_raw / gz_s / 1e6, 1),
        "link_MB_per_s": LINK_BYTES_PER_S / 1e6,
        "transfer_raw_ms": round(mean_raw / LINK_BYTES_PER_S * 1e3, 3),
        "transfer_gzip_ms": round(mean_gz / LINK_BYTES_PER_S * 1e3, 3),
        "saved_transfer_ms": round(saved_s * 1e3, 3),
        "cpu_cost_ms": round((gz_s + gunzip_s) * 1e3, 3),
        "net_gain_ms": round((saved_s - gz_s - gunzip_s) * 1e3, 3),
        # throughput view: chunks/s through a 1 Gbit/s link, raw vs gzip with every core gzipping
        "link_chunks_per_s_raw": round(LINK_BYTES_PER_S / mean_raw, 1),
        "link_chunks_per_s_gzip": round(min(LINK_BYTES_PER_S / mean_gz, cores / gz_s), 1),
        "cpu_chunks_per_s_gzip": round(cores / gz_s, 1),
        "cores": cores,
    }


# ---------------------------------------------------------------------------------------------
# main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--x", type=int, default=1024)
    ap.add_argument("--y", type=int, default=1024)
    ap.add_argument("--z", type=int, default=256)
    ap.add_argument("--workdir", type=Path, default=None, help="default: a new temporary folder")
    ap.add_argument("--stack", type=Path, default=None, help="use this folder of planes as is")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per load run")
    ap.add_argument("--concurrency", default="1,8,64", help="loadgen concurrencies")
    ap.add_argument("--wrk-concurrency", default="8", help="wrk concurrencies ('' for none)")
    ap.add_argument("--no-wrk", action="store_true", help="do not run wrk even if installed")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    ap.add_argument("--timeout", type=float, default=10.0, help="loadgen per-request timeout")
    ap.add_argument("--only", default=None, help=f"rows to run, comma-separated: {','.join(ROWS)}")
    ap.add_argument("--server-threads", type=int, default=None, help="our server's --threads")
    ap.add_argument(
        "--server-args", default="", help="more arguments for our server, e.g. '--cache-size 1G'"
    )
    ap.add_argument(
        "--original",
        default=None,
        help="the original precomputed-webserver (or its venv bin folder); "
        f"default {DEFAULT_ORIGINAL} if it exists",
    )
    ap.add_argument("--ours", default=None, help="our precomputed-tif (default: found)")
    ap.add_argument("--ours-server", default=None, help="our precomputed-webserver")
    ap.add_argument("--nginx", default=None, help="nginx executable (default: on PATH)")
    ap.add_argument("--gzip-samples", type=int, default=200, help="chunks for the gzip figures")
    ap.add_argument("--seed", type=int, default=0, help="URL shuffle and gzip sample seed")
    ap.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="interleaved mode: every serving path (raw, shard ranges, decoded warm and cold, "
        "gunicorn, Apache mod_wsgi) against nginx, wrk only, N rounds (see _serve_matrix.py)",
    )
    a = ap.parse_args()
    if a.rounds and a.wrk_concurrency == "8":
        a.wrk_concurrency = "8,64"

    only = [r.strip() for r in a.only.split(",") if r.strip()] if a.only else list(ROWS)
    unknown = set(only) - set(ROWS)
    if a.rounds:
        from _serve_matrix import matrix_rows

        unknown = set(only) - set(ROWS) - {r.name for r in matrix_rows(None)}
    if unknown:
        raise SystemExit(f"unknown rows: {sorted(unknown)}; rows are {', '.join(ROWS)}")
    concurrencies = [int(c) for c in a.concurrency.split(",") if c.strip()]
    wrk = None if a.no_wrk else shutil.which("wrk")
    wrk_conc = [int(c) for c in a.wrk_concurrency.split(",") if c.strip()] if wrk else []

    created = a.workdir is None
    workdir = (a.workdir or Path(tempfile.mkdtemp(prefix="bench_serve_"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if created:
        workdir.chmod(0o755)  # nginx workers (nobody, when started by root) read the raw copy

    servers = Servers()
    atexit.register(servers.stop_all)

    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        run(a, only, concurrencies, wrk, wrk_conc, workdir, servers)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the servers", flush=True)
        raise SystemExit(130) from None
    finally:
        servers.stop_all()


def run(
    a: argparse.Namespace,
    only: list[str],
    concurrencies: list[int],
    wrk: str | None,
    wrk_conc: list[int],
    workdir: Path,
    servers: Servers,
) -> None:
    stack = a.stack.resolve() if a.stack else ensure_stack(workdir, a.x, a.y, a.z)
    pattern = str(stack / "*.tif")
    planes = list_planes(pattern)
    size, dtype = stack_shape(planes)
    levels = default_levels(size)
    print(
        f"stack {size[0]}x{size[1]}x{size[2]} {dtype.name}, {levels} levels, pyramid "
        f"{pyramid_bytes(size, levels, dtype.itemsize) / 2**20:.0f} MiB; {os.cpu_count()} CPUs; "
        f"workdir {workdir}",
        flush=True,
    )

    # --- the contenders' commands
    ours_cmd, ours_note = find_ours(a.ours, workdir)
    ours_server = a.ours_server or str(Path(sys.executable).parent / "precomputed-webserver")
    if not Path(ours_server).exists():
        ours_server = shutil.which("precomputed-webserver") or ""
    original = a.original or (DEFAULT_ORIGINAL if Path(DEFAULT_ORIGINAL).exists() else None)
    if original and Path(original).is_dir():
        original = str(Path(original) / "precomputed-webserver")
    nginx = (
        a.nginx
        or shutil.which("nginx")
        or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    )

    # --- volumes (cached): tiff, zarr, blockfs with our converter; raw from blockfs
    folders: dict[str, Path | None] = {}
    notes: dict[str, str] = {}
    # blockfs is always made: the raw copy (the reference for the content check and the gzip
    # figures) is read from it
    need = {r.partition("-")[2] or "raw" for r in only} | {"blockfs"}
    if a.rounds:
        need = set(CONVERTED)
    for fmt in CONVERTED:
        if fmt not in need:
            continue
        if ours_cmd is None:
            folders[fmt], notes[fmt] = None, ours_note
            continue
        key = cache_key(stack, size, levels, " ".join(ours_cmd))
        folders[fmt], notes[fmt] = ensure_volume(
            workdir,
            fmt,
            key,
            lambda dest, fmt=fmt: convert(ours_cmd, pattern, fmt, levels, dest),
        )
        print(f"volume {fmt}: {notes[fmt]}{volume_size(folders[fmt])}", flush=True)
    src = folders.get("blockfs")
    if src is None:
        folders["raw"], notes["raw"] = None, "no blockfs volume to copy from"
    else:
        key = cache_key(stack, size, levels, "raw copy of blockfs")
        folders["raw"], notes["raw"] = ensure_volume(
            workdir, "raw", key, lambda dest: write_raw_copy(src, dest)
        )
        print(f"volume raw: {notes['raw']}{volume_size(folders['raw'])}", flush=True)
    raw = folders["raw"]
    if raw is not None and nginx and os.geteuid() == 0:
        make_world_readable_path(raw)
    if a.rounds and ours_cmd is not None:  # shards of raw chunks: what byte ranges are read from
        key = cache_key(stack, size, levels, " ".join(ours_cmd) + " sharded raw")
        folders["shard"], notes["shard"] = ensure_volume(
            workdir,
            "shard",
            key,
            lambda dest: convert(
                ours_cmd,
                pattern,
                "precomputed",
                levels,
                dest,
                "--sharded",
                "--shard-data-encoding",
                "raw",
            ),
        )
        print(f"volume shard: {notes['shard']}{volume_size(folders['shard'])}", flush=True)

    # --- the URL list
    any_volume = next((f for f in folders.values() if f is not None), None)
    if any_volume is None:
        raise SystemExit("no volume could be made: " + "; ".join(notes.values()))
    urls = workdir / "urls.txt"
    subprocess.run(
        [sys.executable, str(HERE / "make_urls.py"), str(any_volume), str(urls)]
        + ["--seed", str(a.seed)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    items = read_urls(urls)
    print(f"{len(items)} chunk URLs (every chunk of every level, shuffled)", flush=True)

    if a.rounds:
        if not wrk:
            raise SystemExit("--rounds needs wrk (apt-get install wrk)")
        from _serve_matrix import run_matrix

        scratch = Path(tempfile.mkdtemp(prefix="bench_serve_run_"))
        scratch.chmod(0o755)
        try:
            matrix = run_matrix(
                a, folders, items, wrk, servers, scratch, nginx, ours_server, run_wrk
            )
        finally:
            servers.stop_all()
            shutil.rmtree(scratch, ignore_errors=True)
        summary = {
            "benchmark": "serve-rounds",
            "size_xyz": list(size),
            "levels": levels,
            "chunk_urls": len(items),
            "rounds": a.rounds,
            "duration_s": a.duration,
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            "cpus": os.cpu_count(),
            "rows": matrix,
        }
        print(json.dumps(summary))
        return

    # --- rows
    rows: list[Row] = []
    for name in ROWS:
        if name not in only:
            continue
        kind, _, fmt = name.partition("-")
        fmt = fmt or "raw"
        row = Row(name, kind, fmt, folders.get(fmt))
        if row.folder is None:
            row.skip = f"skipped: {notes.get(fmt, 'no volume')}"
        elif kind == "nginx" and not nginx:
            row.skip = "skipped: nginx not installed (apt-get install nginx)"
        elif kind == "ours" and not ours_server:
            row.skip = "skipped: precomputed-webserver not found (--ours-server)"
        elif kind == "original" and not (original and Path(original).exists()):
            row.skip = "skipped: original not found (--original BIN)"
        rows.append(row)

    scratch = Path(tempfile.mkdtemp(prefix="bench_serve_run_"))
    scratch.chmod(0o755)
    try:
        for row in rows:
            if row.skip:
                print(f"{row.name}: {row.skip}", flush=True)
                continue
            bench_row(
                row,
                a,
                concurrencies,
                wrk,
                wrk_conc,
                items,
                raw,
                scratch,
                servers,
                nginx,
                ours_server,
                original,
            )
    finally:
        servers.stop_all()
        shutil.rmtree(scratch, ignore_errors=True)

    gz = gzip_tradeoff(raw, items, a.gzip_samples, a.seed) if raw is not None else None
    report(
        rows,
        a,
        concurrencies,
        wrk_conc,
        gz,
        size,
        levels,
        dtype,
        len(items),
        workdir,
        ours_server,
        original,
    )


def server_argv(
    row: Row,
    port: int,
    scratch: Path,
    a: argparse.Namespace,
    nginx: str | None,
    ours_server: str,
    original: str | None,
) -> list[str]:
    """The server's command line."""
    assert row.folder is not None
    if row.kind == "nginx":
        assert nginx is not None
        prefix = scratch / "nginx"
        shutil.rmtree(prefix, ignore_errors=True)
        prefix.mkdir()
        conf = (HERE / "nginx.conf.template").read_text()
        conf = conf.replace("@PREFIX@", str(prefix)).replace("@ROOT@", str(row.folder))
        (prefix / "nginx.conf").write_text(conf.replace("@PORT@", str(port)))
        argv = [nginx, "-p", f"{prefix}/", "-c", str(prefix / "nginx.conf")]
        return [*argv, "-e", str(prefix / "error.log"), "-g", "daemon off;"]
    if row.kind == "ours":
        argv = [ours_server, "-d", str(row.folder), "-a", "127.0.0.1", "-p", str(port)]
        argv += ["--log", "WARNING"]
        if a.server_threads:
            argv += ["--threads", str(a.server_threads)]
        argv += shlex.split(a.server_args)
        return argv
    assert original is not None
    return [original, "-p", str(port), "-a", "127.0.0.1", "-d", str(row.folder), "-f", row.fmt]


def bench_row(
    row: Row,
    a: argparse.Namespace,
    concurrencies: list[int],
    wrk: str | None,
    wrk_conc: list[int],
    items: list[tuple[str, int]],
    raw: Path | None,
    scratch: Path,
    servers: Servers,
    nginx: str | None,
    ours_server: str,
    original: str | None,
) -> None:
    assert row.folder is not None
    warm_s = warm_folder(row.folder)
    port = free_port()
    argv = server_argv(row, port, scratch, a, nginx, ours_server, original)
    logs = scratch / row.name
    proc = servers.start(argv, row.folder, logs)
    base = f"http://127.0.0.1:{port}"
    try:
        err = wait_ready(base, proc)
        if err:
            tail = logs.with_suffix(".err").read_text(errors="replace").strip().splitlines()[-3:]
            row.skip = f"server {err}: {' | '.join(tail)}"
            print(f"{row.name}: {row.skip}", flush=True)
            return
        if row.kind == "ours":  # the URL it announces on its first line
            first = logs.with_suffix(".out").read_text(errors="replace").splitlines()[:1]
            m = re.search(r"at (http://\S+)", first[0]) if first else None
            if m:
                base = m.group(1).rstrip("/")
        row.base_url = base
        row.content = check_content(base, raw, items)
        print(
            f"{row.name}: {base}, page cache warmed in {warm_s:.2f} s, content {row.content}",
            flush=True,
        )
        position = 0
        stem = scratch / "rot"
        txt, _ = write_rotated(items, position, stem)
        if a.warmup > 0:
            row.warmup = run_loadgen(base, txt, 8, a.warmup, a.timeout, f"{row.name} warmup")
            position += row.warmup.get("issued", 0)
        plan = [("loadgen", c) for c in concurrencies] + [("wrk", c) for c in wrk_conc]
        for tool, c in plan:
            txt, paths = write_rotated(items, position, stem)
            cpu0, _ = tree_cpu_rss(proc.pid)
            client0, busy0, wall0 = children_cpu_s(), busy_cpu_s(), time.monotonic()
            if tool == "loadgen":
                r = run_loadgen(base, txt, c, a.duration, a.timeout, row.name)
            else:
                assert wrk is not None
                r = run_wrk(wrk, base, paths, c, a.duration)
            cpu1, rss = tree_cpu_rss(proc.pid)
            client1, busy1, wall1 = children_cpu_s(), busy_cpu_s(), time.monotonic()
            row.peak_rss_mib = max(row.peak_rss_mib, rss / 2**20)
            r["tool"], r["concurrency"] = tool, c
            if "failed" in r:
                r.update(n_errors=1, issued=0, req_per_s=None)
                print(f"  {tool} c{c}: FAILED {r['failed']}", flush=True)
                row.runs.append(r)
                continue
            position += r["issued"]
            cpu = cpu1 - cpu0
            r["server_cpu_pct"] = round(cpu / r["elapsed_s"] * 100, 1) if r["elapsed_s"] else None
            r["server_cpu_ms_per_req"] = round(cpu * 1e3 / r["ok"], 3) if r["ok"] else None
            r["client_cpu_pct"] = round((client1 - client0) / (wall1 - wall0) * 100, 1)
            # CPU used by neither the server nor the client: other jobs on this machine
            other = busy1 - busy0 - cpu - (client1 - client0)
            r["other_cpu_pct"] = round(max(0.0, other) / (wall1 - wall0) * 100, 1)
            row.runs.append(r)
            print(
                f"  {tool:<7} c{c:<3} {r['req_per_s']:>8.1f} req/s {r['MB_per_s']:>7.1f} MB/s "
                f"p50 {r['p50_ms']} ms p99 {r['p99_ms']} ms errors {r['errors'] or 0} "
                f"server CPU {r['server_cpu_pct']}%, other {r['other_cpu_pct']}%",
                flush=True,
            )
            if proc.poll() is not None:
                row.skip = f"server exited with {proc.returncode} during the runs"
                print(f"{row.name}: {row.skip}", flush=True)
                return
    finally:
        servers.stop(proc)


# ---------------------------------------------------------------------------------------------
# the report


def _f(v: float | None, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def report(
    rows: list[Row],
    a: argparse.Namespace,
    concurrencies: list[int],
    wrk_conc: list[int],
    gz: dict | None,
    size: tuple[int, int, int],
    levels: int,
    dtype: np.dtype,
    n_urls: int,
    workdir: Path,
    ours_server: str,
    original: str | None,
) -> None:
    by = {r.name: r for r in rows}
    head = (
        f"{'row':<18}{'tool':<9}{'conc':>5}{'req/s':>9}{'MB/s':>8}{'p50 ms':>8}{'p99 ms':>9}"
        f"{'errors':>8}{'srv CPU%':>10}{'CPU ms/req':>12}{'client%':>9}{'other%':>8}"
    )
    print()
    print(head)
    print("-" * len(head))
    for row in rows:
        if not row.runs:
            print(f"{row.name:<18}{row.skip or 'not run'}")
            continue
        for r in row.runs:
            if "failed" in r:
                print(f"{row.name:<18}{r['tool']:<9}{r['concurrency']:>5}  FAILED: {r['failed']}")
                continue
            print(
                f"{row.name:<18}{r['tool']:<9}{r['concurrency']:>5}{r['req_per_s']:>9.1f}"
                f"{r['MB_per_s']:>8.1f}{_f(r['p50_ms'], '.2f'):>8}{_f(r['p99_ms'], '.2f'):>9}"
                f"{r['n_errors']:>8}{_f(r.get('server_cpu_pct')):>10}"
                f"{_f(r.get('server_cpu_ms_per_req'), '.2f'):>12}"
                f"{_f(r.get('client_cpu_pct'), '.0f'):>9}{_f(r.get('other_cpu_pct'), '.0f'):>8}"
            )

    busy = [
        f"{row.name} {r['tool']} c{r['concurrency']} ({r['other_cpu_pct']:.0f}%)"
        for row in rows
        for r in row.runs
        if (r.get("other_cpu_pct") or 0) > OTHER_CPU_WARN_PCT
    ]
    if busy:
        print(
            f"WARNING: other jobs used more than {OTHER_CPU_WARN_PCT:.0f}% of a CPU during "
            f"{len(busy)} runs ({', '.join(busy[:4])}{', ...' if len(busy) > 4 else ''}): "
            "those figures are low; rerun on a quiet machine"
        )

    # the summary: req/s per concurrency, ratios on the primary measure
    wrk8 = 8 in wrk_conc
    primary = ("wrk", 8) if wrk8 else ("loadgen", 8 if 8 in concurrencies else concurrencies[-1])

    def prim(name: str) -> float | None:
        row = by.get(name)
        return row.req_s(*primary) if row else None

    def peer(row: Row) -> str | None:
        return f"original-{row.fmt}" if row.kind == "ours" and row.fmt != "raw" else None

    cols = [("loadgen", c) for c in concurrencies] + [("wrk", c) for c in wrk_conc]
    names = [("lg" if t == "loadgen" else "wrk") + f" c{c}" for t, c in cols]
    cmax = max(concurrencies)
    head = (
        f"{'row':<18}"
        + "".join(f"{n:>10}" for n in names)
        + f"{'vs nginx':>10}{'vs orig':>9}{f'c{cmax} p99':>10}{'errors':>8}{'RSS MiB':>9}  content"
    )
    print()
    print(f"req/s; vs nginx / vs orig are req/s ratios on {primary[0]} c{primary[1]}")
    print(head)
    print("-" * len(head))
    rows_json: dict[str, Any] = {}
    for row in rows:
        if not row.runs:
            print(f"{row.name:<18}{row.skip or 'not run'}")
            rows_json[row.name] = {"status": row.skip or "not run"}
            continue
        vs_nginx = ratio(prim(row.name), prim("nginx")) if row.kind != "nginx" else None
        p = peer(row)
        vs_orig = ratio(prim(row.name), prim(p)) if p else None
        top = row.run("loadgen", cmax)
        print(
            f"{row.name:<18}"
            + "".join(f"{_f(row.req_s(t, c)):>10}" for t, c in cols)
            + f"{fmt_ratio(vs_nginx):>10}{fmt_ratio(vs_orig):>9}"
            + f"{_f(top.get('p99_ms') if top else None):>10}{row.total_errors():>8}"
            + f"{row.peak_rss_mib:>9.0f}  {row.content}"
            + (f", NO CORS header on {no_cors} answers" if (no_cors := row.no_cors()) else "")
            + (f"  ({row.skip})" if row.skip else "")
        )
        ratios = {}
        for t, c in cols:
            key = f"{t}_c{c}"
            if row.kind != "nginx":
                r = ratio(row.req_s(t, c), by["nginx"].req_s(t, c) if "nginx" in by else None)
                ratios[f"vs_nginx_{key}"] = round(r, 3) if r else None
            if p:
                r = ratio(row.req_s(t, c), by[p].req_s(t, c) if p in by else None)
                ratios[f"vs_original_{key}"] = round(r, 3) if r else None
        rows_json[row.name] = {
            "status": row.skip or "ok",
            "folder": str(row.folder),
            "content": row.content,
            "peak_rss_mib": round(row.peak_rss_mib, 1),
            "warmup": row.warmup,
            "runs": row.runs,
            "ratios": ratios,
        }

    # targets
    targets: list[dict[str, Any]] = []

    def target(what: str, value: float | None, goal: float, text: str) -> None:
        ok = None if value is None else value >= goal
        targets.append({"target": what, "value": value, "met": ok})
        flag = "n/a " if ok is None else ("MET " if ok else "MISS")
        print(f"  [{flag}] {what:<46} {text}")

    print()
    print(f"targets (req/s ratios on {primary[0]} c{primary[1]}):")
    for name, peer_name, goal in (
        ("ours-blockfs", "nginx", 0.5),
        ("ours-zarr", "nginx", 0.5),
        ("ours-raw", "nginx", 0.8),
        ("ours-tiff", "original-tiff", 5.0),
    ):
        r = ratio(prim(name), prim(peer_name))
        others = []
        for c in concurrencies:
            if (by.get(name) and by.get(peer_name)) and primary != ("loadgen", c):
                rc = ratio(by[name].req_s("loadgen", c), by[peer_name].req_s("loadgen", c))
                others.append(f"lg c{c} {fmt_ratio(rc)}")
        extra = f"  ({', '.join(others)})" if others else ""
        target(f"{name} >= {goal}x {peer_name}", r, goal, fmt_ratio(r) + extra)
    for row in rows:
        if row.kind != "ours":
            continue
        top = row.run("loadgen", cmax)
        if not top or "failed" in top:
            target(f"{row.name}: no errors, p99 < {TARGET_P99_MS:.0f} ms at c{cmax}", None, 1, "-")
            continue
        ok = top["n_errors"] == 0 and row.total_errors() == 0 and top["p99_ms"] is not None
        ok = ok and top["p99_ms"] < TARGET_P99_MS
        target(
            f"{row.name}: no errors, p99 < {TARGET_P99_MS:.0f} ms at c{cmax}",
            1.0 if ok else 0.0,
            1.0,
            f"p99 {top['p99_ms']} ms, errors at c{cmax}: {top['n_errors']}, "
            f"in all runs: {row.total_errors()}",
        )

    if gz:
        loop = max(
            (r["MB_per_s"] for row in rows for r in row.runs if r.get("MB_per_s")), default=None
        )
        print()
        print(
            f"gzip level 1 (our server's --gzip), {gz['chunks']} sampled chunks: "
            f"{gz['mean_raw_bytes'] / 1024:.0f} KiB -> {gz['mean_gzip_bytes'] / 1024:.0f} KiB "
            f"({gz['ratio']:.2f}x); gzip {gz['gzip_ms']:.2f} ms/chunk "
            f"({gz['gzip_MB_per_s_per_core']:.0f} MB/s per core), gunzip {gz['gunzip_ms']:.2f} ms"
        )
        net = gz["net_gain_ms"]
        latency = f"latency {'+' if net < 0 else '-'}{abs(net):.2f} ms per chunk"
        cpu_cap = gz["cpu_chunks_per_s_gzip"]
        link_gz = gz["link_MB_per_s"] * 1e6 / gz["mean_gzip_bytes"]
        print(
            f"  1 Gbit/s, one chunk: transfer {gz['transfer_raw_ms']:.2f} -> "
            f"{gz['transfer_gzip_ms']:.2f} ms saves {gz['saved_transfer_ms']:.2f} ms but costs "
            f"{gz['cpu_cost_ms']:.2f} ms of CPU (gzip + gunzip): {latency} "
            f"({'pays off' if net > 0 else 'does not pay off'})"
        )
        print(
            f"  1 Gbit/s, many chunks: the link carries {gz['link_chunks_per_s_raw']:.0f} raw "
            f"chunks/s or {link_gz:.0f} gzipped; gzipping caps the server at {cpu_cap:.0f}/s "
            f"with all {gz['cores']} cores busy -> up to {gz['link_chunks_per_s_gzip']:.0f}/s "
            f"({gz['link_chunks_per_s_gzip'] / gz['link_chunks_per_s_raw']:.2f}x), "
            "only while the server has those cores to spare"
        )
        if loop:
            saved = (gz["mean_raw_bytes"] - gz["mean_gzip_bytes"]) / (loop * 1e6) * 1e3
            gz["loopback_MB_per_s_seen"] = loop
            gz["loopback_saved_ms"] = round(saved, 3)
            print(
                f"  loopback (>= {loop:.0f} MB/s seen here): saves {saved:.3f} ms for "
                f"{gz['cpu_cost_ms']:.2f} ms of CPU: never pays off"
                if saved < gz["cpu_cost_ms"]
                else f"  loopback: saves {saved:.3f} ms for {gz['cpu_cost_ms']:.2f} ms"
            )

    summary = {
        "benchmark": "serve",
        "size_xyz": list(size),
        "dtype": dtype.name,
        "levels": levels,
        "chunk_urls": n_urls,
        "duration_s": a.duration,
        "warmup_s": a.warmup,
        "concurrency": concurrencies,
        "wrk_concurrency": wrk_conc,
        "primary": f"{primary[0]}_c{primary[1]}",
        "server_threads": a.server_threads,
        "server_args": a.server_args,
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "versions": {p: package_version(p) for p in ("precomputed-tif", "waitress", "aiohttp")},
        "ours_server": ours_server,
        "original": original,
        "workdir": str(workdir),
        "rows": rows_json,
        "targets": targets,
        "gzip": gz,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
