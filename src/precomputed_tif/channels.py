"""Several channels: one `--source` per channel, or the samples of RGB planes, or a hyperstack.

`open_channels` opens and names them and checks they match (planes, shape, dtype);
`ChannelStack` reads them together as one (z, y, x, c) source, so one task reads every channel of
its box and one run record covers them all. Channel colours for viewers live here too. This
module never writes: where channels go (a ``c`` axis, or a volume each) is the caller's choice.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .errors import SourceError
from .geometry import XYZ, Box
from .sources import (
    MultiPageTiffSource,
    PlaneSource,
    PlaneStamp,
    TiffPlanesSource,
    channel_sources,
    open_source,
)

# red, green, blue first (RGB planes come out right), then the other bright ones
PALETTE = ("FF0000", "00FF00", "0000FF", "FF00FF", "00FFFF", "FFFF00", "FFFFFF")
RGB_NAMES = ("red", "green", "blue")


def channel_color(index: int) -> str:
    """The display colour of channel `index` as six hex digits (OME's ``omero`` form)."""
    return PALETTE[index % len(PALETTE)]


@dataclass(frozen=True)
class Channel:
    """A named single-channel source."""

    name: str
    source: PlaneSource


@dataclass(frozen=True)
class ChannelStack:
    """Channels of one shape and dtype, read together as (z, y, x, c)."""

    parts: tuple[PlaneSource, ...]
    names: tuple[str, ...] = ()

    @property
    def size(self) -> XYZ:
        return self.parts[0].size

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.parts[0].dtype

    @property
    def num_channels(self) -> int:
        return len(self.parts)

    @property
    def read_overhead_bytes(self) -> int:
        return max(p.read_overhead_bytes for p in self.parts)  # the parts are read in turn

    @property
    def stamps(self) -> tuple[PlaneStamp, ...]:
        """Every channel's plane stamps, named ``channel/plane`` (folders reuse plane names)."""
        out = []
        for name, part in zip(self.names or map(str, range(len(self.parts))), self.parts):
            for stamp in getattr(part, "stamps", ()):
                out.append(replace(stamp, name=f"{name}/{stamp.name}"))
        return tuple(out)

    def read(self, box: Box) -> np.ndarray:
        out = np.empty((*box.numpy_shape, len(self.parts)), self.dtype)
        for c, part in enumerate(self.parts):
            out[..., c] = part.read(box)
        return out

    def sub_stack(self, z0: int, z1: int) -> ChannelStack:
        return ChannelStack(tuple(p.sub_stack(z0, z1) for p in self.parts))


def _folder_name(spec: str) -> str:
    """A channel's name from its --source: the folder (a glob's folder), or the file's stem."""
    path = spec.rstrip("/")
    if os.path.isfile(path):
        return os.path.splitext(os.path.basename(path))[0]
    while "*" in os.path.basename(path) or "?" in os.path.basename(path) or path.endswith(".tif"):
        path = os.path.dirname(path)
    return os.path.basename(path) or "channel"


def open_channels(
    specs: Sequence[str],
    *,
    names: Sequence[str] | None = None,
    order: str = "natural",
    decode_threads: int = 2,
) -> list[Channel]:
    """The channels of one or more --source: each source's channels (its RGB samples or its
    hyperstack's channels, else itself) in order, named by `names` or else by their folders.

    Raises `SourceError` naming the channel that differs from the first in plane count, plane
    shape or dtype, and when `names` does not give one name per channel.
    """
    opened = [open_source(s, decode_threads=decode_threads, order=order) for s in specs]
    channels: list[Channel] = []
    for spec, source in zip(specs, opened):
        parts = channel_sources(source)
        base = _folder_name(spec)
        if len(parts) == 1:
            channels.append(Channel(base, source))
            continue
        own = RGB_NAMES if len(parts) == 3 and _is_samples(source) else None
        for c, part in enumerate(parts):
            sub = own[c] if own is not None else f"c{c}"
            channels.append(Channel(sub if len(specs) == 1 else f"{base}_{sub}", part))
    if names is not None:
        if len(names) != len(channels):
            found = ", ".join(c.name for c in channels)
            raise SourceError(
                f"--channel-names gives {len(names)} names for {len(channels)} channels "
                f"({found}); give one name per channel"
            )
        channels = [Channel(n, c.source) for n, c in zip(names, channels)]
    _check_names([c.name for c in channels])
    _check_alike(channels)
    return channels


def _is_samples(source: PlaneSource) -> bool:
    return isinstance(source, (TiffPlanesSource, MultiPageTiffSource)) and source.samples > 1


def _check_names(names: list[str]) -> None:
    for name in names:
        if not name or "/" in name or name.startswith(".") or name in ("sources.json",):
            raise SourceError(
                f"channel name {name!r} cannot name a folder: give --channel-names a, b, ..."
            )
    seen = set()
    for name in names:
        if name in seen:
            raise SourceError(
                f"two channels are named {name!r} (their folders share a name): give "
                "--channel-names"
            )
        seen.add(name)


def _check_alike(channels: list[Channel]) -> None:
    first = channels[0]
    fx, fy, fz = first.source.size
    for channel in channels[1:]:
        x, y, z = channel.source.size
        said = f"channel {channel.name!r} has"
        like = f"like channel {first.name!r}"
        if z != fz:
            raise SourceError(f"{said} {z} planes; expected {fz} {like}")
        if (x, y) != (fx, fy):
            raise SourceError(f"{said} planes of {x}x{y} pixels; expected {fx}x{fy} {like}")
        if channel.source.dtype != first.source.dtype:
            raise SourceError(
                f"{said} data type {channel.source.dtype.name}; expected "
                f"{first.source.dtype.name} {like}"
            )


def stack_channels(channels: Sequence[Channel]) -> PlaneSource:
    """One source reading every channel as (z, y, x, c): the file's own when the channels are
    one file's samples or hyperstack channels (one decode each), else a `ChannelStack`."""
    parts = [c.source for c in channels]
    whole = _rejoined(parts)
    if whole is not None:
        return whole
    return ChannelStack(tuple(parts), tuple(c.name for c in channels))


def _rejoined(parts: list[PlaneSource]) -> PlaneSource | None:
    first = parts[0]
    if isinstance(first, (TiffPlanesSource, MultiPageTiffSource)) and first.samples > 1:
        joined = replace(first, channel=None)
        if joined.num_channels == len(parts) and all(
            p == replace(joined, channel=c) for c, p in enumerate(parts)
        ):
            return joined
    if isinstance(first, MultiPageTiffSource) and first.samples == 1:
        pages = tuple(getattr(p, "channel_pages", (-1,))[0] for p in parts)
        joined_pages = replace(first, channel_pages=pages)
        if all(
            page >= 0 and p == replace(first, channel_pages=(page,))
            for p, page in zip(parts, pages)
        ):
            return joined_pages
    return None


__all__ = [
    "PALETTE",
    "Channel",
    "ChannelStack",
    "channel_color",
    "open_channels",
    "stack_channels",
]
