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

TIFF strips are small (a 64 x 64 uint16 page is 8 KiB), and imagecodecs sets up a new libdeflate
compressor for every call: a fifth of the CPU of deflating such pages. `deflate_pages` calls
imagecodecs' own copy of libdeflate through ctypes with one compressor per thread, kept across
calls; it checks once that this writes the bytes imagecodecs writes, and otherwise deflates each
page through `zlib_compress`.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
import threading
import weakref
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


def deflate_pages(pages: np.ndarray) -> tuple[bytes, list[int]]:
    """Each page (along the first axis) of `pages` as its own zlib stream of the page's bytes as
    they lie in memory, the streams back to back, and each one's size: a TIFF chunk's strips.
    The same bytes as `zlib_compress` of each page."""
    pages = np.ascontiguousarray(pages)
    kept = _kept_compressor()
    if kept is None or pages.size == 0:
        streams = [zlib_compress(page) for page in pages]
        return b"".join(streams), [len(s) for s in streams]
    return kept.pages(pages)


class _KeptCompressor:
    """A libdeflate level-1 compressor and an output buffer, reused by one thread."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        self._handle = lib.libdeflate_alloc_compressor(_LEVEL)
        if not self._handle:
            raise MemoryError("libdeflate could not allocate a compressor")
        weakref.finalize(self, lib.libdeflate_free_compressor, self._handle)
        self._out = np.empty(0, np.uint8)

    def pages(self, pages: np.ndarray) -> tuple[bytes, list[int]]:
        count = len(pages)
        page_bytes = pages.nbytes // count
        bound = self._lib.libdeflate_zlib_compress_bound(self._handle, page_bytes)
        if len(self._out) < bound * count:
            self._out = np.empty(bound * count, np.uint8)
        compress, handle = self._lib.libdeflate_zlib_compress, self._handle
        source, target = pages.ctypes.data, self._out.ctypes.data
        sizes, used = [], 0
        for i in range(count):
            size = compress(handle, source + i * page_bytes, page_bytes, target + used, bound)
            if not size:  # cannot happen within the bound libdeflate gave
                raise RuntimeError("libdeflate found no room for a page within its own bound")
            sizes.append(size)
            used += size
        return self._out[:used].tobytes(), sizes


_threads = threading.local()


def _kept_compressor() -> _KeptCompressor | None:
    if _libdeflate is None:
        return None
    kept = getattr(_threads, "compressor", None)
    if kept is None:
        lib = _bundled_libdeflate()
        if lib is None:
            return None
        kept = _threads.compressor = _KeptCompressor(lib)
    return kept


_SIGNATURES = {  # libdeflate's stable C API (libdeflate.h), the calls used here
    "libdeflate_alloc_compressor": (ctypes.c_void_p, [ctypes.c_int]),
    "libdeflate_free_compressor": (None, [ctypes.c_void_p]),
    "libdeflate_zlib_compress_bound": (ctypes.c_size_t, [ctypes.c_void_p, ctypes.c_size_t]),
    "libdeflate_zlib_compress": (
        ctypes.c_size_t,
        [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t],
    ),
}


def _load_bundled_libdeflate() -> Any:
    """The libdeflate that imagecodecs' wheel carries (``imagecodecs.libs`` on Linux,
    ``.dylibs`` on macOS), if it loads and deflates as imagecodecs does; else None."""
    if _libdeflate is None:
        return None
    package = os.path.dirname(_libdeflate.__file__)
    found = glob.glob(os.path.join(package + ".libs", "libdeflate*")) + glob.glob(
        os.path.join(package, ".dylibs", "libdeflate*")
    )
    sample = np.frombuffer(bytes(range(256)) * 24 + b"microscopy" * 300, np.uint8).reshape(2, -1)
    for path in sorted(found):
        try:
            lib = ctypes.CDLL(path)
            for name, (restype, argtypes) in _SIGNATURES.items():
                function = getattr(lib, name)
                function.restype, function.argtypes = restype, argtypes
            streams, _ = _KeptCompressor(lib).pages(sample)
        except (OSError, AttributeError, MemoryError, RuntimeError):
            continue
        if streams == b"".join(zlib_compress(half) for half in sample):
            return lib
    return None


_bundled_libdeflate = functools.cache(_load_bundled_libdeflate)  # looked for once a process


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
