"""``--format tiff``: one deflate-compressed 3D TIFF per chunk, ``R_R_R/x0-x1_y0-y1_z0-z1.tiff``.

Pages run along z, each page is (y, x), as the original precomputed-tif writes them. Any deflate
level reads the same; we use a faster level than the original's 4 (see the README's benchmark).
"""

from __future__ import annotations

import io
import os

import numpy as np

from ..errors import StoreError
from ..geometry import Box
from ..locations import file_stamp, write_atomically
from .base import ChunkStore

ZLIB_LEVEL = 1


class TiffStore(ChunkStore):
    format_name = "tiff"

    def chunk_path(self, level: int, box: Box) -> str:
        return os.path.join(self.level_path(level), box.chunk_name + ".tiff")

    def write_chunk(self, level: int, box: Box, data: np.ndarray) -> None:
        import tifffile

        buffer = io.BytesIO()
        tifffile.imwrite(
            buffer,
            np.ascontiguousarray(data),
            compression="zlib",
            compressionargs={"level": ZLIB_LEVEL},
            photometric="minisblack",
        )
        write_atomically(self.chunk_path(level, box), buffer.getbuffer(), self.tmp_dir)

    def chunk_stamp(self, level: int, box: Box) -> tuple[int, ...] | None:
        return file_stamp(self.chunk_path(level, box))

    def read_chunk(self, level: int, box: Box) -> np.ndarray | None:
        import tifffile

        path = self.chunk_path(level, box)
        try:
            data = tifffile.imread(path)
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise StoreError(f"chunk file {path!r} is damaged: {exc}") from exc
        if data.size != box.voxels:
            raise StoreError(f"chunk file {path!r} holds {data.shape}; expected {box.numpy_shape}")
        return data.reshape(box.numpy_shape).astype(self.pyramid.dtype, copy=False)
