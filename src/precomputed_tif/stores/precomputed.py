"""``--format precomputed``: Neuroglancer's own layout, readable by every tool of the field.

Unsharded: one file per chunk, ``R_R_R/x0-x1_y0-y1_z0-z1``, in the scale's encoding. With gzip
(``--gzip``) a folder holds ``name.gz`` (web servers' ``gzip_static`` convention: ours, nginx) and
a bucket holds the gzip bytes under the plain name with ``Content-Encoding: gzip`` (what
Neuroglancer and TensorStore read straight from S3 or GCS); both are read back here. The folder
tree ``x0-x1/y0-y1/z0-z1`` that neuroglancer-scripts writes by default is read too. Sharded
scales (``neuroglancer_uint64_sharded_v1``) are read here; the converter writes them a shard at a
time. Reading works the same from a folder or an ``http(s)://`` URL: chunks are fetched
concurrently and decoded chunks are kept in a bounded cache.
"""

from __future__ import annotations

import gzip as gzip_module
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from ..cache import ByteCache
from ..compression import gzip_compress
from ..encodings import decode_chunk, encode_chunk
from ..errors import StoreError
from ..geometry import Box
from ..locations import (
    HTTP_SCHEMES,
    Location,
    gzip_content,
    is_remote,
    open_location,
    url_scheme,
)
from ..sharding import ShardingSpec, compressed_morton_codes, encode_blob, write_sharded
from .base import ChunkStore, TaskWriter

GZIP_ENCODINGS = ("raw", "compressed_segmentation")
READ_THREADS = 16  # chunks fetched at once from a URL
# ... and read at once from files: enough for a network file system's latency; each thread's
# malloc arena keeps what it decoded, which 16 threads made +60 MiB per worker
LOCAL_READ_THREADS = 4
CACHE_BYTES = 256 * 2**20


@dataclass(frozen=True, eq=False)
class PrecomputedStore(ChunkStore):
    gzip_files: bool = False

    format_name = "precomputed"
    remote_ok = True

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.pyramid, self.gzip_files))

    @cached_property
    def location(self) -> Location:
        return open_location(self.path)

    @cached_property
    def _cache(self) -> ByteCache:
        return ByteCache(CACHE_BYTES)

    @cached_property
    def _shard_readers(self) -> dict[int, ShardReader]:
        return {}

    @cached_property
    def _level_locations(self) -> dict[str, Location]:
        return {}

    @cached_property
    def _tree_levels(self) -> dict[int, bool]:
        """Per level, once a chunk was found: whether it uses the folder-tree layout."""
        return {}

    def _level_location(self, key: str) -> Location:
        location = self._level_locations.get(key)
        if location is None:
            location = self._level_locations[key] = self.location.child(key)
        return location

    def chunk_name(self, level: int, box: Box) -> str:
        offset = self.pyramid.scale(level).voxel_offset
        start = tuple(a + o for a, o in zip(box.start, offset))
        stop = tuple(b + o for b, o in zip(box.stop, offset))
        return Box(start, stop).chunk_name  # type: ignore[arg-type]

    # --- writing (folders and object stores) ---------------------------------------------
    def task_writer(self, level: int, task_index: int) -> TaskWriter:
        if self.pyramid.scale(level).sharding is not None:
            return _ShardWriter(self, level)
        return super().task_writer(level, task_index)

    def encode(self, level: int, data: np.ndarray) -> bytes:
        scale = self.pyramid.scale(level)
        return encode_chunk(
            data, scale.encoding, block_size=scale.segmentation_block_size or (8, 8, 8)
        )

    def write_chunk(self, level: int, box: Box, data: np.ndarray) -> None:
        scale = self.pyramid.scale(level)
        blob = self.encode(level, data)
        name = f"{scale.key}/{self.chunk_name(level, box)}"
        if self.gzip_files and scale.encoding in GZIP_ENCODINGS:
            self.files.write_gzip(name, gzip_compress(blob))
        else:
            self.files.write(name, blob)

    # --- reading (folders and URLs) ------------------------------------------------------
    def _blob(self, level: int, box: Box) -> bytes | None:
        scale = self.pyramid.scale(level)
        if scale.sharding is not None:
            reader = self._shard_readers.get(level)
            if reader is None:
                spec = ShardingSpec.from_json(scale.sharding_json or {})
                reader = self._shard_readers[level] = ShardReader(
                    self._level_location(scale.key), spec
                )
            index = [a // c for a, c in zip(box.start, scale.chunk_size)]
            key = int(compressed_morton_codes(np.array([index]), scale.grid_shape)[0])
            return reader.get(key)
        location = self._level_location(scale.key)
        name = self.chunk_name(level, box)
        tree = self._tree_levels.get(level)
        if not tree:
            blob = location.read(name)
            if blob is not None or tree is False or url_scheme(self.path) in HTTP_SCHEMES:
                if blob is not None:
                    self._tree_levels[level] = False
                return blob
        # neuroglancer-scripts' default layout, x0-x1/y0-y1/z0-z1 (web servers map it to the
        # flat names Neuroglancer asks for, so only folders and buckets hold it)
        blob = location.read(name.replace("_", "/"))
        if blob is not None:
            self._tree_levels[level] = True
        return blob

    def read_chunk(self, level: int, box: Box) -> np.ndarray | None:
        return self._read_chunk(level, box, keep=True)

    def _read_chunk(self, level: int, box: Box, *, keep: bool) -> np.ndarray | None:
        cached = self._cache[(level, box)]
        if cached is not None:
            return cached
        blob = self._blob(level, box)
        if blob is None:
            return None
        scale = self.pyramid.scale(level)
        if scale.sharding is None and scale.encoding in GZIP_ENCODINGS:
            unpacked = gzip_content(blob)  # a bucket object stored gzipped under its name
            blob = blob if unpacked is None else unpacked
        data = decode_chunk(
            blob,
            scale.encoding,
            box.numpy_shape,
            self.pyramid.dtype,
            block_size=scale.segmentation_block_size or (8, 8, 8),
            channels=self.pyramid.num_channels,
        )
        if keep:
            self._cache.put((level, box), data, data.nbytes)
        return data

    def chunk_stamp(self, level: int, box: Box) -> tuple[int, ...] | None:
        scale = self.pyramid.scale(level)
        if scale.sharding is None and url_scheme(self.path) not in HTTP_SCHEMES:
            name = f"{scale.key}/{self.chunk_name(level, box)}"
            return self.files.stamp(name) or self.files.stamp(name + ".gz")
        return super().chunk_stamp(level, box)

    def read_chunks(
        self, level: int, boxes: list[Box], *, keep: bool = True
    ) -> list[np.ndarray | None]:
        if len(boxes) < 2:
            return [self._read_chunk(level, box, keep=keep) for box in boxes]
        threads = READ_THREADS if is_remote(self.path) else LOCAL_READ_THREADS
        with ThreadPoolExecutor(min(threads, len(boxes))) as pool:
            return list(pool.map(lambda box: self._read_chunk(level, box, keep=keep), boxes))


def gzip_note(dest: str) -> str:
    """Where a ``--gzip`` volume at `dest` can be read from, for the end of a run."""
    if is_remote(dest):
        return (
            "chunks are stored gzipped with Content-Encoding: gzip metadata: Neuroglancer, "
            "TensorStore and CloudVolume read them straight from the bucket"
        )
    return (
        "chunks are stored as name.gz: serve the folder with precomputed-webserver, or nginx "
        "with 'gzip_static always; gunzip on;' (see the README); plain static servers and "
        "TensorStore's file driver see no chunks"
    )


class _ShardWriter(TaskWriter):
    """Collects a task's chunks, which make exactly one shard, and writes it whole on close."""

    def __init__(self, store: PrecomputedStore, level: int) -> None:
        super().__init__(store, level)
        self.precomputed = store
        self.scale = store.pyramid.scale(level)
        self.spec = ShardingSpec.from_json(self.scale.sharding_json or {})
        self.cells: list[list[int]] = []
        self.blobs: list[bytes | np.ndarray] = []
        # raw chunks in raw shards: kept as views of the task's region and copied once, into the
        # shard (a shard is a block the task already holds: no second copy of it in memory)
        self.as_views = self.scale.encoding == "raw" and self.spec.data_encoding == "raw"

    def write_chunk(self, box: Box, data: np.ndarray) -> None:
        self.cells.append([a // c for a, c in zip(box.start, self.scale.chunk_size)])
        if self.as_views:
            self.blobs.append(data.astype(data.dtype.newbyteorder("<"), copy=False))
            return
        blob = self.precomputed.encode(self.level, data)
        self.blobs.append(encode_blob(blob) if self.spec.data_encoding == "gzip" else blob)

    def close(self) -> None:
        scale, spec = self.scale, self.spec
        codes = compressed_morton_codes(np.array(self.cells).reshape(-1, 3), scale.grid_shape)
        shards = set(spec.locate(codes)[0].tolist())
        if len(shards) > 1:
            raise StoreError(f"a task of level {self.level} spans shards {sorted(shards)}")
        write_sharded(
            self.precomputed.files.child(scale.key), spec, codes, self.blobs, encoded=True
        )


class ShardReader:
    """Reads keys of one sharded scale, keeping the minishard tables it has fetched."""

    def __init__(self, location: Location, spec: ShardingSpec) -> None:
        self.location = location
        self.spec = spec
        self._tables = ByteCache(64 * 2**20)

    def _table(self, shard: int, minishard: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cached = self._tables[(shard, minishard)]
        if cached is not None:
            return cached
        name = self.spec.shard_name(shard)
        empty = (np.zeros(0, np.uint64),) * 3
        entry = self.location.read_range(name, 16 * minishard, 16)
        if entry is None or len(entry) < 16:
            table = empty
        else:
            start, end = (int(v) for v in np.frombuffer(entry, "<u8"))
            raw = (
                self.location.read_range(name, self.spec.index_bytes + start, end - start)
                if end > start
                else None
            )
            if raw is None:
                table = empty
            else:
                if self.spec.minishard_index_encoding == "gzip":
                    raw = gzip_module.decompress(raw)
                rows = np.frombuffer(raw, "<u8").reshape(3, -1)
                keys = np.cumsum(rows[0])
                ends_before = np.concatenate([[0], np.cumsum(rows[2])[:-1]]).astype(np.uint64)
                starts = np.cumsum(rows[1]) + ends_before
                table = (keys, starts, rows[2].copy())
        self._tables.put((shard, minishard), table, 24 * len(table[0]) + 64)
        return table

    def get(self, key: int) -> bytes | None:
        shard, minishard = (int(v[0]) for v in self.spec.locate(np.array([key], np.uint64)))
        keys, starts, sizes = self._table(shard, minishard)
        found = np.flatnonzero(keys == np.uint64(key))
        if len(found) == 0:
            return None
        i = int(found[0])
        blob = self.location.read_range(
            self.spec.shard_name(shard), self.spec.index_bytes + int(starts[i]), int(sizes[i])
        )
        if blob is None:
            return None
        return gzip_module.decompress(blob) if self.spec.data_encoding == "gzip" else blob
