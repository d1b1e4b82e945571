"""Which volumes a server offers: one folder, or the named folders of a ``sources.json``.

``sources.json`` is the original precomputed-tif's: a JSON list of
``{"name": ..., "directory": ..., "format": ...}`` (format optional here: it is detected; an
optional ``"color"`` of six hex digits shows the volume as a channel of that colour), or an
object ``{"sources": [...], "options": {"cache_size": "1G", "gzip": false, "cors_origin": "*"}}``
giving the server settings too. A bad file is an error at start-up; when a running server sees
the file change and the new content is bad, it logs why and keeps serving the last good list.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

from ..errors import PrecomputedTifError, StoreError
from ..locations import HTTP_SCHEMES, is_remote, open_writable, url_scheme
from ..stores import detect_format
from ..stores.base import read_info
from ..stores.ngff import is_ngff

log = logging.getLogger(__name__)

FORMATS = ("tiff", "zarr", "blockfs", "ngff", "raw")
HEX = set("0123456789abcdefABCDEF")


class ConfigError(PrecomputedTifError, ValueError):
    """A sources.json that cannot be used."""


@dataclass(frozen=True)
class Source:
    """A served volume: URL name, folder (resolved, real path) and layout."""

    name: str
    directory: str
    format: str
    color: str | None = None


def resolve_source(name: str, directory: str, format_name: str | None) -> Source:
    """Check a folder (or object-store URL) and settle its format (detected when None)."""
    if format_name is not None and format_name not in FORMATS:
        raise ConfigError(
            f"source {name!r}: format {format_name!r} is not one of {', '.join(FORMATS)}"
        )
    if is_remote(directory):
        if url_scheme(directory) in HTTP_SCHEMES:
            raise ConfigError(f"source {name!r}: {directory!r} is a web server, not storage")
        detected = format_name or detect_served_format(directory)
        try:
            if detected != "ngff":
                read_info(directory)
        except StoreError as exc:
            raise ConfigError(f"source {name!r}: {exc}") from exc
        return Source(name, directory.rstrip("/"), detected)
    real = os.path.realpath(directory)
    if not os.path.isdir(real):
        raise ConfigError(f"source {name!r}: directory {directory!r} does not exist")
    if real == os.path.realpath(os.sep):
        raise ConfigError(f"source {name!r}: refusing to serve the whole file system ({real})")
    if format_name is None and not holds_volume(real):
        # a mistyped -d (or the default ".") must not publish a home folder file by file
        hint = '"format": "raw" in sources.json' if name else "--format raw"
        raise ConfigError(
            f"{f'source {name!r}: ' if name else ''}{real} holds no volume (no readable info "
            f"file, no OME-Zarr image); to serve its files as they are, say so with {hint}"
        )
    return Source(name, real, format_name or detect_served_format(real))


def holds_volume(directory: str) -> bool:
    """Whether `directory` has the info file of a Neuroglancer source (image, annotations,
    meshes, skeletons), or is an OME-Zarr image."""
    if is_ngff(open_writable(directory)):
        return True
    try:
        info = read_info(directory)
    except StoreError:
        return False
    kind = info.get("@type")
    return (
        "scales" in info
        or "annotation_type" in info
        or (isinstance(kind, str) and kind.startswith("neuroglancer_"))
    )


def detect_served_format(directory: str) -> str:
    """ngff for an OME-Zarr image; tiff, zarr or blockfs when the first level says so; anything
    else is served as files."""
    try:
        if is_ngff(open_writable(directory)):
            return "ngff"
        info = read_info(directory)
        scales = info.get("scales") or []
        if not scales or "sharding" in scales[0]:
            return "raw"
        detected = detect_format(directory, str(scales[0]["key"]))
        # Neuroglancer's own files need no translation: they are served as they are
        return "raw" if detected == "precomputed" else detected
    except (StoreError, KeyError, TypeError, AttributeError):
        return "raw"


@dataclass(frozen=True)
class Options:
    """Server settings a sources.json may give; None leaves the caller's default."""

    cache_bytes: int | None = None
    gzip_chunks: bool | None = None
    cors_origin: str | None = None


OPTION_KEYS = ("cache_size", "gzip", "cors_origin")


def load_sources(path: str) -> dict[str, Source]:
    """Parse and check a sources.json; raises ConfigError saying what is wrong."""
    return load_config(path)[0]


def load_config(path: str) -> tuple[dict[str, Source], Options]:
    """The sources and the options of a sources.json; raises ConfigError saying what is wrong."""
    try:
        with open(path, "rb") as f:
            content = json.loads(f.read())
    except FileNotFoundError as exc:
        raise ConfigError(f"sources file {path!r} does not exist") from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"sources file {path!r} is not valid JSON: {exc}") from exc
    options = Options()
    if isinstance(content, dict) and "sources" in content:
        unknown = set(content) - {"sources", "options"}
        if unknown:
            raise ConfigError(f"{path}: unknown keys {sorted(unknown)} (use sources, options)")
        options = _parse_options(path, content.get("options", {}))
        content = content.get("sources")
    if not isinstance(content, list):
        raise ConfigError(
            f"sources file {path!r} must hold a JSON list of sources, or an object "
            '{"sources": [...], "options": {...}}'
        )
    return _parse_sources(path, content), options


def _parse_options(path: str, raw: object) -> Options:
    if not isinstance(raw, dict):
        raise ConfigError(f'{path}: "options" must be an object')
    unknown = set(raw) - set(OPTION_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown options {sorted(unknown)}; known: {OPTION_KEYS}")
    cache = raw.get("cache_size")
    cache_bytes = None
    if isinstance(cache, int) and not isinstance(cache, bool) and cache >= 0:
        cache_bytes = cache
    elif isinstance(cache, str):
        from ..cli._common import parse_size

        try:
            cache_bytes = parse_size(cache)
        except argparse.ArgumentTypeError as exc:
            raise ConfigError(f"{path}: cache_size {cache!r} is not a size like 1G") from exc
    elif cache is not None:
        raise ConfigError(f"{path}: cache_size must be bytes or a size like 1G")
    gzip_chunks = raw.get("gzip")
    if gzip_chunks is not None and not isinstance(gzip_chunks, bool):
        raise ConfigError(f"{path}: gzip must be true or false")
    origin = raw.get("cors_origin")
    if origin is not None and (not isinstance(origin, str) or not origin or "\n" in origin):
        raise ConfigError(f"{path}: cors_origin must be an origin such as * or https://host")
    return Options(cache_bytes, gzip_chunks, origin)


def _parse_sources(path: str, entries: list[Any]) -> dict[str, Source]:
    sources: dict[str, Source] = {}
    base = os.path.dirname(os.path.abspath(path))
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ConfigError(f'{path}: entry {i} needs a string "name"')
        name = entry["name"]
        if not name or "/" in name or name in (".", "..") or name.startswith("."):
            raise ConfigError(f"{path}: source name {name!r} must be a plain word (no '/')")
        if name in sources:
            raise ConfigError(f"{path}: source name {name!r} appears twice")
        directory = entry.get("directory")
        if not isinstance(directory, str):
            raise ConfigError(f'{path}: source {name!r} needs a string "directory"')
        format_name = entry.get("format")
        if format_name is not None and not isinstance(format_name, str):
            raise ConfigError(f'{path}: source {name!r} has a non-string "format"')
        color = entry.get("color")
        if color is not None and not (
            isinstance(color, str) and len(color) == 6 and all(c in HEX for c in color)
        ):
            raise ConfigError(f'{path}: source {name!r} has "color" {color!r}; expected RRGGBB')
        if not is_remote(directory):
            directory = os.path.join(base, directory)
        sources[name] = replace(resolve_source(name, directory, format_name), color=color)
    return sources


class SourceTable:
    """The sources of a sources.json, re-read when the file changes (at most once a second).

    Its `options` are read once, at start: they size the caches of a running server.
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self._lock = threading.Lock()
        self._stamp = self._file_stamp()
        self._sources, self.options = load_config(self.path)
        self._checked = time.monotonic()

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size)

    def current(self) -> dict[str, Source]:
        now = time.monotonic()
        if now - self._checked < 1.0:
            return self._sources
        with self._lock:
            self._checked = now
            stamp = self._file_stamp()
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._sources = load_sources(self.path)
                    log.info("reloaded %s: %d sources", self.path, len(self._sources))
                except ConfigError as exc:
                    log.error("keeping the previous sources: %s", exc)
        return self._sources
