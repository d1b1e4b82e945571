"""Standard deflate streams (zlib and gzip containers) from the fastest encoder installed.

ISA-L (the ``isal`` package) encodes microscopy chunks about 4x faster than zlib at level 1 for
a size within 2% (``benchmarks/bench_codecs.py``); its output is plain RFC 1950/1952 that zlib,
Neuroglancer, TensorStore, CloudVolume, tifffile and the original precomputed-tif all decode.
Without ``isal`` (a platform it has no wheel for) the standard library's zlib writes the same
containers. Either encoder is deterministic, so a resumed run rewrites identical bytes.
"""

from __future__ import annotations

import zlib
from typing import Any

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


def zlib_compress(data: Any) -> bytes:
    """`data` (bytes or a contiguous buffer) as a zlib stream (TIFF's deflate)."""
    if _isal is not None:
        return _isal.compress(data, _LEVEL)
    return zlib.compress(data, _LEVEL)


def gzip_compress(data: Any) -> bytes:
    """`data` as a gzip member with mtime 0 (Neuroglancer's ``gzip`` encodings)."""
    if _isal is not None:
        return _isal.compress(data, _LEVEL, wbits=_GZIP_WBITS)
    compressor = zlib.compressobj(_LEVEL, zlib.DEFLATED, _GZIP_WBITS)
    return compressor.compress(data) + compressor.flush()
