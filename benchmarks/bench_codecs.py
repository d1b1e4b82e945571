#!/usr/bin/env python3
"""Codec micro-benchmark: zlib/gzip encoders on real chunks, one core, CPU time.

usage: bench_codecs.py STACK_GLOB [--planes 64] [--chunk 64] [--rounds 3] [--unit chunk|page]
                       [--processes N]

Cuts 64^3 chunks out of the first planes of a stack (as a conversion would), then encodes every
chunk (``--unit page``: every 64x64 page of every chunk, one stream each, as tiff chunk files
are written) with each available deflate encoder (stdlib zlib, zlib-ng, ISA-L through ``isal``,
libdeflate and zlib-ng through imagecodecs) and reports encode MB/s (uncompressed bytes per CPU
second of this process: robust on a shared machine), compression ratio, and whether the stdlib
decoder (zlib.decompress / gzip.decompress) returns the chunk's bytes. Also Blosc zstd 1 with
bit-shuffle (what zarr and blockfs chunks use) for scale. ``--processes N`` then encodes
everything again in N fresh processes per encoder and says whether they all wrote the same
bytes: a resumed conversion rewrites chunks in another process, with another address-space
layout. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import json
import subprocess
import sys
import time
import zlib
from collections.abc import Callable

import numpy as np
import tifffile

Encoder = Callable[[bytes], bytes]


def encoders() -> dict[str, tuple[str, Encoder]]:
    """name -> (container, encode); container 'zlib' or 'gzip' says which decoder checks it."""
    out: dict[str, tuple[str, Encoder]] = {}
    for level in (1, 4, 6):
        out[f"zlib {level}"] = ("zlib", lambda b, lv=level: zlib.compress(b, lv))
    out["gzip 1 (stdlib)"] = ("gzip", lambda b: gzip.compress(b, 1, mtime=0))
    try:
        from zlib_ng import zlib_ng

        for level in (1, 2, 4):
            out[f"zlib-ng {level}"] = ("zlib", lambda b, lv=level: zlib_ng.compress(b, lv))
        out["zlib-ng gzip 1"] = ("gzip", lambda b: zlib_ng.compress(b, 1, wbits=31))
    except ImportError:
        pass
    try:
        from isal import isal_zlib

        for level in (0, 1, 2):
            out[f"isal {level}"] = ("zlib", lambda b, lv=level: isal_zlib.compress(b, lv))
        out["isal gzip 1"] = ("gzip", lambda b: isal_zlib.compress(b, 1, wbits=31))
    except ImportError:
        pass
    try:
        import imagecodecs

        for level in (1, 2, 4, 6):
            out[f"libdeflate {level}"] = (
                "zlib",
                lambda b, lv=level: imagecodecs.deflate_encode(b, level=lv),
            )
        out["libdeflate gzip 1"] = ("gzip", lambda b: imagecodecs.gzip_encode(b, level=1))
        out["imagecodecs zlibng 1"] = ("zlib", lambda b: imagecodecs.zlibng_encode(b, level=1))
    except ImportError:
        pass
    try:
        import numcodecs

        blosc = numcodecs.Blosc("zstd", 1, numcodecs.Blosc.BITSHUFFLE)
        numcodecs.blosc.set_nthreads(1)
        out["blosc zstd 1 bitshuffle"] = ("blosc", lambda b: bytes(blosc.encode(b)))
    except ImportError:
        pass
    return out


def load_chunks(pattern: str, planes: int, chunk: int, unit: str = "chunk") -> list[bytes]:
    paths = sorted(glob.glob(pattern))[:planes]
    stack = np.stack([tifffile.imread(p) for p in paths])
    nz, ny, nx = stack.shape
    chunks = [
        np.ascontiguousarray(stack[z : z + chunk, y : y + chunk, x : x + chunk])
        for z in range(0, nz, chunk)
        for y in range(0, ny, chunk)
        for x in range(0, nx, chunk)
    ]
    if unit == "page":
        return [page.tobytes() for c in chunks for page in c]
    return [c.tobytes() for c in chunks]


def digest(name: str, units: list[bytes]) -> str:
    """The MD5 of everything encoder `name` writes for `units`, in order."""
    encode = encoders()[name][1]
    md5 = hashlib.md5()
    for unit in units:
        md5.update(encode(unit))
    return md5.hexdigest()


def digests_in_fresh_processes(a: argparse.Namespace, name: str) -> set[str]:
    argv = [sys.executable, __file__, a.pattern, "--planes", str(a.planes), "--chunk"]
    argv += [str(a.chunk), "--unit", a.unit, "--digest", name]
    return {
        subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()
        for _ in range(a.processes)
    }


def decodes(container: str, blob: bytes, raw: bytes) -> bool:
    if container == "zlib":
        return zlib.decompress(blob) == raw
    if container == "gzip":
        return gzip.decompress(blob) == raw
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pattern")
    ap.add_argument("--planes", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--unit", choices=("chunk", "page"), default="chunk")
    ap.add_argument("--processes", type=int, default=0)
    ap.add_argument("--digest", metavar="ENCODER", help=argparse.SUPPRESS)  # one fresh process
    a = ap.parse_args()
    chunks = load_chunks(a.pattern, a.planes, a.chunk, a.unit)
    if a.digest:
        print(digest(a.digest, chunks))
        return
    total = sum(len(c) for c in chunks)
    print(f"{len(chunks)} {a.unit}s, {total / 2**20:.0f} MiB; encode MB/s = raw bytes / CPU second")
    rows = {}
    for name, (container, encode) in encoders().items():
        ok = all(decodes(container, encode(c), c) for c in chunks[:8])
        speeds = []
        out_bytes = 0
        for _ in range(a.rounds):
            t0 = time.process_time()
            out_bytes = sum(len(encode(c)) for c in chunks)
            speeds.append(total / 1e6 / max(1e-9, time.process_time() - t0))
        rows[name] = {
            "mb_s": round(max(speeds), 1),
            "mb_s_rounds": [round(s, 1) for s in speeds],
            "ratio": round(total / out_bytes, 3),
            "stdlib_decodes": ok,
        }
        same = ""
        if a.processes:
            outputs = len(digests_in_fresh_processes(a, name))
            rows[name]["distinct_outputs_in_processes"] = outputs
            same = f", {'the same bytes' if outputs == 1 else f'{outputs} different outputs'}"
            same += f" in {a.processes} processes"
        print(
            f"{name:<26}{max(speeds):>8.0f} MB/s  ratio {total / out_bytes:5.2f}  "
            f"({container}{', stdlib decodes it' if ok and container != 'blosc' else ''}{same})",
            flush=True,
        )
    out = {"benchmark": "codecs", "unit": a.unit, "units": len(chunks), "rows": rows}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
