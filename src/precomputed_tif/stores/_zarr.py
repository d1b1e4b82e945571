"""Zarr arrays of any rank, v2 or v3, read chunk by chunk; and the bytes of the ones we write.

Reading takes whatever a zarr library wrote: v2 with any numcodecs compressor and filters, "." or
"/" keys; v3 with the bytes, transpose, blosc, gzip, zstd and crc32c codecs, the default or v2
key encoding, and ``sharding_indexed`` (index at either end, inner chunks fetched by byte range).
Writing covers what ``--format ngff`` makes: Blosc-zstd chunks, and v3 shards assembled whole.
Nested sharding and variable chunk grids are refused with a clear error.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..cache import ByteCache
from ..compression import blosc_encode
from ..errors import StoreError
from ..locations import Location
from .base import load_json

ZARRAY = ".zarray"
ZATTRS = ".zattrs"
ZGROUP = ".zgroup"
ZARR_JSON = "zarr.json"
# what --format ngff writes. Level 1 with byte shuffle: on microscope chunks it compressed better
# than ome-zarr-py's level 5 and six times faster (benchmarks/README.md, "ngff rows")
CNAME, CLEVEL, SHUFFLE = "zstd", 1, 1
BLOSC = {"id": "blosc", "cname": CNAME, "clevel": CLEVEL, "shuffle": SHUFFLE, "blocksize": 0}
EMPTY = 2**64 - 1  # a shard index entry for an inner chunk that was never written
INDEX_CACHE_BYTES = 64 * 2**20

Index = tuple[int, ...]


# --- writing -------------------------------------------------------------------------------
def v2_array_json(shape: Index, chunks: Index, dtype: np.dtype[Any]) -> dict[str, Any]:
    """The ``.zarray`` of a Blosc-zstd array with nested ("/") chunk keys."""
    return {
        "chunks": list(chunks),
        "compressor": BLOSC,
        "dimension_separator": "/",
        "dtype": dtype.newbyteorder("<").str if dtype.itemsize > 1 else dtype.str,
        "fill_value": 0,
        "filters": None,
        "order": "C",
        "shape": list(shape),
        "zarr_format": 2,
    }


def _bytes_codec(dtype: np.dtype[Any]) -> dict[str, Any]:
    if dtype.itemsize == 1:
        return {"name": "bytes"}
    return {"name": "bytes", "configuration": {"endian": "little"}}


def v3_sharded_array_json(
    shape: Index, shard: Index, inner: Index, dtype: np.dtype[Any], names: tuple[str, ...]
) -> dict[str, Any]:
    """A v3 ``zarr.json`` whose chunks are shards of Blosc-zstd inner chunks, index at the end."""
    blosc = {
        "name": "blosc",
        "configuration": {
            "cname": CNAME,
            "clevel": CLEVEL,
            "shuffle": "shuffle",
            "typesize": dtype.itemsize,
            "blocksize": 0,
        },
    }
    return {
        "zarr_format": 3,
        "node_type": "array",
        "shape": list(shape),
        "data_type": dtype.name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(shard)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0,
        "codecs": [
            {
                "name": "sharding_indexed",
                "configuration": {
                    "chunk_shape": list(inner),
                    "codecs": [_bytes_codec(dtype), blosc],
                    "index_codecs": [
                        {"name": "bytes", "configuration": {"endian": "little"}},
                        {"name": "crc32c"},
                    ],
                    "index_location": "end",
                },
            }
        ],
        "attributes": {},
        "dimension_names": list(names),
    }


def encode_chunk(data: np.ndarray) -> bytes:
    """Blosc-zstd bytes of a whole chunk, little-endian C order (v2 chunks, v3 inner chunks),
    compressed in the calling thread so a resumed run writes the same bytes."""
    little = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<"))
    return blosc_encode(little, CNAME, CLEVEL, SHUFFLE)


def assemble_shard(inner_grid: Index, blobs: dict[Index, bytes]) -> list[bytes]:
    """A ``sharding_indexed`` shard's pieces, written one after another (never joined into one
    more copy): the inner chunks in C order, then the index and its CRC.

    `blobs` maps an inner chunk's position in the shard to its encoded bytes; absent chunks get
    the empty entry and read as fill.
    """
    import google_crc32c

    index = np.full((math.prod(inner_grid), 2), EMPTY, np.uint64)
    parts = []
    offset = 0
    for position in sorted(blobs):
        blob = blobs[position]
        index[int(np.ravel_multi_index(position, inner_grid))] = (offset, len(blob))
        parts.append(blob)
        offset += len(blob)
    table = index.astype("<u8").tobytes()
    parts.append(table)
    parts.append(google_crc32c.value(table).to_bytes(4, "little"))
    return parts


# --- reading -------------------------------------------------------------------------------
class ZarrArray:
    """One stored array, opened from its metadata; `read_chunk` gives whole (inner) chunks.

    `chunks` is the unit a read returns: the stored chunk, or the inner chunk of a shard.
    """

    def __init__(self, location: Location, prefix: str) -> None:
        self.location = location
        self.prefix = prefix
        self._indexes = ByteCache(INDEX_CACHE_BYTES)
        meta = load_json(location, f"{prefix}/{ZARR_JSON}")
        if meta is not None and meta.get("zarr_format") == 3:
            self._open_v3(meta)
            return
        meta = load_json(location, f"{prefix}/{ZARRAY}")
        if meta is None:
            raise StoreError(f"{location.url}/{prefix} holds no zarr array (.zarray or zarr.json)")
        self._open_v2(meta)

    def _where(self) -> str:
        return f"{self.location.url}/{self.prefix}"

    # v2 ------------------------------------------------------------------------------------
    def _open_v2(self, meta: dict[str, Any]) -> None:
        import numcodecs

        try:
            self.zarr_format = 2
            self.shape: Index = tuple(int(n) for n in meta["shape"])
            self.chunks: Index = tuple(int(n) for n in meta["chunks"])
            self.dtype = np.dtype(meta["dtype"])
            self.order = str(meta.get("order", "C"))
            compressor = meta.get("compressor")
            self._compressor = numcodecs.get_codec(compressor) if compressor else None
            self._filters = [numcodecs.get_codec(f) for f in meta.get("filters") or []]
            self.fill_value = meta.get("fill_value")
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{self._where()}/{ZARRAY} is not a zarr v2 array: {exc}") from exc
        separator = meta.get("dimension_separator")
        if separator is None:
            # zarr's NestedDirectoryStore before 2.8 (the original's NGFF) did not record it
            names = getattr(self.location, "names", None)
            nested = names is not None and "0" in names(self.prefix)
            separator = "/" if nested else "."
        self._separator = str(separator)
        self._shard: Index | None = None

    def _decode_v2(self, raw: bytes) -> np.ndarray:
        data: Any = self._compressor.decode(raw) if self._compressor is not None else raw
        for codec in reversed(self._filters):
            data = codec.decode(data)
        flat = np.frombuffer(bytes(data) if not isinstance(data, np.ndarray) else data, np.uint8)
        return flat.view(self.dtype).reshape(self.chunks, order=self.order)

    # v3 ------------------------------------------------------------------------------------
    def _open_v3(self, meta: dict[str, Any]) -> None:
        try:
            self.zarr_format = 3
            if meta.get("node_type") != "array":
                raise ValueError("node_type is not array")
            self.shape = tuple(int(n) for n in meta["shape"])
            grid = meta["chunk_grid"]
            if grid.get("name") != "regular":
                raise ValueError(f"chunk grid {grid.get('name')!r} is not regular")
            outer = tuple(int(n) for n in grid["configuration"]["chunk_shape"])
            encoding = meta.get("chunk_key_encoding", {"name": "default"})
            separator = (encoding.get("configuration") or {}).get("separator")
            self._v2_keys = encoding.get("name") == "v2"
            self._separator = separator or ("." if self._v2_keys else "/")
            self.fill_value = meta.get("fill_value")
            name = str(meta["data_type"])
            codecs = list(meta["codecs"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StoreError(f"{self._where()}/{ZARR_JSON} is not a zarr v3 array: {exc}") from exc
        self.order = "C"
        self._shard = None
        sharding = [c for c in codecs if _codec_name(c) == "sharding_indexed"]
        if sharding:
            if len(codecs) != 1 or _codec_name(codecs[0]) != "sharding_indexed":
                raise StoreError(f"{self._where()}: codecs around sharding_indexed are not read")
            config = codecs[0].get("configuration", {})
            self._shard = outer
            self.chunks = tuple(int(n) for n in config["chunk_shape"])
            codecs = list(config.get("codecs", []))
            self._index_codecs = list(config.get("index_codecs", []))
            self._index_at_start = config.get("index_location", "end") == "start"
            if any(_codec_name(c) == "sharding_indexed" for c in codecs):
                raise StoreError(f"{self._where()}: nested sharding is not supported")
            if any(s % c for s, c in zip(outer, self.chunks)):
                raise StoreError(f"{self._where()}: shards are not whole inner chunks")
        else:
            self.chunks = outer
        self._codecs = codecs
        self.dtype = _v3_dtype(name, codecs, self._where())

    def _decode_v3(self, raw: bytes, codecs: list[dict[str, Any]], shape: Index) -> np.ndarray:
        """Undo a v3 codec chain: bytes-to-bytes codecs, then bytes, then transposes."""
        import numcodecs

        transposes = []
        data: Any = raw
        names = [_codec_name(c) for c in codecs]
        split = names.index("bytes") if "bytes" in names else len(names)
        for codec in reversed(codecs[split + 1 :]):
            name = _codec_name(codec)
            if name == "crc32c":
                data = bytes(data)[:-4]  # the checksum of what came before: not needed to read
            elif name == "blosc":
                data = numcodecs.Blosc().decode(data)
            elif name == "gzip":
                data = numcodecs.GZip().decode(data)
            elif name == "zstd":
                data = numcodecs.Zstd().decode(data)
            else:
                raise StoreError(f"{self._where()}: codec {name!r} is not supported")
        for codec in codecs[:split]:
            if _codec_name(codec) != "transpose":
                raise StoreError(f"{self._where()}: codec {_codec_name(codec)!r} is not supported")
            transposes.append(tuple(codec["configuration"]["order"]))
        stored_shape = shape
        for order in transposes:
            stored_shape = tuple(stored_shape[i] for i in order)
        flat = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data
        array = flat.view(np.uint8).view(self.dtype).reshape(stored_shape)
        for order in reversed(transposes):
            array = array.transpose(np.argsort(order))
        return array

    # both ----------------------------------------------------------------------------------
    def _key(self, index: Index) -> str:
        joined = self._separator.join(str(i) for i in index)
        if self.zarr_format == 2 or self._v2_keys:
            return f"{self.prefix}/{joined or '0'}"
        return f"{self.prefix}/c{self._separator}{joined}" if joined else f"{self.prefix}/c"

    def chunk_key(self, index: Index) -> str:
        """The stored object holding chunk `index` (a shard's name when sharded)."""
        if self._shard is None:
            return self._key(index)
        per = [s // c for s, c in zip(self._shard, self.chunks)]
        return self._key(tuple(i // p for i, p in zip(index, per)))

    def read_chunk(self, index: Index) -> np.ndarray | None:
        """Chunk `index` (grid position) at full chunk size, or None when never written."""
        if self._shard is not None:
            raw = self._read_inner(index)
        else:
            raw = self.location.read(self._key(index))
        if raw is None:
            return None
        try:
            if self.zarr_format == 2:
                return self._decode_v2(raw)
            return self._decode_v3(raw, self._codecs, self.chunks)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"chunk {index} of {self._where()} is damaged: {exc}") from exc

    def _read_inner(self, index: Index) -> bytes | None:
        assert self._shard is not None
        per = tuple(s // c for s, c in zip(self._shard, self.chunks))
        shard = tuple(i // p for i, p in zip(index, per))
        inner = tuple(i % p for i, p in zip(index, per))
        name = self._key(shard)
        table = self._index(name, per)
        if table is None:
            return None
        offset, nbytes = (int(v) for v in table[int(np.ravel_multi_index(inner, per))])
        if offset == EMPTY and nbytes == EMPTY:
            return None
        return self.location.read_range(name, offset, nbytes)

    def _index(self, name: str, per: Index) -> np.ndarray | None:
        cached = self._indexes[name]
        if cached is not None:
            return cached
        n = math.prod(per)
        size = 16 * n + (4 if any(_codec_name(c) == "crc32c" for c in self._index_codecs) else 0)
        if self._index_at_start:
            raw = self.location.read_range(name, 0, size)
        else:
            raw = self.location.read_suffix(name, size)
        if raw is None:
            return None
        if len(raw) != size:
            raise StoreError(f"shard {self.location.url}/{name} is damaged: its index is cut short")
        table = np.frombuffer(raw[: 16 * n], "<u8").reshape(n, 2)
        self._indexes.put(name, table, table.nbytes + 64)
        return table


def _codec_name(codec: Any) -> str:
    return str(codec.get("name")) if isinstance(codec, dict) else str(codec)


def _v3_dtype(name: str, codecs: list[dict[str, Any]], where: str) -> np.dtype[Any]:
    try:
        dtype = np.dtype(name)
    except TypeError as exc:
        raise StoreError(f"{where}: data type {name!r} is not supported") from exc
    endian = "little"
    for codec in codecs:
        if _codec_name(codec) == "bytes":
            endian = (codec.get("configuration") or {}).get("endian") or "little"
    return dtype.newbyteorder("<" if endian == "little" else ">")
