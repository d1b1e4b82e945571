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
from .tiff import TiffStore
from .zarr_v2 import ZARRAY, ZarrStore

FORMATS: dict[str, type[ChunkStore]] = {
    "tiff": TiffStore,
    "zarr": ZarrStore,
    "blockfs": BlockfsStore,
}


def create_store(format_name: str, path: str, pyramid: Pyramid) -> ChunkStore:
    try:
        cls = FORMATS[format_name]
    except KeyError:
        raise StoreError(
            f"unknown format {format_name!r}; expected one of {', '.join(FORMATS)}"
        ) from None
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
    raise StoreError(f"cannot tell the layout of {path!r}: {level!r} holds no known chunk files")


def open_store(path: str, format_name: str | None = None) -> ChunkStore:
    """Open an existing volume folder for reading; the format is detected when not given."""
    pyramid = Pyramid.from_info(read_info(path))
    if format_name is None:
        format_name = detect_format(path, pyramid.scales[0].key)
    return create_store(format_name, path, pyramid)


__all__ = ["FORMATS", "ChunkStore", "create_store", "detect_format", "open_store"]
