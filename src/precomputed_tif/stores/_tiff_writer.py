"""Writing a TIFF chunk file: z pages of (y, x), one deflate strip each, classic little-endian.

tifffile's general writer spends ~2 ms of Python per chunk file on a layout this simple (seeks,
tag objects, resolution tags for every page), more than deflating the chunk with libdeflate
(``benchmarks/README.md``). This writes the same layout directly: the header, every page's IFD
back to back (so readers find all strips in the first kilobytes), the first page's shape
description as tifffile writes it (``{"shape": [z, y, x]}``, which tifffile and the original
precomputed-tif read back as one (z, y, x) series), then the strips. The bytes depend only on
the voxels, so a resumed run rewrites identical files. `_tiff_pages` reads this layout, and
tifffile reads it as any TIFF (tested against tifffile on every dtype and edge shape).
"""

from __future__ import annotations

import json
import struct

import numpy as np

from ..compression import deflate_pages

_LONG, _SHORT, _ASCII = 4, 3, 2
_DEFLATE = 8  # Adobe deflate, what tifffile writes for compression="zlib"
_SAMPLE_FORMAT = {"u": 1, "i": 2, "f": 3}


def _entry(tag: int, kind: int, value: int) -> tuple[int, int, int, int]:
    # a SHORT fits the value field's low half: little-endian, that is the same 4-byte word
    return (tag, kind, 1, value)


def _ifd_size(n_entries: int) -> int:
    return 2 + 12 * n_entries + 4  # entry count, 12-byte entries, next IFD's offset


def _ifd(entries: list[tuple[int, int, int, int]], next_ifd: int) -> bytes:
    n = len(entries)
    return struct.pack("<H" + "HHII" * n + "I", n, *sum(entries, ()), next_ifd)


def _later_ifds(
    template: list[tuple[int, int, int, int]], at: int, data_at: int, strip_sizes: list[int]
) -> bytes:
    """The IFDs of pages 2 to n, back to back from byte `at`: one template repeated, with each
    page's strip offset and size and the next IFD's offset set in one numpy step each (a
    struct.pack per page was a twentieth of a tiff conversion's worker time)."""
    size = _ifd_size(len(template))
    tags = [tag for tag, *_ in template]
    value = [2 + 12 * tags.index(tag) + 8 for tag in (273, 279)]
    fields = np.dtype(
        {
            "names": ["offset", "size", "next"],
            "formats": ["<u4"] * 3,
            "offsets": [*value, size - 4],
            "itemsize": size,
        }
    )
    ifds = np.frombuffer(bytearray(_ifd(template, 0) * (len(strip_sizes) - 1)), fields)
    sizes = np.asarray(strip_sizes, np.int64)
    ifds["offset"] = data_at + np.cumsum(sizes)[:-1]
    ifds["size"] = sizes[1:]
    ifds["next"] = at + size * np.arange(1, len(ifds) + 1)
    ifds["next"][-1] = 0
    return ifds.tobytes()


def encode_tiff_chunk(data: np.ndarray) -> bytes:
    """The TIFF file of one (z, y, x) chunk, its pages deflated by `deflate_pages`."""
    little = np.ascontiguousarray(data, data.dtype.newbyteorder("<"))
    if little.ndim != 3 or little.dtype.kind not in _SAMPLE_FORMAT or 0 in little.shape:
        raise ValueError(f"cannot write a {little.dtype} array of shape {little.shape} as pages")
    pages, height, width = little.shape
    strips, strip_sizes = deflate_pages(little)
    description = json.dumps({"shape": list(little.shape)}).encode("ascii") + b"\x00"
    description += b"\x00" * (len(description) & 1)  # values start on a word boundary
    sample_format = _SAMPLE_FORMAT[little.dtype.kind]
    optional = [_entry(339, _SHORT, sample_format)] if sample_format != 1 else []

    def tags(strip_offset: int, strip_size: int, *first_page: tuple[int, int, int, int]) -> list:
        return [
            _entry(256, _LONG, width),
            _entry(257, _LONG, height),
            _entry(258, _SHORT, little.dtype.itemsize * 8),
            _entry(259, _SHORT, _DEFLATE),
            _entry(262, _SHORT, 1),  # min-is-black
            *first_page,
            _entry(273, _LONG, strip_offset),
            _entry(277, _SHORT, 1),
            _entry(278, _LONG, height),
            _entry(279, _LONG, strip_size),
            *optional,
        ]

    # every IFD after the first has the same tags, so the same size
    later = tags(0, 0)
    first_size = _ifd_size(len(later) + 1)
    description_offset = 8 + first_size + (pages - 1) * _ifd_size(len(later))
    offset = description_offset + len(description)
    if offset + len(strips) >= 2**32:
        raise ValueError("a TIFF chunk file must stay below 4 GiB (classic TIFF)")
    described = (270, _ASCII, len(description), description_offset)
    first = tags(offset, strip_sizes[0], described)
    out = [b"II*\x00", struct.pack("<I", 8), _ifd(first, 8 + first_size if pages > 1 else 0)]
    if pages > 1:
        out.append(_later_ifds(later, 8 + first_size, offset, strip_sizes))
    out += [description, strips]
    return b"".join(out)
