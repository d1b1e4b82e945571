"""Chunk stores, one module per on-disk layout, all behind `ChunkStore`.

`FORMATS` maps a ``--format`` name to its store class; `detect_format` tells them apart by the
files a level folder holds, so readers and servers need not be told.
"""

from __future__ import annotations

import os

from ..errors import StoreError
from ..pyramid import Pyramid
from .base import ChunkStore, read_info
from .blockfs import DIRECTORY_NAME, BlockfsStore
from .precomputed import PrecomputedStore
from .tiff import TiffStore
from .zarr_v2 import ZARRAY, ZarrStore

FORMATS: dict[str, type[ChunkStore]] = {
    "tiff": TiffStore,
    "zarr": ZarrStore,
    "blockfs": BlockfsStore,
    "precomputed": PrecomputedStore,
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
    if cls is PrecomputedStore:
        return PrecomputedStore(path, pyramid, gzip_files)
    if gzip_files:
        raise StoreError("--gzip applies to --format precomputed only")
    return cls(path, pyramid)


def detect_format(path: str, first_key: str) -> str:
    """The layout of the volume at `path`, judged from its first level's folder."""
    level = os.path.join(path, first_key)
    if os.path.exists(os.path.join(level, DIRECTORY_NAME)):
        return "blockfs"
    if os.path.exists(os.path.join(level, ZARRAY)):
        return "zarr"
    try:
        names = os.listdir(level)
    except OSError as exc:
        raise StoreError(f"{path!r} has no folder for its first level {first_key!r}") from exc
    if any(name.endswith(".tiff") for name in names):
        return "tiff"
    return "precomputed"  # Neuroglancer's own files (or no chunk written yet)


def open_store(path: str, format_name: str | None = None) -> ChunkStore:
    """Open a volume for reading: a folder (layout detected when not given) or a URL.

    ``http(s)://`` URLs are read as Neuroglancer precomputed sources, whatever layout the
    server keeps on its disk.
    """
    import json

    from ..locations import open_location

    url = path.removeprefix("precomputed://")
    if url.startswith(("http://", "https://")):
        content = open_location(url).read("info")
        if content is None:
            raise StoreError(f"{url}/info not found: not a precomputed source")
        try:
            info = json.loads(content)
        except ValueError as exc:
            raise StoreError(f"{url}/info is not JSON: {exc}") from exc
        return PrecomputedStore(url, Pyramid.from_info(info))
    if url.startswith("file://"):
        url = open_location(url).url
    pyramid = Pyramid.from_info(read_info(url))
    if any(scale.sharding is not None for scale in pyramid.scales):
        format_name = "precomputed"
    if format_name is None:
        format_name = detect_format(url, pyramid.scales[0].key)
    return create_store(format_name, url, pyramid)


__all__ = ["FORMATS", "ChunkStore", "create_store", "detect_format", "open_store"]
