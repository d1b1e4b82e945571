"""Neuroglancer's ``neuroglancer_uint64_sharded_v1``: hashing, Morton codes, writing, reading.

A sharded index maps uint64 keys to byte blobs in a few ``<shard>.shard`` files. Each file is a
fixed-size shard index (one [start, end) pair per minishard), the blobs, and per minishard a
(gzip-compressed) table of delta-encoded keys, offsets and sizes. Everything here is vectorised
over numpy arrays, so millions of keys take seconds; nothing knows what the blobs mean.
"""

from __future__ import annotations

import gzip
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .compression import gzip_compress
from .geometry import XYZ
from .locations import LocalLocation, WritableLocation

_M32 = np.uint32(0xFFFFFFFF)
# a shard's data encoding: gzip (smaller files) or raw (as TensorStore writes by default: no
# codec time on writing or reading, the chunks' bytes as they are)
SHARD_DATA_ENCODINGS = ("gzip", "raw")


def _rotl32(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def _fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def murmurhash3_x86_128_low64(keys: np.ndarray) -> np.ndarray:
    """MurmurHash3_x86_128 (seed 0) of each key's 8 little-endian bytes, low 64 bits.

    This is Neuroglancer's sharding hash: an 8-byte input has no full 16-byte block, so only
    the tail and finalisation steps of the algorithm apply.
    """
    with np.errstate(over="ignore"):
        keys = np.asarray(keys, np.uint64)
        k1 = (keys & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        k2 = (keys >> np.uint64(32)).astype(np.uint32)
        c1, c2, c3 = np.uint32(0x239B961B), np.uint32(0xAB0E9789), np.uint32(0x38B34AE5)
        zero = np.zeros(keys.shape, np.uint32)
        k2 = _rotl32(k2 * c2, 16) * c3
        h2 = zero ^ k2
        k1 = _rotl32(k1 * c1, 15) * c2
        h1 = zero ^ k1
        h3 = zero.copy()
        h4 = zero.copy()
        length = np.uint32(8)
        h1, h2, h3, h4 = h1 ^ length, h2 ^ length, h3 ^ length, h4 ^ length
        h1 = h1 + h2 + h3 + h4
        h2 = h2 + h1
        h3 = h3 + h1
        h4 = h4 + h1
        h1, h2, h3, h4 = _fmix32(h1), _fmix32(h2), _fmix32(h3), _fmix32(h4)
        h1 = h1 + h2 + h3 + h4
        h2 = h2 + h1
    return h1.astype(np.uint64) | (h2.astype(np.uint64) << np.uint64(32))


def compressed_morton_codes(cells: np.ndarray, grid_shape: Sequence[int]) -> np.ndarray:
    """Neuroglancer's compressed Morton code of each row of `cells` (N x rank) in `grid_shape`.

    Bits are interleaved x, y, z, ... from the lowest up, skipping a dimension once its grid
    needs no more bits.
    """
    cells = np.asarray(cells, np.uint64).reshape(-1, len(grid_shape))
    bits = [max(0, int(g - 1).bit_length()) for g in grid_shape]
    out = np.zeros(len(cells), np.uint64)
    j = 0
    for i in range(max(bits, default=0)):
        for dim, nbits in enumerate(bits):
            if i < nbits:
                bit = (cells[:, dim] >> np.uint64(i)) & np.uint64(1)
                out |= bit << np.uint64(j)
                j += 1
    if j > 64:
        raise ValueError(f"grid {tuple(grid_shape)} needs {j} bits, more than a uint64 holds")
    return out


@dataclass(frozen=True)
class ShardingSpec:
    """The ``sharding`` member of an info file."""

    hash: str = "identity"
    preshift_bits: int = 0
    minishard_bits: int = 0
    shard_bits: int = 0
    minishard_index_encoding: str = "gzip"
    data_encoding: str = "raw"

    def to_json(self) -> dict[str, Any]:
        return {
            "@type": "neuroglancer_uint64_sharded_v1",
            "hash": self.hash,
            "preshift_bits": self.preshift_bits,
            "minishard_bits": self.minishard_bits,
            "shard_bits": self.shard_bits,
            "minishard_index_encoding": self.minishard_index_encoding,
            "data_encoding": self.data_encoding,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ShardingSpec:
        return cls(
            hash=str(obj["hash"]),
            preshift_bits=int(obj["preshift_bits"]),
            minishard_bits=int(obj["minishard_bits"]),
            shard_bits=int(obj["shard_bits"]),
            minishard_index_encoding=str(obj.get("minishard_index_encoding", "raw")),
            data_encoding=str(obj.get("data_encoding", "raw")),
        )

    def locate(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard, minishard) of each key."""
        shifted = np.asarray(keys, np.uint64) >> np.uint64(self.preshift_bits)
        hashed = (
            murmurhash3_x86_128_low64(shifted) if self.hash == "murmurhash3_x86_128" else shifted
        )
        minishard = hashed & np.uint64((1 << self.minishard_bits) - 1)
        shard = (hashed >> np.uint64(self.minishard_bits)) & np.uint64((1 << self.shard_bits) - 1)
        return shard, minishard

    def shard_name(self, shard: int) -> str:
        digits = -(-self.shard_bits // 4)
        return f"{shard:0{digits}x}.shard"

    @property
    def index_bytes(self) -> int:
        return 16 << self.minishard_bits


def choose_sharding(
    n_keys: int,
    *,
    key_bits: int = 64,
    hashed: bool,
    keys_per_minishard: int,
    keys_per_shard: int,
    data_encoding: str = "raw",
) -> ShardingSpec:
    """Bits that give shards of about `keys_per_shard` keys in minishards of `keys_per_minishard`.

    With ``hashed`` the keys spread uniformly (murmurhash); otherwise (identity hash on Morton
    codes) consecutive codes, which are nearby cells, share a minishard and a shard.
    """
    n_keys = max(1, n_keys)
    shards = max(1, n_keys // max(1, keys_per_shard))
    shard_bits = math.ceil(math.log2(shards)) if shards > 1 else 0
    per_shard = max(1, n_keys >> shard_bits)
    minishards = max(1, per_shard // max(1, keys_per_minishard))
    minishard_bits = math.ceil(math.log2(minishards)) if minishards > 1 else 0
    preshift_bits = 0
    if not hashed:
        # identity: the low bits pick the minishard, so shift away the bits of keys that should
        # share one; never shift further than the keys reach
        preshift_bits = max(0, min(key_bits, math.ceil(math.log2(max(1, keys_per_minishard)))))
        spare = max(0, key_bits - preshift_bits)
        minishard_bits = min(minishard_bits, spare)
        shard_bits = min(shard_bits, max(0, spare - minishard_bits))
    return ShardingSpec(
        hash="murmurhash3_x86_128" if hashed else "identity",
        preshift_bits=preshift_bits,
        minishard_bits=minishard_bits,
        shard_bits=shard_bits,
        minishard_index_encoding="gzip",
        data_encoding=data_encoding,
    )


def write_sharded(
    folder: str | WritableLocation,
    spec: ShardingSpec,
    keys: np.ndarray,
    blobs: Sequence[bytes | np.ndarray] | np.ndarray,
    *,
    encoded: bool = False,
) -> int:
    """Write `blobs[i]` under `keys[i]` as shard files in `folder`; returns the number of files.

    `blobs` is a list of bytes or arrays (an array stands for its C-order bytes and is copied
    once, straight into the shard: a raw chunk can be a view of the task's region), or a 2D
    uint8 array of fixed-size rows (written without copying each row into its own object, for
    millions of small blobs). With `encoded`, the blobs are already in the spec's data encoding
    (callers that compress as they go save memory).
    """
    if isinstance(folder, str):
        os.makedirs(folder, exist_ok=True)
        folder = LocalLocation(folder)
    keys = np.asarray(keys, np.uint64)
    rows: np.ndarray | None = None
    items: list[bytes | np.ndarray] = []
    if isinstance(blobs, np.ndarray) and spec.data_encoding != "gzip":
        rows = blobs
        sizes = np.full(len(keys), blobs.shape[1], np.uint64)
    else:
        items = [row if isinstance(row, np.ndarray) else bytes(row) for row in blobs]
        if spec.data_encoding == "gzip" and not encoded:
            items = [encode_blob(_bytes(b)) for b in items]
        sizes = np.array([_nbytes(b) for b in items], np.uint64)
    shard, minishard = spec.locate(keys)
    order = np.lexsort((keys, minishard, shard))
    boundaries = np.flatnonzero(np.diff(shard[order])) + 1
    files = 0
    for group in np.split(order, boundaries):
        if len(group) == 0:
            continue
        # rows: one gather, straight into the shard
        parts = [rows[group]] if rows is not None else [items[int(i)] for i in group]
        content = _shard_pieces(spec, keys[group], minishard[group], sizes[group], parts)
        folder.write(spec.shard_name(int(shard[group[0]])), content)
        files += 1
    return files


def _nbytes(blob: bytes | np.ndarray) -> int:
    return blob.nbytes if isinstance(blob, np.ndarray) else len(blob)


def _bytes(blob: bytes | np.ndarray) -> bytes:
    return blob.tobytes() if isinstance(blob, np.ndarray) else blob


def encode_blob(blob: bytes) -> bytes:
    """A blob in gzip data encoding (the fastest standard encoder: see `compression`)."""
    return gzip_compress(blob)


def _shard_pieces(
    spec: ShardingSpec,
    keys: np.ndarray,
    minishards: np.ndarray,
    sizes: np.ndarray,
    parts: Sequence[bytes | np.ndarray],
) -> list[bytes | np.ndarray]:
    """One shard file's pieces: index, the blobs `parts` (in minishard then key order), minishard
    tables. They are written one after another: a shard is tens of MiB, and joining them would
    be one more copy of it, in memory the task budget must hold.
    """
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.uint64)
    index = np.zeros((1 << spec.minishard_bits, 2), "<u8")
    tables = []
    position = int(sizes.sum())
    boundaries = np.flatnonzero(np.diff(minishards)) + 1
    for part in np.split(np.arange(len(keys)), boundaries):
        if len(part) == 0:
            continue
        k, s, n = keys[part], starts[part], sizes[part]
        table = np.empty((3, len(part)), "<u8")
        table[0, 0], table[0, 1:] = k[0], np.diff(k)
        table[1, 0] = s[0]
        table[1, 1:] = s[1:] - (s[:-1] + n[:-1])
        table[2] = n
        encoded = table.tobytes()
        if spec.minishard_index_encoding == "gzip":
            encoded = gzip.compress(encoded, compresslevel=6, mtime=0)
        index[int(minishards[part[0]])] = (position, position + len(encoded))
        position += len(encoded)
        tables.append(encoded)
    return [index.tobytes(), *parts, *tables]


def morton_bits(grid_shape: Sequence[int]) -> list[int]:
    """The dimension each bit of a compressed Morton code comes from, lowest bit first."""
    bits = [max(0, int(g - 1).bit_length()) for g in grid_shape]
    order: list[int] = []
    for i in range(max(bits, default=0)):
        order.extend(dim for dim, nbits in enumerate(bits) if i < nbits)
    return order


def block_of_low_bits(grid_shape: Sequence[int], low_bits: int) -> tuple[int, ...]:
    """Chunks per dimension of the block that the `low_bits` lowest code bits enumerate."""
    block = [1] * len(grid_shape)
    for dim in morton_bits(grid_shape)[:low_bits]:
        block[dim] *= 2
    return tuple(block)


def volume_sharding(
    grid_shape: Sequence[int], chunk_bytes: int, max_shard_bytes: int, *, data_encoding: str
) -> tuple[ShardingSpec, tuple[int, ...]]:
    """A spec whose shards are aligned blocks of chunks of at most `max_shard_bytes` (raw).

    Identity hash on compressed Morton codes: the low bits of a code walk a power-of-two block
    of chunks, so a shard (all codes sharing the high bits) is a rectangular block that one task
    can fill from the region it holds, and never has to read back and rewrite. Returns the spec
    and the block's size in chunks per dimension.
    """
    total = len(morton_bits(grid_shape))
    low = 0
    while low < total and chunk_bytes * 2 ** (low + 1) <= max_shard_bytes:
        low += 1
    return _block_spec(low, total, data_encoding), block_of_low_bits(grid_shape, low)


def _block_spec(low: int, total: int, data_encoding: str) -> ShardingSpec:
    """Identity-hash sharding whose shards are the blocks of the `low` lowest of `total` bits."""
    preshift = min(low, 3)  # up to 8 neighbouring chunks share a minishard table entry run
    return ShardingSpec(
        hash="identity",
        preshift_bits=preshift,
        minishard_bits=low - preshift,
        shard_bits=total - low,
        minishard_index_encoding="gzip",
        data_encoding=data_encoding,
    )


def block_voxels(grid_shape: Sequence[int], chunk_size: Sequence[int], spec: ShardingSpec) -> XYZ:
    """The voxels (per axis) of one shard's block of chunks, for a spec from `volume_sharding`."""
    block = block_of_low_bits(grid_shape, spec.preshift_bits + spec.minishard_bits)
    x, y, z = (b * c for b, c in zip(block, chunk_size))
    return (x, y, z)


def halved_region(
    region: Sequence[int],
    size: Sequence[int],
    next_size: Sequence[int],
    factor: Sequence[int] = (2, 2, 2),
) -> XYZ | None:
    """A task region of one level as seen at the next level (`factor` times coarser per axis),
    or None when a task's box there would cut chunks in two (an odd region that does not cover
    its axis)."""
    out = []
    for r, s, n, f in zip(region, size, next_size, factor):
        if r >= s:
            out.append(n)
        elif r % f == 0:
            out.append(r // f)
        else:
            return None
    return (out[0], out[1], out[2])


def region_is_shard_block(
    grid_shape: Sequence[int],
    chunk_size: Sequence[int],
    size: Sequence[int],
    region: Sequence[int],
    spec: ShardingSpec,
) -> bool:
    """Whether the tasks of `region` voxels (in a level of `size`) each write one whole shard."""
    voxels = block_voxels(grid_shape, chunk_size, spec)
    return all(v == r or (v >= s and r >= s) for v, r, s in zip(voxels, region, size))


def nested_sharding(
    grid_shape: Sequence[int],
    chunk_size: Sequence[int],
    size: Sequence[int],
    region: Sequence[int],
    *,
    data_encoding: str,
) -> ShardingSpec | None:
    """Sharding whose shards are exactly the `region` blocks (voxels) of this level, or None.

    The task that writes a shard of the finer level holds, downsampled, this region: with these
    shards it writes this level too, from the same read, instead of a later stage reading the
    finer level back. Shards shrink by the level's factor (8 times for 2, 2, 2); the count stays
    that of the finer.
    """
    total = len(morton_bits(grid_shape))
    for low in range(total + 1):
        spec = _block_spec(low, total, data_encoding)
        if region_is_shard_block(grid_shape, chunk_size, size, region, spec):
            return spec
    return None
