"""Answering requests inside one volume folder: ``info``, chunks, and plain files.

Chunk layouts (tiff, zarr, blockfs) are read through the stores and answered as Neuroglancer's
raw encoding; ``raw`` folders already hold Neuroglancer's files and are served as they are, with
byte ranges for shard files. Nothing here ever opens a path outside the volume folder: plain
files are resolved (see `_resolved`) and must stay inside it.
"""

from __future__ import annotations

import logging
import os
import stat as stat_module
import threading
import time
from collections import OrderedDict
from contextlib import nullcontext
from typing import Any

from ..cache import ByteCache
from ..errors import StoreError
from ..geometry import Box
from ..locations import (
    REMOTE_RECHECK_SECONDS,
    file_stamp,
    gzip_content,
    is_remote,
    open_writable,
)
from ..pyramid import Pyramid
from ..stores import ChunkStore, create_store
from ..stores._zarr import ZARR_JSON, ZATTRS
from ..stores.base import INFO_NAME, read_info
from ..stores.ngff import NgffStore
from .config import Source
from .http import JSON, OCTETS, FileRegion, HttpError, Response, etag_for, http_date

log = logging.getLogger(__name__)

Stamp = tuple[int, int] | None

CONTENT_TYPES = {
    ".json": JSON,
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript",
    ".css": "text/css",
    ".wasm": "application/wasm",
    ".png": "image/png",
    ".map": JSON,
}


class ChunkCache(ByteCache):
    """Raw chunk bytes served recently, by (folder, level, box, stamp)."""

    def get(self, key: Any) -> bytes | None:
        item = super().get(key)
        return None if item is None else item[0]

    def put(self, key: Any, value: bytes, size: int | None = None) -> None:
        super().put(key, value, len(value) if size is None else size)


class StoreCache:
    """Stores opened once per folder and kept, reopened when the folder's info changes."""

    def __init__(self, max_stores: int = 64) -> None:
        self.max_stores = max_stores
        self._stores: OrderedDict[tuple[str, str], tuple[Stamp, ChunkStore, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, source: Source) -> ChunkStore:
        key = (source.directory, source.format)
        with self._lock:
            cached = self._stores.get(key)
        if cached is not None and is_remote(source.directory):
            _, remembered, checked = cached
            if time.monotonic() - checked < REMOTE_RECHECK_SECONDS:
                return remembered
        stamp = info_stamp(source)
        if stamp is None:
            raise HttpError(404, "the volume has no info file")
        if cached is not None and cached[0] == stamp:
            with self._lock:
                self._stores[key] = (stamp, cached[1], time.monotonic())
                self._stores.move_to_end(key)
            return cached[1]
        store: ChunkStore
        if source.format == "ngff":
            store = NgffStore.open(source.directory)
        else:
            store = create_store(source.format, source.directory, _read_pyramid(source.directory))
        with self._lock:
            self._stores[key] = (stamp, store, time.monotonic())
            self._stores.move_to_end(key)
            while len(self._stores) > self.max_stores:
                self._stores.popitem(last=False)
        return store


def info_stamp(source: Source) -> Stamp:
    """What changes when the volume is rewritten: its info, or an OME-Zarr image's group."""
    names = [ZARR_JSON, ZATTRS] if source.format == "ngff" else [INFO_NAME]
    for name in names:
        if is_remote(source.directory):
            stamp = open_writable(source.directory).stamp(name)
        else:
            stamp = file_stamp(os.path.join(source.directory, name))
        if stamp is not None:
            return stamp
    return None


def _read_pyramid(directory: str) -> Pyramid:
    try:
        return Pyramid.from_info(read_info(directory))
    except (ValueError, StoreError) as exc:
        raise StoreError(f"the info file of {directory!r} is unreadable: {exc}") from exc


def serve_info(source: Source, stores: StoreCache) -> Response:
    if source.format == "ngff":
        # an OME-Zarr image as a precomputed source: the info its metadata implies
        stamp = info_stamp(source)
        body = stores.get(source).pyramid.info_bytes()
        return Response(200, body, {"Content-Type": JSON, "ETag": etag_for("info", stamp)})
    if is_remote(source.directory):
        return _remote_file(source, [INFO_NAME], content_type=JSON)
    path, found = _resolved(source, [INFO_NAME])
    return _static_file(path, content_type=JSON, found=found)


# Decoding a chunk hands the GIL back and forth (a tiff chunk is 64 deflate calls); more
# decoding threads than cores only fight over it. Measured with 8 server threads on 2 cores,
# cold tiff chunks: 306 req/s and 4.7 ms of CPU each unbounded, 384 and 3.4 with this bound;
# blockfs unchanged. Requests answered from the cache never wait here.
_DECODERS = threading.BoundedSemaphore(os.cpu_count() or 1)


def serve_chunk(
    source: Source, stores: StoreCache, cache: ChunkCache, key: str, name: str
) -> Response:
    """Neuroglancer's raw bytes of chunk `name` of the scale whose key is `key`."""
    remote = is_remote(source.directory)
    if not remote and not _still_configured(source.directory):
        raise HttpError(404, "not found")
    store = stores.get(source)
    pyramid = store.pyramid
    level = next((i + 1 for i, s in enumerate(pyramid.scales) if s.key == key), None)
    if level is None:
        raise HttpError(404, f"no scale {key!r}")
    try:
        box = Box.from_chunk_name(name)
    except ValueError as exc:
        raise HttpError(400, str(exc)) from exc
    scale = pyramid.scale(level)
    offset = scale.voxel_offset
    local = box.relative_to(offset)
    if any(a >= s for a, s in zip(local.start, scale.size)) or local.is_empty():
        raise HttpError(404, f"chunk {name} lies outside scale {key}")
    expected_stop = tuple(
        min(a + c, s) for a, c, s in zip(local.start, scale.chunk_size, scale.size)
    )
    if any(a % c for a, c in zip(local.start, scale.chunk_size)) or local.stop != expected_stop:
        raise HttpError(400, f"chunk {name} is not on the chunk grid of scale {key}")
    stamp = store.chunk_stamp(level, local)
    if stamp is None:
        raise HttpError(404, f"chunk {name} was never written")
    cache_key = (source.directory, level, local, stamp)
    body = cache.get(cache_key)
    if body is None:
        # an object store's chunk waits on the network, not on a core
        bound = nullcontext() if remote else _DECODERS
        with bound:
            body = store.read_chunk_bytes(level, local)
        if body is None:
            raise HttpError(404, f"chunk {name} was never written")
        if len(body) != local.voxels * pyramid.dtype.itemsize:
            raise StoreError(f"chunk {name} of {source.directory!r} has the wrong size")
        cache.put(cache_key, body)
    # a local store's stamp opens with the file's mtime in ns; other stamps are opaque
    mtime = stamp[0] / 1e9 if len(stamp) > 1 and not remote else None
    return Response(200, body, {"Content-Type": OCTETS, "ETag": etag_for(stamp)}, mtime)


def serve_file(source: Source, parts: list[str], hidden: tuple[str, ...] = ()) -> Response:
    """A plain file of a raw folder; never one outside it, never a hidden one.

    A missing ``name`` whose ``name.gz`` exists (precomputed chunks written with gzip) is
    answered with the gzip bytes and ``Content-Encoding: gzip``; the app unpacks them for
    clients that do not accept gzip.
    """
    if any(part.startswith(".") and part not in hidden for part in parts):
        raise HttpError(404, "not found")
    if is_remote(source.directory):
        return _remote_file(source, parts)
    path, found = _resolved(source, parts)
    try:
        return _static_file(path, found=found)
    except HttpError:
        if parts[-1].endswith(".gz") or os.path.lexists(path):
            raise
    packed = _inside(source, path + ".gz")
    if not os.path.isfile(packed):
        raise HttpError(404, "not found")
    response = _static_file(packed, content_type=OCTETS)
    response.headers["Content-Encoding"] = "gzip"
    return response


def _remote_file(source: Source, parts: list[str], content_type: str | None = None) -> Response:
    """A file of an object-store volume, read range by range as it is sent."""
    location = open_writable(source.directory)
    name = "/".join(parts)
    stamp = location.stamp(name)
    encoding = None
    if stamp is None and not name.endswith(".gz"):
        stamp = location.stamp(name + ".gz")
        name, encoding = name + ".gz", "gzip"
    if stamp is None:
        raise HttpError(404, "not found")
    if content_type is None:
        content_type = OCTETS if encoding else CONTENT_TYPES.get(os.path.splitext(name)[1], OCTETS)
    headers = {"Content-Type": content_type, "ETag": etag_for(*stamp)}
    body: bytes | FileRegion = FileRegion(name, 0, stamp[1], location)
    if encoding is None and _is_chunk_name(parts[-1]):
        # --gzip chunks in a bucket are gzip bytes under the plain name (Content-Encoding
        # metadata, which fsspec does not report): recognised by their content
        content = location.read(name)
        if content is None:
            raise HttpError(404, "not found")
        body = content
        if gzip_content(content) is not None:
            encoding = "gzip"
    if encoding:
        headers["Content-Encoding"] = encoding
    return Response(200, body, headers)


def _is_chunk_name(name: str) -> bool:
    try:
        Box.from_chunk_name(name)
    except ValueError:
        return False
    return True


def _resolved(source: Source, parts: list[str]) -> tuple[str, os.stat_result | None]:
    """The real path of `parts` inside `source`'s folder, and the file's ``stat`` when the
    quick way found it.

    The quick way: the folder is still the one resolved when it was configured (same device and
    inode, so no folder above it has become a link elsewhere) and no name below it is a link;
    the joined path is then its own real path, found with one ``lstat`` per name of the request.
    ``realpath`` (`_inside`) takes one per component from the root and was a third of the app's
    time on a raw chunk file. Links, missing names and a folder made anew take that way.
    """
    folder = source.directory
    path = folder
    try:
        if parts and _still_configured(folder):
            for part in parts:
                path = os.path.join(path, part)
                found = os.lstat(path)
                if stat_module.S_ISLNK(found.st_mode):
                    break
            else:
                return path, found
    except OSError:
        pass
    return _inside(source, os.path.join(folder, *parts)), None


_FOLDER_IDENTITIES: dict[str, tuple[int, int]] = {}


def _still_configured(folder: str) -> bool:
    """Whether a local volume's folder is the (device, inode) recorded the first time it was
    asked for (or, after it was made anew, the last time) while it was its own real path."""
    try:
        now = os.stat(folder)
    except OSError:
        return False
    identity = (now.st_dev, now.st_ino)
    if _FOLDER_IDENTITIES.get(folder) == identity:
        return True
    if os.path.realpath(folder) != folder:
        return False
    _FOLDER_IDENTITIES[folder] = identity
    return True


def _inside(source: Source, path: str) -> str:
    real = os.path.realpath(path)
    if os.path.commonpath([real, source.directory]) != source.directory:
        raise HttpError(404, "not found")
    return real


def _static_file(
    path: str, content_type: str | None = None, found: os.stat_result | None = None
) -> Response:
    try:
        stat = found if found is not None else os.stat(path)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise HttpError(404, "not found") from exc
    except OSError as exc:
        raise HttpError(404, "not readable") from exc
    if not stat_module.S_ISREG(stat.st_mode):
        raise HttpError(404, "not a file")
    if content_type is None:
        content_type = CONTENT_TYPES.get(os.path.splitext(path)[1].lower(), OCTETS)
    return Response(
        200,
        FileRegion(path, 0, stat.st_size),
        {
            "Content-Type": content_type,
            "ETag": etag_for(stat.st_mtime_ns, stat.st_size, stat.st_ino),
            "Last-Modified": http_date(stat.st_mtime),
        },
        stat.st_mtime,
    )
