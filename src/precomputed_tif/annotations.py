"""Point annotations as a Neuroglancer ``neuroglancer_annotations_v1`` source.

`write_points` builds the multi-level spatial index the spec describes: level 0 is one cell over
the bounds; each finer level halves the cells along the axes that keep them most isotropic; at
every level one emit probability ``min(1, limit / fullest cell)`` picks which of the remaining
points are listed there (so density stays uniform), the rest pass down, and each cell's list is
shuffled. ``limit`` in the info is each level's true fullest cell. ``by_id`` holds every point;
with ``sharded=True`` every index is written as ``neuroglancer_uint64_sharded_v1`` shards.
Everything is vectorised: the cost is a few sorts of the point array per level.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import PrecomputedTifError, SourceError, StoreExistsError
from .locations import write_atomically
from .sharding import choose_sharding, compressed_morton_codes, encode_blob, write_sharded

log = logging.getLogger(__name__)

ANNOTATION_TYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32")
_PROPERTY_ID = re.compile(r"^[a-z][a-zA-Z0-9_]*$")
DEFAULT_LIMIT = 5000


class PointsError(PrecomputedTifError, ValueError):
    """Points that cannot be written as given."""


@dataclass(frozen=True)
class WriteSummary:
    points: int
    clipped: int
    levels: int
    files: int


def narrowest_type(values: np.ndarray) -> str:
    """The smallest Neuroglancer property type holding every value exactly (float32 otherwise)."""
    values = np.asarray(values)
    numeric = values.size and np.issubdtype(values.dtype, np.number)
    if numeric and np.all(np.isfinite(values)) and np.all(values == np.round(values)):
        low, high = values.min(), values.max()
        for name in ("uint8", "int8", "uint16", "int16", "uint32", "int32"):
            info = np.iinfo(name)
            if info.min <= low and high <= info.max:
                return name
    return "float32"


def _record_dtype(properties: Mapping[str, np.ndarray]) -> tuple[np.dtype, list[str]]:
    """The on-disk record: xyz float32, then properties by alignment (4, 2, 1 bytes), padded.

    Within one alignment the given order is kept (the spec's rule), so listing the properties
    in the returned order gives the byte order too.
    """
    order = sorted(properties, key=lambda n: -np.dtype(properties[n].dtype).itemsize)
    fields: list[Any] = [("xyz", "<f4", (3,))]
    size = 12
    for name in order:
        dtype = np.dtype(properties[name].dtype).newbyteorder("<")
        fields.append(("p_" + name, dtype))
        size += dtype.itemsize
    if size % 4:
        fields.append(("_pad", f"V{4 - size % 4}"))
    return np.dtype(fields), order


def _level_shapes(extent: np.ndarray, voxel_size: np.ndarray) -> list[np.ndarray]:
    """Grid shapes from one cell down, halving the physically longest cell sides each time."""
    shapes = [np.ones(3, np.int64)]
    for _ in range(20):
        cell = extent * voxel_size / shapes[-1]
        split = cell >= cell.max() / 2
        shapes.append(shapes[-1] * np.where(split, 2, 1))
    return shapes


def write_points(
    points: np.ndarray,
    path: str,
    *,
    voxel_size_um: tuple[float, float, float] = (1.8, 1.8, 2.0),
    lower_bound: tuple[float, float, float] | None = None,
    upper_bound: tuple[float, float, float] | None = None,
    properties: Mapping[str, np.ndarray] | None = None,
    by_id: bool = True,
    sharded: bool = False,
    limit: int = DEFAULT_LIMIT,
    clip: bool = False,
    overwrite: bool = False,
    seed: int = 0,
) -> WriteSummary:
    """Write `points` (N x 3, x y z in voxels) as an annotation source in folder `path`.

    Ids are the points' positions in `points`. `properties` maps a property id to N values; each
    is stored in the narrowest type that holds it. The bounds are in voxels, the upper one
    exclusive; by default they enclose every point. Points outside given bounds are an error,
    or are dropped with ``clip=True``. An empty `points` writes a valid empty source.
    """
    points = np.asarray(points, np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise PointsError(f"points must be N x 3 (x, y, z); got an array of shape {points.shape}")
    if not np.all(np.isfinite(points)):
        bad = int(np.flatnonzero(~np.all(np.isfinite(points), axis=1))[0])
        raise PointsError(f"point {bad} has a NaN or infinite coordinate: {points[bad].tolist()}")
    props = _check_properties(properties or {}, len(points))
    ids = np.arange(len(points), dtype=np.uint64)
    lower = np.asarray(
        lower_bound
        if lower_bound is not None
        else np.minimum(0, np.floor(points.min(axis=0)))
        if len(points)
        else [0, 0, 0],
        np.float64,
    )
    upper = np.asarray(
        upper_bound
        if upper_bound is not None
        else np.floor(points.max(axis=0)) + 1
        if len(points)
        else lower + 1,
        np.float64,
    )
    if np.any(upper <= lower):
        raise PointsError(f"upper bound {upper.tolist()} must exceed lower bound {lower.tolist()}")
    inside = np.all((points >= lower) & (points < upper), axis=1)
    clipped = int(len(points) - inside.sum())
    if clipped and not clip:
        first = int(np.flatnonzero(~inside)[0])
        raise PointsError(
            f"{clipped} points lie outside the bounds [{lower.tolist()}, {upper.tolist()}), "
            f"the first is point {first} at {points[first].tolist()}; widen the bounds or clip"
        )
    if clipped:
        log.warning("dropped %d points outside the bounds", clipped)
        points, ids = points[inside], ids[inside]
        props = {name: values[inside] for name, values in props.items()}

    _prepare_folder(path, overwrite)
    # from here on the coordinates are what the files hold: float32, half the memory
    points = points.astype(np.float32)
    record_dtype, order = _record_dtype(props)
    records = np.zeros(len(points), record_dtype)
    records["xyz"] = points
    for name in order:
        records["p_" + name] = props[name]
    record_bytes = records.view(np.uint8).reshape(len(points), record_dtype.itemsize)

    staging = path.rstrip("/\\") + ".writing"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    files = 0
    spatial = []
    remaining = np.arange(len(points))
    rng = np.random.default_rng(seed)
    extent = upper - lower
    voxel_size = np.asarray(voxel_size_um, np.float64)
    shapes = _level_shapes(extent, voxel_size)
    for level, grid in enumerate(shapes):
        if level > 0 and len(remaining) == 0:
            break
        chunk = extent / grid
        linear = _cell_numbers(points, remaining, lower, chunk, grid)
        # counted by sorting, not bincount: deep grids have far more cells than points
        counts = np.unique(linear, return_counts=True)[1] if len(linear) else np.zeros(1)
        fullest = int(counts.max()) if len(counts) else 0
        probability = 1.0 if fullest <= limit else limit / fullest
        if level == len(shapes) - 1:
            probability = 1.0  # the finest level takes what is left (points piled on one spot)
        emit = (
            rng.random(len(remaining)) < probability
            if probability < 1
            else np.ones(len(remaining), bool)
        )
        chosen, chosen_cells = remaining[emit], linear[emit]
        remaining = remaining[~emit]
        # shuffle, then group by cell with a stable sort: each cell's list stays random
        shuffle = rng.permutation(len(chosen))
        chosen, chosen_cells = chosen[shuffle], chosen_cells[shuffle]
        by_cell = np.argsort(chosen_cells, kind="stable")
        chosen, chosen_cells = chosen[by_cell], chosen_cells[by_cell]
        keys, starts, lengths = np.unique(chosen_cells, return_index=True, return_counts=True)
        level_limit = max(1, int(lengths.max()) if len(lengths) else 1)
        # compressed as they are made when sharded: only the smaller copy is ever held
        encode = encode_blob if sharded else bytes
        blobs = [
            encode(_multi_annotation(record_bytes, ids, chosen[s : s + n]))
            for s, n in zip(starts, lengths)
        ]
        key = f"spatial{level}"
        entry: dict[str, Any] = {
            "key": key,
            "grid_shape": [int(g) for g in grid],
            "chunk_size": [float(c) for c in chunk],
            "limit": level_limit,
        }
        cell_index = (
            np.stack(np.unravel_index(keys, grid), axis=1)
            if len(keys)
            else np.zeros((0, 3), np.int64)
        )
        folder = os.path.join(staging, key)
        if sharded:
            codes = compressed_morton_codes(cell_index, [int(g) for g in grid])
            bits = sum(max(0, int(g - 1).bit_length()) for g in grid)
            spec = choose_sharding(
                len(keys),
                key_bits=bits,
                hashed=False,
                keys_per_minishard=8,
                keys_per_shard=512,
                data_encoding="gzip",
            )
            entry["sharding"] = spec.to_json()
            files += write_sharded(folder, spec, codes, blobs, encoded=True)
        else:
            os.makedirs(folder)
            for (cx, cy, cz), blob in zip(cell_index, blobs):
                with open(os.path.join(folder, f"{cx}_{cy}_{cz}"), "wb") as f:
                    f.write(blob)
            files += len(blobs)
        spatial.append(entry)
        log.info(
            "level %d: grid %s, %d points, limit %d", level, grid.tolist(), len(chosen), level_limit
        )

    by_id_entry: dict[str, Any] = {"key": "by_id"}
    if by_id and len(points):
        folder = os.path.join(staging, "by_id")
        if sharded:
            spec = choose_sharding(
                len(ids),
                hashed=True,
                keys_per_minishard=1024,
                keys_per_shard=65536,
                data_encoding="raw",
            )
            by_id_entry["sharding"] = spec.to_json()
            files += write_sharded(folder, spec, ids, record_bytes)
        else:
            os.makedirs(folder)
            for i, row in zip(ids, record_bytes):
                with open(os.path.join(folder, str(int(i))), "wb") as f:
                    f.write(row.tobytes())
            files += len(ids)
    info = {
        "@type": "neuroglancer_annotations_v1",
        "dimensions": {axis: [float(v), "um"] for axis, v in zip("xyz", voxel_size)},
        "lower_bound": lower.tolist(),
        "upper_bound": upper.tolist(),
        "annotation_type": "POINT",
        # listed in the records' byte order: readers that take the info order as the byte
        # order (CloudVolume) and those that sort by alignment (Neuroglancer) then agree
        "properties": [{"id": name, "type": str(props[name].dtype)} for name in order],
        "relationships": [],
        "by_id": by_id_entry,
        "spatial": spatial,
    }
    write_atomically(os.path.join(staging, "info"), json.dumps(info, indent=1).encode())
    _move_into_place(staging, path)
    return WriteSummary(len(points), clipped, len(spatial), files + 1)


def _cell_numbers(
    points: np.ndarray, members: np.ndarray, lower: np.ndarray, chunk: np.ndarray, grid: np.ndarray
) -> np.ndarray:
    """The C-order number of the grid cell holding each of `points[members]`, axis by axis."""
    linear = np.zeros(len(members), np.int64)
    for axis in range(3):
        cell = np.floor((points[members, axis] - lower[axis]) / chunk[axis]).astype(np.int64)
        np.clip(cell, 0, grid[axis] - 1, out=cell)
        linear *= int(grid[axis])
        linear += cell
    return linear


def _multi_annotation(record_bytes: np.ndarray, ids: np.ndarray, members: np.ndarray) -> bytes:
    count = np.array([len(members)], "<u8").tobytes()
    return count + record_bytes[members].tobytes() + ids[members].astype("<u8").tobytes()


def _check_properties(properties: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    out = {}
    for name, values in properties.items():
        if not _PROPERTY_ID.match(name):
            raise PointsError(
                f"property name {name!r} must start with a lowercase letter and hold only "
                "letters, digits and underscores"
            )
        values = np.asarray(values)
        if values.shape != (n,):
            raise PointsError(f"property {name!r} has {values.shape} values; expected ({n},)")
        if not np.issubdtype(values.dtype, np.number):
            raise PointsError(f"property {name!r} is not numeric")
        if not np.all(np.isfinite(values)):
            raise PointsError(f"property {name!r} has NaN or infinite values")
        kind = narrowest_type(values)
        out[name] = values.astype(kind)
    return out


def _prepare_folder(path: str, overwrite: bool) -> None:
    if os.path.isdir(path) and os.listdir(path):
        info = os.path.join(path, "info")
        is_annotations = False
        try:
            with open(info, "rb") as f:
                is_annotations = json.loads(f.read()).get("@type") == "neuroglancer_annotations_v1"
        except (OSError, ValueError, AttributeError):
            pass
        if not (overwrite and is_annotations):
            what = "an annotation source" if is_annotations else "other files"
            hint = "add --overwrite to replace it" if is_annotations else "choose an empty folder"
            raise StoreExistsError(f"--output-directory {path!r} already holds {what}; {hint}")
    elif os.path.exists(path) and not os.path.isdir(path):
        raise StoreExistsError(f"--output-directory {path!r} is a file")


def _move_into_place(staging: str, path: str) -> None:
    """Swap the finished source in, so a reader never sees half of it."""
    if os.path.isdir(path):
        old = path.rstrip("/\\") + ".old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(staging, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, path)


def read_points_file(path: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Points (N x 3) and extra numeric columns from a JSON list, a CSV with a header, or .npy."""
    lower = path.lower()
    try:
        if lower.endswith(".npy"):
            array = np.load(path, allow_pickle=False)
            return _as_points(array, path), {}
        if lower.endswith(".csv"):
            return _read_csv(path)
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot read points from {path!r}: {exc}") from exc
    if not isinstance(data, list):
        raise SourceError(f"{path!r} must hold a JSON list of [x, y, z] points")
    if not data:
        return np.zeros((0, 3)), {}
    try:
        array = np.array(data, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise SourceError(f"{path!r} must hold a JSON list of [x, y, z] numbers: {exc}") from exc
    return _as_points(array, path), {}


def _as_points(array: np.ndarray, path: str) -> np.ndarray:
    if array.ndim != 2 or array.shape[1] != 3:
        raise SourceError(f"{path!r} holds an array of shape {array.shape}; expected N x 3")
    if not np.issubdtype(array.dtype, np.number):
        raise SourceError(f"{path!r} does not hold numbers")
    return array.astype(np.float64)


def _read_csv(path: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    import csv

    with open(path, newline="") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise SourceError(f"{path!r} is empty; expected a header with x, y, z") from None
        rows = [row for row in reader if row]
    lowered = [h.lower() for h in header]
    missing = [axis for axis in "xyz" if axis not in lowered]
    if missing:
        raise SourceError(f"{path!r} has no column {missing[0]!r}; its header is {header}")
    try:
        table = np.array(rows, dtype=np.float64).reshape(len(rows), len(header))
    except ValueError as exc:
        raise SourceError(f"{path!r} has a non-numeric or missing value: {exc}") from exc
    points = table[:, [lowered.index(axis) for axis in "xyz"]]
    extra = {}
    for i, name in enumerate(header):
        if lowered[i] in ("x", "y", "z"):
            continue
        ident = re.sub(r"[^a-zA-Z0-9_]", "_", name)
        ident = ident[:1].lower() + ident[1:]
        if not ident or not ident[0].isalpha():
            ident = "p_" + ident
        extra[ident] = table[:, i]
    return points, extra


__all__ = ["DEFAULT_LIMIT", "PointsError", "WriteSummary", "read_points_file", "write_points"]
