"""Reading a volume back as numpy: `open_volume(path)[level][z0:z1, y0:y1, x0:x1]`.

Works for every layout the stores know, whoever wrote the folder. Indexing follows numpy for
slices with step 1 and integers (negative ones count from the end); a region outside the level
is clipped the way numpy clips it. Levels are 1-based, like the scale keys ``1_1_1``, ``2_2_2``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .geometry import Box
from .pyramid import Pyramid, Scale
from .stores import ChunkStore, open_store


@dataclass(frozen=True)
class VolumeLevel:
    """One level of a volume; slicing reads only the chunks the slice touches."""

    store: ChunkStore
    level: int

    @property
    def scale(self) -> Scale:
        return self.store.pyramid.scale(self.level)

    @property
    def shape(self) -> tuple[int, int, int]:
        x, y, z = self.scale.size
        return (z, y, x)

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.store.pyramid.dtype

    @property
    def ndim(self) -> int:
        return 3

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if len(key) > 3:
            raise IndexError(f"too many indices for a 3-D level: {len(key)}")
        key = key + (slice(None),) * (3 - len(key))
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


def open_volume(path: str, format: str | None = None) -> Volume:
    """Open the volume at `path` (tiff, zarr, blockfs, precomputed or an OME-Zarr image, ngff;
    detected when not given)."""
    return Volume(open_store(path, format))
