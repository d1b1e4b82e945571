#!/usr/bin/env python3
# Copied from shared/bench/loadgen.py (the project may not read ../shared at run time); keep
# the two in sync if either changes. Verbatim except this header (and the noqa: the
# original uses %-formatting, which ruff's UP031 flags).
# ruff: noqa: UP031
"""Bounded HTTP load generator for precomputed chunk servers (asyncio+aiohttp).

Requests chunk URLs from a list (pre-shuffled; walked in order, cycling) at a
fixed concurrency for at most --duration seconds and at most --max-requests
requests, then stops by itself.  Only loopback targets are accepted.

Per response it checks: HTTP status 200, body length == expected length (if
the list has "path<TAB>nbytes" lines), and the Access-Control-Allow-Origin
header.  Prints one JSON line: requests, errors by kind, req/s, MB/s,
latency p50/p90/p99/max in ms.

usage: loadgen.py BASE_URL URLS.txt --concurrency 8 --duration 15
"""

import argparse
import asyncio
import json
import sys
import time
from urllib.parse import urlparse

import aiohttp


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("urls")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--max-requests", type=int, default=200000)
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    host = urlparse(a.base).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("refusing non-loopback target %r" % host)
    items = []
    for line in open(a.urls):
        parts = line.rstrip("\n").split("\t")
        items.append((parts[0], int(parts[1]) if len(parts) > 1 else None))
    lat = []
    errs = {}
    nbytes = 0
    no_cors = 0
    state = {"next": 0, "issued": 0}
    t_end = time.monotonic() + a.duration
    timeout = aiohttp.ClientTimeout(total=a.timeout)
    conn = aiohttp.TCPConnector(limit=a.concurrency, force_close=False)

    async def worker(session, wid):
        nonlocal nbytes, no_cors
        while time.monotonic() < t_end and state["issued"] < a.max_requests:
            state["issued"] += 1
            path, exp = items[state["next"] % len(items)]
            state["next"] += 1
            t0 = time.monotonic()
            try:
                async with session.get(
                    a.base.rstrip("/") + path, headers={"Origin": "http://localhost:8080"}
                ) as r:
                    body = await r.read()
                    dt = time.monotonic() - t0
                    if r.status != 200:
                        k = "status_%d" % r.status
                        errs[k] = errs.get(k, 0) + 1
                        continue
                    if exp is not None and len(body) != exp:
                        errs["bad_length"] = errs.get("bad_length", 0) + 1
                        continue
                    if "Access-Control-Allow-Origin" not in r.headers:
                        no_cors += 1
                    lat.append(dt)
                    nbytes += len(body)
            except Exception as e:  # timeouts, resets
                k = type(e).__name__
                errs[k] = errs.get(k, 0) + 1

    t0 = time.monotonic()
    async with aiohttp.ClientSession(connector=conn, timeout=timeout, auto_decompress=False) as s:
        await asyncio.gather(*[worker(s, i) for i in range(a.concurrency)])
    el = time.monotonic() - t0
    lat.sort()

    def pct(p):
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else None

    print(
        json.dumps(
            dict(
                label=a.label,
                concurrency=a.concurrency,
                elapsed_s=round(el, 2),
                ok=len(lat),
                errors=errs,
                no_cors_header=no_cors,
                req_per_s=round(len(lat) / el, 1),
                MB_per_s=round(nbytes / el / 1e6, 1),
                p50_ms=pct(0.50),
                p90_ms=pct(0.90),
                p99_ms=pct(0.99),
                max_ms=pct(1.0),
            )
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
