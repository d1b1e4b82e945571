"""The original precomputed-tif's ``ZarrStack``: a zarr volume made step by step.

Same calls as the original (``write_info_file``, ``write_level_1``, ``write_level_n``); the
arrays are those ``precomputed-tif --format zarr`` writes (Zarr v2, ``zi/yi/xi`` chunk keys,
Blosc zstd level 1 with bit-shuffle), so the volume serves and reads like any other.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from .stack import PType, StackBase

log = logging.getLogger(__name__)


class ZarrStack(StackBase):
    """A ``--format zarr`` volume.

    Parameters
    ----------
    src
        A glob of TIFF planes, a (z, y, x) array (a zarr array, say) to copy, or the (z, y, x)
        shape of a volume another program fills.
    dest
        The volume folder.
    compressor
        Accepted for the original's signature; chunks are always compressed as the converter
        does (the original's default, Blosc zstd level 1 with bit-shuffle), so that every zarr
        volume reads and serves alike. Another compressor is ignored with a warning.
    chunk_size
        z, y, x. Unlike the original, which wrote 64^3 chunks whatever it was given, it is
        honoured.
    """

    FORMAT = "zarr"

    def __init__(
        self,
        src: str | Sequence[int] | Any,
        dest: str,
        compressor: Any = None,
        chunk_size: Sequence[int] = (64, 64, 64),
        dtype: Any = None,
        ptype: PType = PType.IMAGE,
    ) -> None:
        if compressor is not None:
            log.warning("ZarrStack ignores compressor=%r: chunks use Blosc zstd 1", compressor)
        super().__init__(src, dest, dtype=dtype, ptype=ptype, chunk_size=chunk_size)
