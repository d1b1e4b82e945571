"""The TIFF chunk writer against tifffile, the reader every TIFF tool of the field builds on."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile

from precomputed_tif.stores._tiff_pages import strip_layout
from precomputed_tif.stores._tiff_writer import encode_tiff_chunk

DTYPES = ["uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "float32", "float64"]
SHAPES = [(1, 1, 1), (3, 4, 5), (64, 64, 64), (2, 7, 1), (1, 9, 3), (5, 1, 8)]


def _voxels(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    values = rng.normal(0, 1000, shape)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "ui" else None
    if info is not None:
        values = np.clip(values + (info.max // 2 if info.min == 0 else 0), info.min, info.max)
    return values.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_tifffile_reads_back_the_voxels_as_one_zyx_series(dtype, shape):
    data = _voxels(shape, dtype)
    encoded = encode_tiff_chunk(data)
    with tifffile.TiffFile(io.BytesIO(encoded)) as tif:
        assert len(tif.pages) == shape[0]
        assert all(page.compression == 8 for page in tif.pages)  # deflate, one strip each
        assert all(len(page.dataoffsets) == 1 for page in tif.pages)
        back = tif.asarray()
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back.reshape(shape), data)
    assert tifffile.imread(io.BytesIO(encoded)).shape == shape  # the description keeps (z, y, x)


def test_the_page_reader_finds_every_strip():
    data = _voxels((6, 5, 4), "uint16")
    strips = strip_layout(encode_tiff_chunk(data), data.shape, np.dtype("<u2"))
    assert strips is not None and len(strips) == 6


def test_same_voxels_same_bytes_and_big_endian_input_is_written_little():
    data = _voxels((4, 8, 8), "uint16", seed=3)
    assert encode_tiff_chunk(data) == encode_tiff_chunk(data.copy())
    assert encode_tiff_chunk(data.astype(">u2")) == encode_tiff_chunk(data)
    assert encode_tiff_chunk(data) != encode_tiff_chunk(data + 1)


def test_what_is_not_a_stack_of_pages_is_refused():
    with pytest.raises(ValueError):
        encode_tiff_chunk(np.zeros((4, 4), np.uint16))
    with pytest.raises(ValueError):
        encode_tiff_chunk(np.zeros((0, 4, 4), np.uint16))
