"""``--format zarr``: one Zarr v2 array per level at ``R_R_R/``, nested chunk keys ``zi/yi/xi``.

Shape (Z, Y, X), Blosc zstd level 1 with bit-shuffle, as the original precomputed-tif writes. We
write the ``.zarray`` and the chunk files ourselves with numcodecs (the zarr package is only a
reader's business), which keeps writes one file each with no per-chunk library overhead. Reading
accepts any v2 array a zarr library wrote: flat or nested keys, any numcodecs compressor.
"""

from __future__ import annotations

import json
import time
from functools import cached_property
from typing import Any

import numpy as np

from ..compression import blosc_encode
from ..encodings import blosc_frame_is_whole
from ..errors import StoreError
from ..geometry import Box
from ..locations import REMOTE_RECHECK_SECONDS, WritableLocation, is_remote
from .base import ChunkStore

ZARRAY = ".zarray"
ZGROUP = ".zgroup"
_ArrayMeta = tuple[dict[str, Any], Any, str]  # .zarray, its codec, the chunk key separator
COMPRESSOR: dict[str, Any] = {
    "id": "blosc",
    "cname": "zstd",
    "clevel": 1,
    "shuffle": 2,
    "blocksize": 0,
}


def _array_meta(files: WritableLocation, key: str) -> _ArrayMeta:
    import numcodecs

    content = files.read(f"{key}/{ZARRAY}")
    try:
        meta = json.loads(content or b"")
        codec = numcodecs.get_codec(meta["compressor"]) if meta.get("compressor") else None
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"cannot read {files.url}/{key}/{ZARRAY}: {exc}") from exc
    separator = meta.get("dimension_separator")
    if separator is None:
        # arrays written by zarr's NestedDirectoryStore before 2.8 do not record the separator
        separator = "/" if "0" in files.names(key) else "."
    return meta, codec, separator


def _check_whole(stored: bytes, codec: Any, path: str) -> None:
    if codec is not None and codec.codec_id == "blosc" and not blosc_frame_is_whole(stored):
        raise StoreError(f"zarr chunk {path!r} is damaged: its Blosc frame is cut short")


class ZarrStore(ChunkStore):
    format_name = "zarr"
    remote_ok = True

    def prepare_level(self, level: int) -> None:
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
        key = self.pyramid.scale(level).key
        self.files.write(f"{key}/{ZARRAY}", json.dumps(meta, indent=4, sort_keys=True).encode())
        if self.files.stamp(ZGROUP) is None:
            self.files.write(ZGROUP, json.dumps({"zarr_format": 2}).encode())

    def _meta(self, level: int) -> _ArrayMeta:
        key = self.pyramid.scale(level).key
        cached = self._metas.get(key)
        now = time.monotonic()
        if cached is not None and is_remote(self.path) and now - cached[2] < REMOTE_RECHECK_SECONDS:
            return cached[1]
        stamp = self.files.stamp(f"{key}/{ZARRAY}")
        if stamp is None:
            raise StoreError(f"level {level} of {self.path!r} has no .zarray")
        meta = cached[1] if cached is not None and cached[0] == stamp else None
        if meta is None:
            meta = _array_meta(self.files, key)
        self._metas[key] = (stamp, meta, now)
        return meta

    @cached_property
    def _metas(self) -> dict[str, tuple[tuple[int, int], _ArrayMeta, float]]:
        return {}

    def _chunk_key(self, level: int, box: Box, separator: str) -> str:
        scale = self.pyramid.scale(level)
        chunk = scale.chunk_size
        zi, yi, xi = box.start[2] // chunk[2], box.start[1] // chunk[1], box.start[0] // chunk[0]
        return f"{scale.key}/{zi}{separator}{yi}{separator}{xi}"

    def write_chunk(self, level: int, box: Box, data: np.ndarray) -> None:
        cx, cy, cz = self.pyramid.scale(level).chunk_size
        if data.shape != (cz, cy, cx):
            # zarr v2 stores edge chunks at full size; the padding is never read back
            padded = np.zeros((cz, cy, cx), data.dtype)
            padded[: data.shape[0], : data.shape[1], : data.shape[2]] = data
            data = padded
        little = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<"))
        encoded = blosc_encode(
            little, COMPRESSOR["cname"], COMPRESSOR["clevel"], COMPRESSOR["shuffle"]
        )
        self.files.write(self._chunk_key(level, box, "/"), encoded)

    def chunk_stamp(self, level: int, box: Box) -> tuple[int, ...] | None:
        _, _, separator = self._meta(level)
        return self.files.stamp(self._chunk_key(level, box, separator))

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
        stored = self.files.read(path)
        if stored is None:
            return None
        _check_whole(stored, codec, path)
        try:
            return bytes(codec.decode(stored))
        except Exception as exc:
            raise StoreError(f"zarr chunk {path!r} is damaged: {exc}") from exc

    def read_chunk(self, level: int, box: Box) -> np.ndarray | None:
        meta, codec, separator = self._meta(level)
        path = self._chunk_key(level, box, separator)
        raw = self.files.read(path)
        if raw is None:
            return None
        _check_whole(raw, codec, path)
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
