"""Chunk stores, one module per on-disk layout, all behind `ChunkStore`.

`FORMATS` maps a ``--format`` name to its store class; `detect_format` tells them apart by the
files a level folder holds, so readers and servers need not be told.
"""

from __future__ import annotations

import itertools
import os

from ..errors import StoreError
from ..locations import (
    HTTP_SCHEMES,
    can_write_gzip,
    is_remote,
    open_location,
    open_writable,
    url_scheme,
)
from ..pyramid import Pyramid
from .base import ChunkStore, read_info
from .blockfs import DIRECTORY_NAME, BlockfsStore
from .ngff import NgffStore, is_ngff
from .precomputed import PrecomputedStore
from .tiff import TiffStore
from .zarr_v2 import ZARRAY, ZarrStore

FORMATS: dict[str, type[ChunkStore]] = {
    "tiff": TiffStore,
    "zarr": ZarrStore,
    "blockfs": BlockfsStore,
    "precomputed": PrecomputedStore,
    "ngff": NgffStore,
}


def create_store(
    format_name: str, path: str, pyramid: Pyramid, *, gzip_files: bool = False
) -> ChunkStore:
    """A store of `format_name` at `path`; `gzip_files` gzips precomputed chunk files."""
    try:
        cls = FORMATS[format_name]
    except KeyError:
        raise StoreError(
            f"unknown format {format_name!r}; expected one of {', '.join(FORMATS)}"
        ) from None
    if is_remote(path) and not cls.remote_ok:
        raise StoreError(
            f"--format {format_name} writes to local or shared folders only; --format ngff, "
            f"zarr or precomputed can write to {url_scheme(path)}:// URLs"
        )
    if cls is PrecomputedStore:
        if gzip_files and not can_write_gzip(path):
            raise StoreError(
                f"--gzip cannot write to {url_scheme(path)}:// URLs: only folders, s3:// and "
                "gs:// keep the Content-Encoding: gzip that readers need; drop --gzip"
            )
        return PrecomputedStore(path, pyramid, gzip_files)
    if gzip_files:
        raise StoreError("--gzip applies to --format precomputed only")
    return cls(path, pyramid)


def detect_format(path: str, first_key: str) -> str:
    """The layout of the volume at `path` (folder or URL), judged from its first level."""
    if url_scheme(path) in HTTP_SCHEMES:
        return "precomputed"  # a web server answers in Neuroglancer's own format
    level = open_writable(path).child(first_key)
    if level.stamp(DIRECTORY_NAME) is not None:
        return "blockfs"
    if level.stamp(ZARRAY) is not None:
        return "zarr"
    if is_remote(path):
        return "precomputed"  # tiff chunks are only written to folders
    try:
        with os.scandir(os.path.join(path, first_key)) as entries:
            # a level may hold millions of chunk files: the first thousand tell the layout
            names = [entry.name for entry in itertools.islice(entries, 1000)]
    except OSError as exc:
        raise StoreError(f"{path!r} has no folder for its first level {first_key!r}") from exc
    if any(name.endswith(".tiff") for name in names):
        return "tiff"
    return "precomputed"  # Neuroglancer's own files (or no chunk written yet)


def open_store(path: str, format_name: str | None = None) -> ChunkStore:
    """Open a volume for reading: a folder, ``file://``, ``http(s)://`` or fsspec URL (layout
    detected when not given).

    ``http(s)://`` URLs are read as Neuroglancer precomputed sources, whatever layout the
    server keeps on its disk, unless they hold no ``info`` but an OME-Zarr image, or
    `format_name` is ``ngff``. A folder holding an OME-Zarr image is read as one.
    """
    url = path.removeprefix("precomputed://")
    for prefix in ("zarr://", "zarr2://", "zarr3://"):  # Neuroglancer's words for OME-Zarr
        if url.startswith(prefix):
            url, format_name = url.removeprefix(prefix), format_name or "ngff"
    if url_scheme(url) == "file":
        url = open_location(url).url
    if format_name == "ngff" or (format_name is None and _holds_ngff(url)):
        return NgffStore.open(url)
    pyramid = Pyramid.from_info(read_info(url))
    if url_scheme(url) in HTTP_SCHEMES or any(s.sharding is not None for s in pyramid.scales):
        format_name = "precomputed"
    if format_name is None:
        format_name = detect_format(url, pyramid.scales[0].key)
    return create_store(format_name, url, pyramid)


def _holds_ngff(url: str) -> bool:
    location = open_location(url)
    if url_scheme(url) in HTTP_SCHEMES and location.read("info") is not None:
        return False  # a precomputed server (ours serves OME-Zarr folders that way too)
    return is_ngff(location)


__all__ = ["FORMATS", "ChunkStore", "NgffStore", "create_store", "detect_format", "open_store"]
