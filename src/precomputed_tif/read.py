"""Reading a volume back as numpy: `open_volume(path)[level][z0:z1, y0:y1, x0:x1]`.

Works for every layout the stores know, whoever wrote the folder. Indexing follows numpy for
slices with step 1 and integers (negative ones count from the end); a region outside the level
is clipped the way numpy clips it. Levels are 1-based, like the scale keys ``1_1_1``, ``2_2_2``.
Index 0 is a level's first stored voxel; its ``voxel_offset`` says where that is (see
`open_volume`).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .geometry import Box
from .pyramid import Pyramid, Scale
from .sources import PlaneSource
from .stores import ChunkStore, open_store

if TYPE_CHECKING:
    from .verify import Report


@dataclass(frozen=True)
class VolumeLevel:
    """One level of a volume; slicing reads only the chunks the slice touches."""

    store: ChunkStore
    level: int

    @property
    def scale(self) -> Scale:
        return self.store.pyramid.scale(self.level)

    @property
    def channels(self) -> int:
        """The info's ``num_channels`` (an OME-Zarr image's ``c`` axis): 1 but for several
        channels in one volume (``--format ngff``, RGB ``--format precomputed``)."""
        return self.store.pyramid.num_channels

    @property
    def shape(self) -> tuple[int, ...]:
        """(z, y, x); (z, y, x, c) when the volume has several channels."""
        x, y, z = self.scale.size
        return (z, y, x, self.channels) if self.channels > 1 else (z, y, x)

    @property
    def voxel_offset(self) -> tuple[int, int, int]:
        """Where this level's first stored voxel sits in Neuroglancer's coordinates (**xyz**,
        as in ``info``): array index ``[z, y, x]`` is voxel ``(x + ox, y + oy, z + oz)``."""
        return self.scale.voxel_offset

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.store.pyramid.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if len(key) > self.ndim:
            raise IndexError(f"too many indices for a {self.ndim}-D level: {len(key)}")
        key = key + (slice(None),) * (self.ndim - len(key))
        key, channel = key[:3], key[3:]
        bounds = []
        squeeze = []
        for axis, (k, n) in enumerate(zip(key, self.shape)):
            if isinstance(k, (int, np.integer)):
                i = int(k) + n if k < 0 else int(k)
                if not 0 <= i < n:
                    raise IndexError(f"index {k} is out of bounds for axis {axis} with size {n}")
                bounds.append((i, i + 1))
                squeeze.append(axis)
            elif isinstance(k, slice):
                start, stop, step = k.indices(n)
                if step != 1:
                    raise IndexError("only slices with step 1 are supported")
                bounds.append((start, max(start, stop)))
            else:
                raise IndexError(f"unsupported index {k!r}: use integers and slices")
        (z0, z1), (y0, y1), (x0, x1) = bounds
        data = self.store.read_region(self.level, Box((x0, y0, z0), (x1, y1, z1)))
        if channel:
            data = data[(slice(None),) * 3 + channel]
        return data.squeeze(axis=tuple(squeeze)) if squeeze else data

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self[:, :, :]
        return data if dtype is None else data.astype(dtype)


@dataclass(frozen=True)
class Volume:
    """A multi-resolution volume: ``volume[1]`` is full resolution, ``volume[2]`` half, ..."""

    store: ChunkStore

    @property
    def pyramid(self) -> Pyramid:
        return self.store.pyramid

    @property
    def format(self) -> str:
        return self.store.format_name

    def __len__(self) -> int:
        return self.pyramid.n_levels

    def __getitem__(self, level: int) -> VolumeLevel:
        if not 1 <= level <= self.pyramid.n_levels:
            raise IndexError(f"level {level} does not exist; levels are 1..{len(self)}")
        return VolumeLevel(self.store, level)

    def __iter__(self) -> Iterator[VolumeLevel]:
        return (self[level] for level in range(1, len(self) + 1))

    def verify(
        self,
        *,
        source: PlaneSource | None = None,
        n_samples: int = 32,
        executor: Executor | None = None,
    ) -> Report:
        """Check that every chunk of every level is there and decodes; with `source` (the input
        planes) also recompute `n_samples` chunks per level and compare. ``report.ok``,
        ``report.verdict`` and ``report.problems`` say what was found; nothing is changed."""
        from .verify import verify_store

        return verify_store(self.store, executor=executor, source=source, n_samples=n_samples)


def open_volume(path: str, format: str | None = None) -> Volume:
    """Open a volume for reading as numpy arrays, one per level.

    Parameters
    ----------
    path
        A folder (tiff, zarr, blockfs or Neuroglancer precomputed layout, or an OME-Zarr image),
        a ``file://``, ``http(s)://`` or fsspec URL (``s3://``, ``gs://``); ``precomputed://``
        and ``zarr://`` prefixes are accepted.
    format
        The layout (``tiff``, ``zarr``, ``blockfs``, ``precomputed``, ``ngff``); detected when
        None. An ``http(s)://`` URL is read as a precomputed source unless it holds no ``info``
        but an OME-Zarr image, or `format` is ``ngff``.

    Returns
    -------
    Volume
        ``volume[1]`` is full resolution, ``volume[2]`` half, ...; each level is sliced
        ``[z0:z1, y0:y1, x0:x1]`` in numpy order and reads only the chunks the slice touches.
        A volume of several channels (``num_channels`` > 1 in its info, written by other tools)
        has a trailing channel axis: shape (z, y, x, c), sliced ``[z0:z1, y0:y1, x0:x1, c]``
        (TensorStore's and CloudVolume's (x, y, z, c) with the spatial axes reversed), so code
        written for one channel keeps its meaning; single-channel levels stay (z, y, x).

    Notes
    -----
    Index 0 on each axis is the level's first **stored** voxel, as for any numpy array: a
    level of ``shape`` (Z, Y, X) is indexed ``0..Z-1``, ``0..Y-1``, ``0..X-1`` whatever its
    ``voxel_offset``. TensorStore and CloudVolume index from the origin of Neuroglancer's
    coordinates instead, so for a volume whose ``info`` has ``voxel_offset`` ``(ox, oy, oz)``
    our ``level[z, y, x]`` is their ``[x + ox, y + oy, z + oz]``. Each level exposes that
    offset (xyz, as in ``info``) as ``level.voxel_offset``; volumes this tool writes have
    ``(0, 0, 0)``, so the two conventions agree on them.
    """
    return Volume(open_store(path, format))
