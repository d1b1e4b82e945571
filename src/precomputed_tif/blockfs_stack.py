"""The original precomputed-tif's ``BlockfsStack``: a blockfs volume made step by step.

Stitchers stream their fused blocks into level 1 through `BlockfsStack.make_l1_directory`, then
ask for the coarser levels with ``write_level_n``. The level files are those our converter writes
(one block file per level, blocks in block order), so the volume serves, reads and converts like
any other; volumes whose level 1 the original blockfs package wrote are read as well.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from .blockfs_directory import Directory
from .pyramid import Pyramid
from .stack import PType, StackBase
from .stores import create_store
from .stores.blockfs import DIRECTORY_NAME, BlockfsStore, open_directory

log = logging.getLogger(__name__)


class BlockfsStack(StackBase):
    """A ``--format blockfs`` volume, made step by step (same calls as the original).

    Fixed here, unlike the original:

    - a stack made from a shape says ``uint16`` in ``info`` (the original's default, as
      there); pass ``dtype=`` to say otherwise. When a caller writes level 1 with a blockfs
      ``Directory`` of another type (as phathom does with the input's type), `write_level_n`
      takes the type from that directory and corrects ``info``, instead of leaving ``uint16``
      in ``info`` above data of another type;
    - the pyramid never reads level-1 blocks before they are on disk: the directory of
      `make_l1_directory` has every block written when ``close()`` returns, and
      `write_level_n` closes it first if the caller has not (the original's writer processes
      could still hold blocks, and its level 2 and 3 came out wrong about one run in three).
    """

    FORMAT = "blockfs"
    DIRECTORY_FILENAME = DIRECTORY_NAME

    def __init__(
        self,
        glob_expr: str | Sequence[int] | Any,
        dest: str,
        ptype: PType = PType.IMAGE,
        chunk_size: Sequence[int] = (64, 64, 64),
        dtype: Any = None,
    ) -> None:
        super().__init__(glob_expr, dest, dtype=dtype, ptype=ptype, chunk_size=chunk_size)
        self._directories: list[Directory] = []

    def fname(self, level: int) -> str:
        """The level's directory file, relative to the volume folder."""
        r = self.resolution(level)
        return os.path.join(f"{r}_{r}_{r}", DIRECTORY_NAME)

    def make_l1_directory(self, n_cores: int = 1) -> Directory:
        """The blockfs ``Directory`` of level 1, for a caller that writes the blocks itself.

        Call ``create()``, then ``write_block(block, x0, y0, z0)`` for each block (from any
        process, in any order; ``start_writer_processes()`` is accepted and does nothing), then
        ``close()``. `n_cores` is kept for the original's signature: blocks are written by the
        processes that call ``write_block``.
        """
        os.makedirs(self.dest, exist_ok=True)
        if os.path.exists(os.path.join(self.dest, "info")):
            store = self.store
        else:  # no info yet: level 1 is the same whatever the number of levels
            pyramid = self.pyramid(1)
            store = create_store(self.FORMAT, os.path.abspath(self.dest), pyramid)
        assert isinstance(store, BlockfsStore)
        directory = Directory(store, 1)
        self._directories.append(directory)
        return directory

    def write_level_n(
        self, level: int, silent: bool = False, n_cores: int = min(os.cpu_count() or 1, 12)
    ) -> None:
        """Make `level` (2 or more) from the level before it, with `n_cores` processes."""
        for directory in self._directories:
            directory.close()  # nothing of level 1 may still be on its way to disk
        self._directories.clear()
        self._adopt_stored_type(level - 1)
        super().write_level_n(level, silent, n_cores)

    def _adopt_stored_type(self, level: int) -> None:
        """Correct ``info`` when the caller's own directory for `level` holds another type."""
        store = self.store
        path = os.path.join(store.level_path(level), DIRECTORY_NAME)
        if not os.path.exists(path):
            return
        stored = np.dtype(open_directory(path).metadata["DType"])
        if stored == store.pyramid.dtype:
            return
        log.warning(
            "%s holds %s blocks while info says %s: info now says %s",
            path,
            stored.name,
            store.pyramid.data_type,
            stored.name,
        )
        pyramid: Pyramid = replace(store.pyramid, data_type=stored.name)
        self.dtype = stored
        self._store = create_store(self.FORMAT, store.path, pyramid)
        self._store.write_info()
