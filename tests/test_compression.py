"""Our deflate streams (libdeflate, or zlib without it) are standard: stdlib decoders read them,
and the same input gives the same bytes in every process."""

from __future__ import annotations

import gzip
import sys
import threading
import zlib

import numpy as np
import pytest
import tifffile

from conftest import random_stack
from precomputed_tif import compression as deflate
from precomputed_tif.geometry import Box
from precomputed_tif.pyramid import plan_pyramid
from precomputed_tif.stores.tiff import TiffStore


@pytest.fixture(params=["installed", "zlib fallback"])
def encoder(request, monkeypatch):
    if request.param == "zlib fallback":
        monkeypatch.setattr(deflate, "_libdeflate", None)
    elif deflate._libdeflate is None:
        pytest.skip("imagecodecs has no libdeflate here")
    return request.param


def _payload() -> bytes:
    # microscopy-like: smooth background, noise, some repeats
    return random_stack((8, 40, 50), "uint16", seed=11).tobytes() + bytes(5000)


def test_zlib_stream_decodes_with_zlib(encoder):
    data = _payload()
    blob = deflate.zlib_compress(data)
    assert zlib.decompress(blob) == data
    assert len(blob) < len(data)
    assert deflate.zlib_compress(memoryview(data)) == blob  # buffers, and deterministic


@pytest.mark.parametrize(
    "shape, dtype",
    [((64, 64, 64), "<u2"), ((3, 17, 29), "<u2"), ((5, 64, 64), "u1"), ((1, 40, 31), "<f4")],
)
def test_pages_deflate_as_zlib_compress_of_each_page(encoder, shape, dtype):
    """TIFF strips: one zlib stream per page, the bytes `zlib_compress` writes for the page,
    whether through the compressor kept across calls or page by page."""
    pages = (random_stack(shape, "uint16", seed=3) % 300).astype(dtype)
    pages[: shape[0] // 2, :5] = 0  # runs to match
    streams, sizes = deflate.deflate_pages(pages)
    expected = [deflate.zlib_compress(page) for page in pages]
    assert sizes == [len(e) for e in expected]
    assert streams == b"".join(expected)
    at = 0
    for page, size in zip(pages, sizes):
        assert zlib.decompress(streams[at : at + size]) == page.tobytes()
        at += size
    assert deflate.deflate_pages(pages[::2]) == deflate.deflate_pages(pages[::2].copy())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="wheel layout checked: Linux")
def test_imagecodecs_libdeflate_is_found_for_the_kept_compressor():
    """Without it every page pays for a new compressor: tiff conversions ~9% slower."""
    if deflate._libdeflate is None:
        pytest.skip("imagecodecs has no libdeflate here")
    assert deflate._kept_compressor() is not None


def test_a_libdeflate_that_writes_other_bytes_is_not_used(monkeypatch):
    """Another build of libdeflate beside imagecodecs than the one it calls could write other
    (valid) streams, and a resumed run would not rewrite the same files: it is refused."""
    if deflate._libdeflate is None or deflate._load_bundled_libdeflate() is None:
        pytest.skip("no bundled libdeflate here")
    monkeypatch.setattr(deflate, "zlib_compress", lambda data: zlib.compress(data, 9))
    assert deflate._load_bundled_libdeflate() is None


def test_threads_each_keep_their_own_compressor(encoder):
    """A libdeflate compressor is not thread-safe: each thread deflates with its own."""
    stacks = [random_stack((16, 48, 48), "uint16", seed=s) for s in range(6)]
    expected = [b"".join(deflate.zlib_compress(p) for p in stack) for stack in stacks]
    got: dict[int, set[bytes]] = {i: set() for i in range(len(stacks))}

    def deflate_all(i: int) -> None:
        for _ in range(20):
            got[i].add(deflate.deflate_pages(stacks[i])[0])

    threads = [threading.Thread(target=deflate_all, args=(i,)) for i in range(len(stacks))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [got[i] for i in range(len(stacks))] == [{e} for e in expected]


def test_crc32_is_zlibs_checksum(encoder):
    """blockfs checksums written by zlib's CRC-32 (the original's) must still match."""
    data = _payload()
    for piece in (b"", data[:1], data, memoryview(data)[3:777]):
        assert deflate.crc32(piece) == zlib.crc32(piece)


def test_gzip_member_decodes_with_gzip_and_has_no_timestamp(encoder):
    data = _payload()
    blob = deflate.gzip_compress(data)
    assert gzip.decompress(blob) == data
    assert blob[:3] == b"\x1f\x8b\x08"
    assert blob[4:8] == bytes(4)  # mtime 0: the same input gives the same file bytes
    assert deflate.gzip_compress(data) == blob


def test_tiff_chunks_are_standard_deflate_strips(tmp_path, encoder):
    """Each page is one strip that plain zlib inflates to the page's little-endian bytes."""
    pyramid = plan_pyramid((40, 30, 20), "uint16", voxel_size_nm=(1, 1, 1), levels=1)
    store = TiffStore(str(tmp_path), pyramid)
    store.prepare_level(1)
    box = Box((0, 0, 0), (40, 30, 20))
    data = random_stack((20, 30, 40), "uint16", seed=5)
    store.write_chunk(1, box, data)
    path = store.chunk_path(1, box)
    np.testing.assert_array_equal(tifffile.imread(path), data)
    with tifffile.TiffFile(path) as tif, open(path, "rb") as f:
        assert len(tif.pages) == 20
        for z, page in enumerate(tif.pages):
            assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
            (offset,), (count,) = page.dataoffsets, page.databytecounts
            f.seek(offset)
            assert zlib.decompress(f.read(count)) == data[z].astype("<u2").tobytes()


def test_blosc_frames_of_a_large_chunk_are_the_same_bytes_every_time(tmp_path):
    """A 64^3 chunk spans many Blosc blocks; Blosc's own threads would write them in the order
    they finish, so a resumed run would not rewrite the same bytes. Written from the main
    thread, where numcodecs would use those threads."""
    import numcodecs

    from precomputed_tif.stores.zarr_v2 import COMPRESSOR, ZarrStore

    # empty tissue, then noisy tissue: blocks that take very different times to compress
    data = np.zeros((64, 64, 64), np.uint16)
    data[32:] = np.random.default_rng(2).integers(0, 4096, (32, 64, 64))
    pyramid = plan_pyramid((64, 64, 64), "uint16", voxel_size_nm=(1, 1, 1), levels=1)
    store = ZarrStore(str(tmp_path), pyramid)
    store.prepare_level(1)
    box = Box((0, 0, 0), (64, 64, 64))
    frames = set()
    for _ in range(12):
        store.write_chunk(1, box, data)
        frames.add((tmp_path / "1_1_1" / "0" / "0" / "0").read_bytes())
    assert len(frames) == 1
    frame = frames.pop()
    assert len(frame) < data.nbytes
    decoded = numcodecs.get_codec(COMPRESSOR).decode(frame)
    np.testing.assert_array_equal(np.frombuffer(decoded, "<u2").reshape(64, 64, 64), data)


_PAGES_DIGEST = """
import hashlib
import numpy as np
from precomputed_tif import compression

rng = np.random.default_rng(7)
y, x = np.mgrid[0:256, 0:256]
digest = hashlib.md5()
for z in range(16):
    # microscopy-like planes: a smooth background, bright blobs, noise
    light = 300 + 200 * np.cos(x / 97 + z / 5) * np.sin(y / 71)
    for cy, cx in rng.integers(0, 256, (10, 2)):
        light += 3000 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 60.0)
    plane = (light + rng.integers(0, 40, light.shape)).astype("<u2")
    for r in range(0, 256, 64):
        for c in range(0, 256, 64):
            page = np.ascontiguousarray(plane[r : r + 64, c : c + 64])
            digest.update(compression.zlib_compress(page))
            digest.update(compression.gzip_compress(page))
print(digest.hexdigest())
"""


def test_deflate_bytes_do_not_depend_on_the_process():
    """A resumed run rewrites a task's chunks in another process, with another address-space
    layout, and must write the same bytes. (ISA-L, used before, did not, but only in some
    processes deflating tens of thousands of pages: too rarely for a test of this size; see
    `compression`.)"""
    import subprocess
    import sys

    digests = {
        subprocess.run(
            [sys.executable, "-c", _PAGES_DIGEST], capture_output=True, text=True, check=True
        ).stdout
        for _ in range(3)
    }
    assert len(digests) == 1, digests
