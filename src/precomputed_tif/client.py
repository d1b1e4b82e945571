"""The original precomputed-tif's client API: `ArrayReader(url, format=..., level=...)`.

Kept so scripts written against the original keep working; it is a thin view over
`open_volume`. `level` is the mipmap factor as in the original (1, 2, 4, ... for the scale keys
``1_1_1``, ``2_2_2``, ``4_4_4``), and slicing is numpy's ``[z, y, x]`` with steps allowed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import StoreError
from .read import VolumeLevel, open_volume


class ArrayReader:
    """Read a precomputed source (folder, ``file://`` or ``http(s)://`` URL) as a 3D array.

    ``format="ngff"`` reads an OME-Zarr image, also straight from a static web server.
    """

    def __init__(self, url: str, format: str | None = None, level: int = 1) -> None:
        path = url.removeprefix("precomputed://")
        if path.startswith(("http://", "https://")) and format != "ngff":
            format = None  # a server answers raw chunks whatever it stores
        volume = open_volume(path, format)
        key = f"{level}_{level}_{level}"
        found = [i for i, s in enumerate(volume.pyramid.scales, start=1) if s.key == key]
        power_of_two = level >= 1 and level & (level - 1) == 0
        if not found and volume.format == "ngff" and power_of_two:
            # the original read NGFF dataset log2(level), whatever each axis' factor
            found = [level.bit_length()] if level.bit_length() <= len(volume) else []
        if found:
            self._level: VolumeLevel = volume[found[0]]
        else:
            keys = ", ".join(s.key for s in volume.pyramid.scales)
            raise StoreError(f"{url} has no scale {key}; it has {keys}")
        self.url = url
        self.level = level

    @property
    def shape(self) -> tuple[int, int, int]:
        return self._level.shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._level.dtype

    def __len__(self) -> int:
        return self.shape[0]

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
