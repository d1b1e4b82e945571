"""What a volume looks like: its scales, and Neuroglancer's ``info`` file for them.

A `Pyramid` is plain frozen data. Level 1 is the full-resolution data under key ``1_1_1``; each
next level halves (rounding up) the axes its factor says, 2 or 1 per axis, and its key names the
factor from level 1 per axis: ``R_R_R`` with R = 2**(L-1) by default, as in the original
precomputed-tif; ``2_2_1``, ``4_4_1``, ``8_8_2`` for anisotropic voxels. Reading and writing
``info`` happens here and nowhere else.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
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
    # how each level is made from the one before (downsample.METHODS); None: the default for the
    # volume type. Ours, not Neuroglancer's: it is kept in the run record, never in an info file
    downsampling: str | None = None

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

    @property
    def downsample_method(self) -> str:
        """How each level is made from the one before: mean, mode, max, min or stride."""
        from .downsample import default_method

        return self.downsampling or default_method(self.is_segmentation)

    def factor(self, level: int) -> XYZ:
        """How many voxels of level ``level - 1`` make one of `level`, per axis (xyz); (1, 1, 1)
        for level 1. Read from the resolutions, so it holds for any info that doubles them."""
        if level == 1:
            return (1, 1, 1)
        finer, coarser = self.scale(level - 1), self.scale(level)
        x, y, z = (
            max(1, round(c / f)) if f > 0 else 1
            for f, c in zip(finer.resolution_nm, coarser.resolution_nm)
        )
        return (x, y, z)

    def factor_between(self, finer: int, coarser: int) -> XYZ:
        """Voxels of level `finer` per voxel of level `coarser`, per axis (xyz)."""
        out = [1, 1, 1]
        for level in range(finer + 1, coarser + 1):
            out = [a * b for a, b in zip(out, self.factor(level))]
        return (out[0], out[1], out[2])

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
                # a task holds its block, and (above level 1) the larger block it is made from
                read_factor = _read_factor(self, level)
                spec, _ = volume_sharding(
                    scale.grid_shape,
                    chunk_bytes,
                    max(chunk_bytes, int(task_bytes / read_factor)),
                    data_encoding=encoding,
                )
            # this level's task region: its own shard block, or the finer one's it nests in
            here = region or block_voxels(scale.grid_shape, scale.chunk_size, spec)
            coarser = self.scales[level].size if level < len(self.scales) else None
            region = (
                halved_region(here, scale.size, coarser, self.factor(level + 1))
                if coarser
                else None
            )
            scales.append(replace(scale, sharding=tuple(sorted(spec.to_json().items()))))
        return replace(self, scales=tuple(scales))

    def zarr_sharded(self, task_bytes: int) -> Pyramid:
        """This pyramid with every scale in zarr v3 shards: blocks of chunks as large as one task
        of `task_bytes` can make whole, grown along x first, then y, then z, so that level-1
        tasks read whole rows of the planes (as the unsharded planner prefers).

        A level whose finer level's shard, downsampled, is a whole number of its chunks takes
        that as its shard instead: the task that makes a finer shard then makes this level's
        shard too, from the voxels it holds (as precomputed ``--sharded`` nests its levels),
        instead of a later stage reading the finer level back and decoding it."""
        scales: list[Scale] = []
        for level, scale in enumerate(self.scales, start=1):
            if scales:
                nested = nested_shard_size(scales[-1], scale, self.factor(level))
                if nested is not None:
                    scales.append(replace(scale, shard_size=nested))
                    continue
            chunk_bytes = math.prod(scale.chunk_size) * self.dtype.itemsize
            limit = max(chunk_bytes, int(task_bytes / _read_factor(self, level)))
            block = [1, 1, 1]
            if level < len(self.scales):
                # two chunks along every axis the next level halves, where the budget allows:
                # the next level's shard can then nest in this one
                halves = self.factor(level + 1)
                pair = [min(f, g) for f, g in zip(halves, scale.grid_shape)]
                if math.prod(pair) * chunk_bytes <= limit:
                    block = pair
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


def nested_shard_size(finer: Scale, scale: Scale, factor: XYZ) -> XYZ | None:
    """The shard of `scale` that is `finer`'s shard downsampled by `factor`, or None when that
    is not a whole number of `scale`'s chunks along an axis it does not cover."""
    from .sharding import halved_region

    assert finer.shard_size is not None
    region = halved_region(finer.shard_size, finer.size, scale.size, factor)
    if region is None:
        return None
    shard = []
    for r, n, c in zip(region, scale.size, scale.chunk_size):
        if r >= n:  # the whole axis: the shard covers it in whole chunks
            shard.append(-(-n // c) * c)
        elif r % c == 0:
            shard.append(r)
        else:
            return None
    return (shard[0], shard[1], shard[2])


def _read_factor(pyramid: Pyramid, level: int) -> float:
    """A task's memory per voxel of its block: the block (and chunk buffers), and above level
    1 the finer block it is made from (8 times larger for factors 2, 2, 2)."""
    return 2.25 if level == 1 else 1.25 + math.prod(pyramid.factor(level))


# --factors auto: halve every axis whose voxel size, halved, is at most this many times the
# coarsest axis's voxel size; when no axis is, halve all three
AUTO_THRESHOLD = 1.5
AUTO = "auto"
Factors = XYZ | str  # 1 or 2 per axis (xyz), or AUTO


def check_factors(factors: Factors) -> None:
    """PlanError unless `factors` is AUTO or 1 or 2 per axis, not all 1."""
    if factors == AUTO:
        return
    if (
        not isinstance(factors, tuple)
        or len(factors) != 3
        or any(f not in (1, 2) for f in factors)
        or factors == (1, 1, 1)
    ):
        raise PlanError(
            f"--factors {_factors_text(factors)}: expected 1 or 2 per axis (x,y,z), at least one "
            "2 (e.g. 2,2,1 keeps z), or auto"
        )


def _factors_text(factors: Any) -> str:
    if isinstance(factors, (tuple, list)):
        return ",".join(str(f) for f in factors)
    return str(factors)


def auto_factor(voxel_size: tuple[float, float, float]) -> XYZ:
    """The factor --factors auto takes from a level of `voxel_size` (any unit, xyz) to the next.

    An axis is halved when its voxel, halved, is at most `AUTO_THRESHOLD` times the coarsest
    axis's voxel; when no axis is, all three are (voxels are then near-isotropic).
    """
    coarsest = max(voxel_size)
    limit = AUTO_THRESHOLD * coarsest * (1 + 1e-9)  # sizes are exact; guard float round-off
    x, y, z = (2 if 2 * v <= limit else 1 for v in voxel_size)
    return (x, y, z) if 2 in (x, y, z) else (2, 2, 2)


def next_factor(factors: Factors, voxel_size: tuple[float, float, float]) -> XYZ:
    """The factor from a level of `voxel_size` to the next under `factors`."""
    if factors == AUTO:
        return auto_factor(voxel_size)
    assert isinstance(factors, tuple)
    return factors


def _level_sizes(
    size: XYZ, voxel_size: tuple[float, float, float], factors: Factors
) -> Iterator[tuple[XYZ, XYZ]]:
    """Each level's (size, factor from level 1), level 1 first, without end."""
    total = (1, 1, 1)
    while True:
        yield size, total
        step = next_factor(factors, tuple(v * t for v, t in zip(voxel_size, total)))  # type: ignore
        size = tuple(-(-s // f) for s, f in zip(size, step))  # type: ignore[assignment]
        total = tuple(t * f for t, f in zip(total, step))  # type: ignore[assignment]


def max_levels(
    size: XYZ,
    factors: Factors = (2, 2, 2),
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> int:
    """Levels until every axis the factors halve is one voxel (halving rounds up)."""
    halved = [True] * 3 if factors == AUTO else [f == 2 for f in factors]
    for level, (level_size, _) in enumerate(_level_sizes(size, voxel_size, factors), start=1):
        if all(s == 1 for s, h in zip(level_size, halved) if h):
            return level
    raise AssertionError("unreachable")  # pragma: no cover


def _smallest(factors: Factors) -> str:
    if factors == AUTO or factors == (2, 2, 2):
        return "1x1x1"
    return "1 voxel on every axis --factors halves"


def plan_pyramid(
    size: XYZ,
    dtype: str,
    *,
    voxel_size_nm: tuple[float, float, float],
    chunk_size: XYZ = (64, 64, 64),
    levels: int | None = None,
    segmentation: bool = False,
    encoding: str = "raw",
    factors: Factors = (2, 2, 2),
    downsampling: str | None = None,
) -> Pyramid:
    """The pyramid the converter writes for a stack of `size` voxels (xyz).

    Each level halves the axes `factors` says (1 or 2 per axis, xyz, or ``"auto"``: see
    `auto_factor`). With `levels` None, levels are added until the coarsest fits in one chunk
    along every axis the factors halve. `encoding` is the Neuroglancer chunk encoding (it matters
    to ``--format precomputed`` only); `downsampling` a method of `downsample.METHODS` (None: mode
    for a segmentation, else mean).
    """
    from .downsample import METHODS
    from .encodings import DEFAULT_SEGMENTATION_BLOCK, check_encoding

    check_encoding(encoding, np.dtype(dtype).name)
    if isinstance(factors, list):
        factors = tuple(factors)
    check_factors(factors)
    if np.dtype(dtype).name not in SUPPORTED_DTYPES:
        raise PlanError(
            f"data type {np.dtype(dtype).name} is not supported; "
            f"expected one of {', '.join(SUPPORTED_DTYPES)}"
        )
    if downsampling is not None and downsampling not in METHODS:
        raise PlanError(f"--downsample {downsampling}: expected one of {', '.join(METHODS)}")
    if downsampling == "mode" and np.dtype(dtype).kind == "f":
        raise PlanError(
            f"--downsample mode picks the most frequent value of each block, but {dtype} voxels "
            "almost never repeat, so it would keep an arbitrary one: use mean, max, min or stride"
        )
    if any(c < 1 for c in chunk_size):
        raise PlanError(f"chunk size {chunk_size} must be positive on every axis")
    if any(s < 1 for s in size):
        raise PlanError(f"volume size {size} must be at least one voxel on every axis")
    if levels is not None and levels < 1:
        raise PlanError(f"--levels {levels} must be at least 1")
    most = max_levels(size, factors, voxel_size_nm)
    if levels is not None and levels > most:
        raise PlanError(
            f"--levels {levels} is more than a {'x'.join(map(str, size))} volume can have: level "
            f"{most} is already {_smallest(factors)}, so give --levels {most} or less "
            "(or leave it out: levels then stop when the coarsest fits in one chunk)"
        )
    halved = [True] * 3 if factors == AUTO else [f == 2 for f in factors]
    scales = []
    for level, (level_size, total) in enumerate(
        _level_sizes(size, voxel_size_nm, factors), start=1
    ):
        scales.append(
            Scale(
                key="_".join(map(str, total)),
                size=level_size,
                chunk_size=chunk_size,
                resolution_nm=tuple(v * f for v, f in zip(voxel_size_nm, total)),  # type: ignore
                encoding=encoding,
                segmentation_block_size=DEFAULT_SEGMENTATION_BLOCK
                if encoding == "compressed_segmentation"
                else None,
            )
        )
        fits_one_chunk = all(s <= c for s, c, h in zip(level_size, chunk_size, halved) if h)
        if (levels is not None and level >= levels) or (levels is None and fits_one_chunk):
            break
    return Pyramid(
        data_type=np.dtype(dtype).name,
        scales=tuple(scales),
        volume_type="segmentation" if segmentation else "image",
        downsampling=downsampling,
    )


def _xyz(values: Any) -> XYZ:
    x, y, z = (int(v) for v in values)
    return (x, y, z)


def _plain_number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)
