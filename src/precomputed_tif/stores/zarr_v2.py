"""``--format zarr``: one Zarr v2 array per level at ``R_R_R/``, nested chunk keys ``zi/yi/xi``.

Shape (Z, Y, X), Blosc zstd level 1 with bit-shuffle, as the original precomputed-tif writes. We
write the ``.zarray`` and the chunk files ourselves with numcodecs (the zarr package is only a
reader's business), which keeps writes one file each with no per-chunk library overhead. Reading
accepts any v2 array a zarr library wrote: flat or nested keys, any numcodecs compressor.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from typing import Any

import numpy as np

from ..errors import StoreError
from ..geometry import Box
from .base import ChunkStore, file_stamp, write_atomically

ZARRAY = ".zarray"
COMPRESSOR = {"id": "blosc", "cname": "zstd", "clevel": 1, "shuffle": 2, "blocksize": 0}


@lru_cache(maxsize=64)
def _array_meta(level_path: str, mtime_ns: int) -> tuple[dict[str, Any], Any, str]:
    import numcodecs

    path = os.path.join(level_path, ZARRAY)
    try:
        with open(path, "rb") as f:
            meta = json.loads(f.read())
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot read {path!r}: {exc}") from exc
    codec = numcodecs.get_codec(meta["compressor"]) if meta.get("compressor") else None
    separator = meta.get("dimension_separator")
    if separator is None:
        # arrays written by zarr's NestedDirectoryStore before 2.8 do not record the separator
        separator = "/" if os.path.isdir(os.path.join(level_path, "0")) else "."
    return meta, codec, separator


class ZarrStore(ChunkStore):
    format_name = "zarr"

    def prepare_level(self, level: int) -> None:
        super().prepare_level(level)
        scale = self.pyramid.scale(level)
        meta = {
            "chunks": list(reversed(scale.chunk_size)),
            "compressor": COMPRESSOR,
            "dimension_separator": "/",
            "dtype": self.pyramid.dtype.newbyteorder("<").str,
            "fill_value": 0,
            "filters": None,
            "order": "C",
            "shape": list(reversed(scale.size)),
            "zarr_format": 2,
        }
        write_atomically(
            os.path.join(self.level_path(level), ZARRAY),
            json.dumps(meta, indent=4, sort_keys=True).encode(),
        )
        group = os.path.join(self.path, ".zgroup")
        if not os.path.exists(group):
            write_atomically(group, json.dumps({"zarr_format": 2}).encode())

    def _meta(self, level: int) -> tuple[dict[str, Any], Any, str]:
        level_path = self.level_path(level)
        try:
            mtime = os.stat(os.path.join(level_path, ZARRAY)).st_mtime_ns
        except OSError as exc:
            raise StoreError(f"level {level} of {self.path!r} has no .zarray") from exc
        return _array_meta(level_path, mtime)

    def _chunk_key(self, level: int, box: Box, separator: str) -> str:
        chunk = self.pyramid.scale(level).chunk_size
        zi, yi, xi = box.start[2] // chunk[2], box.start[1] // chunk[1], box.start[0] // chunk[0]
        return os.path.join(self.level_path(level), f"{zi}{separator}{yi}{separator}{xi}")

    def write_chunk(self, level: int, box: Box, data: np.ndarray) -> None:
        import numcodecs

        cx, cy, cz = self.pyramid.scale(level).chunk_size
        if data.shape != (cz, cy, cx):
            # zarr v2 stores edge chunks at full size; the padding is never read back
            padded = np.zeros((cz, cy, cx), data.dtype)
            padded[: data.shape[0], : data.shape[1], : data.shape[2]] = data
            data = padded
        little = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<"))
        encoded = numcodecs.get_codec(COMPRESSOR).encode(little)
        path = self._chunk_key(level, box, "/")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_atomically(path, encoded)

    def chunk_stamp(self, level: int, box: Box) -> tuple[int, ...] | None:
        _, _, separator = self._meta(level)
        return file_stamp(self._chunk_key(level, box, separator))

    def read_chunk_bytes(self, level: int, box: Box) -> bytes | None:
        meta, codec, separator = self._meta(level)
        plain = (
            not meta.get("filters")
            and meta.get("order", "C") == "C"
            and np.dtype(meta["dtype"]).byteorder in "<|="
            and list(meta["chunks"]) == list(box.numpy_shape)
            and codec is not None
        )
        if not plain:
            return super().read_chunk_bytes(level, box)  # padded edges, filters, big-endian
        path = self._chunk_key(level, box, separator)
        try:
            with open(path, "rb") as f:
                stored = f.read()
        except FileNotFoundError:
            return None
        try:
            return bytes(codec.decode(stored))
        except Exception as exc:
            raise StoreError(f"zarr chunk {path!r} is damaged: {exc}") from exc

    def read_chunk(self, level: int, box: Box) -> np.ndarray | None:
        meta, codec, separator = self._meta(level)
        path = self._chunk_key(level, box, separator)
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        try:
            decoded = codec.decode(raw) if codec is not None else raw
            for spec in reversed(meta.get("filters") or []):
                import numcodecs

                decoded = numcodecs.get_codec(spec).decode(decoded)
            chunk = np.frombuffer(decoded, np.dtype(meta["dtype"]))
            chunk = chunk.reshape(meta["chunks"], order=meta.get("order", "C"))
        except Exception as exc:
            raise StoreError(f"zarr chunk {path!r} is damaged: {exc}") from exc
        sz, sy, sx = box.numpy_shape
        return chunk[:sz, :sy, :sx].astype(self.pyramid.dtype.newbyteorder("="), copy=False)
