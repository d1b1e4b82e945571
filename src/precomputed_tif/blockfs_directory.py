"""The blockfs ``Directory`` that `BlockfsStack.make_l1_directory` hands to stitchers.

Callers create it, may fork worker processes, call ``write_block(block, x, y, z)`` from any of
them in any order, and ``close()`` it. Unlike the blockfs package there are no writer processes
or queues: each process appends its compressed blocks to a part file of its own (one ``write``
per block, so nothing waits in a buffer), and ``close()`` gathers them in block order into the
level's block file, then writes the directory file. So a level is whole on disk when ``close()``
returns, and never looks complete before; its bytes are those our converter writes.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import StoreError
from .geometry import Box
from .stores.blockfs import (
    COMPRESSION,
    COMPRESSION_LEVEL,
    BlockfsStore,
    encode_block,
    open_directory,
)

# one record per written block in a part's index: which block, where in the part, and when
_RECORD = np.dtype([("block", "<i8"), ("offset", "<i8"), ("size", "<i8"), ("order", "<i8")])
_LATEST = np.dtype(_RECORD.descr + [("part", "<i8")])


@dataclass
class _Part:
    """This process's part file (its blocks) and index file (their records)."""

    pid: int
    data_fd: int
    index_fd: int
    size: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Directory:
    """blockfs's ``Directory`` API over one level of a `BlockfsStore`.

    Attributes follow blockfs: ``x_extent``, ``y_extent``, ``z_extent`` (voxels),
    ``x_block_size``, ``y_block_size``, ``z_block_size``, ``dtype``, ``shape`` (z, y, x),
    ``directory_filename``, ``block_filenames``. ``writers`` is an empty list: there are no
    writer processes to wait for.
    """

    def __init__(self, store: BlockfsStore, level: int = 1) -> None:
        self.store = store
        self.level = level
        scale = store.pyramid.scale(level)
        self.x_extent, self.y_extent, self.z_extent = scale.size
        self.x_block_size, self.y_block_size, self.z_block_size = scale.chunk_size
        self.dtype = store.pyramid.dtype
        self.directory_filename = os.path.abspath(store.directory_path(level))
        self.block_filenames = [store.block_file_path(level)]
        self.compression = COMPRESSION
        self.compression_level = COMPRESSION_LEVEL
        self.writers: list[Any] = []
        self._part: _Part | None = None

    def __getstate__(self) -> dict[str, Any]:
        # another process writes to a part of its own
        return {"store": self.store, "level": self.level}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["store"], state["level"])  # type: ignore[misc]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.z_extent, self.y_extent, self.x_extent)

    @property
    def _parts_dir(self) -> str:
        return os.path.join(self.store.state_path(self.level), "directory")

    def get_block_size(self, x: int, y: int, z: int) -> tuple[int, int, int]:
        """The (z, y, x) shape of the block whose corner is (x, y, z), clipped at the edges."""
        return (
            min(self.z_extent - z, self.z_block_size),
            min(self.y_extent - y, self.y_block_size),
            min(self.x_extent - x, self.x_block_size),
        )

    def create(self, create_shards: bool = True) -> None:
        """Start the level afresh: earlier files of this level (ours or blockfs's) are removed."""
        self.store.discard_level_work(self.level)
        os.makedirs(self.store.level_path(self.level), exist_ok=True)
        os.makedirs(self._parts_dir, exist_ok=True)

    def start_writer_processes(self, queue_depth: int = 10) -> None:
        """Kept for blockfs callers: blocks are written by whichever process calls
        `write_block`, so there is nothing to start."""

    def _block_box(self, x: int, y: int, z: int) -> Box:
        size = (self.x_block_size, self.y_block_size, self.z_block_size)
        extent = (self.x_extent, self.y_extent, self.z_extent)
        for name, v, b, e in zip("xyz", (x, y, z), size, extent):
            if v < 0 or v >= e or v % b:
                raise StoreError(
                    f"block corner {name}={v} is not on the {b}-voxel block grid of a level "
                    f"{e} voxels wide"
                )
        stop = tuple(min(v + b, e) for v, b, e in zip((x, y, z), size, extent))
        return Box((x, y, z), stop)  # type: ignore[arg-type]

    def _my_part(self) -> _Part:
        pid = os.getpid()
        part = self._part
        if part is None or part.pid != pid:  # a forked child writes to a part of its own
            os.makedirs(self._parts_dir, exist_ok=True)
            base = os.path.join(self._parts_dir, f"{pid}-{uuid.uuid4().hex}")
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_BINARY", 0)
            part = _Part(pid, os.open(base + ".blocks", flags), os.open(base + ".index", flags))
            self._part = part
        return part

    def write_block(self, block: np.ndarray, x: int, y: int, z: int) -> None:
        """Store the block whose corner is voxel (x, y, z); `block` is (z, y, x), clipped at
        the level's edges (see `get_block_size`), and is cast to the level's type."""
        box = self._block_box(int(x), int(y), int(z))
        expected = box.numpy_shape
        if tuple(block.shape) != expected:
            raise StoreError(
                f"block at x={x}, y={y}, z={z} has shape {tuple(block.shape)}; expected "
                f"{expected} (z, y, x)"
            )
        frame = encode_block(np.asarray(block).astype(self.dtype, copy=False))
        record = np.zeros(1, _RECORD)
        record["block"] = self.store.block_index(self.level, box)
        record["size"] = len(frame)
        part = self._my_part()
        with part.lock:
            record["offset"] = part.size
            record["order"] = time.monotonic_ns()
            _write_all(part.data_fd, frame)
            part.size += len(frame)
            _write_all(part.index_fd, record.tobytes())

    def __setitem__(self, key: tuple[slice, slice, slice], value: np.ndarray) -> None:
        self.write_block(value, key[2].start, key[1].start, key[0].start)

    def _latest(self) -> tuple[list[str], np.ndarray]:
        """The part files, and each written block's last record, in block order (fields of
        `_RECORD` plus ``part``, an index into the part files)."""
        try:
            names = sorted(n for n in os.listdir(self._parts_dir) if n.endswith(".index"))
        except FileNotFoundError:
            names = []
        paths, tables = [], []
        for part, name in enumerate(names):
            base = os.path.join(self._parts_dir, name[: -len(".index")])
            with open(base + ".index", "rb") as f:
                raw = f.read()
            whole = len(raw) // _RECORD.itemsize * _RECORD.itemsize  # a torn last record
            records = np.frombuffer(raw[:whole], _RECORD)
            table = np.zeros(len(records), _LATEST)
            for name_ in _RECORD.names or ():
                table[name_] = records[name_]
            table["part"] = part
            paths.append(base + ".blocks")
            tables.append(table)
        table = np.concatenate(tables) if tables else np.zeros(0, _LATEST)
        table = table[np.lexsort((table["order"], table["block"]))]
        last = np.ones(len(table), bool)
        last[:-1] = table["block"][:-1] != table["block"][1:]  # a block written again: the last
        return paths, table[last]

    def read_block(self, x: int, y: int, z: int) -> np.ndarray:
        """The (z, y, x) block whose corner is (x, y, z); zeros if it was never written."""
        import numcodecs.blosc

        box = self._block_box(int(x), int(y), int(z))
        if os.path.exists(self._parts_dir) or not os.path.exists(self.directory_filename):
            paths, latest = self._latest()
            found = latest[latest["block"] == self.store.block_index(self.level, box)]
            if not len(found):
                return np.zeros(box.numpy_shape, self.dtype)
            with open(paths[int(found["part"][0])], "rb") as f:
                f.seek(int(found["offset"][0]))
                raw = numcodecs.blosc.decompress(f.read(int(found["size"][0])))
            return np.frombuffer(raw, self.dtype).reshape(box.numpy_shape)
        block = open_directory(self.directory_filename).read_block(x, y, z)
        return np.zeros(box.numpy_shape, self.dtype) if block is None else block

    def close(self) -> None:
        """Write the level: its blocks in block order, then the directory file. Every block
        written before (from any process) is on disk when this returns."""
        part = self._part
        if part is not None and part.pid == os.getpid():
            os.close(part.data_fd)
            os.close(part.index_fd)
            self._part = None
        if not os.path.exists(self._parts_dir):
            return  # closed before, or never written
        paths, latest = self._latest()
        n_blocks = self.store.pyramid.scale(self.level).n_chunks
        offsets = np.zeros(n_blocks, np.uint64)
        sizes = np.zeros(n_blocks, np.uint64)
        sizes[latest["block"]] = latest["size"]
        offsets[latest["block"]] = np.cumsum(latest["size"]) - latest["size"]
        parts = [open(path, "rb") for path in paths]
        try:
            with open(self.block_filenames[0], "wb") as out:
                for part, offset, size in zip(
                    latest["part"].tolist(), latest["offset"].tolist(), latest["size"].tolist()
                ):
                    parts[part].seek(offset)
                    out.write(parts[part].read(size))
                out.flush()
                os.fsync(out.fileno())
        finally:
            for f in parts:
                f.close()
        self.store.write_directory(self.level, offsets, sizes)
        shutil.rmtree(self._parts_dir, ignore_errors=True)
        self.store.remove_empty_state()
