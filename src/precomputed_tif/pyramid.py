"""What a volume looks like: its scales, and Neuroglancer's ``info`` file for them.

A `Pyramid` is plain frozen data. Level 1 is the full-resolution data under key ``1_1_1``; level
L has key ``R_R_R`` with R = 2**(L-1) and a size halved (rounding up) on every axis, as in the
original precomputed-tif. Reading and writing ``info`` happens here and nowhere else.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .errors import PlanError, StoreError
from .geometry import XYZ, grid_shape

SUPPORTED_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "float32")


@dataclass(frozen=True)
class Scale:
    """One resolution level of a volume (Neuroglancer's words, all xyz)."""

    key: str
    size: XYZ
    chunk_size: XYZ
    resolution_nm: tuple[float, float, float]
    voxel_offset: XYZ = (0, 0, 0)
    encoding: str = "raw"
    # the info's own JSON for these two: a sharding spec, and compressed_segmentation's blocks
    sharding: tuple[tuple[str, Any], ...] | None = None
    segmentation_block_size: XYZ | None = None
    # our own (not Neuroglancer's): voxels per zarr v3 shard of --format ngff --sharded, a block
    # of chunks one task writes whole; it appears only in the run record, never in an info file
    shard_size: XYZ | None = None

    @property
    def sharding_json(self) -> dict[str, Any] | None:
        return dict(self.sharding) if self.sharding is not None else None

    @property
    def grid_shape(self) -> XYZ:
        return grid_shape(self.size, self.chunk_size)

    @property
    def n_chunks(self) -> int:
        gx, gy, gz = self.grid_shape
        return gx * gy * gz

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "chunk_sizes": [list(self.chunk_size)],
            "encoding": self.encoding,
            "key": self.key,
            "resolution": [_plain_number(r) for r in self.resolution_nm],
            "size": list(self.size),
            "voxel_offset": list(self.voxel_offset),
        }
        if self.segmentation_block_size is not None:
            out["compressed_segmentation_block_size"] = list(self.segmentation_block_size)
        if self.sharding is not None:
            out["sharding"] = dict(self.sharding)
        if self.shard_size is not None:
            out["shard_size"] = list(self.shard_size)
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Scale:
        return cls(
            key=str(obj["key"]),
            size=_xyz(obj["size"]),
            chunk_size=_xyz(obj["chunk_sizes"][0]),
            resolution_nm=tuple(float(r) for r in obj["resolution"]),  # type: ignore[arg-type]
            voxel_offset=_xyz(obj.get("voxel_offset", [0, 0, 0])),
            encoding=str(obj.get("encoding", "raw")).lower(),
            sharding=tuple(sorted(obj["sharding"].items())) if obj.get("sharding") else None,
            segmentation_block_size=_xyz(obj["compressed_segmentation_block_size"])
            if obj.get("compressed_segmentation_block_size")
            else None,
            shard_size=_xyz(obj["shard_size"]) if obj.get("shard_size") else None,
        )


@dataclass(frozen=True)
class Pyramid:
    """A multi-resolution volume: dtype, kind and its scales, finest first."""

    data_type: str
    scales: tuple[Scale, ...]
    volume_type: str = "image"
    # values per voxel: several for an OME-Zarr c axis or an RGB precomputed volume
    num_channels: int = 1

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(self.data_type)

    @property
    def n_levels(self) -> int:
        return len(self.scales)

    def scale(self, level: int) -> Scale:
        """The scale of 1-based `level`."""
        return self.scales[level - 1]

    @property
    def is_segmentation(self) -> bool:
        return self.volume_type == "segmentation"

    def to_info(self) -> dict[str, Any]:
        return {
            "@type": "neuroglancer_multiscale_volume",
            "data_type": self.data_type,
            "num_channels": self.num_channels,
            "scales": [s.to_json() for s in self.scales],
            "type": self.volume_type,
        }

    def info_bytes(self) -> bytes:
        return (json.dumps(self.to_info(), indent=2) + "\n").encode()

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> Pyramid:
        try:
            scales = tuple(Scale.from_json(s) for s in info["scales"])
            data_type = str(info["data_type"]).lower()
            volume_type = str(info.get("type", "image"))
            num_channels = int(info.get("num_channels", 1))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise StoreError(f"info file is not a Neuroglancer volume info: {exc!r}") from exc
        if not scales:
            raise StoreError("info file lists no scales")
        if num_channels < 1:
            raise StoreError(f"info file has num_channels {num_channels}; expected 1 or more")
        return cls(data_type, scales, volume_type, num_channels)

    def with_levels(self, n_levels: int) -> Pyramid:
        return replace(self, scales=self.scales[:n_levels])

    def sharded(self, task_bytes: int, data_encoding: str = "gzip") -> Pyramid:
        """This pyramid with every scale sharded in blocks one task of `task_bytes` can fill.

        `data_encoding` is the shards' ``gzip`` or ``raw``; jpeg and png chunks are stored
        ``raw`` whatever it says (gzip barely shrinks them).
        """
        from .sharding import (
            SHARD_DATA_ENCODINGS,
            block_voxels,
            halved_region,
            nested_sharding,
            volume_sharding,
        )

        if data_encoding not in SHARD_DATA_ENCODINGS:
            raise PlanError(
                f"unknown shard data encoding {data_encoding!r}; expected "
                f"{' or '.join(SHARD_DATA_ENCODINGS)}"
            )
        scales = []
        region: XYZ | None = None  # a finer level's shard block, seen at this level
        for level, scale in enumerate(self.scales, start=1):
            encoding = "raw" if scale.encoding in ("jpeg", "png") else data_encoding
            spec = None
            if region is not None:
                spec = nested_sharding(
                    scale.grid_shape, scale.chunk_size, scale.size, region, data_encoding=encoding
                )
            if spec is None:
                region = None
                cx, cy, cz = scale.chunk_size
                chunk_bytes = cx * cy * cz * self.dtype.itemsize
                # a task holds its block, and (above level 1) the 8 times larger block it is
                # made from
                read_factor = 2.25 if level == 1 else 9.25
                spec, _ = volume_sharding(
                    scale.grid_shape,
                    chunk_bytes,
                    max(chunk_bytes, int(task_bytes / read_factor)),
                    data_encoding=encoding,
                )
            # this level's task region: its own shard block, or the finer one's it nests in
            here = region or block_voxels(scale.grid_shape, scale.chunk_size, spec)
            coarser = self.scales[level].size if level < len(self.scales) else None
            region = halved_region(here, scale.size, coarser) if coarser else None
            scales.append(replace(scale, sharding=tuple(sorted(spec.to_json().items()))))
        return replace(self, scales=tuple(scales))

    def zarr_sharded(self, task_bytes: int) -> Pyramid:
        """This pyramid with every scale in zarr v3 shards: blocks of chunks as large as one task
        of `task_bytes` can make whole, grown along x first, then y, then z, so that level-1
        tasks read whole rows of the planes (as the unsharded planner prefers)."""
        scales = []
        for level, scale in enumerate(self.scales, start=1):
            chunk_bytes = math.prod(scale.chunk_size) * self.dtype.itemsize
            read_factor = 2.25 if level == 1 else 9.25  # as for precomputed shards above
            limit = max(chunk_bytes, int(task_bytes / read_factor))
            block = [1, 1, 1]
            for axis in range(3):
                while block[axis] < scale.grid_shape[axis]:
                    wider = block.copy()
                    wider[axis] = min(block[axis] * 2, scale.grid_shape[axis])
                    if math.prod(wider) * chunk_bytes > limit:
                        break
                    block = wider
            size = tuple(c * b for c, b in zip(scale.chunk_size, block))
            scales.append(replace(scale, shard_size=size))  # type: ignore[arg-type]
        return replace(self, scales=tuple(scales))


def max_levels(size: XYZ) -> int:
    """Levels until every axis is one voxel (each level halves, rounding up)."""
    return 1 + max((s - 1).bit_length() for s in size)


def plan_pyramid(
    size: XYZ,
    dtype: str,
    *,
    voxel_size_nm: tuple[float, float, float],
    chunk_size: XYZ = (64, 64, 64),
    levels: int | None = None,
    segmentation: bool = False,
    encoding: str = "raw",
) -> Pyramid:
    """The pyramid the converter writes for a stack of `size` voxels (xyz).

    With `levels` None, levels are added until the coarsest fits in one chunk. `encoding` is
    the Neuroglancer chunk encoding (it matters to ``--format precomputed`` only).
    """
    from .encodings import DEFAULT_SEGMENTATION_BLOCK, check_encoding

    check_encoding(encoding, np.dtype(dtype).name)
    if np.dtype(dtype).name not in SUPPORTED_DTYPES:
        raise PlanError(
            f"data type {np.dtype(dtype).name} is not supported; "
            f"expected one of {', '.join(SUPPORTED_DTYPES)}"
        )
    if any(c < 1 for c in chunk_size):
        raise PlanError(f"chunk size {chunk_size} must be positive on every axis")
    if any(s < 1 for s in size):
        raise PlanError(f"volume size {size} must be at least one voxel on every axis")
    if levels is not None and levels < 1:
        raise PlanError(f"--levels {levels} must be at least 1")
    most = max_levels(size)
    if levels is not None and levels > most:
        raise PlanError(
            f"--levels {levels} is more than a {'x'.join(map(str, size))} volume can have: level "
            f"{most} is already 1x1x1, so give --levels {most} or less (or leave it out: levels "
            "then stop when the coarsest fits in one chunk)"
        )
    scales = []
    level_size = size
    level = 1
    while True:
        factor = 2 ** (level - 1)
        scales.append(
            Scale(
                key=f"{factor}_{factor}_{factor}",
                size=level_size,
                chunk_size=chunk_size,
                resolution_nm=tuple(v * factor for v in voxel_size_nm),
                encoding=encoding,
                segmentation_block_size=DEFAULT_SEGMENTATION_BLOCK
                if encoding == "compressed_segmentation"
                else None,
            )
        )
        fits_one_chunk = all(s <= c for s, c in zip(level_size, chunk_size))
        if (levels is not None and level >= levels) or (levels is None and fits_one_chunk):
            break
        level_size = tuple(-(-s // 2) for s in level_size)  # type: ignore[assignment]
        level += 1
    return Pyramid(
        data_type=np.dtype(dtype).name,
        scales=tuple(scales),
        volume_type="segmentation" if segmentation else "image",
    )


def _xyz(values: Any) -> XYZ:
    x, y, z = (int(v) for v in values)
    return (x, y, z)


def _plain_number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)
