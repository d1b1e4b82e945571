"""``--format tiff``: one deflate-compressed 3D TIFF per chunk, ``R_R_R/x0-x1_y0-y1_z0-z1.tiff``.

Pages run along z, each page is (y, x) in one strip, as the original precomputed-tif writes them.
Any deflate level reads the same: the strips are encoded by `compression` (ISA-L when installed,
faster than zlib at its level 1; see benchmarks/bench_codecs.py) and handed to tifffile encoded.
The server reads them back through `_tiff_pages`, which skips tifffile's per-file overhead.
"""

from __future__ import annotations

import io
import os

import numpy as np

from ..compression import zlib_compress
from ..errors import StoreError
from ..geometry import Box
from ..locations import file_stamp, write_atomically
from ._tiff_pages import read_pages
from .base import ChunkStore


class TiffStore(ChunkStore):
    format_name = "tiff"

    def chunk_path(self, level: int, box: Box) -> str:
        return os.path.join(self.level_path(level), box.chunk_name + ".tiff")

    def write_chunk(self, level: int, box: Box, data: np.ndarray) -> None:
        import tifffile

        little = np.ascontiguousarray(data, data.dtype.newbyteorder("<"))
        buffer = io.BytesIO()
        if little.shape[2] == 1:
            # tifffile takes a last axis of 1 for samples and makes one (z, y) page: its own
            # encoder then, for these rare one-voxel-wide edge chunks
            tifffile.imwrite(buffer, little, compression="zlib", photometric="minisblack")
        else:
            tifffile.imwrite(
                buffer,
                (zlib_compress(plane) for plane in little),  # a page is one encoded strip
                shape=little.shape,
                dtype=little.dtype,
                byteorder="<",
                compression="zlib",
                photometric="minisblack",
            )
        write_atomically(self.chunk_path(level, box), buffer.getbuffer(), self.tmp_dir)

    def chunk_stamp(self, level: int, box: Box) -> tuple[int, ...] | None:
        return file_stamp(self.chunk_path(level, box))

    def read_chunk_bytes(self, level: int, box: Box) -> bytes | None:
        """Neuroglancer's raw bytes, inflated page by page into one buffer (`_tiff_pages`);
        tifffile reads any file of another layout."""
        dtype = self.pyramid.dtype.newbyteorder("<")
        if self.pyramid.num_channels == 1:
            try:
                data = read_pages(self.chunk_path(level, box), box.numpy_shape, dtype)
            except FileNotFoundError:
                return None
            if data is not None:
                return data
        return super().read_chunk_bytes(level, box)

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
