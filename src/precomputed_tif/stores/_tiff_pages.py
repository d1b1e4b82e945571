"""Decoding the TIFF chunk files precomputed-tif writes without tifffile's per-file overhead.

A chunk file is z pages of (y, x), each one deflate strip, classic little-endian TIFF (ours and
the original's alike). tifffile parses every page through its general machinery, ~10 ms for a
64-page chunk; here the strip offsets are read once per file (kept by the file's stamp) and the
strips inflated by imagecodecs' libdeflate straight into one buffer, ~4x faster. Any other
layout (several strips per page, a predictor, BigTIFF, big-endian, another dtype) gives None:
the caller then reads the file with tifffile.
"""

from __future__ import annotations

import os
import struct
import threading
from collections import OrderedDict

import numpy as np

from ..errors import StoreError

Strips = tuple[tuple[int, int], ...]

_CLASSIC_LE = b"II*\x00"
_DEFLATE = (8, 32946)  # Adobe deflate, and the old code tifffile also reads as zlib
_SAMPLE_FORMAT = {"u": 1, "i": 2, "f": 3}
_LAYOUTS_KEPT = 8192  # file version -> strips: ~1 KiB each for 64 pages


class _Layouts:
    """Strip offsets of recently read files, by (path, stamp, shape, dtype): a file's layout
    never changes unless it is rewritten, which changes its stamp."""

    def __init__(self, kept: int) -> None:
        self.kept = kept
        self._items: OrderedDict[tuple[object, ...], Strips] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[object, ...]) -> Strips | None:
        with self._lock:
            strips = self._items.get(key)
            if strips is not None:
                self._items.move_to_end(key)
            return strips

    def put(self, key: tuple[object, ...], strips: Strips) -> None:
        with self._lock:
            self._items[key] = strips
            while len(self._items) > self.kept:
                self._items.popitem(last=False)


_layouts = _Layouts(_LAYOUTS_KEPT)


def strip_layout(data: bytes, shape: tuple[int, int, int], dtype: np.dtype) -> Strips | None:
    """(offset, size) of each page's single deflate strip, or None when the file is not a
    classic little-endian TIFF of `shape[0]` pages of (y, x) `dtype` voxels in one strip each."""
    if data[:4] != _CLASSIC_LE or len(data) < 8:
        return None
    pages, height, width = shape
    want = {
        256: width,
        257: height,
        258: dtype.itemsize * 8,
        277: 1,
        339: _SAMPLE_FORMAT.get(dtype.kind, -1),
    }
    strips: list[tuple[int, int]] = []
    (ifd,) = struct.unpack_from("<I", data, 4)
    try:
        while ifd:
            if len(strips) == pages:
                return None  # more pages than the chunk has
            page = _page_strip(data, ifd, want)
            if page is None:
                return None
            strip, next_ifd = page
            strips.append(strip)
            if len(strips) == 2 and next_ifd:
                rest = _repeated_pages(data, ifd, next_ifd, pages - 2)
                if rest is not None:
                    strips.extend(rest)
                    break
            ifd = next_ifd
    except struct.error:
        return None  # a truncated IFD: tifffile says what is wrong with it
    return tuple(strips) if len(strips) == pages else None


def _page_strip(data: bytes, ifd: int, want: dict[int, int]) -> tuple[tuple[int, int], int] | None:
    """The strip of the page whose IFD is at `ifd`, and the next IFD's offset; None when the
    page is not one deflate strip of the wanted size and type."""
    (count,) = struct.unpack_from("<H", data, ifd)
    tags: dict[int, int] = {}
    for tag, kind, n, value in struct.iter_unpack("<HHII", data[ifd + 2 : ifd + 2 + 12 * count]):
        if n != 1 and tag in (258, 273, 279, 339):
            return None  # several strips, or samples: not our layout
        tags[tag] = value & 0xFFFF if kind == 3 else value  # SHORT: the low half
    (next_ifd,) = struct.unpack_from("<I", data, ifd + 2 + 12 * count)
    if tags.get(259) not in _DEFLATE or tags.get(317, 1) != 1 or tags.get(266, 1) != 1:
        return None
    if any(tags.get(tag, 1 if tag in (277, 339) else None) != v for tag, v in want.items()):
        return None
    if 273 not in tags or 279 not in tags:
        return None
    return (tags[273], tags[279]), next_ifd


def _repeated_pages(data: bytes, ifd: int, next_ifd: int, remaining: int) -> Strips | None:
    """The strips of the `remaining` pages after the (checked) page at `ifd`, when their IFDs
    follow it back to back and equal it in every byte but the strip's place and size, as ours
    and the original's are: one numpy comparison instead of parsing each IFD (which cost
    ~0.4 ms of a 64-page chunk, a fifth of inflating it). None: parse them one by one."""
    (count,) = struct.unpack_from("<H", data, ifd)
    stride = 2 + 12 * count + 4
    if remaining < 1 or next_ifd != ifd + stride or ifd + stride * (remaining + 1) > len(data):
        return None
    rows = np.frombuffer(data, np.uint8, stride * (remaining + 1), ifd).reshape(-1, stride)
    entries = rows[0, 2 : 2 + 12 * count].view("<u2").reshape(count, 6)
    tags = entries[:, 0].tolist()
    if entries[tags.index(273), 1] != 4 or entries[tags.index(279), 1] != 4:
        return None  # SHORT offsets or sizes: the page-by-page parse handles them
    offset_at = 2 + 12 * tags.index(273) + 8
    size_at = 2 + 12 * tags.index(279) + 8
    varying = np.zeros(stride, bool)
    for at in (offset_at, size_at, stride - 4):
        varying[at : at + 4] = True
    if not (rows[1:, ~varying] == rows[0, ~varying]).all():
        return None
    next_ifds = rows[:, stride - 4 :].copy().view("<u4")[:, 0].astype(np.int64)
    expected = ifd + stride * np.arange(1, remaining + 2, dtype=np.int64)
    expected[-1] = 0
    if not (next_ifds == expected).all():
        return None
    offsets = rows[1:, offset_at : offset_at + 4].copy().view("<u4")[:, 0].tolist()
    sizes = rows[1:, size_at : size_at + 4].copy().view("<u4")[:, 0].tolist()
    return tuple(zip(offsets, sizes))


def read_pages(path: str, shape: tuple[int, int, int], dtype: np.dtype) -> bytes | None:
    """The chunk's voxels as little-endian bytes (z, y, x order), or None for another layout.

    Raises FileNotFoundError when the file is missing, StoreError when a strip is damaged.
    """
    out = inflate_pages(path, shape, dtype)
    return None if out is None else bytes(out)


def inflate_pages(path: str, shape: tuple[int, int, int], dtype: np.dtype) -> bytearray | None:
    """`read_pages` into a new buffer the caller owns."""
    with open(path, "rb") as f:
        stat = os.fstat(f.fileno())
        data = f.read()
    key = (path, (stat.st_mtime_ns, stat.st_size, stat.st_ino), shape, dtype.str)
    strips = _layouts.get(key)
    if strips is None:
        strips = strip_layout(data, shape, dtype)
        if strips is None:
            return None
        _layouts.put(key, strips)
    import imagecodecs

    page = shape[1] * shape[2] * dtype.itemsize
    out = bytearray(page * shape[0])
    view, source = memoryview(out), memoryview(data)
    for i, (offset, size) in enumerate(strips):
        try:
            strip = source[offset : offset + size]  # a view: any buffer decodes, no copy
            got = imagecodecs.deflate_decode(
                strip,  # type: ignore[arg-type]  # the stubs name bytes, bytearray and mmap
                out=view[i * page : (i + 1) * page],
            )
        except Exception as exc:  # imagecodecs.DeflateError: no stable base class to name
            raise StoreError(f"chunk file {path!r} is damaged: page {i}: {exc}") from exc
        if len(got) != page or offset + size > len(data):
            raise StoreError(f"chunk file {path!r} is damaged: page {i} is short")
    return out
