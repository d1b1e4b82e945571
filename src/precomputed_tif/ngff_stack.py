"""The original precomputed-tif's ``NGFFStack``: an OME-Zarr image made step by step.

Stitchers create the stack, call ``create()``, ``write_info_file``, then either
``write_level_1`` or write level 1 themselves through ``create_dataset(1)`` (a 5-D array
``(t, c, z, y, x)`` they assign blocks to), and ask for the coarser levels with
``write_level_n``. The image is the one ``precomputed-tif --format ngff`` writes (OME-Zarr 0.4 on
Zarr v2, one 5-D array per level), so it serves, reads and converts like any other.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import StoreError
from .geometry import Box, chunks_in
from .stack import PType, StackBase
from .stores import create_store, open_store
from .stores.base import ChunkStore
from .stores.ngff import NgffStore, group_name, ngff_folders

_METADATA = (".zattrs", ".zgroup", "zarr.json")


class NgffLevel:
    """One level of the image as the original's 5-D zarr array ``(1, 1, z, y, x)``.

    Assigning ``array[0, 0, z0:z1, y0:y1, x0:x1] = block`` writes whole chunks (the block must
    start on the chunk grid and end on it or at the level's edge), from any process: it pickles,
    and every chunk is its own file. Reading takes any box.
    """

    def __init__(self, store: NgffStore, level: int) -> None:
        self.store = store
        self.level = level

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        x, y, z = self.store.pyramid.scale(self.level).size
        return (1, 1, z, y, x)

    @property
    def chunks(self) -> tuple[int, int, int, int, int]:
        x, y, z = self.store.pyramid.scale(self.level).chunk_size
        return (1, 1, z, y, x)

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.store.pyramid.dtype

    def _box(self, key: Any) -> Box:
        if not isinstance(key, tuple) or len(key) != 5 or key[0] != 0 or key[1] != 0:
            raise StoreError(f"index the level as [0, 0, z0:z1, y0:y1, x0:x1], not {key!r}")
        _, _, nz, ny, nx = self.shape
        bounds = []
        for k, n in zip(key[2:], (nz, ny, nx)):
            if not isinstance(k, slice) or k.step not in (None, 1):
                raise StoreError(f"index the level with slices of step 1, not {k!r}")
            start, stop, _ = k.indices(n)
            bounds.append((start, max(start, stop)))
        (z0, z1), (y0, y1), (x0, x1) = bounds
        return Box((x0, y0, z0), (x1, y1, z1))

    def __getitem__(self, key: Any) -> np.ndarray:
        box = self._box(key)
        return self.store.read_region(self.level, box)[np.newaxis, np.newaxis]

    def __setitem__(self, key: Any, value: np.ndarray) -> None:
        box = self._box(key)
        scale = self.store.pyramid.scale(self.level)
        data = np.broadcast_to(np.asarray(value), (1, 1, *box.numpy_shape))[0, 0]
        data = data.astype(self.dtype, copy=False)
        for _, chunk in chunks_in(box, scale.chunk_size, scale.size):
            if chunk.intersect(box) != chunk:
                raise StoreError(
                    f"the block {box.start}-{box.stop} (x, y, z) covers part of the chunk at "
                    f"{chunk.start}: write whole chunks of {scale.chunk_size} voxels"
                )
            self.store.write_chunk(
                self.level, chunk, data[chunk.relative_to(box.start).numpy_slices()]
            )


class NGFFStack(StackBase):
    """An OME-Zarr image (``--format ngff``), made step by step; same calls as the original.

    ``chunk_size`` (z, y, x) defaults to 128 on every axis, as in the original. Unlike the
    original, coarser levels are the converter's 2x2x2 mean (the original interpolated, which
    for integer voxels rounds differently), the metadata is OME-Zarr 0.4 with the voxel size
    (the original wrote 0.2 and a separate ``info`` file), and the ``omero`` display window
    comes from the data once a level is made. ``compressor`` is accepted and ignored: chunks
    are compressed as the converter does.
    """

    FORMAT = "ngff"
    VERSION = "0.4"

    def __init__(
        self,
        glob_expr: str | Sequence[int] | Any,
        dest: str,
        dtype: Any = None,
        ptype: PType = PType.IMAGE,
        chunk_size: Sequence[int] = (128, 128, 128),
    ) -> None:
        super().__init__(glob_expr, dest, dtype=dtype, ptype=ptype, chunk_size=chunk_size)
        self.name = group_name(self.dest)

    @property
    def store(self) -> ChunkStore:
        if self._store is None:
            self._store = open_store(os.path.abspath(self.dest), "ngff")
        return self._store

    def create(self, mode: str = "w", compressor: Any = None) -> None:
        """Make the image's folder; with ``mode="w"`` remove an image already in it."""
        os.makedirs(self.dest, exist_ok=True)
        if mode != "w":
            return
        from .locations import open_writable

        files = open_writable(os.path.abspath(self.dest))
        for name in sorted(ngff_folders(files)) + list(_METADATA):
            files.remove(name)
        self._store = None

    def write_info_file(
        self, n_levels: int, voxel_size: Sequence[float] = (1800, 1800, 2000)
    ) -> None:
        """Create the `n_levels` arrays (empty) and the group's metadata, voxels of
        `voxel_size` nm (x, y, z)."""
        os.makedirs(self.dest, exist_ok=True)
        store = create_store(
            self.FORMAT, os.path.abspath(self.dest), self.pyramid(n_levels, voxel_size)
        )
        for level in range(1, n_levels + 1):
            store.prepare_level(level)
        store.write_info()
        store.remove_empty_state()
        self._store = store

    def create_dataset(self, level: int) -> NgffLevel:
        """The (emptied) array of `level`, for a caller that writes its blocks itself."""
        store = self._ngff_store()
        store.files.remove(store.dataset_path(level))
        store.prepare_level(level)
        store.remove_empty_state()
        return NgffLevel(store, level)

    def get_dataset(self, level: int) -> NgffLevel:
        """The array of `level` (1 for full resolution)."""
        return NgffLevel(self._ngff_store(), level)

    def _ngff_store(self) -> NgffStore:
        store = self.store
        assert isinstance(store, NgffStore)
        return store

    def _make(self, levels: range, n_cores: int, silent: bool, source: Any) -> None:
        store = self._ngff_store()
        for level in levels:  # all-zero chunks are not written: none may be left from before
            store.files.remove(store.dataset_path(level))
        super()._make(levels, n_cores, silent, source)
        store.write_info()  # the display window, from the data made so far
        store.remove_empty_state()
