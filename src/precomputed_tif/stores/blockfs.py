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
import functools
import hashlib
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

from ..compression import blosc_encode, crc32
from ..encodings import blosc_frame_is_whole
from ..errors import StoreError
from ..geometry import Box, chunks_in
from ..locations import create_temporary, write_atomically
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
    # CRC-32 of each stored block, when the volume was written by us (see `checksum_path`)
    crcs: np.ndarray | None = field(default=None, compare=False, repr=False)
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
                raise StoreError(f"block {i} ends past the end of {path!r} (truncated)")
            if self.crcs is not None and crc32(frame) != int(self.crcs[i]):
                raise StoreError(f"block {i} in {path!r} is damaged: its checksum differs")
            if not blosc_frame_is_whole(frame):
                raise StoreError(f"block {i} in {path!r} is damaged: its Blosc frame is cut short")
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


def encode_block(data: np.ndarray) -> bytes:
    """The Blosc frame we store for one block: its little-endian voxels, C order."""
    little = np.ascontiguousarray(data, data.dtype.newbyteorder("<"))
    return blosc_encode(little, COMPRESSION, COMPRESSION_LEVEL, BITSHUFFLE)


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


@functools.lru_cache(maxsize=1024)  # asked for by every request the server answers
def checksum_path(directory_path: str) -> str:
    """Where the CRC-32 of every block of a level we wrote is kept: in the run state, beside the
    volume, so the blockfs files stay as the original reader expects them."""
    level = os.path.dirname(os.path.abspath(directory_path))
    return os.path.join(
        os.path.dirname(level), STATE_DIR, "checksums", os.path.basename(level) + ".crc32"
    )


def _check_entries(
    block_file: str, offsets: np.ndarray, sizes: np.ndarray, length: int, level: int
) -> None:
    """Refuse to finish a level with a block never written or an entry past its file's end."""
    missing = np.flatnonzero(sizes == 0)
    if len(missing):
        raise StoreError(
            f"level {level}: {len(missing)} of {len(sizes)} blocks were never written "
            f"(first: block {int(missing[0])})"
        )
    ends = offsets + sizes
    if len(ends) and int(ends.max()) > length:
        outside = int(np.count_nonzero(ends > np.uint64(length)))
        raise StoreError(
            f"level {level}: {outside} blocks end past the {length} bytes of {block_file!r}"
        )


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
    return BlockDirectory(path, metadata, offsets, sizes, files, _read_checksums(path, count))


def _read_checksums(directory_path: str, count: int) -> np.ndarray | None:
    try:
        with open(checksum_path(directory_path), "rb") as f:
            crcs = np.frombuffer(f.read(), "<u4")
    except OSError:
        return None
    return crcs if len(crcs) == count else None  # not for this directory: ignore it


@lru_cache(maxsize=32)
def _cached_directory(path: str, stamp: tuple[int, ...]) -> BlockDirectory:
    return parse_directory(path)


def open_directory(path: str) -> BlockDirectory:
    """Parse a directory file once per process, again only when it (or its checksums) change."""
    return _open_directory_stamped(path)[0]


def _open_directory_stamped(path: str) -> tuple[BlockDirectory, tuple[int, int]]:
    """`open_directory`, and the directory file's (mtime in ns, size) it was read at."""
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise StoreError(f"blockfs directory {path!r} is missing") from exc
    try:
        crc = os.stat(checksum_path(path))
        crc_stamp: tuple[int, ...] = (crc.st_mtime_ns, crc.st_size)
    except OSError:
        crc_stamp = ()
    stamp = (stat.st_mtime_ns, stat.st_size)
    return _cached_directory(path, (*stamp, *crc_stamp)), stamp


PART_MAGIC = b"PTPART1\0"
# a part file ends with its table (block, offset, size, crc32 per block, as little-endian int64),
# the table's row count, the blocks' length, their sha256 and PART_MAGIC
_TRAILER = struct.Struct("<QQ32s8s")


class PartDamagedError(StoreError):
    """A task's part file is missing or does not match its own checksum: run the task again."""


class _PartWriter(TaskWriter):
    """Writes one task's compressed blocks to a part file under a name of its own, renamed into
    place when whole: a rerun of the same task (a Dask worker lost after it finished) can never
    truncate a part the driver is copying, and a part file that exists is complete."""

    def __init__(self, store: BlockfsStore, level: int, task_index: int) -> None:
        super().__init__(store, level)
        self.store_: BlockfsStore = store
        self.path = store.part_path(level, task_index)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd, self.tmp = create_temporary(os.path.dirname(self.path), os.path.basename(self.path))
        self.file = os.fdopen(fd, "wb")
        self.digest = hashlib.sha256()
        self.entries: list[tuple[int, int, int, int]] = []

    def write_chunk(self, box: Box, data: np.ndarray) -> None:
        frame = encode_block(data)
        block = self.store_.block_index(self.level, box)
        self.entries.append((block, self.file.tell(), len(frame), crc32(frame)))
        self.file.write(frame)
        self.digest.update(frame)

    def close(self) -> None:
        try:
            length = self.file.tell()
            table = np.array(self.entries, np.int64).reshape(-1, 4)
            self.file.write(table.astype("<i8").tobytes())
            self.file.write(_TRAILER.pack(len(table), length, self.digest.digest(), PART_MAGIC))
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, self.path)
        except BaseException:
            self.file.close()
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)
            raise


def _read_part_table(part: Any, path: str) -> tuple[np.ndarray, int, bytes]:
    """The (block, offset, size, crc32) rows of an open part file, its blocks' length and sha256."""
    try:
        end = part.seek(0, os.SEEK_END)
        if end < _TRAILER.size:
            raise PartDamagedError(f"part file {path!r} is truncated")
        part.seek(end - _TRAILER.size)
        rows, length, digest, magic = _TRAILER.unpack(part.read(_TRAILER.size))
        if magic != PART_MAGIC or length + rows * 32 + _TRAILER.size != end:
            raise PartDamagedError(f"part file {path!r} is damaged")
        part.seek(length)
        table = np.frombuffer(part.read(rows * 32), "<i8").reshape(-1, 4)
    except OSError as exc:
        raise PartDamagedError(f"cannot read part file {path!r}: {exc}") from exc
    return table, length, digest


# one buffer per thread for copying parts: a new 16 MiB `bytes` for every piece read was a fresh
# mapping the kernel zeroed first (perf: 14% of a blockfs run's CPU at 1024x1024x256)
_copy_buffers = threading.local()
_COPY_BUFFER_BYTES = 4 << 20


def _copy_verified(part: Any, out: Any, length: int, digest: bytes, name: str) -> None:
    """Copy the `length` block bytes of an open part file to `out`, checking their sha256."""
    buffer = getattr(_copy_buffers, "buffer", None)
    if buffer is None:
        buffer = _copy_buffers.buffer = memoryview(bytearray(_COPY_BUFFER_BYTES))
    check = hashlib.sha256()
    part.seek(0)
    left = length
    while left:
        got = part.readinto(buffer[: min(left, len(buffer))])
        if not got:
            break
        piece = buffer[:got]
        check.update(piece)
        out.write(piece)
        left -= got
    if left or check.digest() != digest:
        raise PartDamagedError(f"part file {name!r} does not match its checksum")


class BlockfsStore(ChunkStore):
    format_name = "blockfs"

    # --- layout ------------------------------------------------------------------------
    def directory_path(self, level: int) -> str:
        return os.path.join(self.level_path(level), DIRECTORY_NAME)

    def block_file_path(self, level: int) -> str:
        return os.path.abspath(self.directory_path(level)) + ".0"

    def state_path(self, level: int) -> str:
        return os.path.join(self.path, STATE_DIR, "blockfs", self.pyramid.scale(level).key)

    def part_path(self, level: int, task_index: int) -> str:
        return os.path.join(self.state_path(level), f"part-{task_index:08d}.blocks")

    def _index_path(self, level: int, task_index: int) -> str:
        return os.path.join(self.state_path(level), f"part-{task_index:08d}.index")

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
        os.makedirs(self.state_path(level), exist_ok=True)
        os.makedirs(os.path.dirname(checksum_path(self.directory_path(level))), exist_ok=True)

    def task_writer(self, level: int, task_index: int) -> TaskWriter:
        return _PartWriter(self, level, task_index)

    def write_chunk(self, level: int, box: Box, data: np.ndarray) -> None:
        raise StoreError("blockfs chunks are written through a task writer")

    def _commit_log(self, level: int) -> dict[str, Any]:
        path = os.path.join(self.state_path(level), "commits.json")
        try:
            with open(path, "rb") as f:
                return json.loads(f.read())
        except FileNotFoundError:
            return {"bases": [], "length": 0}

    def commit_task(self, level: int, task_index: int) -> None:
        """Append the task's part to the level's block file, checking it against its checksum.

        Raises `PartDamagedError` when the part is missing or damaged (the task must run again).
        """
        log = self._commit_log(level)
        if task_index < len(log["bases"]):
            return  # committed before an interruption
        if task_index != len(log["bases"]):
            raise StoreError(f"blockfs task {task_index} committed out of order")
        path = self.part_path(level, task_index)
        try:
            part = open(path, "rb")
        except FileNotFoundError:
            raise PartDamagedError(f"part file {path!r} is missing") from None
        base = int(log["length"])
        target = self.block_file_path(level)
        with part, open(target, "r+b" if os.path.exists(target) else "wb") as out:
            table, length, digest = _read_part_table(part, path)
            out.truncate(base)  # drop what an interrupted commit half-appended
            out.seek(base)
            try:
                _copy_verified(part, out, length, digest, path)
            except PartDamagedError:
                out.truncate(base)
                raise
            out.flush()
            os.fsync(out.fileno())
            end = out.tell()
        rebased = table.copy()
        rebased[:, 1] += base
        write_atomically(
            self._index_path(level, task_index), rebased.astype("<i8").tobytes(), self.tmp_dir
        )
        log["bases"].append(base)
        log["length"] = end
        write_atomically(
            os.path.join(self.state_path(level), "commits.json"),
            json.dumps(log).encode(),
            self.tmp_dir,
        )
        os.unlink(path)

    def discard_level_work(self, level: int) -> None:
        # the directory goes first: a level being remade must not look finished meanwhile
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.directory_path(level))
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.level_path(level)):
                if name.startswith(DIRECTORY_NAME + "."):  # block files, ours or the original's
                    os.unlink(os.path.join(self.level_path(level), name))
        shutil.rmtree(self.state_path(level), ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(checksum_path(self.directory_path(level)))

    def finish_level(self, level: int) -> None:
        """Write the directory once every block is in the block file, never before."""
        scale = self.pyramid.scale(level)
        offsets = np.zeros(scale.n_chunks, np.uint64)
        sizes = np.zeros(scale.n_chunks, np.uint64)
        crcs = np.zeros(scale.n_chunks, "<u4")
        log = self._commit_log(level)
        for task_index in range(len(log["bases"])):
            with open(self._index_path(level, task_index), "rb") as f:
                rows = np.frombuffer(f.read(), "<i8").reshape(-1, 4)
            offsets[rows[:, 0]] = rows[:, 1].astype(np.uint64)
            sizes[rows[:, 0]] = rows[:, 2].astype(np.uint64)
            crcs[rows[:, 0]] = rows[:, 3].astype("<u4")
        target = self.block_file_path(level)
        with open(target, "r+b" if os.path.exists(target) else "wb") as out:
            out.truncate(int(log["length"]))  # bytes of a commit that was never recorded
        _check_entries(target, offsets, sizes, int(log["length"]), level)
        self.write_directory(level, offsets, sizes, crcs)

    def write_directory(
        self, level: int, offsets: np.ndarray, sizes: np.ndarray, crcs: np.ndarray | None = None
    ) -> None:
        """Write the level's directory file: block i is `sizes[i]` bytes at `offsets[i]` of the
        level's block file (size 0: never written), with the blocks' CRC32s beside it when
        known. Written whole and last, so it appears complete."""
        crc_path = checksum_path(self.directory_path(level))
        if crcs is None:  # a stale list would make good blocks look damaged
            with contextlib.suppress(FileNotFoundError):
                os.unlink(crc_path)
        else:
            os.makedirs(os.path.dirname(crc_path), exist_ok=True)
            write_atomically(crc_path, crcs.astype("<u4").tobytes(), self.tmp_dir)
        metadata = self.metadata(level)
        content = encode_directory_header(metadata) + encode_entries(offsets, sizes, metadata)
        write_atomically(self.directory_path(level), content, self.tmp_dir)

    def repair_level(self, level: int, task_boxes: list[Box], redone: set[int]) -> None:
        """Rebuild the block file: the redone tasks' new parts, every other task's blocks copied
        from the old file, in task order, as an uninterrupted run lays them out."""
        scale = self.pyramid.scale(level)
        offsets = np.zeros(scale.n_chunks, np.uint64)
        sizes = np.zeros(scale.n_chunks, np.uint64)
        crcs = np.zeros(scale.n_chunks, "<u4")
        old = (
            None
            if redone >= set(range(len(task_boxes)))
            else parse_directory(self.directory_path(level))
        )
        os.makedirs(self.tmp_dir, exist_ok=True)
        # the rebuilt block file replaces the served one: it gets the umask's modes, not 0600
        fd, tmp = create_temporary(self.tmp_dir, "repair")
        try:
            with os.fdopen(fd, "wb") as out:
                for index, box in enumerate(task_boxes):
                    if index in redone:
                        rows = self._copy_part(level, index, out)
                    else:
                        assert old is not None
                        rows = self._copy_old_blocks(level, old, box, out)
                    offsets[rows[:, 0]] = rows[:, 1].astype(np.uint64)
                    sizes[rows[:, 0]] = rows[:, 2].astype(np.uint64)
                    crcs[rows[:, 0]] = rows[:, 3].astype("<u4")
                out.flush()
                os.fsync(out.fileno())
                length = out.tell()
            _check_entries(tmp, offsets, sizes, length, level)
            os.replace(tmp, self.block_file_path(level))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self.write_directory(level, offsets, sizes, crcs)
        shutil.rmtree(self.state_path(level), ignore_errors=True)

    def _copy_part(self, level: int, task_index: int, out: Any) -> np.ndarray:
        path = self.part_path(level, task_index)
        base = out.tell()
        try:
            part = open(path, "rb")
        except FileNotFoundError:
            raise PartDamagedError(f"part file {path!r} is missing") from None
        with part:
            table, length, digest = _read_part_table(part, path)
            _copy_verified(part, out, length, digest, path)
        rows = table.copy()
        rows[:, 1] += base
        return rows

    def _copy_old_blocks(self, level: int, old: BlockDirectory, box: Box, out: Any) -> np.ndarray:
        """A task's blocks, contiguous in the old block file as its part laid them out."""
        scale = self.pyramid.scale(level)
        blocks = np.array(
            [self.block_index(level, b) for _, b in chunks_in(box, scale.chunk_size, scale.size)],
            np.int64,
        )
        starts = old.offsets[blocks].astype(np.int64)
        lengths = old.sizes[blocks].astype(np.int64)
        first, end = int(starts.min()), int((starts + lengths).max())
        data = old.files.read(old.block_files[0], first, end - first)
        if len(data) != end - first:
            raise StoreError(f"{old.block_files[0]!r} is shorter than its directory says")
        base = out.tell()
        out.write(data)
        crc = [crc32(data[a - first : a - first + n]) for a, n in zip(starts, lengths)]
        return np.stack([blocks, starts - first + base, lengths, np.array(crc, np.int64)], axis=1)

    def clean_up(self) -> None:
        shutil.rmtree(os.path.join(self.path, STATE_DIR, "blockfs"), ignore_errors=True)

    # --- reading -----------------------------------------------------------------------
    def chunk_stamp(self, level: int, box: Box) -> tuple[int, ...] | None:
        directory, stamp = _open_directory_stamped(self.directory_path(level))
        size = directory.block_size_xyz
        if size == box.size and not any(a % n for a, n in zip(box.start, size)):
            # a chunk that is one block, as we write them
            stamps = [directory.block_stamp(*box.start)]
        else:
            stamps = [
                directory.block_stamp(*block.start)
                for _, block in chunks_in(box, directory.block_size_xyz, directory.extent_xyz)
            ]
        found = [s for s in stamps if s is not None]
        if not found:
            return None
        return (*stamp, *(n for s in found for n in s))

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
