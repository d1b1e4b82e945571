"""The byte compressors chunks are written with: deflate through libdeflate, and Blosc.

Deflate (zlib and gzip containers) is libdeflate's level 1, through imagecodecs (which tifffile
needs anyway): about twice zlib level 1's speed on microscopy chunks, and a few percent smaller
(``benchmarks/bench_codecs.py``); its output is plain RFC 1950/1952 that zlib, Neuroglancer,
TensorStore, CloudVolume, tifffile and the original precomputed-tif all decode. It is also the
same bytes in every process: a resumed run rewrites what an uninterrupted one wrote. ISA-L,
60-70% faster still, was dropped for that reason: its level 1 streams for the same page changed
with the process's address-space layout (in 2 of 10 processes, each deflating the same 32,768
pages of the benchmark stack; ``bench_codecs.py --processes``). Where imagecodecs lacks
libdeflate, the standard library's zlib writes the same containers. Blosc (zarr, blockfs) runs
in the calling thread: `blosc_encode`.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

_libdeflate: Any
try:
    import imagecodecs as _libdeflate

    if not _libdeflate.DEFLATE.available:  # pragma: no cover - every imagecodecs wheel has it
        _libdeflate = None
except ImportError:  # pragma: no cover - imagecodecs is a dependency
    _libdeflate = None

# level 1: the data is written once and read many times, but the converter is codec-bound
_LEVEL = 1
_GZIP_WBITS = 31  # gzip header and trailer, no file name, mtime 0: deterministic bytes


def crc32(data: Any) -> int:
    """zlib's CRC-32 of `data` (libdeflate's is the same checksum, ~15x faster): blockfs sums."""
    return int(_libdeflate.deflate_crc32(data) if _libdeflate is not None else zlib.crc32(data))


def zlib_compress(data: Any) -> bytes:
    """`data` (bytes or a contiguous buffer) as a zlib stream (TIFF's deflate)."""
    if _libdeflate is not None:
        return bytes(_libdeflate.deflate_encode(data, level=_LEVEL))
    return zlib.compress(data, _LEVEL)


def gzip_compress(data: Any) -> bytes:
    """`data` as a gzip member with mtime 0 (Neuroglancer's ``gzip`` encodings)."""
    if _libdeflate is not None:
        return bytes(_libdeflate.gzip_encode(data, level=_LEVEL))
    compressor = zlib.compressobj(_LEVEL, zlib.DEFLATED, _GZIP_WBITS)
    return compressor.compress(data) + compressor.flush()


def blosc_encode(data: np.ndarray, cname: str, clevel: int, shuffle: int) -> bytes:
    """A Blosc frame of `data` (C order), compressed in the calling thread.

    numcodecs lets Blosc use its own threads when called from a main thread, as each pool
    worker's task is; those threads write a frame's blocks in the order they finish, so the
    same chunk gives different bytes from run to run (breaking resume byte-identity), and they
    compete with the other workers for the cores. One thread per task is the pool's job.
    """
    import numcodecs.blosc

    numcodecs.blosc.use_threads = False  # numcodecs' switch; it only picks Blosc's entry point
    return bytes(
        numcodecs.blosc.compress(np.ascontiguousarray(data), cname.encode(), clevel, shuffle, 0)
    )
