"""``--format blockfs``: the blockfs 1.0.0 block store, few large files per level.

``R_R_R/precomputed.blockfs`` is the directory file; block bytes live in
``precomputed.blockfs.N`` beside it. Layout (see shared spec): ``BlockFS\\0``, uint32 metadata
length M, uint32 entry offset D = 16 + M, M bytes of JSON, then one E-byte little-endian entry per
block, ``offset + size << NOffsetBits``. Each block is a Blosc frame of the block's clipped voxels.

Tasks write their blocks to private part files; the driver appends the parts to the level's block
file in task order and writes the directory last, so an interrupted level has no directory (it
never looks complete) and a resumed run produces the same bytes as an uninterrupted one. We write
one block file per level; readers accept any number, and look for block files beside the directory
file when the absolute paths recorded in it no longer exist (a moved dataset).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import struct
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from ..compression import blosc_encode
from ..errors import StoreError
from ..geometry import Box, chunks_in
from ..locations import write_atomically
from .base import STATE_DIR, ChunkStore, TaskWriter

MAGIC = b"BlockFS\0"
DIRECTORY_NAME = "precomputed.blockfs"
VERSION = "1.0.0"
COMPRESSION = "zstd"
COMPRESSION_LEVEL = 1
BITSHUFFLE = 2  # Blosc's shuffle flag, as the original writes
BLOSC_MAX_OVERHEAD = 16


class _OpenFiles:
    """Block files kept open for positional reads (a server reads many blocks per second)."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def read(self, path: str, offset: int, size: int) -> bytes:
        if not hasattr(os, "pread"):  # Windows: no positional reads
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(size)
        fd = self._fds.get(path)
        if fd is None:
            with self._lock:
                fd = self._fds.get(path)
                if fd is None:
                    fd = self._fds[path] = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        return os.pread(fd, size, offset)

    def __del__(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)


@dataclass(frozen=True)
class BlockDirectory:
    """A parsed blockfs directory file."""

    path: str
    metadata: dict[str, Any]
    offsets: np.ndarray
    sizes: np.ndarray
    block_files: tuple[str, ...]
    files: _OpenFiles = field(default_factory=_OpenFiles, compare=False, repr=False)

    @property
    def block_size_xyz(self) -> tuple[int, int, int]:
        m = self.metadata
        return (int(m["XBlockSize"]), int(m["YBlockSize"]), int(m["ZBlockSize"]))

    @property
    def extent_xyz(self) -> tuple[int, int, int]:
        m = self.metadata
        return (int(m["XExtent"]), int(m["YExtent"]), int(m["ZExtent"]))

    def block_index(self, x: int, y: int, z: int) -> int:
        m = self.metadata
        bx, by, bz = self.block_size_xyz
        return (
            (x // bx) * int(m.get("XStride", 1))
            + (y // by) * int(m["YStride"])
            + (z // bz) * int(m["ZStride"])
        )

    def block_stamp(self, x: int, y: int, z: int) -> tuple[int, int] | None:
        """(offset, size) of the block's bytes, or None when it was never written."""
        i = self.block_index(x, y, z)
        if i >= len(self.sizes) or self.sizes[i] == 0:
            return None
        return (int(self.offsets[i]), int(self.sizes[i]))

    def read_block(self, x: int, y: int, z: int) -> np.ndarray | None:
        """The clipped (z, y, x) block whose corner is (x, y, z), or None if never written."""
        raw = self.read_block_bytes(x, y, z)
        if raw is None:
            return None
        bx, by, bz = self.block_size_xyz
        ex, ey, ez = self.extent_xyz
        shape = (min(bz, ez - z), min(by, ey - y), min(bx, ex - x))
        return np.frombuffer(raw, np.dtype(self.metadata["DType"])).reshape(shape)

    def read_block_bytes(self, x: int, y: int, z: int) -> bytes | None:
        """The decompressed bytes of the block whose corner is (x, y, z) (C order, clipped)."""
        import numcodecs.blosc

        i = self.block_index(x, y, z)
        if i >= len(self.sizes) or self.sizes[i] == 0:
            return None
        path = self.block_files[i % len(self.block_files)]
        size = int(self.sizes[i])
        try:
            frame = self.files.read(path, int(self.offsets[i]), size)
            if len(frame) != size:
                raise StoreError(f"block file {path!r} is truncated")
            raw = numcodecs.blosc.decompress(frame)
        except OSError as exc:
            raise StoreError(f"cannot read block {i} from {path!r}: {exc}") from exc
        except RuntimeError as exc:
            raise StoreError(f"block {i} in {path!r} is damaged: {exc}") from exc
        bx, by, bz = self.block_size_xyz
        ex, ey, ez = self.extent_xyz
        shape = (min(bz, ez - z), min(by, ey - y), min(bx, ex - x))
        dtype = np.dtype(self.metadata["DType"])
        if len(raw) != math.prod(shape) * dtype.itemsize:
            raise StoreError(f"block {i} in {path!r} holds {len(raw)} bytes; expected {shape}")
        return raw


def encode_directory_header(metadata: dict[str, Any]) -> bytes:
    text = json.dumps(metadata).encode()
    return MAGIC + struct.pack("<II", len(text), 16 + len(text)) + text


def entry_bytes(metadata: dict[str, Any]) -> int:
    return -(-(int(metadata["NOffsetBits"]) + int(metadata["NSizeBits"])) // 8)


def encode_entries(offsets: np.ndarray, sizes: np.ndarray, metadata: dict[str, Any]) -> bytes:
    width = entry_bytes(metadata)
    values = offsets.astype(np.uint64) | (
        sizes.astype(np.uint64) << np.uint64(metadata["NOffsetBits"])
    )
    as_bytes = values.astype("<u8").view(np.uint8).reshape(-1, 8)
    return np.ascontiguousarray(as_bytes[:, :width]).tobytes()


def parse_directory(path: str) -> BlockDirectory:
    try:
        with open(path, "rb") as f:
            content = f.read()
    except OSError as exc:
        raise StoreError(f"cannot read blockfs directory {path!r}: {exc}") from exc
    if len(content) < 16 or content[:8] != MAGIC:
        raise StoreError(f"{path!r} is not a blockfs directory file")
    length, entries_at = struct.unpack("<II", content[8:16])
    try:
        metadata = json.loads(content[16 : 16 + length])
        offset_bits = int(metadata["NOffsetBits"])
        width = entry_bytes(metadata)
        names = list(metadata["BlockFilenames"])
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"{path!r} has damaged blockfs metadata: {exc}") from exc
    count = max(0, (len(content) - entries_at) // width)
    raw = np.frombuffer(content, np.uint8, count * width, entries_at).reshape(count, width)
    padded = np.zeros((count, 8), np.uint8)
    padded[:, :width] = raw
    values = padded.view("<u8").ravel()
    offsets = values & np.uint64((1 << offset_bits) - 1)
    sizes = values >> np.uint64(offset_bits)
    beside = os.path.dirname(os.path.abspath(path))
    files = tuple(
        name
        if os.path.isabs(name) and os.path.exists(name)
        else os.path.join(beside, os.path.basename(name))
        for name in names
    )
    return BlockDirectory(path, metadata, offsets, sizes, files)


@lru_cache(maxsize=32)
def _cached_directory(path: str, mtime_ns: int, size: int) -> BlockDirectory:
    return parse_directory(path)


def open_directory(path: str) -> BlockDirectory:
    """Parse a directory file once per process, again only when it changes on disk."""
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise StoreError(f"blockfs directory {path!r} is missing") from exc
    return _cached_directory(path, stat.st_mtime_ns, stat.st_size)


class _PartWriter(TaskWriter):
    """Appends one task's compressed blocks to its private part file."""

    def __init__(self, store: BlockfsStore, level: int, task_index: int) -> None:
        super().__init__(store, level)
        self.store_: BlockfsStore = store
        self.task_index = task_index
        self.data_path, self.index_path = store.part_paths(level, task_index)
        os.makedirs(os.path.dirname(self.data_path), exist_ok=True)
        self.file = open(self.data_path, "wb")
        self.entries: list[tuple[int, int, int]] = []

    def write_chunk(self, box: Box, data: np.ndarray) -> None:
        little = np.ascontiguousarray(data, data.dtype.newbyteorder("<"))
        frame = blosc_encode(little, COMPRESSION, COMPRESSION_LEVEL, BITSHUFFLE)
        block = self.store_.block_index(self.level, box)
        self.entries.append((block, self.file.tell(), len(frame)))
        self.file.write(frame)

    def close(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        index = np.array(self.entries, np.int64).reshape(-1, 3)
        write_atomically(self.index_path, index.astype("<i8").tobytes())


class BlockfsStore(ChunkStore):
    format_name = "blockfs"

    # --- layout ------------------------------------------------------------------------
    def directory_path(self, level: int) -> str:
        return os.path.join(self.level_path(level), DIRECTORY_NAME)

    def block_file_path(self, level: int) -> str:
        return os.path.abspath(self.directory_path(level)) + ".0"

    def _state_path(self, level: int) -> str:
        return os.path.join(self.path, STATE_DIR, "blockfs", self.pyramid.scale(level).key)

    def part_paths(self, level: int, task_index: int) -> tuple[str, str]:
        base = os.path.join(self._state_path(level), f"part-{task_index:08d}")
        return base + ".blocks", base + ".index"

    def block_index(self, level: int, box: Box) -> int:
        scale = self.pyramid.scale(level)
        gx, gy, _ = scale.grid_shape
        cx, cy, cz = scale.chunk_size
        return box.start[0] // cx + (box.start[1] // cy) * gx + (box.start[2] // cz) * gx * gy

    def metadata(self, level: int) -> dict[str, Any]:
        scale = self.pyramid.scale(level)
        cx, cy, cz = scale.chunk_size
        gx, gy, _ = scale.grid_shape
        largest = cx * cy * cz * self.pyramid.dtype.itemsize + BLOSC_MAX_OVERHEAD
        size_bits = int(math.log2(largest)) + 1
        offset_bits = int(math.log2(max(2, scale.n_chunks * largest))) + 1
        return {
            "XBlockSize": cx,
            "YBlockSize": cy,
            "ZBlockSize": cz,
            "XExtent": scale.size[0],
            "YExtent": scale.size[1],
            "ZExtent": scale.size[2],
            "DType": self.pyramid.data_type,
            "NOffsetBits": offset_bits,
            "NSizeBits": size_bits,
            "BlockFilenames": [self.block_file_path(level)],
            "XStride": 1,
            "YStride": gx,
            "ZStride": gx * gy,
            "Compression": COMPRESSION,
            "CompressionLvl": COMPRESSION_LEVEL,
            "Version": VERSION,
        }

    # --- writing -----------------------------------------------------------------------
    def prepare_level(self, level: int) -> None:
        super().prepare_level(level)
        os.makedirs(self._state_path(level), exist_ok=True)

    def task_writer(self, level: int, task_index: int) -> TaskWriter:
        return _PartWriter(self, level, task_index)

    def write_chunk(self, level: int, box: Box, data: np.ndarray) -> None:
        raise StoreError("blockfs chunks are written through a task writer")

    def _commit_log(self, level: int) -> dict[str, Any]:
        path = os.path.join(self._state_path(level), "commits.json")
        try:
            with open(path, "rb") as f:
                return json.loads(f.read())
        except FileNotFoundError:
            return {"bases": [], "length": 0}

    def commit_task(self, level: int, task_index: int) -> None:
        log = self._commit_log(level)
        if task_index < len(log["bases"]):
            return  # committed before an interruption
        if task_index != len(log["bases"]):
            raise StoreError(f"blockfs task {task_index} committed out of order")
        data_path, _ = self.part_paths(level, task_index)
        target = self.block_file_path(level)
        mode = "r+b" if os.path.exists(target) else "wb"
        with open(target, mode) as out, open(data_path, "rb") as part:
            out.truncate(log["length"])  # drop what an interrupted commit half-appended
            out.seek(log["length"])
            shutil.copyfileobj(part, out, 16 << 20)
            out.flush()
            os.fsync(out.fileno())
            length = out.tell()
        log["bases"].append(log["length"])
        log["length"] = length
        write_atomically(
            os.path.join(self._state_path(level), "commits.json"), json.dumps(log).encode()
        )
        os.unlink(data_path)

    def finish_level(self, level: int) -> None:
        scale = self.pyramid.scale(level)
        metadata = self.metadata(level)
        offsets = np.zeros(scale.n_chunks, np.uint64)
        sizes = np.zeros(scale.n_chunks, np.uint64)
        log = self._commit_log(level)
        for task_index, base in enumerate(log["bases"]):
            _, index_path = self.part_paths(level, task_index)
            with open(index_path, "rb") as f:
                index = np.frombuffer(f.read(), "<i8").reshape(-1, 3)
            offsets[index[:, 0]] = index[:, 1].astype(np.uint64) + np.uint64(base)
            sizes[index[:, 0]] = index[:, 2].astype(np.uint64)
        content = encode_directory_header(metadata) + encode_entries(offsets, sizes, metadata)
        write_atomically(self.directory_path(level), content)
        shutil.rmtree(self._state_path(level), ignore_errors=True)

    # --- reading -----------------------------------------------------------------------
    def chunk_stamp(self, level: int, box: Box) -> tuple[int, ...] | None:
        path = self.directory_path(level)
        directory = open_directory(path)
        stamps = [
            directory.block_stamp(*block.start)
            for _, block in chunks_in(box, directory.block_size_xyz, directory.extent_xyz)
        ]
        found = [s for s in stamps if s is not None]
        if not found:
            return None
        stat = os.stat(path)
        return (stat.st_mtime_ns, stat.st_size, *(n for s in found for n in s))

    def read_chunk_bytes(self, level: int, box: Box) -> bytes | None:
        directory = open_directory(self.directory_path(level))
        little = np.dtype(directory.metadata["DType"]).byteorder in "<|="
        if directory.block_size_xyz == self.pyramid.scale(level).chunk_size and little:
            return directory.read_block_bytes(*box.start)  # the block is the chunk, as stored
        return super().read_chunk_bytes(level, box)

    def read_chunk(self, level: int, box: Box) -> np.ndarray | None:
        directory = open_directory(self.directory_path(level))
        if (
            directory.block_size_xyz == box.size
            or all(b >= s for b, s in zip(directory.block_size_xyz, box.size))
            and all(a % b == 0 for a, b in zip(box.start, directory.block_size_xyz))
        ):
            block = directory.read_block(*box.start)
            if block is None:
                return None
            return block[: box.numpy_shape[0], : box.numpy_shape[1], : box.numpy_shape[2]].astype(
                self.pyramid.dtype, copy=False
            )
        # a store whose blocks are not the info's chunks: assemble the chunk from its blocks
        out = np.zeros(box.numpy_shape, self.pyramid.dtype)
        found = False
        for _, block_box in chunks_in(box, directory.block_size_xyz, directory.extent_xyz):
            block = directory.read_block(*block_box.start)
            if block is None:
                continue
            found = True
            part = block_box.intersect(box)
            out[part.relative_to(box.start).numpy_slices()] = block[
                part.relative_to(block_box.start).numpy_slices()
            ]
        return out if found else None
