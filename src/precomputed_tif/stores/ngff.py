"""``--format ngff``: an OME-Zarr image, 0.4 on zarr v2, or 0.5 on zarr v3 with shards.

We write one 5-D array ``(t, c, z, y, x)`` per level at ``0``, ``1``, ... (the original NGFF
layout; ``c`` holds the pyramid's channels, one per chunk so a viewer loads each channel on its
own, and ``omero`` names and colours them) in Blosc-zstd chunks of the chunk size, every chunk
stored (all-zero ones too: a missing chunk then means a lost one, which ``--verify`` reports),
and the group metadata last, so an interrupted run is no image yet. With shards
(`Scale.shard_size`) one task assembles a whole shard and writes it once. Reading takes anyone's
OME-Zarr 0.1-0.5 through `_zarr.ZarrArray`: the space axes are the volume, every other axis is
read at index 0 (a ``c`` axis: every index, as the volume's channels), and a chunk never
written reads as the fill value.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from ..encodings import encode_chunk as encode_raw
from ..errors import StoreError
from ..geometry import Box
from ..locations import Location, open_location
from ..ome import AXES, OmeImage, group_attributes, ome_attributes, parse_image
from ..pyramid import Pyramid, Scale
from ._zarr import (
    ZARR_JSON,
    ZARRAY,
    ZATTRS,
    ZGROUP,
    ZarrArray,
    assemble_shard,
    encode_chunk,
    v2_array_json,
    v3_sharded_array_json,
)
from .base import INFO_NAME, ChunkStore, TaskWriter, display_window, load_json

NGFF_METADATA = (ZATTRS, ZGROUP, ZARRAY)  # hidden names a served OME-Zarr folder must show


def _json_bytes(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


def group_name(path: str) -> str:
    """The image's name: its folder's name without ``.ome.zarr`` / ``.zarr``."""
    name = os.path.basename(path.rstrip("/")) or "image"
    for suffix in (".ome.zarr", ".zarr", ".ngff"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def is_ngff(location: Location) -> bool:
    """Whether `location` holds an OME-Zarr image group (zarr v2 or v3)."""
    for name in (ZARR_JSON, ZATTRS):
        try:
            meta = load_json(location, name)
        except StoreError:
            return False
        if meta is None:
            continue
        attributes = meta.get("attributes", {}) if name == ZARR_JSON else meta
        return isinstance(attributes, dict) and ome_attributes(attributes) is not None
    return False


def ngff_folders(location: Location) -> set[str]:
    """The top folders of the levels an OME-Zarr image at `location` lists (none if it is not
    one): what a volume made by ``--format ngff`` holds besides its metadata."""
    try:
        store = NgffStore.open(location.url)
    except (StoreError, ValueError):
        return set()
    assert store.image is not None
    return {path.split("/")[0] for path in store.image.paths}


@dataclass(frozen=True, eq=False)
class NgffStore(ChunkStore):
    """An OME-Zarr image. `image` is what an existing group's metadata said (None: our own
    layout, derived from the pyramid, as a writer uses it)."""

    image: OmeImage | None = None
    channel_names: tuple[str, ...] = ()

    format_name = "ngff"
    remote_ok = True

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.pyramid, self.image, self.channel_names))

    @classmethod
    def open(cls, path: str) -> NgffStore:
        """The OME-Zarr image at a folder or URL, its pyramid read from the metadata."""
        location = open_location(path)
        meta = load_json(location, ZARR_JSON)
        attributes = (meta or {}).get("attributes") if meta else load_json(location, ZATTRS)
        if not isinstance(attributes, dict):
            raise StoreError(f"{path!r} has no zarr group metadata (.zattrs or zarr.json)")
        image = parse_image(attributes, path)
        arrays = [ZarrArray(location, p) for p in image.paths]
        pyramid = _pyramid_of(image, arrays, _old_info_resolution(location))
        store = cls(path, pyramid, image)
        store._arrays.update(enumerate(arrays, start=1))
        return store

    # --- layout -----------------------------------------------------------------------------
    @property
    def sharded(self) -> bool:
        return self.pyramid.scale(1).shard_size is not None

    @property
    def version(self) -> str:
        if self.image is not None:
            return self.image.version
        return "0.5" if self.sharded else "0.4"

    def dataset_path(self, level: int) -> str:
        return self.image.paths[level - 1] if self.image is not None else str(level - 1)

    def level_path(self, level: int) -> str:
        return os.path.join(self.path, *self.dataset_path(level).split("/"))

    @cached_property
    def location(self) -> Location:
        return open_location(self.path)

    @cached_property
    def _arrays(self) -> dict[int, ZarrArray]:
        return {}

    def array(self, level: int) -> ZarrArray:
        """The zarr array of `level` (1-based), opened once."""
        array = self._arrays.get(level)
        if array is None:
            array = self._arrays[level] = ZarrArray(self.location, self.dataset_path(level))
        return array

    def _space(self) -> tuple[int | None, int, int]:
        return self.image.space if self.image is not None else (2, 3, 4)

    def _channel_axis(self) -> int | None:
        if self.image is None:
            return AXES.index("c")
        return self.image.axes.index("c") if "c" in self.image.axes else None

    def _index(self, level: int, box: Box, channel: int = 0) -> tuple[int, ...]:
        """The n-D chunk position holding `box` (and `channel`); other axes at 0."""
        chunk = self.pyramid.scale(level).chunk_size
        ndim = len(self.image.axes) if self.image is not None else len(AXES)
        index = [0] * ndim
        for position, start, size in zip(self._space(), reversed(box.start), reversed(chunk)):
            if position is not None:
                index[position] = start // size
        c_axis = self._channel_axis()
        if channel and c_axis is not None:
            index[c_axis] = channel // self.array(level).chunks[c_axis]
        return tuple(index)

    # --- writing (our layout only) ----------------------------------------------------------
    def _array_json(self, level: int) -> dict[str, Any]:
        scale = self.pyramid.scale(level)
        shape = (1, self.pyramid.num_channels, *reversed(scale.size))
        chunks = (1, 1, *reversed(scale.chunk_size))
        dtype = self.pyramid.dtype
        if scale.shard_size is None:
            return v2_array_json(shape, chunks, dtype)
        shard = (1, 1, *reversed(scale.shard_size))
        return v3_sharded_array_json(shape, shard, chunks, dtype, AXES)

    def prepare_level(self, level: int) -> None:
        super().prepare_level(level)
        name = ZARR_JSON if self.sharded else ZARRAY
        self.files.write(f"{self.dataset_path(level)}/{name}", _json_bytes(self._array_json(level)))
        self._arrays.pop(level, None)

    def task_writer(self, level: int, task_index: int) -> TaskWriter:
        if self.sharded:
            return _ShardWriter(self, level)
        return super().task_writer(level, task_index)

    def full_chunk(self, level: int, data: np.ndarray) -> np.ndarray:
        """`data` as a whole 5-D chunk, padded with zeros (zarr stores edge chunks whole)."""
        cx, cy, cz = self.pyramid.scale(level).chunk_size
        if data.shape == (cz, cy, cx):
            return data.reshape(1, 1, cz, cy, cx)  # most chunks: no copy before the encoder's
        padded = np.zeros((1, 1, cz, cy, cx), data.dtype)
        padded[0, 0, : data.shape[0], : data.shape[1], : data.shape[2]] = data
        return padded

    def write_chunk(self, level: int, box: Box, data: np.ndarray) -> None:
        if self.sharded:
            raise StoreError("a sharded level is written a shard at a time (task_writer)")
        for channel, plane in enumerate(_channels_of(data)):
            index = "/".join(map(str, self._index(level, box, channel)))
            encoded = encode_chunk(self.full_chunk(level, plane))
            self.files.write(f"{self.dataset_path(level)}/{index}", encoded)

    def write_info(self) -> None:
        """The group metadata, last of all: until it exists the folder is no image."""
        name = group_name(self.path)
        windows = None if self.pyramid.is_segmentation else channel_windows(self)
        labels = self.channel_names or tuple(
            name if self.pyramid.num_channels == 1 else f"c{c}"
            for c in range(self.pyramid.num_channels)
        )
        attributes = group_attributes(self.pyramid, name, self.version, windows, labels)
        if self.version == "0.5":
            group = {"zarr_format": 3, "node_type": "group", "attributes": attributes}
            self.files.write(ZARR_JSON, _json_bytes(group))
            return
        self.files.write(ZGROUP, _json_bytes({"zarr_format": 2}))
        self.files.write(ZATTRS, _json_bytes(attributes))

    # --- reading ----------------------------------------------------------------------------
    def read_chunk(self, level: int, box: Box) -> np.ndarray | None:
        channels = self.pyramid.num_channels
        if channels > 1:
            parts = [self._read_channel(level, box, c) for c in range(channels)]
            if all(p is None for p in parts):
                return None
            fill = np.zeros(box.numpy_shape, self.pyramid.dtype)
            return np.stack([fill if p is None else p for p in parts], axis=3)
        return self._read_channel(level, box, 0)

    def _read_channel(self, level: int, box: Box, channel: int) -> np.ndarray | None:
        array = self.array(level)
        data = array.read_chunk(self._index(level, box, channel))
        if data is None:
            return None
        c_axis = self._channel_axis()
        if c_axis is not None and data.shape[c_axis] > 1:  # chunks holding several channels
            data = np.take(data, [channel % array.chunks[c_axis]], axis=c_axis)
        zyx = self._select_space(data)
        sz, sy, sx = box.numpy_shape
        return zyx[:sz, :sy, :sx].astype(self.pyramid.dtype, copy=False)

    def _select_space(self, data: np.ndarray) -> np.ndarray:
        """The (z, y, x) part of an n-D chunk: other axes at index 0, a missing z of size 1."""
        z, y, x = self._space()
        kept = [p for p in (z, y, x) if p is not None]
        picked = data[tuple(slice(None) if i in kept else 0 for i in range(data.ndim))]
        order = np.argsort(np.argsort(kept))  # where z, y, x went among the kept axes
        picked = picked.transpose(tuple(order))
        return picked if z is not None else picked[np.newaxis]

    def chunk_stamp(self, level: int, box: Box) -> tuple[int, ...] | None:
        """The stamp of the chunk's file (or shard); a chunk never written reads as fill."""
        stamps = [
            self.files.stamp(self.array(level).chunk_key(self._index(level, box, c)))
            for c in range(self.pyramid.num_channels)
        ]
        stamp = None if stamps[0] is None else tuple(v for s in stamps for v in (s or (-1,)))
        if stamp is None:
            stamp = self.files.stamp(f"{self.dataset_path(level)}/{ZARRAY}") or self.files.stamp(
                f"{self.dataset_path(level)}/{ZARR_JSON}"
            )
            return None if stamp is None else (-1, *stamp)
        return stamp

    def read_chunk_bytes(self, level: int, box: Box) -> bytes | None:
        data = self.read_chunk(level, box)
        if data is None:
            fill = self.array(level).fill_value
            channels = self.pyramid.num_channels
            shape = box.numpy_shape + ((channels,) if channels > 1 else ())
            data = np.full(shape, fill if isinstance(fill, (int, float)) else 0)
            data = data.astype(self.pyramid.dtype)
        return encode_raw(data, "raw")


class _ShardWriter(TaskWriter):
    """Collects the chunks of one task, which make exactly one shard, and writes it on close."""

    def __init__(self, store: NgffStore, level: int) -> None:
        super().__init__(store, level)
        self.ngff = store
        self.blobs: dict[int, dict[tuple[int, ...], bytes]] = {}
        self.shard: tuple[int, ...] | None = None

    def write_chunk(self, box: Box, data: np.ndarray) -> None:
        scale = self.ngff.pyramid.scale(self.level)
        assert scale.shard_size is not None
        per = [s // c for s, c in zip(scale.shard_size, scale.chunk_size)]
        grid = [a // c for a, c in zip(box.start, scale.chunk_size)]
        shard = tuple(g // p for g, p in zip(grid, per))
        if self.shard is not None and shard != self.shard:
            raise StoreError(f"a task of level {self.level} spans shards {self.shard}, {shard}")
        self.shard = shard
        x, y, z = (g % p for g, p in zip(grid, per))
        for channel, plane in enumerate(_channels_of(data)):
            encoded = encode_chunk(self.ngff.full_chunk(self.level, plane))
            self.blobs.setdefault(channel, {})[(0, 0, z, y, x)] = encoded

    def close(self) -> None:
        if self.shard is None:
            return
        scale = self.ngff.pyramid.scale(self.level)
        assert scale.shard_size is not None
        per = tuple(s // c for s, c in zip(scale.shard_size, scale.chunk_size))
        sx, sy, sz = self.shard
        for channel, blobs in self.blobs.items():
            name = f"{self.ngff.dataset_path(self.level)}/c/0/{channel}/{sz}/{sy}/{sx}"
            self.ngff.files.write(name, assemble_shard((1, 1, *reversed(per)), blobs))


def _channels_of(data: np.ndarray) -> list[np.ndarray]:
    """The (z, y, x) arrays of each channel of (z, y, x) or (z, y, x, c) data."""
    return [data] if data.ndim == 3 else [data[..., c] for c in range(data.shape[3])]


def channel_windows(store: ChunkStore) -> list[tuple[float, float]] | None:
    """`display_window` of each channel (one window for a one-channel volume)."""
    channels = store.pyramid.num_channels
    if channels == 1:
        window = display_window(store)
        return None if window is None else [window]
    windows = [display_window(store, channel=c) for c in range(channels)]
    return None if any(w is None for w in windows) else windows  # type: ignore[return-value]


# --- reading others' metadata ----------------------------------------------------------------
def _old_info_resolution(location: Location) -> tuple[float, float, float] | None:
    """The voxel size in the ``info`` file the original precomputed-tif wrote beside NGFF 0.2."""
    try:
        info = load_json(location, INFO_NAME)
        resolution = info["scales"][0]["resolution"] if info else None
        return None if resolution is None else tuple(float(r) for r in resolution)  # type: ignore
    except (StoreError, KeyError, TypeError, IndexError, ValueError):
        return None


def _pyramid_of(
    image: OmeImage, arrays: list[ZarrArray], old_resolution: tuple[float, float, float] | None
) -> Pyramid:
    """Neuroglancer's view of an OME image: one scale per dataset (resolutions from the
    metadata, or from the shapes), keyed ``2**i`` for dataset ``i`` whatever its factors."""
    z, y, x = image.space

    def xyz(values: tuple[int, ...]) -> tuple[int, int, int]:
        return (values[x], values[y], values[z] if z is not None else 1)

    dtypes = {a.dtype.newbyteorder("=").name for a in arrays}
    if len(dtypes) != 1:
        raise StoreError(f"the levels of an OME image differ in data type: {sorted(dtypes)}")
    first = xyz(arrays[0].shape)
    base = image.voxel_nm[0] or old_resolution or (1000.0, 1000.0, 1000.0)
    scales = []
    for level, array in enumerate(arrays):
        size = xyz(array.shape)
        given = image.voxel_nm[level] if image.voxel_nm[0] is not None else None
        resolution = given or tuple(b * max(1, round(f / s)) for b, f, s in zip(base, first, size))
        factor = 2**level  # dataset i is 2**i_2**i_2**i, as the original's server named it
        scales.append(
            Scale(
                key=f"{factor}_{factor}_{factor}",
                size=size,
                chunk_size=xyz(array.chunks),
                resolution_nm=tuple(float(r) for r in resolution),  # type: ignore[arg-type]
            )
        )
    channels = arrays[0].shape[image.axes.index("c")] if "c" in image.axes else 1
    return Pyramid(
        data_type=dtypes.pop(),
        scales=tuple(scales),
        volume_type="segmentation" if image.is_label else "image",
        num_channels=int(channels),
    )


__all__ = ["NGFF_METADATA", "NgffStore", "group_name", "is_ngff", "ngff_folders"]
