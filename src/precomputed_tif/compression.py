"""The byte compressors chunks are written with: deflate from the fastest encoder, and Blosc.

Deflate (zlib and gzip containers): ISA-L (the ``isal`` package) encodes microscopy chunks about
4x faster than zlib at level 1 for a size within 2% (``benchmarks/bench_codecs.py``); its output
is plain RFC 1950/1952 that zlib, Neuroglancer, TensorStore, CloudVolume, tifffile and the
original precomputed-tif all decode. Without ``isal`` (a platform it has no wheel for) the
standard library's zlib writes the same containers. Either encoder is deterministic, so a resumed
run rewrites identical bytes. Blosc (zarr, blockfs) runs in the calling thread: `blosc_encode`.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

_isal: Any
try:
    from isal import isal_zlib as _isal
except ImportError:  # pragma: no cover - isal is a dependency wherever it has wheels
    _isal = None

ENCODER = "isal" if _isal is not None else "zlib"
# ISA-L's level 1 (of 0-3) keeps zlib level 1's ratio at ~4x its speed; zlib's own level 1 when
# falling back: the data is written once and read many times, but the converter is codec-bound
_LEVEL = 1
_GZIP_WBITS = 31  # gzip header and trailer, no file name, mtime 0: deterministic bytes


def crc32(data: Any) -> int:
    """zlib's CRC-32 of `data` (ISA-L's is the same checksum, ~4x faster): blockfs block sums."""
    return int(_isal.crc32(data) if _isal is not None else zlib.crc32(data))


# Below this size the standard library's zlib encodes: a run's bytes must not depend on the
# process's history, and twice in CI two identical runs wrote one tiny coarse chunk's page
# (60 bytes of voxels) as 63 and as 64 deflated bytes; every time it was a page this small.
# zlib costs nothing measurable there, and ISA-L keeps every page of real size.
_SMALL = 4096


def zlib_compress(data: Any) -> bytes:
    """`data` (bytes or a contiguous buffer) as a zlib stream (TIFF's deflate)."""
    if _isal is not None and memoryview(data).nbytes >= _SMALL:
        return _isal.compress(data, _LEVEL)
    return zlib.compress(data, _LEVEL)


def gzip_compress(data: Any) -> bytes:
    """`data` as a gzip member with mtime 0 (Neuroglancer's ``gzip`` encodings)."""
    if _isal is not None and memoryview(data).nbytes >= _SMALL:
        return _isal.compress(data, _LEVEL, wbits=_GZIP_WBITS)
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
