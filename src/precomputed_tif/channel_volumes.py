"""Several channels as several volumes: ``DEST/NAME/`` each, listed by ``DEST/sources.json``.

For layouts without a channel axis (tiff, zarr, blockfs, precomputed). The channels are converted
one after another, each a resumable run of its own, under one record
``DEST/.precomputed-tif/channels.json`` naming them all, so the command resumes as one. The
``sources.json`` (the server's, with each channel's display colour) is written last: until it
exists the folder is no finished set of channels.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .channels import Channel, channel_color
from .errors import StoreExistsError
from .stores.base import STATE_DIR

SOURCES_NAME = "sources.json"
RECORD_NAME = "channels.json"


def _record_path(dest: str) -> str:
    return os.path.join(dest, STATE_DIR, RECORD_NAME)


def channel_record(channels: list[Channel], format_name: str) -> dict[str, Any]:
    """What the run makes: the channels' names, in order, and the layout."""
    return {"format": format_name, "channels": [c.name for c in channels]}


def prepare_channel_dest(
    dest: str, record: dict[str, Any], *, resume: bool, overwrite: bool
) -> bool:
    """Check `dest` for a run of `record`; True when that run already finished.

    Each channel's own run record decides what a resumed channel keeps; this only refuses a
    folder holding another set of channels or files of the user's.
    """
    path = _record_path(dest)
    old = None
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
    names = set(os.listdir(dest)) if os.path.isdir(dest) else set()
    if names and old is None and not overwrite:
        listed = ", ".join(sorted(names)[:3])
        raise StoreExistsError(
            f"--dest {dest!r} already holds files ({listed}): give an empty or new folder, "
            "or --overwrite to replace a volume there"
        )
    if old is not None and old != record and not overwrite:
        raise StoreExistsError(
            f"--dest {dest!r} holds other channels ({', '.join(old.get('channels', []))}, "
            f"--format {old.get('format')}); run with --overwrite to replace them"
        )
    finished = old == record and os.path.isfile(os.path.join(dest, SOURCES_NAME))
    if finished and not (resume or overwrite):
        return True
    if old is not None and old != record and overwrite:
        for name in old.get("channels", []):
            if name not in record["channels"]:
                _remove_tree(os.path.join(dest, name))
    with_sources = os.path.join(dest, SOURCES_NAME)
    if os.path.exists(with_sources):
        os.remove(with_sources)  # the set is unfinished again until every channel is
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    return False


def _remove_tree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def write_sources(dest: str, channels: list[Channel]) -> str:
    """``DEST/sources.json`` listing each channel's volume and colour; returns its path."""
    entries = [
        {"name": c.name, "directory": c.name, "color": channel_color(i)}
        for i, c in enumerate(channels)
    ]
    path = os.path.join(dest, SOURCES_NAME)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(entries, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    return path


def listed_volumes(dest: str) -> list[tuple[str, str]] | None:
    """(name, folder) of each channel a finished ``DEST/sources.json`` lists, or None."""
    path = os.path.join(dest, SOURCES_NAME)
    if not os.path.isfile(path) or os.path.isfile(os.path.join(dest, "info")):
        return None
    from .serve.config import load_sources

    return [(s.name, s.directory) for s in load_sources(path).values()]


__all__ = [
    "SOURCES_NAME",
    "channel_record",
    "listed_volumes",
    "prepare_channel_dest",
    "write_sources",
]
