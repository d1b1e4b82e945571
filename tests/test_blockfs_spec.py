"""blockfs written and read from the layout text alone (docs: shared spec, "--format blockfs").

`SpecDirectory` below is written from the spec, not from our package: directory header, JSON
metadata, E-byte entries, the block index formula, Blosc frames, clipped edge blocks, the block
file chosen by ``i % len(BlockFilenames)`` and, when a recorded path is gone, the file of the same
name beside the directory file. It decodes what our converter writes; `write_blockfs_by_hand`
writes a store the way another blockfs writer could, which our `open_volume` must read.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numcodecs
import numcodecs.blosc
import numpy as np
import pytest
import tifffile

from precomputed_tif import open_volume

DATA = Path(__file__).parent / "data"
STARDIST_PLANES = DATA / "stacks" / "stardist_img3d" / "planes"
MAGIC = b"BlockFS\0"
BLOSC_CODECS = {"zstd", "blosclz", "lz4", "lz4hc", "zlib", "snappy"}
METADATA_KEYS = {
    "XBlockSize",
    "YBlockSize",
    "ZBlockSize",
    "XExtent",
    "YExtent",
    "ZExtent",
    "DType",
    "NOffsetBits",
    "NSizeBits",
    "BlockFilenames",
    "XStride",
    "YStride",
    "ZStride",
    "Compression",
    "CompressionLvl",
    "Version",
}


# --- a reader from the spec ---------------------------------------------------------------------
class SpecDirectory:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.raw = path.read_bytes()
        assert self.raw[:8] == MAGIC
        self.metadata_length = int.from_bytes(self.raw[8:12], "little")
        self.entries_at = int.from_bytes(self.raw[12:16], "little")
        text = self.raw[16 : 16 + self.metadata_length].decode("utf-8")
        self.metadata: dict[str, Any] = json.loads(text)
        m = self.metadata
        self.block = (m["XBlockSize"], m["YBlockSize"], m["ZBlockSize"])
        self.extent = (m["XExtent"], m["YExtent"], m["ZExtent"])
        self.offset_bits = m["NOffsetBits"]
        self.size_bits = m["NSizeBits"]
        self.entry_bytes = math.ceil((self.offset_bits + self.size_bits) / 8)
        self.dtype = np.dtype(m["DType"])

    def index(self, x: int, y: int, z: int) -> int:
        m = self.metadata
        bx, by, bz = self.block
        return (x // bx) * m["XStride"] + (y // by) * m["YStride"] + (z // bz) * m["ZStride"]

    def entry(self, i: int) -> tuple[int, int]:
        """(offset, size) of block i; (0, 0) when the entry lies past the end of the file."""
        at = self.entries_at + i * self.entry_bytes
        if at + self.entry_bytes > len(self.raw):
            return 0, 0
        value = int.from_bytes(self.raw[at : at + self.entry_bytes], "little")
        offset = value % 2**self.offset_bits
        size = (value // 2**self.offset_bits) % 2**self.size_bits
        return offset, size

    def block_file(self, i: int) -> Path:
        names = self.metadata["BlockFilenames"]
        recorded = names[i % len(names)]
        if os.path.exists(recorded):
            return Path(recorded)
        return self.path.parent / os.path.basename(recorded)

    def block_shape(self, x: int, y: int, z: int) -> tuple[int, int, int]:
        (bx, by, bz), (ex, ey, ez) = self.block, self.extent
        return (min(bz, ez - z), min(by, ey - y), min(bx, ex - x))

    def read_block(self, x: int, y: int, z: int) -> np.ndarray | None:
        """The block whose first voxel is (x, y, z), as (z, y, x); None if never written."""
        i = self.index(x, y, z)
        offset, size = self.entry(i)
        if size == 0:
            return None
        with open(self.block_file(i), "rb") as f:
            f.seek(offset)
            frame = f.read(size)
        assert len(frame) == size
        raw = numcodecs.blosc.decompress(frame)
        return np.frombuffer(raw, self.dtype).reshape(self.block_shape(x, y, z))

    def block_corners(self) -> list[tuple[int, int, int]]:
        (bx, by, bz), (ex, ey, ez) = self.block, self.extent
        return list(itertools.product(range(0, ex, bx), range(0, ey, by), range(0, ez, bz)))

    def read_all(self) -> np.ndarray:
        ex, ey, ez = self.extent
        out = np.zeros((ez, ey, ex), self.dtype)
        for x, y, z in self.block_corners():
            block = self.read_block(x, y, z)
            if block is not None:
                dz, dy, dx = block.shape
                out[z : z + dz, y : y + dy, x : x + dx] = block
        return out


# --- an independent reference pyramid -----------------------------------------------------------
def reference_level(previous: np.ndarray) -> np.ndarray:
    """2x2x2 integer mean (floor) of the voxels that exist in each window."""
    nz, ny, nx = previous.shape
    out = np.zeros(((nz + 1) // 2, (ny + 1) // 2, (nx + 1) // 2), previous.dtype)
    for z in range(out.shape[0]):
        for y in range(out.shape[1]):
            for x in range(out.shape[2]):
                window = previous[2 * z : 2 * z + 2, 2 * y : 2 * y + 2, 2 * x : 2 * x + 2]
                out[z, y, x] = int(window.astype(np.uint64).sum()) // window.size
    return out


def stardist_pyramid(levels: int) -> list[np.ndarray]:
    planes = np.stack([tifffile.imread(p) for p in sorted(STARDIST_PLANES.glob("*.tif"))])
    pyramid = [planes]
    for _ in range(levels - 1):
        pyramid.append(reference_level(pyramid[-1]))
    return pyramid


def convert(source: str, dest: Path, *args: str) -> None:
    command = [sys.executable, "-m", "precomputed_tif.cli.convert", "--source", source]
    command += ["--dest", str(dest), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


# --- (a) our converter's output, decoded from the spec ------------------------------------------
@pytest.fixture(scope="module")
def our_blockfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("ours") / "stardist_blockfs"
    convert(
        str(STARDIST_PLANES / "*.tif"),
        dest,
        "--format",
        "blockfs",
        "--chunk-size",
        "16,16,16",
        "--levels",
        "3",
        "--log",
        "WARNING",
    )
    return dest


def test_our_blockfs_header_and_metadata(our_blockfs):
    volume = open_volume(str(our_blockfs))
    assert volume.format == "blockfs"
    for scale in volume.pyramid.scales:
        directory = SpecDirectory(our_blockfs / scale.key / "precomputed.blockfs")
        assert directory.raw[:8] == MAGIC
        assert directory.entries_at == 16 + directory.metadata_length
        m = directory.metadata
        assert set(m) >= METADATA_KEYS
        assert (m["XBlockSize"], m["YBlockSize"], m["ZBlockSize"]) == (16, 16, 16)
        assert (m["XExtent"], m["YExtent"], m["ZExtent"]) == scale.size
        gx, gy, gz = (math.ceil(e / b) for e, b in zip(directory.extent, directory.block))
        assert m["XStride"] == 1
        assert m["YStride"] == gx
        assert m["ZStride"] == gx * gy
        assert m["DType"] == "uint16"
        assert m["Version"] == "1.0.0"
        assert m["Compression"] in BLOSC_CODECS
        assert isinstance(m["CompressionLvl"], int)
        largest = 16 * 16 * 16 * 2 + 16
        assert m["NSizeBits"] == int(math.log2(largest)) + 1
        # every entry of the grid is present, and every offset and size fits its bits
        n_blocks = gx * gy * gz
        assert len(directory.raw) >= directory.entries_at + n_blocks * directory.entry_bytes
        for x, y, z in directory.block_corners():
            i = directory.index(x, y, z)
            assert 0 <= i < n_blocks
            offset, size = directory.entry(i)
            assert 0 < size < 2 ** m["NSizeBits"]
            assert offset + size <= directory.block_file(i).stat().st_size
        assert n_blocks * largest <= 2 ** m["NOffsetBits"] * len(m["BlockFilenames"])
        for name in m["BlockFilenames"]:
            assert os.path.isabs(name) and os.path.exists(name)
            assert Path(name).parent == our_blockfs.resolve() / scale.key


def test_our_blockfs_blocks_match_reader_and_reference(our_blockfs):
    reference = stardist_pyramid(3)
    volume = open_volume(str(our_blockfs))
    for level, expected in enumerate(reference, start=1):
        scale = volume.pyramid.scales[level - 1]
        assert scale.size == expected.shape[::-1]
        directory = SpecDirectory(our_blockfs / scale.key / "precomputed.blockfs")
        ours = volume[level]
        corners = directory.block_corners()
        assert len(corners) == math.prod(math.ceil(s / 16) for s in scale.size)
        for x, y, z in corners:
            block = directory.read_block(x, y, z)
            assert block is not None, f"level {level} block {x},{y},{z} was never written"
            dz, dy, dx = block.shape
            assert block.shape == (
                min(16, scale.size[2] - z),
                min(16, scale.size[1] - y),
                min(16, scale.size[0] - x),
            )
            np.testing.assert_array_equal(block, expected[z : z + dz, y : y + dy, x : x + dx])
            np.testing.assert_array_equal(block, ours[z : z + dz, y : y + dy, x : x + dx])
        np.testing.assert_array_equal(directory.read_all(), expected)


def test_our_blockfs_still_reads_after_a_move(our_blockfs, tmp_path):
    """Moved elsewhere, the recorded absolute paths are gone: both readers look beside."""
    moved = tmp_path / "moved"
    shutil.copytree(our_blockfs, moved)
    reference = stardist_pyramid(3)
    hidden = our_blockfs.with_name("hidden_while_testing")
    os.rename(our_blockfs, hidden)
    try:
        volume = open_volume(str(moved))
        for level, expected in enumerate(reference, start=1):
            key = volume.pyramid.scales[level - 1].key
            directory = SpecDirectory(moved / key / "precomputed.blockfs")
            assert not any(os.path.exists(n) for n in directory.metadata["BlockFilenames"])
            np.testing.assert_array_equal(directory.read_all(), expected)
            np.testing.assert_array_equal(volume[level][:, :, :], expected)
    finally:
        os.rename(hidden, our_blockfs)


# --- (b) a store written by hand from the spec --------------------------------------------------
def write_blockfs_by_hand(
    level_dir: Path,
    volume: np.ndarray,
    block_xyz: tuple[int, int, int],
    recorded_dir: str,
    skip: set[int],
    n_files: int = 2,
    seed: int = 0,
) -> dict[str, Any]:
    """A blockfs store of `volume` (z, y, x); blocks whose index is in `skip` are not written.

    Blocks are appended in a shuffled order; a skipped block in the middle leaves a zero entry,
    a skipped last block is simply not in the (then shorter) directory file.
    """
    level_dir.mkdir(parents=True)
    ez, ey, ex = volume.shape
    bx, by, bz = block_xyz
    gx, gy = math.ceil(ex / bx), math.ceil(ey / by)
    largest = bx * by * bz * volume.dtype.itemsize + 16
    size_bits = int(math.log2(largest)) + 1
    offset_bits = 13
    names = [f"{recorded_dir}/precomputed.blockfs.{k}" for k in range(n_files)]
    metadata = {
        "MyApplication": {"note": "kept as application metadata"},
        "XBlockSize": bx,
        "YBlockSize": by,
        "ZBlockSize": bz,
        "DType": volume.dtype.name,
        "NOffsetBits": offset_bits,
        "NSizeBits": size_bits,
        "XExtent": ex,
        "YExtent": ey,
        "ZExtent": ez,
        "BlockFilenames": names,
        "XStride": 1,
        "YStride": gx,
        "ZStride": gx * gy,
        "Compression": "lz4",
        "CompressionLvl": 5,
        "Version": "1.0.0",
    }
    entry_bytes = math.ceil((offset_bits + size_bits) / 8)
    corners = list(itertools.product(range(0, ex, bx), range(0, ey, by), range(0, ez, bz)))
    order = np.random.default_rng(seed).permutation(len(corners))
    codec = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
    files = [bytearray() for _ in range(n_files)]
    entries: dict[int, int] = {}
    for k in order:
        x, y, z = corners[k]
        i = x // bx + (y // by) * gx + (z // bz) * gx * gy
        if i in skip:
            continue
        block = np.ascontiguousarray(volume[z : z + bz, y : y + by, x : x + bx])
        frame = codec.encode(block)
        target = files[i % n_files]
        entries[i] = len(target) + len(frame) * 2**offset_bits
        target += frame
    for k, content in enumerate(files):
        (level_dir / f"precomputed.blockfs.{k}").write_bytes(bytes(content))
    text = json.dumps(metadata).encode("utf-8")
    header = MAGIC + len(text).to_bytes(4, "little") + (16 + len(text)).to_bytes(4, "little")
    table = bytearray(entry_bytes * (max(entries) + 1))
    for i, value in entries.items():
        table[i * entry_bytes : (i + 1) * entry_bytes] = value.to_bytes(entry_bytes, "little")
    (level_dir / "precomputed.blockfs").write_bytes(header + text + bytes(table))
    return metadata


def test_open_volume_reads_a_hand_written_blockfs(tmp_path):
    shape_zyx = (10, 13, 21)  # odd sizes: edge blocks are clipped on every axis
    block_xyz = (8, 5, 4)  # a different block size per axis catches swapped axes
    rng = np.random.default_rng(1234)
    volume = rng.integers(1, 65535, shape_zyx, dtype=np.uint16, endpoint=True)
    gx, gy, gz = 3, 3, 3
    middle = 1 + 1 * gx + 1 * gx * gy  # block (8, 5, 4): a zero entry in the table
    last = gx * gy * gz - 1  # block (16, 10, 8): past the end of the directory file
    missing_dir = "/nonexistent-precomputed-tif-test-dir/moved/1_1_1"
    assert not os.path.exists(missing_dir)
    root = tmp_path / "by_hand"
    write_blockfs_by_hand(root / "1_1_1", volume, block_xyz, missing_dir, {middle, last})
    info = {
        "data_type": "uint16",
        "num_channels": 1,
        "type": "image",
        "scales": [
            {
                "chunk_sizes": [list(block_xyz)],
                "encoding": "raw",
                "key": "1_1_1",
                "resolution": [1000, 1000, 2000],
                "size": list(shape_zyx[::-1]),
                "voxel_offset": [0, 0, 0],
            }
        ],
    }
    (root / "info").write_text(json.dumps(info))

    expected = volume.copy()
    expected[4:8, 5:10, 8:16] = 0  # the middle block
    expected[8:10, 10:13, 16:21] = 0  # the last, clipped, block

    # both block files hold blocks, and the directory file really stops before the last entry
    level_dir = root / "1_1_1"
    assert all((level_dir / f"precomputed.blockfs.{k}").stat().st_size > 0 for k in (0, 1))
    spec = SpecDirectory(level_dir / "precomputed.blockfs")
    assert len(spec.raw) == spec.entries_at + last * spec.entry_bytes
    assert spec.entry_bytes == 3
    np.testing.assert_array_equal(spec.read_all(), expected)

    opened = open_volume(str(root))
    assert opened.format == "blockfs"
    level = opened[1]
    assert level.shape == shape_zyx
    np.testing.assert_array_equal(level[:, :, :], expected)
    for x, y, z in spec.block_corners():
        dz, dy, dx = spec.block_shape(x, y, z)
        np.testing.assert_array_equal(
            level[z : z + dz, y : y + dy, x : x + dx], expected[z : z + dz, y : y + dy, x : x + dx]
        )
    # a region across block borders, and the unwritten blocks alone
    np.testing.assert_array_equal(level[3:9, 4:11, 7:17], expected[3:9, 4:11, 7:17])
    assert not level[4:8, 5:10, 8:16].any()
    assert not level[8:10, 10:13, 16:21].any()
