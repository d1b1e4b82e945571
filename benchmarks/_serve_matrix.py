"""`bench_serve.py --rounds N`: every serving path against nginx, interleaved round by round.

Rows: raw chunk files and byte ranges of shard files (nginx, ours, gunicorn, Apache mod_wsgi),
and decoded blockfs, zarr and tiff chunks warm (every chunk fetched once before measuring, the
default cache holds them all) and cold (``--cache-size 0``: every request decodes). Each round
starts every row's server in turn and runs wrk at each concurrency; ratios are taken within a
round (to that round's nginx), so rounds minutes apart on a shared machine are never mixed.
CPU ms per request (the server's process tree) is the steadiest figure when the machine is busy.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import shutil
import statistics
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
GUNICORN_ARGS = ["-k", "gthread", "-w", "1", "--threads", "8"]  # best of 1x8, 2x4, sync x2 here


@dataclass
class MatrixRow:
    name: str
    server: str  # nginx, ours, gunicorn, granian, apache
    volume: str  # raw, shard, blockfs, zarr, tiff
    cold: bool = False
    runs: list[dict[str, Any]] = field(default_factory=list)  # one per (round, concurrency)
    skip: str = ""

    @property
    def baseline(self) -> str:
        return "nginx-shard" if self.volume == "shard" else "nginx-raw"


def matrix_rows(only: list[str] | None) -> list[MatrixRow]:
    rows = [
        MatrixRow("nginx-raw", "nginx", "raw"),
        MatrixRow("ours-raw", "ours", "raw"),
        MatrixRow("nginx-shard", "nginx", "shard"),
        MatrixRow("ours-shard", "ours", "shard"),
        MatrixRow("ours-blockfs-warm", "ours", "blockfs"),
        MatrixRow("ours-blockfs-cold", "ours", "blockfs", cold=True),
        MatrixRow("ours-zarr-warm", "ours", "zarr"),
        MatrixRow("ours-zarr-cold", "ours", "zarr", cold=True),
        MatrixRow("ours-tiff-warm", "ours", "tiff"),
        MatrixRow("ours-tiff-cold", "ours", "tiff", cold=True),
        MatrixRow("gunicorn-raw", "gunicorn", "raw"),
        MatrixRow("gunicorn-shard", "gunicorn", "shard"),
        MatrixRow("gunicorn-blockfs-warm", "gunicorn", "blockfs"),
        MatrixRow("granian-raw", "granian", "raw"),
        MatrixRow("granian-shard", "granian", "shard"),
        MatrixRow("granian-blockfs-warm", "granian", "blockfs"),
        MatrixRow("granian-blockfs-cold", "granian", "blockfs", cold=True),
        MatrixRow("granian-zarr-warm", "granian", "zarr"),
        MatrixRow("granian-zarr-cold", "granian", "zarr", cold=True),
        MatrixRow("granian-tiff-warm", "granian", "tiff"),
        MatrixRow("granian-tiff-cold", "granian", "tiff", cold=True),
        MatrixRow("apache-raw", "apache", "raw"),
        MatrixRow("apache-blockfs-warm", "apache", "blockfs"),
    ]
    return [r for r in rows if not only or r.name in only or r.name in ("nginx-raw", "nginx-shard")]


def shard_ranges(folder: Path, length: int, count: int, seed: int) -> list[tuple[str, str]]:
    """`count` byte ranges of `length` bytes at random offsets of the shard files, as a viewer
    reading chunks of a sharded volume asks for them."""
    shards = sorted(folder.rglob("*.shard"))
    rng = random.Random(seed)
    out = []
    for i in range(count):
        shard = shards[i % len(shards)]
        size = shard.stat().st_size
        n = min(length, size)
        start = rng.randrange(0, size - n + 1)
        out.append(("/" + shard.relative_to(folder).as_posix(), f"{start}-{start + n - 1}"))
    rng.shuffle(out)
    return out


@contextlib.contextmanager
def _apache(sources: Path, workdir: Path) -> Iterator[int]:
    """Apache with mod_wsgi configured from README.md's blocks (tests/test_serve_deploy.py)."""
    sys.path.insert(0, str(TESTS))
    try:
        import test_serve_deploy  # noqa: PLC0415 - the test's helper, not a copy of it
    finally:
        sys.path.remove(str(TESTS))
    folder = workdir / f"apache_{time.monotonic_ns()}"
    folder.mkdir()
    with test_serve_deploy._apache(folder, sources) as port:
        yield port
    shutil.rmtree(folder, ignore_errors=True)


def _tree_cpu(pid: int) -> float:
    import psutil

    try:
        proc = psutil.Process(pid)
        members = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for m in members:
        with contextlib.suppress(psutil.Error):
            t = m.cpu_times()
            total += t.user + t.system
    return total


def _apache_cpu(scratch: Path) -> float:
    """CPU of our Apache's process tree: the apache2 started with a config under `scratch`,
    its workers and mod_wsgi daemons (other Apaches on the machine are left out)."""
    import psutil

    for p in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(p.info["cmdline"] or [])
        if "-DFOREGROUND" in cmdline and str(scratch) in cmdline:
            return _tree_cpu(p.pid)
    return 0.0


def _fetch_all(base: str, paths: list[str]) -> None:
    for path in paths:
        with urllib.request.urlopen(base + path, timeout=30) as r:
            r.read()


def run_matrix(
    a: Any,
    folders: dict[str, Path | None],
    items: list[tuple[str, int]],
    wrk: str,
    servers: Any,
    scratch: Path,
    nginx: str | None,
    ours_server: str,
    run_wrk: Any,
) -> dict[str, Any]:
    only = [r.strip() for r in a.only.split(",")] if a.only else None
    rows = matrix_rows(only)
    concurrencies = [int(c) for c in a.wrk_concurrency.split(",") if c.strip()] or [8, 64]
    chunk_paths = [p for p, _ in items]
    chunk_bytes = max(n for _, n in items)
    lists: dict[str, Path] = {}
    for prefix in ("", "/raw", "/blockfs"):
        f = scratch / f"chunks{prefix.replace('/', '_')}.paths"
        f.write_text("".join(f"{prefix}{p}\n" for p in chunk_paths))
        lists[prefix] = f
    shard = folders.get("shard")
    if shard is not None:
        ranges = shard_ranges(shard, chunk_bytes, len(items), a.seed)
        for prefix in ("", "/shard"):
            f = scratch / f"ranges{prefix.replace('/', '_')}.txt"
            f.write_text("".join(f"{prefix}{p}\t{r}\n" for p, r in ranges))
            lists["ranges" + prefix] = f
    sources = scratch / "sources.json"
    sources.write_text(
        json.dumps(
            [
                {"name": n, "directory": str(folders[n]), "format": "raw" if n != "blockfs" else n}
                for n in ("raw", "shard", "blockfs")
                if folders.get(n) is not None
            ]
        )
    )
    for row in rows:
        if folders.get(row.volume) is None:
            row.skip = f"no {row.volume} volume"
        elif row.server == "nginx" and not nginx:
            row.skip = "nginx not installed"
        elif (
            row.server == "gunicorn"
            and shutil.which(
                "gunicorn",
                path=Path(sys.executable).parent.as_posix()
                + os.pathsep
                + os.environ.get("PATH", ""),
            )
            is None
        ):
            row.skip = "gunicorn not installed (pip install gunicorn)"
        elif row.server == "granian" and importlib.util.find_spec("granian") is None:
            row.skip = "granian not installed (pip install granian)"
        elif row.server == "apache" and not Path("/usr/lib/apache2/modules/mod_wsgi.so").exists():
            row.skip = "apache2 + libapache2-mod-wsgi-py3 not installed"
    print(f"interleaved rounds: {a.rounds} x {len(rows)} rows x wrk c{concurrencies}", flush=True)
    for rnd in range(a.rounds):
        for row in rows:
            if row.skip:
                continue
            try:
                _run_row(
                    row,
                    rnd,
                    a,
                    folders,
                    lists,
                    sources,
                    wrk,
                    servers,
                    scratch,
                    nginx,
                    ours_server,
                    concurrencies,
                    chunk_paths,
                    run_wrk,
                )
            except Exception as exc:  # one broken row must not lose the others' figures
                row.skip = f"failed: {exc}"
                print(f"{row.name}: {row.skip}", flush=True)
    return summarize(rows, concurrencies, a.rounds)


def _run_row(
    row,
    rnd,
    a,
    folders,
    lists,
    sources,
    wrk,
    servers,
    scratch,
    nginx,
    ours_server,
    concurrencies,
    chunk_paths,
    run_wrk,
) -> None:
    from bench_serve import free_port, wait_ready

    port = free_port()
    folder = folders[row.volume]
    proc = None
    cm: Any = contextlib.nullcontext()
    prefix = ""
    if row.server == "nginx":
        prefix_dir = scratch / "nginx"
        shutil.rmtree(prefix_dir, ignore_errors=True)
        prefix_dir.mkdir()
        conf = (HERE / "nginx.conf.template").read_text()
        conf = conf.replace("@PREFIX@", str(prefix_dir)).replace("@ROOT@", str(folder))
        (prefix_dir / "nginx.conf").write_text(conf.replace("@PORT@", str(port)))
        argv = [nginx, "-p", f"{prefix_dir}/", "-c", str(prefix_dir / "nginx.conf")]
        argv += ["-e", str(prefix_dir / "error.log"), "-g", "daemon off;"]
    elif row.server in ("ours", "granian"):  # the CLI, on its waitress or its granian server
        argv = [ours_server, "-d", str(folder), "-a", "127.0.0.1", "-p", str(port)]
        argv += [
            "--log",
            "WARNING",
            "--format",
            "raw" if row.volume in ("raw", "shard") else row.volume,
            "--server",
            "granian" if row.server == "granian" else "waitress",
        ]
        if row.cold:
            argv += ["--cache-size", "0"]
    elif row.server == "gunicorn":
        prefix = "/" + row.volume
        app = f'precomputed_tif.wsgi_webserver:make_app("{sources}")'
        argv = [sys.executable, "-m", "gunicorn", *GUNICORN_ARGS, "-b", f"127.0.0.1:{port}", app]
    else:
        prefix = "/" + row.volume
        cm = _apache(sources, scratch)
    with cm as apache_port:
        if row.server == "apache":
            port = apache_port
        else:
            logs = scratch / row.name
            if row.server == "gunicorn":  # gunicorn >= 24 puts a control socket in HOME
                os.environ["HOME"] = str(scratch)
            proc = servers.start(argv, folder, logs)
        base = f"http://127.0.0.1:{port}"
        try:
            if proc is not None:
                err = (
                    wait_ready(base, proc)
                    if row.server != "gunicorn"
                    else _wait(base + prefix + "/info")
                )
                if err:
                    raise RuntimeError(err)
            shard = row.volume == "shard"
            listing = lists[
                ("ranges" if shard else "")
                + (prefix if prefix in ("/raw", "/blockfs", "/shard") else "")
            ]
            script = HERE / ("ranges.lua" if shard else "chunks.lua")
            if row.server != "nginx" and row.volume in ("blockfs", "zarr", "tiff") and not row.cold:
                _fetch_all(
                    base, [prefix + p for p in chunk_paths]
                )  # warm: every chunk decoded once
            run_wrk(wrk, base, listing, 8, 1, script)  # connections, threads, the page cache
            for c in concurrencies:
                cpu0 = _apache_cpu(scratch) if proc is None else _tree_cpu(proc.pid)
                r = run_wrk(wrk, base, listing, c, a.duration, script)
                cpu1 = _apache_cpu(scratch) if proc is None else _tree_cpu(proc.pid)
                if "failed" in r:
                    raise RuntimeError(r["failed"])
                r.update(round=rnd, concurrency=c)
                r["cpu_ms_per_req"] = round((cpu1 - cpu0) * 1e3 / r["ok"], 3) if r["ok"] else None
                row.runs.append(r)
                print(
                    f"round {rnd + 1} {row.name:<22} c{c:<3} {r['req_per_s']:>8.1f} req/s "
                    f"p50 {r['p50_ms']} p99 {r['p99_ms']} ms, CPU {r['cpu_ms_per_req']} ms/req, "
                    f"errors {r['n_errors']}",
                    flush=True,
                )
        finally:
            if proc is not None:
                servers.stop(proc)


def _wait(url: str, seconds: float = 30.0) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
            r.read()
            return ""
        time.sleep(0.2)
    return f"no answer at {url}"


def summarize(rows: list[MatrixRow], concurrencies: list[int], rounds: int) -> dict[str, Any]:
    """Per row and concurrency: medians over rounds of req/s, p50, p99, CPU ms/req, and of the
    per-round ratios to the baseline nginx (req/s, p99)."""
    by = {r.name: r for r in rows}
    out: dict[str, Any] = {}
    head = (
        f"{'row':<23}{'conc':>5}{'req/s':>9}{'vs nginx':>10}{'p50 ms':>8}{'p99 ms':>9}"
        f"{'p99 vs':>8}{'CPU ms/req':>12}{'nginx CPU':>11}{'errors':>8}"
    )
    print()
    print(f"medians over {rounds} rounds; 'vs nginx' and 'p99 vs' are per-round ratios to nginx")
    print(head)
    print("-" * len(head))
    for row in rows:
        if row.skip and not row.runs:
            print(f"{row.name:<23}skipped: {row.skip}")
            out[row.name] = {"skipped": row.skip}
            continue
        base = by.get(row.baseline)
        entry: dict[str, Any] = {}
        for c in concurrencies:
            mine = {r["round"]: r for r in row.runs if r["concurrency"] == c}
            theirs = {r["round"]: r for r in (base.runs if base else []) if r["concurrency"] == c}
            shared = [k for k in mine if k in theirs]

            def med(values: list[float | None]) -> float | None:
                vals = [v for v in values if v is not None]
                return round(statistics.median(vals), 3) if vals else None

            req_ratio = med([mine[k]["req_per_s"] / theirs[k]["req_per_s"] for k in shared])
            p99_ratio = med(
                [mine[k]["p99_ms"] / theirs[k]["p99_ms"] for k in shared if theirs[k]["p99_ms"]]
            )
            figures = {
                "req_per_s": med([r["req_per_s"] for r in mine.values()]),
                "vs_nginx": req_ratio if row.server != "nginx" else None,
                "p50_ms": med([r["p50_ms"] for r in mine.values()]),
                "p99_ms": med([r["p99_ms"] for r in mine.values()]),
                "p99_vs_nginx": p99_ratio if row.server != "nginx" else None,
                "cpu_ms_per_req": med([r["cpu_ms_per_req"] for r in mine.values()]),
                "nginx_cpu_ms_per_req": med([theirs[k]["cpu_ms_per_req"] for k in shared]),
                "errors": sum(r["n_errors"] for r in mine.values()),
                "rounds": len(mine),
                "per_round_vs_nginx": [
                    round(mine[k]["req_per_s"] / theirs[k]["req_per_s"], 3) for k in shared
                ],
            }
            entry[f"c{c}"] = figures

            def f(v: float | None, spec: str = ".2f") -> str:
                return "-" if v is None else format(v, spec)

            print(
                f"{row.name:<23}{c:>5}{f(figures['req_per_s'], '.0f'):>9}"
                f"{f(figures['vs_nginx']):>10}{f(figures['p50_ms']):>8}{f(figures['p99_ms']):>9}"
                f"{f(figures['p99_vs_nginx']):>8}{f(figures['cpu_ms_per_req']):>12}"
                f"{f(figures['nginx_cpu_ms_per_req']):>11}{figures['errors']:>8}"
            )
        out[row.name] = entry
    return out
