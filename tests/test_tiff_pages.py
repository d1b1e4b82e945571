"""The tiff chunk fast path (`stores._tiff_pages`) against tifffile, the independent reader.

Every chunk file of ours (several dtypes, odd edges, a 1-voxel-wide x edge written by tifffile's
own encoder) and of the original's tiff folders must give exactly the bytes tifffile decodes; a
layout the fast path does not know must fall back to tifffile, and a damaged strip must be a
StoreError, never wrong bytes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import convert_stack, random_stack, write_planes
from precomputed_tif.errors import StoreError
from precomputed_tif.geometry import Box
from precomputed_tif.pyramid import Pyramid
from precomputed_tif.stores import create_store
from precomputed_tif.stores._tiff_pages import read_pages
from precomputed_tif.stores.base import read_info

ORIGINAL = Path(__file__).parent / "data" / "original"


def tifffile_bytes(path: Path, dtype: np.dtype) -> bytes:
    return tifffile.imread(path).astype(dtype.newbyteorder("<")).tobytes()


def chunk_files(folder: Path) -> list[tuple[int, Box, Path]]:
    pyramid = Pyramid.from_info(read_info(str(folder)))
    found = []
    for level, scale in enumerate(pyramid.scales, start=1):
        for path in sorted((folder / scale.key).glob("*.tiff")):
            found.append((level, Box.from_chunk_name(path.name[: -len(".tiff")]), path))
    return found


def check_folder(folder: Path) -> int:
    """Every chunk read by the store (fast path) equals tifffile; returns how many were fast."""
    pyramid = Pyramid.from_info(read_info(str(folder)))
    store = create_store("tiff", str(folder), pyramid)
    dtype = pyramid.dtype
    fast = 0
    for level, box, path in chunk_files(folder):
        expected = tifffile_bytes(path, dtype)
        assert store.read_chunk_bytes(level, box) == expected, path
        direct = read_pages(str(path), box.numpy_shape, dtype.newbyteorder("<"))
        if direct is not None:
            assert direct == expected, path
            fast += 1
    return fast


@pytest.mark.parametrize("dtype", ["uint16", "uint8", "float32", "int32"])
def test_our_chunks_decode_as_tifffile_does(tmp_path, dtype):
    stack = random_stack((13, 21, 33), dtype, seed=3)
    stack[:, :, 32] = 7  # a 1-voxel-wide last x column: those edge chunks are pages of (y, 1)
    glob = write_planes(tmp_path / "planes", stack)
    convert_stack(glob, str(tmp_path / "out"), "tiff", chunk=(8, 8, 8), levels=2)
    files = chunk_files(tmp_path / "out")
    fast = check_folder(tmp_path / "out")
    assert fast == len(files)  # every chunk we write, the 1-voxel-wide ones too


@pytest.mark.parametrize("name", ["stardist_tiff", "bugshape_tiff"])
def test_original_tool_chunks_decode_as_tifffile_does(name):
    folder = ORIGINAL / name
    files = chunk_files(folder)
    full = [f for f in files if f[1].numpy_shape == files[0][1].numpy_shape]
    # the original's layout is ours; only its thin edge chunks (3 pages tifffile took for RGB
    # samples, 1-wide columns as 2-D pages) are left to tifffile
    assert 0 < len(full) <= check_folder(folder) <= len(files)


@pytest.mark.parametrize(
    "args",
    [
        {"compression": "zlib", "predictor": True},
        {"compression": "zlib", "rowsperstrip": 2},
        {"compression": "zlib", "byteorder": ">"},
        {"compression": "zlib", "bigtiff": True},
        {"compression": "lzw"},
        {},
    ],
    ids=["predictor", "strips", "big-endian", "bigtiff", "lzw", "uncompressed"],
)
def test_other_layouts_fall_back_to_tifffile(tmp_path, args):
    data = random_stack((4, 6, 8), "uint16", seed=1)
    path = tmp_path / "chunk.tiff"
    tifffile.imwrite(path, data, photometric="minisblack", **args)
    assert read_pages(str(path), (4, 6, 8), np.dtype("<u2")) is None
    assert read_pages(str(path), (4, 6, 9), np.dtype("<u2")) is None  # nor a wrong shape


def test_wrong_dtype_or_page_count_falls_back(tmp_path):
    data = random_stack((4, 6, 8), "uint16", seed=2)
    path = tmp_path / "chunk.tiff"
    tifffile.imwrite(path, data, photometric="minisblack", compression="zlib")
    assert read_pages(str(path), (4, 6, 8), np.dtype("<u2")) == data.tobytes()
    assert read_pages(str(path), (4, 6, 8), np.dtype("<i2")) is None
    assert read_pages(str(path), (4, 6, 8), np.dtype("<u1")) is None
    assert read_pages(str(path), (3, 6, 8), np.dtype("<u2")) is None
    assert read_pages(str(path), (5, 6, 8), np.dtype("<u2")) is None


def test_damaged_strip_is_a_store_error(tmp_path):
    data = random_stack((4, 6, 8), "uint16", seed=4)
    path = tmp_path / "chunk.tiff"
    tifffile.imwrite(path, data, photometric="minisblack", compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[2].dataoffsets[0]
    raw = bytearray(path.read_bytes())
    raw[offset + 2 : offset + 12] = b"\xff" * 10
    path.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="damaged"):
        read_pages(str(path), (4, 6, 8), np.dtype("<u2"))


def test_rewritten_file_is_read_again(tmp_path):
    """The strip offsets are kept per file version: a rewrite with other offsets is re-parsed."""
    path = tmp_path / "chunk.tiff"
    first = random_stack((4, 6, 8), "uint16", seed=5)
    tifffile.imwrite(path, first, photometric="minisblack", compression="zlib")
    assert read_pages(str(path), (4, 6, 8), np.dtype("<u2")) == first.tobytes()
    second = np.zeros_like(first)  # compresses to much shorter strips: new offsets
    tifffile.imwrite(path, second, photometric="minisblack", compression="zlib", description="x")
    assert read_pages(str(path), (4, 6, 8), np.dtype("<u2")) == second.tobytes()


def test_missing_file_is_none_from_the_store(tmp_path):
    stack = random_stack((8, 8, 8), "uint16")
    glob = write_planes(tmp_path / "planes", stack)
    convert_stack(glob, str(tmp_path / "out"), "tiff", chunk=(8, 8, 8), levels=1)
    store = create_store(
        "tiff", str(tmp_path / "out"), Pyramid.from_info(read_info(str(tmp_path / "out")))
    )
    assert store.read_chunk_bytes(1, Box((0, 0, 0), (8, 8, 8))) == stack.tobytes()
    (tmp_path / "out" / store.pyramid.scale(1).key / "0-8_0-8_0-8.tiff").unlink()
    assert store.read_chunk_bytes(1, Box((0, 0, 0), (8, 8, 8))) is None


def test_one_odd_page_among_back_to_back_ifds_falls_back(tmp_path):
    """Later IFDs are compared in one step with the first checked one: a single later page of
    another width must still make the file not ours (tifffile then says what it holds)."""
    from precomputed_tif.stores._tiff_pages import strip_layout
    from precomputed_tif.stores._tiff_writer import encode_tiff_chunk

    data = random_stack((6, 5, 7), "uint16", seed=6)
    raw = encode_tiff_chunk(data)
    strips = strip_layout(raw, data.shape, np.dtype("<u2"))
    assert strips is not None and len(strips) == 6
    path = tmp_path / "chunk.tiff"
    path.write_bytes(raw)
    assert read_pages(str(path), data.shape, np.dtype("<u2")) == data.tobytes()
    with tifffile.TiffFile(path) as tif:
        width_tag = tif.pages[4].tags[256]
        at = width_tag.valueoffset
    patched = bytearray(raw)
    patched[at : at + 4] = (8).to_bytes(4, "little")
    assert strip_layout(bytes(patched), data.shape, np.dtype("<u2")) is None
    patched = bytearray(raw)
    patched[-1:] = b"\x00"  # the data changes, not the layout: still ours
    assert strip_layout(bytes(patched), data.shape, np.dtype("<u2")) == strips


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_freed_blocks_are_kept_on_glibc():
    """The server asks glibc to keep freed chunk-sized blocks (`heap.keep_freed_blocks`); on a
    glibc Linux (CI's) the request must be accepted, not silently ignored."""
    import platform

    from precomputed_tif.heap import keep_freed_blocks

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert keep_freed_blocks() is True
