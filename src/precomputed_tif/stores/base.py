"""The chunk-store interface every on-disk layout implements, and the behaviour they share.

A store knows one layout (tiff, zarr, blockfs, ...) under one destination folder. Writers hand it
whole chunks of a level; readers ask for any box and get zeros where nothing was written. The
write side is split into task writers so that many processes can fill one level at once, and a
layout that must gather their output (blockfs) does so in `commit_task`, in task order, so the
bytes on disk never depend on which task finished first.
"""

from __future__ import annotations

import contextlib
import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from math import prod
from typing import Any

import numpy as np

from ..encodings import encode_chunk
from ..errors import StoreError
from ..geometry import Box, chunks_in
from ..locations import (
    LocalLocation,
    Location,
    WritableLocation,
    is_remote,
    open_location,
    open_writable,
)
from ..pyramid import Pyramid

INFO_NAME = "info"
STATE_DIR = ".precomputed-tif"
TMP_DIR = "tmp"
# decoded chunks a region read holds at once before copying them into the region
REGION_READ_BATCH_BYTES = 32 << 20


def load_json(location: Location, name: str) -> dict[str, Any] | None:
    """The JSON object stored at `name`, None when missing; StoreError when it is not one."""
    try:
        content = location.read(name)
    except StoreError:
        raise
    except OSError as exc:
        raise StoreError(f"cannot read {location.url}/{name}: {exc}") from exc
    if content is None:
        return None
    try:
        obj = json.loads(content)
    except ValueError as exc:
        raise StoreError(f"{location.url}/{name} is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise StoreError(f"{location.url}/{name} is not a JSON object")
    return obj


def read_info(path: str) -> dict[str, Any]:
    """The info JSON of the volume at a folder or URL."""
    info = load_json(open_location(path), INFO_NAME)
    if info is None:
        raise StoreError(f"{path!r} has no info file: not a precomputed volume")
    return info


WINDOW_SAMPLE = 128  # voxels per axis of the coarsest level a display window looks at


def display_window(store: ChunkStore, *, channel: int | None = None) -> tuple[float, float] | None:
    """The 0.5 and 99.5 percentiles of the coarsest level (a central block of it when large):
    a display range that shows a 12-bit camera image in uint16, or None when there is no data.
    `channel` picks one channel of a volume of several (default: all together).
    """
    level = store.pyramid.n_levels
    size = store.pyramid.scale(level).size
    start = tuple(max(0, (s - WINDOW_SAMPLE) // 2) for s in size)
    stop = tuple(min(s, a + WINDOW_SAMPLE) for a, s in zip(start, size))
    data = store.read_region(level, Box(start, stop))  # type: ignore[arg-type]
    if channel is not None and data.ndim == 4:
        data = data[..., channel]
    if data.size == 0:
        return None
    low, high = (float(v) for v in np.percentile(data, [0.5, 99.5]))
    return (low, high if high > low else low + 1)


class TaskWriter:
    """Writes the chunks of one task; `close` makes them durable. Most layouts need no more."""

    def __init__(self, store: ChunkStore, level: int) -> None:
        self.store = store
        self.level = level

    def write_chunk(self, box: Box, data: np.ndarray) -> None:
        self.store.write_chunk(self.level, box, data)

    def write_region(self, box: Box, data: np.ndarray) -> None:
        """Write a chunk-aligned `box` of this level, chunk by chunk."""
        scale = self.store.pyramid.scale(self.level)
        for _, chunk in chunks_in(box, scale.chunk_size, scale.size):
            self.write_chunk(chunk, data[chunk.relative_to(box.start).numpy_slices()])

    def close(self) -> None:
        pass


@dataclass(frozen=True, eq=False)
class ChunkStore(ABC):
    """One volume folder in one layout. Picklable: it holds only the path and the pyramid."""

    path: str
    pyramid: Pyramid

    format_name = "abstract"
    # layouts written as whole objects by name can live in object stores (s3://, gs://)
    remote_ok = False

    @cached_property
    def files(self) -> WritableLocation:
        """The volume's folder or object-store prefix, addressed by names inside it."""
        files = open_writable(self.path)
        if isinstance(files, LocalLocation):
            files.tmp_dir = self.tmp_dir
        return files

    @property
    def tmp_dir(self) -> str:
        """Where files being written wait before they are renamed into place: one folder that
        `--resume` empties, so no killed write is left among the chunks."""
        return os.path.join(self.path, STATE_DIR, TMP_DIR)

    # --- writing -----------------------------------------------------------------------
    def prepare_level(self, level: int) -> None:
        """Create what a level needs before tasks write to it (folders, array metadata)."""
        if not is_remote(self.path):
            os.makedirs(self.level_path(level), exist_ok=True)

    def task_writer(self, level: int, task_index: int) -> TaskWriter:
        return TaskWriter(self, level)

    def commit_task(self, level: int, task_index: int) -> None:
        """Called by the driver once per finished task, in task order."""

    def finish_level(self, level: int) -> None:
        """Called once every task of the level is committed."""

    def discard_level_work(self, level: int) -> None:
        """Forget unfinished work on `level` (part files, commit logs) before making it anew.

        Layouts that write every chunk in place have nothing to forget.
        """

    def repair_level(self, level: int, task_boxes: list[Box], redone: set[int]) -> None:
        """Called after tasks `redone` of a finished level ran again; `task_boxes` are every
        task's box of this level. Layouts of one file per chunk (or shard) have nothing to do."""

    def clean_up(self) -> None:
        """Remove what writing needed once the whole volume is finished (blockfs parts)."""

    @abstractmethod
    def write_chunk(self, level: int, box: Box, data: np.ndarray) -> None:
        """Store one whole chunk (edge chunks clipped) of `level`; `data` is (z, y, x)."""

    def remove_empty_state(self) -> None:
        """Remove the folders of run state that nothing is left in (local volumes only)."""
        if is_remote(self.path):
            return
        root = os.path.join(self.path, STATE_DIR)
        for folder, _, _ in sorted(os.walk(root), key=lambda w: -len(w[0])):
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # fails, as it should, on folders that still hold files

    def write_info(self) -> None:
        self.files.write(INFO_NAME, self.pyramid.info_bytes())

    # --- reading -----------------------------------------------------------------------
    @abstractmethod
    def read_chunk(self, level: int, box: Box) -> np.ndarray | None:
        """The (z, y, x) voxels of one chunk, or None when it was never written."""

    def read_chunk_bytes(self, level: int, box: Box) -> bytes | None:
        """Neuroglancer's raw bytes of one chunk (little-endian, x fastest), or None if missing.

        Layouts whose stored bytes already are these override it and skip numpy.
        """
        data = self.read_chunk(level, box)
        if data is None:
            return None
        return encode_chunk(data, "raw")

    def chunk_stamp(self, level: int, box: Box) -> tuple[int, ...] | None:
        """What changes when the chunk's bytes change (file times, sizes), or None if missing.

        Servers build ETags and cache keys from it without reading the chunk.
        """
        data = self.read_chunk(level, box)
        return None if data is None else (hash(data.tobytes()),)

    def read_chunks(
        self, level: int, boxes: list[Box], *, keep: bool = True
    ) -> list[np.ndarray | None]:
        """Several chunks; layouts with latency (URLs) fetch them concurrently. `keep=False`
        says they are read once (a task's input): a store that caches chunks leaves them out."""
        return [self.read_chunk(level, box) for box in boxes]

    def read_region(self, level: int, box: Box, *, keep: bool = True) -> np.ndarray:
        """Any box of `level` as a (z, y, x) array, (z, y, x, c) for several channels; unwritten
        chunks and outside read as zero. `keep` as for `read_chunks`."""
        scale = self.pyramid.scale(level)
        channels = self.pyramid.num_channels
        out = np.zeros(box.numpy_shape + ((channels,) if channels > 1 else ()), self.pyramid.dtype)
        chunks = [chunk for _, chunk in chunks_in(box, scale.chunk_size, scale.size)]
        # a few MiB of decoded chunks at a time: all of them at once doubled a task's memory
        chunk_bytes = out.itemsize * channels * prod(scale.chunk_size)
        batch = max(1, REGION_READ_BATCH_BYTES // chunk_bytes)
        for first in range(0, len(chunks), batch):
            some = chunks[first : first + batch]
            for chunk, data in zip(some, self.read_chunks(level, some, keep=keep)):
                if data is None:
                    continue
                part = chunk.intersect(box)
                out[part.relative_to(box.start).numpy_slices()] = data[
                    part.relative_to(chunk.start).numpy_slices()
                ]
        return out

    def level_path(self, level: int) -> str:
        return os.path.join(self.path, self.pyramid.scale(level).key)

    def __reduce__(self) -> tuple[Any, ...]:
        # caches that subclasses keep must not travel to other processes
        return (type(self), (self.path, self.pyramid))
