#!/usr/bin/env python3
"""The serving app's own time per request: the WSGI app called in-process, no HTTP server.

Every chunk URL of the volume is asked once to fill the cache, then `--passes` more times in
the same shuffled order; prints the mean microseconds per request and, with `--profile`, the
functions that took the most time. What a server adds (granian, waitress, gunicorn) is measured
by bench_serve.py; this isolates the app, whose time a threaded server pays again in handing the
GIL between its threads.

usage: bench_app.py VOLUME_DIR [--passes 10] [--profile] [-- SERVER_ARGS...]
       (SERVER_ARGS are precomputed-webserver's, e.g. --format raw or --cache-size 0)
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import random
import sys
import time
from typing import Any


def chunk_paths(volume: str, seed: int) -> list[str]:
    from precomputed_tif import open_store
    from precomputed_tif.geometry import chunks_in, full_box

    paths = []
    for scale in open_store(volume).pyramid.scales:
        for _, box in chunks_in(full_box(scale.size), scale.chunk_size, scale.size):
            paths.append(f"/{scale.key}/{box.chunk_name}")
    random.Random(seed).shuffle(paths)
    return paths


def environ(path: str) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SCRIPT_NAME": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "9000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1:9000",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("volume")
    ap.add_argument("--passes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("server_args", nargs="*", help="precomputed-webserver's arguments")
    a = ap.parse_args()

    from precomputed_tif.cli.serve import build_app, build_parser

    args = build_parser().parse_args(["-d", a.volume, "--log", "WARNING", *a.server_args])
    app = build_app(args).app
    paths = chunk_paths(a.volume, a.seed)
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        statuses.append(status)

    def ask_all() -> None:
        for path in paths:
            for _ in app(environ(path), start_response):
                pass

    ask_all()
    failed = [s for s in statuses if not s.startswith("200")]
    if failed:
        raise SystemExit(f"{len(failed)} of {len(paths)} chunks were not answered 200: {failed[0]}")
    profile = cProfile.Profile() if a.profile else None
    started = time.perf_counter()
    if profile is not None:
        profile.enable()
    for _ in range(a.passes):
        ask_all()
    if profile is not None:
        profile.disable()
    per_request = (time.perf_counter() - started) / (a.passes * len(paths))
    print(f"{per_request * 1e6:.1f} us per request ({len(paths)} chunk URLs x {a.passes})")
    if profile is not None:
        pstats.Stats(profile).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
