"""``--format tiff``: one deflate-compressed 3D TIFF per chunk, ``R_R_R/x0-x1_y0-y1_z0-z1.tiff``.

Pages run along z, each page is (y, x) in one strip, as the original precomputed-tif writes them.
Any deflate level reads the same: the strips are encoded by `compression` (libdeflate, twice
zlib's speed at its level 1; see benchmarks/bench_codecs.py) and laid out by `_tiff_writer`
(tifffile's general writer costs more than the deflating). Chunks are read back, by the next
level and by the server, through `_tiff_pages`; tifffile reads any file of another layout.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import StoreError
from ..geometry import Box
from ..locations import file_stamp, write_atomically
from ._tiff_pages import inflate_pages
from ._tiff_writer import encode_tiff_chunk
from .base import ChunkStore


class TiffStore(ChunkStore):
    format_name = "tiff"

    def chunk_path(self, level: int, box: Box) -> str:
        return os.path.join(self.level_path(level), box.chunk_name + ".tiff")

    def write_chunk(self, level: int, box: Box, data: np.ndarray) -> None:
        write_atomically(self.chunk_path(level, box), encode_tiff_chunk(data), self.tmp_dir)

    def chunk_stamp(self, level: int, box: Box) -> tuple[int, ...] | None:
        return file_stamp(self.chunk_path(level, box))

    def _inflated(self, level: int, box: Box) -> bytearray | None:
        """The chunk's little-endian voxels by the page inflater (`_tiff_pages`), or None when
        its layout (or several channels) needs tifffile; FileNotFoundError when missing."""
        if self.pyramid.num_channels != 1:
            return None
        little = self.pyramid.dtype.newbyteorder("<")
        return inflate_pages(self.chunk_path(level, box), box.numpy_shape, little)

    def read_chunk_bytes(self, level: int, box: Box) -> bytes | None:
        """Neuroglancer's raw bytes, inflated page by page into one buffer; tifffile reads any
        file of another layout."""
        try:
            raw = self._inflated(level, box)
        except FileNotFoundError:
            return None
        return bytes(raw) if raw is not None else super().read_chunk_bytes(level, box)

    def read_chunk(self, level: int, box: Box) -> np.ndarray | None:
        try:
            raw = self._inflated(level, box)
        except FileNotFoundError:
            return None
        if raw is None:
            return self._read_with_tifffile(level, box)
        # a bytearray: the array is writable, as tifffile's are
        voxels = np.frombuffer(raw, self.pyramid.dtype.newbyteorder("<"))
        return voxels.reshape(box.numpy_shape).astype(self.pyramid.dtype, copy=False)

    def _read_with_tifffile(self, level: int, box: Box) -> np.ndarray | None:
        """Any TIFF layout (several channels, the original's files of another shape)."""
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
