"""The original precomputed-tif's stack classes: ``Stack`` (tiff chunks) and their shared base.

Pipelines written against the original build volumes step by step: ``write_info_file``, then
``write_level_1`` (or their own blocks, see `BlockfsStack.make_l1_directory`), then
``write_level_n`` for each coarser level. These classes keep those calls, and do each step with
our planner, stores and downsampler, so the files are those ``precomputed-tif`` writes for the
same volume. Differences from the original, all deliberate, are listed in each docstring.
"""

from __future__ import annotations

import argparse
import enum
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import StoreError
from .pyramid import Pyramid, plan_pyramid
from .sources import ArraySource, PlaneSource, open_source
from .stores import ChunkStore, create_store
from .stores.base import INFO_NAME, read_info

log = logging.getLogger(__name__)

DEFAULT_VOXEL_SIZE_NM = (1800, 1800, 2000)


class PType(enum.Enum):
    """What the volume holds: an image (downsampled by the mean) or labels (by the mode)."""

    IMAGE = "image"
    SEGMENTATION = "segmentation"


def _budget(n_cores: int) -> Any:
    """Workers and task memory as the command line picks them (half the free memory)."""
    from .cli.convert import _budget as cli_budget

    return cli_budget(argparse.Namespace(memory=None, n_cores=n_cores, task_memory=None))


class StackBase:
    """A volume at `dest` made from TIFF planes, or from blocks another program writes.

    Parameters
    ----------
    glob_expr
        A glob of the TIFF planes (taken in the order the command line takes them), a folder
        of them, a multi-page TIFF, a (z, y, x) array; or the (z, y, x) shape of a volume
        another program will fill (then `write_level_1` has nothing to read).
    dest
        The volume folder.
    dtype
        The voxel type; by default that of the planes, or ``uint16`` for a shape.
    ptype
        `PType.IMAGE` or `PType.SEGMENTATION`.
    chunk_size
        The chunk size, **z, y, x** as in the original (``cx()`` is ``chunk_size[2]``).
    """

    FORMAT = "tiff"

    def __init__(
        self,
        glob_expr: str | Sequence[int] | Any,
        dest: str,
        dtype: Any = None,
        ptype: PType = PType.IMAGE,
        chunk_size: Sequence[int] = (64, 64, 64),
    ) -> None:
        self.ptype = ptype
        self.dest = str(dest)
        self.chunksize = tuple(int(c) for c in chunk_size)
        self.source: PlaneSource | None
        if isinstance(glob_expr, (tuple, list)) and len(glob_expr) == 3:
            self.z_extent, self.y_extent, self.x_extent = (int(v) for v in glob_expr)
            self.source = None
            self.dtype = np.dtype(dtype or np.uint16)
        else:
            if isinstance(glob_expr, (str, os.PathLike)):
                self.source = open_source(os.fspath(glob_expr))
            else:  # an array-like (numpy, zarr) of (z, y, x)
                self.source = ArraySource(glob_expr)  # type: ignore[arg-type]
            self.x_extent, self.y_extent, self.z_extent = self.source.size
            self.dtype = np.dtype(dtype or self.source.dtype)
            if self.dtype != self.source.dtype:
                raise StoreError(
                    f"the planes are {self.source.dtype.name}, not {self.dtype.name}: convert "
                    "them first, or leave out dtype"
                )
        self._store: ChunkStore | None = None

    # --- geometry, in the original's words ------------------------------------------------
    @staticmethod
    def resolution(level: int) -> int:
        """Voxels of level 1 per voxel of `level` along each axis (2 ** (level - 1))."""
        return int(2 ** (level - 1))

    def cx(self) -> int:
        """Chunk size along x."""
        return self.chunksize[2]

    def cy(self) -> int:
        """Chunk size along y."""
        return self.chunksize[1]

    def cz(self) -> int:
        """Chunk size along z."""
        return self.chunksize[0]

    def _level_size(self, level: int) -> tuple[int, int, int]:
        r = self.resolution(level)
        return (-(-self.x_extent // r), -(-self.y_extent // r), -(-self.z_extent // r))

    def n_x(self, level: int) -> int:
        """Chunks along x at `level` (the original's count missed the last one at some sizes)."""
        return -(-self._level_size(level)[0] // self.cx())

    def n_y(self, level: int) -> int:
        """Chunks along y at `level`."""
        return -(-self._level_size(level)[1] // self.cy())

    def n_z(self, level: int) -> int:
        """Chunks along z at `level`."""
        return -(-self._level_size(level)[2] // self.cz())

    @property
    def files(self) -> list[str]:
        """The plane files, in the order they are stacked."""
        return list(getattr(self.source, "paths", []))

    # --- the volume -----------------------------------------------------------------------
    def pyramid(
        self, n_levels: int, voxel_size: Sequence[float] = DEFAULT_VOXEL_SIZE_NM
    ) -> Pyramid:
        """The pyramid `write_info_file` describes."""
        vx, vy, vz = (float(v) for v in voxel_size)
        return plan_pyramid(
            (self.x_extent, self.y_extent, self.z_extent),
            self.dtype.name,
            voxel_size_nm=(vx, vy, vz),
            chunk_size=(self.cx(), self.cy(), self.cz()),
            levels=n_levels,
            segmentation=self.ptype == PType.SEGMENTATION,
        )

    @property
    def store(self) -> ChunkStore:
        """The volume's store, as described by its ``info`` on disk."""
        if self._store is None:
            if not os.path.exists(os.path.join(self.dest, INFO_NAME)):
                raise StoreError(f"{self.dest!r} has no info file: call write_info_file first")
            pyramid = Pyramid.from_info(read_info(self.dest))
            self._store = create_store(self.FORMAT, os.path.abspath(self.dest), pyramid)
        return self._store

    def write_info_file(
        self, n_levels: int, voxel_size: Sequence[float] = DEFAULT_VOXEL_SIZE_NM
    ) -> None:
        """Write the volume's ``info``: `n_levels` levels, voxels of `voxel_size` nm (x, y, z).

        Written first, as the original does, because callers fill level 1 themselves after
        it. The file is the one the command line writes (its own ``@type``, no ``mesh`` key).
        """
        os.makedirs(self.dest, exist_ok=True)
        pyramid = self.pyramid(n_levels, voxel_size)
        self._store = create_store(self.FORMAT, os.path.abspath(self.dest), pyramid)
        self._store.write_info()
        self._store.remove_empty_state()

    def _make(self, levels: range, n_cores: int, silent: bool, source: PlaneSource | None) -> None:
        from .cli._tqdm_loop import drive_with_tqdm
        from .convert import make_levels
        from .executors import SerialExecutor, process_pool

        store = self.store
        if levels.stop - 1 > store.pyramid.n_levels:
            raise StoreError(
                f"level {levels.stop - 1} is not in {self.dest}/info, which has "
                f"{store.pyramid.n_levels} levels: pass more to write_info_file"
            )
        budget = _budget(max(1, n_cores))
        executor: Any = (
            SerialExecutor() if budget.n_workers == 1 else process_pool(budget.n_workers)
        )
        with executor:
            stage_runs = make_levels(source, store, levels, executor=executor, budget=budget)
            drive_with_tqdm(stage_runs, show=not silent)

    def write_level_1(
        self, silent: bool = False, n_cores: int = min(os.cpu_count() or 1, 4)
    ) -> None:
        """Make level 1 from the planes, with `n_cores` processes."""
        if self.source is None:
            raise StoreError(
                "this stack was made from a shape: level 1 is written by the caller, "
                "there are no planes to read"
            )
        self._make(range(1, 2), n_cores, silent, self.source)

    def write_level_n(
        self, level: int, silent: bool = False, n_cores: int = min(os.cpu_count() or 1, 12)
    ) -> None:
        """Make `level` (2 or more) from the level before it, with `n_cores` processes.

        Unlike the original, `silent` also hides this progress bar.
        """
        if level < 2:
            raise StoreError(f"write_level_n makes levels 2 and up, not {level}")
        self._make(range(level, level + 1), n_cores, silent, None)


class Stack(StackBase):
    """A ``--format tiff`` volume (one 3D TIFF per chunk), made step by step.

    Same calls as the original ``precomputed_tif.stack.Stack``; see `StackBase`.
    """

    FORMAT = "tiff"

    def __init__(
        self,
        glob_expr: str | Sequence[int] | Any,
        dest: str,
        ptype: PType = PType.IMAGE,
        chunk_size: Sequence[int] = (64, 64, 64),
        dtype: Any = None,
    ) -> None:
        super().__init__(glob_expr, dest, dtype=dtype, ptype=ptype, chunk_size=chunk_size)

    def fname(self, level: int, x0: int, x1: int, y0: int, y1: int, z0: int, z1: int) -> str:
        """The file of the chunk ``[x0, x1) x [y0, y1) x [z0, z1)`` of `level`."""
        r = self.resolution(level)
        return os.path.join(self.dest, f"{r}_{r}_{r}", f"{x0}-{x1}_{y0}-{y1}_{z0}-{z1}.tiff")
