"""The original precomputed-tif's client API: `get_info`, `read_chunk`, `ArrayReader`.

Kept so that registration and alignment tools written against the original keep working. Every
call reads through `open_volume`, so it works on every layout we read (tiff, zarr, blockfs,
Neuroglancer precomputed, sharded or not), on folders, ``file://`` and ``http(s)://`` URLs (any
server), with or without a ``precomputed://`` prefix. `level` is the mipmap factor as in the
original (1, 2, 4, ... for the scale keys ``1_1_1``, ``2_2_2``, ``4_4_4``).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from .errors import StoreError
from .read import VolumeLevel, open_volume
from .stores.base import read_info

_lock = threading.Lock()
_infos: dict[str, Info] = {}
_levels: dict[tuple[str, str], VolumeLevel] = {}


class LevelNotFoundError(StoreError, KeyError):
    """The volume has no scale for the requested mipmap level (a `KeyError`, as originally)."""


def _base_url(url: str) -> str:
    return url.removeprefix("precomputed://").rstrip("/")


class Scale:
    """One scale of an ``info`` file, in the original's words (xyz, like ``info``)."""

    def __init__(self, d: dict[str, Any]) -> None:
        self.d = d

    @property
    def chunk_sizes(self) -> list[int]:
        """The x, y, z size of one chunk (the first of ``chunk_sizes``)."""
        return list(self.d["chunk_sizes"][0])

    @property
    def encoding(self) -> str:
        return str(self.d.get("encoding", "raw"))

    @property
    def key(self) -> str:
        """The scale's key, e.g. ``2_2_2``: the folder or URL part of its chunks."""
        return str(self.d["key"])

    @property
    def shape(self) -> list[int]:
        """The level's ``size`` in voxels, **x, y, z** (not numpy's order)."""
        return list(self.d["size"])

    @property
    def offset(self) -> list[int]:
        """The level's ``voxel_offset``, x, y, z: where its first stored voxel sits."""
        return list(self.d.get("voxel_offset", [0, 0, 0]))

    @property
    def resolution(self) -> list[float]:
        """Nanometres per voxel, x, y, z."""
        return list(self.d["resolution"])


class Info:
    """A volume's ``info`` file, in the original's words."""

    TYPE_IMAGE = "image"
    TYPE_SEGMENTATION = "segmentation"

    def __init__(self, d: dict[str, Any]) -> None:
        self.d = d

    @property
    def data_type(self) -> np.dtype[Any]:
        """The voxel type, as a numpy dtype."""
        return np.dtype(str(self.d["data_type"]).lower())

    @property
    def type(self) -> str:
        """``image`` or ``segmentation``."""
        return str(self.d.get("type", "image"))

    @property
    def scales(self) -> list[Scale]:
        return [Scale(s) for s in self.d["scales"]]

    def get_scale(self, level: int | tuple[int, int, int] | list[int]) -> Scale:
        """The scale of mipmap `level`: a factor (``2`` for ``2_2_2``) or an (x, y, z) triple.

        Raises
        ------
        KeyError
            (`LevelNotFoundError`) when the volume has no such scale.
        """
        factors: tuple[Any, ...] = (
            tuple(level) if isinstance(level, (tuple, list, np.ndarray)) else (level,) * 3
        )
        key = "_".join(str(int(f)) for f in factors)
        for scale in self.d["scales"]:
            if scale["key"] == key:
                return Scale(scale)
        keys = ", ".join(str(s["key"]) for s in self.d["scales"])
        raise LevelNotFoundError(f"no scale {key} (mipmap level {level}); the volume has {keys}")


def get_info(url: str) -> Info:
    """The ``info`` of the volume at `url` (folder, ``file://`` or ``http(s)://``), cached.

    A ``precomputed://`` prefix is accepted. The answer is kept until `clear_cache`. An
    OME-Zarr image without an ``info`` file gets `get_ngff_info`'s.
    """
    base = _base_url(url)
    with _lock:
        cached = _infos.get(base)
    if cached is not None:
        return cached
    try:
        info = Info(read_info(base))
    except StoreError:
        from .locations import open_location
        from .stores.ngff import is_ngff

        if not is_ngff(open_location(base)):
            raise
        info = get_ngff_info(base)  # an OME-Zarr image, as ours are: no info file
    with _lock:
        _infos[base] = info
    return info


def clear_cache(url: str | None = None) -> None:
    """Forget cached ``info`` files and opened volumes: of `url`, or of every URL when None."""
    with _lock:
        if url is None:
            _infos.clear()
            _levels.clear()
            return
        base = _base_url(url)
        _infos.pop(base, None)
        for key in [k for k in _levels if k[0] == base]:
            del _levels[key]


def get_ngff_info(url: str) -> Info:
    """An ``info`` for an OME-Zarr (NGFF) image: one scale per multiscale dataset, keyed
    ``2**i`` for dataset ``i`` as in the original, with the arrays' real data type (the
    original always said ``uint16``) and the voxel size of the metadata."""
    from .stores import open_store

    key = "ngff:" + _base_url(url)
    with _lock:
        cached = _infos.get(key)
    if cached is not None:
        return cached
    info = Info(open_store(_base_url(url), "ngff").pyramid.to_info())
    with _lock:
        _infos[key] = info
    return info


def _open_level(url: str, key: str, format: str | None = None) -> VolumeLevel:
    """The level of `url` whose scale key is `key`, opened once and kept."""
    base = _base_url(url)
    with _lock:
        cached = _levels.get((base, key))
    if cached is not None:
        return cached
    # the layout is read from the folder: the original's `format` argument only named it
    volume = open_volume(base, "ngff" if format == "ngff" else None)
    for index, scale in enumerate(volume.pyramid.scales, start=1):
        if scale.key == key:
            level = volume[index]
            break
    else:
        keys = ", ".join(s.key for s in volume.pyramid.scales)
        raise LevelNotFoundError(f"{url} has no scale {key}; it has {keys}")
    with _lock:
        _levels[(base, key)] = level
    return level


def read_chunk(
    url: str,
    x0: int,
    x1: int,
    y0: int,
    y1: int,
    z0: int,
    z1: int,
    level: int = 1,
    format: str = "tiff",
) -> np.ndarray:
    """Any box of a level as a (z, y, x) array; voxels outside the volume read as zero.

    Parameters
    ----------
    url
        The volume: a folder, ``file://`` or ``http(s)://`` URL (``precomputed://`` accepted).
    x0, x1, y0, y1, z0, z1
        The half-open box in the level's voxel coordinates, which are Neuroglancer's (those
        of the chunk names): the level's first stored voxel is at its ``voxel_offset``, as in
        the original.
    level
        The mipmap factor: 1 for full resolution, 2 for ``2_2_2``, ...
    format
        Accepted for compatibility; the layout (tiff, zarr, blockfs, precomputed) is read from
        the folder, so a wrong or default value no longer matters.

    Returns
    -------
    numpy.ndarray
        ``(z1 - z0, y1 - y0, x1 - x0)`` voxels of the volume's data type.
    """
    del format  # detected instead
    info = get_info(url)
    scale = info.get_scale(level)
    data = _open_level(url, scale.key)
    # volumes of several channels (not the original's) read as (z, y, x, c)
    out = np.zeros((z1 - z0, y1 - y0, x1 - x0, *data.shape[3:]), info.data_type)
    (ox, oy, oz), (sx, sy, sz) = scale.offset, scale.shape
    # the part of the box inside the level, in its stored (index 0 = first voxel) coordinates
    lo = (max(x0 - ox, 0), max(y0 - oy, 0), max(z0 - oz, 0))
    hi = (min(x1 - ox, sx), min(y1 - oy, sy), min(z1 - oz, sz))
    if all(a < b for a, b in zip(lo, hi)):
        part = data[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]]
        out[
            lo[2] + oz - z0 : hi[2] + oz - z0,
            lo[1] + oy - y0 : hi[1] + oy - y0,
            lo[0] + ox - x0 : hi[0] + ox - x0,
        ] = part
    return out


class ArrayReader:
    """One level of a volume as a read-only 3D array, sliced ``[z, y, x]`` (steps allowed).

    Index 0 on each axis is the level's first stored voxel, as for a numpy array. A volume
    without the level raises `KeyError` (`LevelNotFoundError`), so probing
    ``ArrayReader(url, level=2**k)`` until it raises stops at the coarsest level.
    """

    def __init__(self, url: str, format: str = "tiff", level: int = 1) -> None:
        self.url = url
        self.format = format
        self.level = level
        try:
            self.info = get_info(url)
        except StoreError:
            if format != "ngff":
                raise
            self.info = get_ngff_info(url)
        self.scale = self.info.get_scale(level)
        self._level = _open_level(url, self.scale.key, format)

    @property
    def shape(self) -> tuple[int, ...]:
        """(z, y, x), numpy's order; (z, y, x, c) for a volume of several channels."""
        return self._level.shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._level.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def read_chunk(self, x0: int, x1: int, y0: int, y1: int, z0: int, z1: int) -> np.ndarray:
        """The box ``[z0:z1, y0:y1, x0:x1]`` of the stored voxels (zeros outside)."""
        out = np.zeros((z1 - z0, y1 - y0, x1 - x0, *self.shape[3:]), self.dtype)
        sz, sy, sx = self.shape[:3]
        lo = (max(x0, 0), max(y0, 0), max(z0, 0))
        hi = (min(x1, sx), min(y1, sy), min(z1, sz))
        if all(a < b for a, b in zip(lo, hi)):
            out[lo[2] - z0 : hi[2] - z0, lo[1] - y0 : hi[1] - y0, lo[0] - x0 : hi[0] - x0] = (
                self._level[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]]
            )
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        plain: list[Any] = []
        steps: list[slice | None] = []
        for k in key:
            if isinstance(k, slice) and k.step not in (None, 1):
                plain.append(slice(k.start, k.stop))
                steps.append(slice(None, None, k.step))
            else:
                plain.append(k)
                steps.append(slice(None) if isinstance(k, slice) else None)
        data = self._level[tuple(plain)]
        return data[tuple(s for s in steps if s is not None)]
