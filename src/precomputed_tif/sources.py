"""Where voxels come from: plane sources (a TIFF glob or folder, one multi-page TIFF, numpy).

A source is small picklable data (paths, shape, dtype) so task records can carry it to other
processes; each `read` opens what it needs. Opening a source validates every plane's header up
front, so a bad file fails the run in seconds rather than hours in. Sources only read: they never
reorder, threshold or rescale voxels.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from .calibration import RecordedVoxelSize, recorded_voxel_size
from .errors import SourceError, StoreError
from .geometry import XYZ, Box
from .locations import FsspecLocation, is_remote
from .plane_numbers import NUMBER, warn_if_planes_missing, warn_if_unpadded_numbers
from .pyramid import SUPPORTED_DTYPES

log = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff")
ORDERS = ("natural", "alphabetical")


class PlaneSource(Protocol):
    """A z-stack of 2D planes that can be read a box at a time."""

    @property
    def size(self) -> XYZ: ...

    @property
    def dtype(self) -> np.dtype[Any]: ...

    @property
    def num_channels(self) -> int:
        """Values per voxel: 1 for grey planes; a `read` gives (z, y, x, c) when more."""
        ...

    @property
    def read_overhead_bytes(self) -> int:
        """Memory a `read` needs beyond its output (decoding buffers)."""
        ...

    def read(self, box: Box) -> np.ndarray:
        """The voxels of `box` as a native-endian (z, y, x) array, (z, y, x, c) for several
        channels."""
        ...

    def sub_stack(self, z0: int, z1: int) -> PlaneSource:
        """Planes z0:z1 as a source of their own (small to pickle into a task)."""
        ...


@dataclass(frozen=True)
class ArraySource:
    """Planes held in memory, for tests and notebooks. `array` is (z, y, x), or (z, y, x, c)
    for several channels."""

    array: np.ndarray

    @property
    def size(self) -> XYZ:
        z, y, x = self.array.shape[:3]
        return (x, y, z)

    @property
    def num_channels(self) -> int:
        return int(self.array.shape[3]) if self.array.ndim == 4 else 1

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.array.dtype

    read_overhead_bytes = 0

    def read(self, box: Box) -> np.ndarray:
        return np.ascontiguousarray(self.array[box.numpy_slices()])

    def sub_stack(self, z0: int, z1: int) -> ArraySource:
        return ArraySource(self.array[z0:z1])


@dataclass(frozen=True)
class ShapeSource:
    """A stack known only by its shape: plans a conversion before the data exists."""

    shape: XYZ
    data_type: str
    read_overhead_bytes: int = 0
    num_channels: int = 1

    @property
    def size(self) -> XYZ:
        return self.shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(self.data_type)

    def read(self, box: Box) -> np.ndarray:
        raise SourceError("a stack given only by its shape has no voxels to read")

    def sub_stack(self, z0: int, z1: int) -> ShapeSource:
        x, y, _ = self.shape
        return replace(self, shape=(x, y, z1 - z0))


@dataclass(frozen=True)
class TiffPlanesSource:
    """One 2D TIFF per plane, in the order given (`open_source` sorts the names).

    `stamps` says what each file was when opened (see `PlaneStamp`); task records leave it out.
    Planes of several `samples` per pixel (RGB) read as (z, y, x, samples), or as the one
    `channel` (sample) asked for.
    """

    paths: tuple[str, ...]
    plane_shape: tuple[int, int]
    data_type: str
    decode_threads: int = 2
    segment_bytes: int = 0
    stamps: tuple[PlaneStamp, ...] = ()
    samples: int = 1
    channel: int | None = None
    # what the header pass found of each local plane, so that workers need not parse it again
    layouts: tuple[KnownLayout | None, ...] = ()

    @property
    def size(self) -> XYZ:
        return (self.plane_shape[1], self.plane_shape[0], len(self.paths))

    @property
    def num_channels(self) -> int:
        return self.samples if self.channel is None else 1

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(self.data_type)

    @property
    def read_overhead_bytes(self) -> int:
        return self.segment_bytes * max(1, self.decode_threads)

    def sub_stack(self, z0: int, z1: int) -> TiffPlanesSource:
        return replace(self, paths=self.paths[z0:z1], stamps=(), layouts=self.layouts[z0:z1])

    def read(self, box: Box) -> np.ndarray:
        samples = (self.num_channels,) if self.num_channels > 1 else ()
        out = np.empty(box.numpy_shape + samples, self.dtype)
        (x0, y0, z0), (x1, y1, _) = box.start, box.stop

        def read_one(z: int) -> None:
            if self.samples == 1:
                known = self.layouts[z] if self.layouts else None
                _read_plane_region_into(self.paths[z], y0, y1, x0, x1, out[z - z0], known)
                return
            region = _read_samples(self.paths[z])[y0:y1, x0:x1]
            out[z - z0] = region if self.channel is None else region[..., self.channel]

        planes = range(box.start[2], box.stop[2])
        if self.decode_threads > 1 and len(planes) > 1:
            with ThreadPoolExecutor(self.decode_threads) as pool:
                list(pool.map(read_one, planes))
        else:
            for z in planes:
                read_one(z)
        return out


@dataclass(frozen=True)
class MultiPageTiffSource:
    """One TIFF file whose first series is a (z, y, x) stack.

    Channel c of plane z is page ``z * page_step + channel_pages[c]`` of the series (an ImageJ
    hyperstack keeps a channel's planes every C pages, or C blocks of Z pages); several channels
    read as (z, y, x, c). Pages of several `samples` per pixel (RGB) read as (z, y, x, samples),
    or as the one `channel` (sample) asked for.
    """

    path: str
    stack_shape: tuple[int, int, int]
    data_type: str
    stamps: tuple[PlaneStamp, ...] = ()
    page_step: int = 1
    channel_pages: tuple[int, ...] = (0,)
    samples: int = 1
    channel: int | None = None

    @property
    def size(self) -> XYZ:
        z, y, x = self.stack_shape
        return (x, y, z)

    @property
    def num_channels(self) -> int:
        if len(self.channel_pages) > 1:
            return len(self.channel_pages)
        return self.samples if self.channel is None else 1

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(self.data_type)

    @property
    def read_overhead_bytes(self) -> int:
        return self.stack_shape[1] * self.stack_shape[2] * self.dtype.itemsize * self.samples

    def sub_stack(self, z0: int, z1: int) -> PlaneSource:
        return _PageRange(self, z0, z1)

    def read(self, box: Box) -> np.ndarray:
        import tifffile

        samples = (self.num_channels,) if self.num_channels > 1 else ()
        out = np.empty(box.numpy_shape + samples, self.dtype)
        (x0, y0, z0), (x1, y1, z1) = box.start, box.stop
        if self.samples == 1 and _read_raw_pages(self, box, out):
            return out
        page_shape = self.stack_shape[1:] + ((self.samples,) if self.samples > 1 else ())
        many = len(self.channel_pages) > 1
        try:
            with tifffile.TiffFile(self.path) as tif:
                for z in range(z0, z1):
                    for c, first in enumerate(self.channel_pages):
                        key = z * self.page_step + first
                        plane = tif.asarray(series=0, key=key)
                        plane = plane.reshape(page_shape)[y0:y1, x0:x1]
                        if many:
                            out[z - z0, ..., c] = plane
                        elif self.channel is not None:
                            out[z - z0] = plane[..., self.channel]
                        else:
                            out[z - z0] = plane
        except (OSError, ValueError, IndexError) as exc:
            raise SourceError(f"cannot read {self.path!r} page {z}: {exc}") from exc
        return out


@dataclass(frozen=True)
class _PageRange:
    """Pages z0:z1 of a multi-page TIFF, renumbered from zero."""

    whole: MultiPageTiffSource
    z0: int
    z1: int

    @property
    def size(self) -> XYZ:
        x, y, _ = self.whole.size
        return (x, y, self.z1 - self.z0)

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.whole.dtype

    @property
    def num_channels(self) -> int:
        return self.whole.num_channels

    @property
    def read_overhead_bytes(self) -> int:
        return self.whole.read_overhead_bytes

    def read(self, box: Box) -> np.ndarray:
        return self.whole.read(
            Box(
                (box.start[0], box.start[1], box.start[2] + self.z0),
                (box.stop[0], box.stop[1], box.stop[2] + self.z0),
            )
        )

    def sub_stack(self, z0: int, z1: int) -> PlaneSource:
        return _PageRange(self.whole, self.z0 + z0, self.z0 + z1)


@dataclass(frozen=True)
class PlaneStamp:
    """What a plane file was when the run began, to notice a file changed before ``--resume``.

    `version` is the modification time in ns (an object store's ETag digest); `sample` a digest of
    a few KiB of content, taken only where times are too coarse to trust (whole seconds).
    """

    name: str
    size: int
    version: int
    sample: str = ""

    def to_json(self) -> list[Any]:
        return [self.name, self.size, self.version, self.sample]


SAMPLE_BYTES = 4096


def _stamp(path: str, stat: os.stat_result | None = None) -> PlaneStamp:
    """The plane's stamp: one stat (one HEAD request in an object store; `stat` when the caller
    has it), and a content sample when the file system keeps times in whole seconds."""
    name = os.path.basename(path)
    if is_remote(path):
        found = _remote_location(path).stamp("")
        if found is None:
            raise SourceError(f"plane {path!r} does not exist")
        return PlaneStamp(name, found[1], found[0])
    stat = os.stat(path) if stat is None else stat
    sample = ""
    if stat.st_mtime_ns % 10**9 == 0:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for where in (0, stat.st_size // 2, max(0, stat.st_size - SAMPLE_BYTES)):
                f.seek(where)
                digest.update(f.read(SAMPLE_BYTES))
        sample = digest.hexdigest()[:32]
    return PlaneStamp(name, stat.st_size, stat.st_mtime_ns, sample)


def file_size(path: str) -> int:
    """Bytes in a plane file, local or in an object store."""
    if is_remote(path):
        return int(_remote_fs(path).size(path))
    return os.path.getsize(path)


def _tiff(path: str) -> Any:
    """A TiffFile on a local path, or on an object-store file (read in blocks, on demand)."""
    import tifffile

    if is_remote(path):
        return tifffile.TiffFile(_remote_fs(path).open(path, "rb", block_size=2**22))
    return tifffile.TiffFile(path)


def _remote_fs(url: str) -> Any:
    return _remote_location(url).fs


def _remote_location(url: str) -> FsspecLocation:
    try:
        return FsspecLocation(url)
    except StoreError as exc:
        raise SourceError(str(exc)) from exc


def _read_raw_pages(source: MultiPageTiffSource, box: Box, out: np.ndarray) -> bool:
    """Reads `box` of an uncompressed, contiguous local stack with one ``preadv`` of just the
    rows asked for per page; False (nothing read) for any other file, which tifffile reads."""
    if is_remote(source.path):
        return False
    with _opened(source.path, "") as (fd, stat):
        stack = _raw_stack(source.path, stat.st_size, stat.st_mtime_ns, stat.st_ino)
        if stack is None:
            return False
        (x0, y0, z0), (x1, y1, z1) = box.start, box.stop
        page_bytes = stack.height * stack.width * stack.dtype.itemsize
        for z in range(z0, z1):
            for c, first in enumerate(source.channel_pages):
                page = z * source.page_step + first
                offset = stack.offset + page * page_bytes
                target = out[z - z0, ..., c] if len(source.channel_pages) > 1 else out[z - z0]
                _read_rows_into(fd, stack, offset, y0, y1, x0, x1, target, source.path)
        return True


@contextlib.contextmanager
def _opened(path: str, what: str) -> Iterator[tuple[int, os.stat_result]]:
    """A local file's descriptor and its `fstat`, closed on leaving; `what` names it in errors."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise SourceError(f"cannot read {what}{path!r}: {exc.strerror}") from exc
    try:
        yield fd, os.fstat(fd)
    finally:
        os.close(fd)


@functools.lru_cache(maxsize=64)
def _raw_stack(path: str, size: int, mtime_ns: int, inode: int) -> _RawLayout | None:
    """Where the first series of a multi-page TIFF is, when its pages are uncompressed one-sample
    planes stored one after another (what ImageJ and tifffile write): the offset of page 0."""
    try:
        with _tiff(path) as tif:
            series = tif.series[0]
            page = series.keyframe
            offset = series.dataoffset
            if offset is None or page.compression != 1 or page.samplesperpixel != 1:
                return None
            byteorder = "<" if tif.byteorder == "<" else ">"
            dtype = np.dtype(series.dtype).newbyteorder(byteorder)
            height, width = int(page.shape[-2]), int(page.shape[-1])
            pages = int(np.prod(series.shape)) // (height * width)
    except Exception as exc:  # tifffile raises many kinds for damaged files
        raise SourceError(f"cannot read {path!r}: {exc}") from exc
    if int(offset) + pages * height * width * dtype.itemsize > size:
        raise SourceError(f"{path!r} is truncated")
    return _RawLayout(int(offset), dtype, height, width)


@dataclass(frozen=True)
class _RawLayout:
    """Where uncompressed, contiguous pages are in a file: the first one's offset and the
    shape and dtype every page shares (one plane, or a whole multi-page stack)."""

    offset: int
    dtype: np.dtype[Any]  # in the file's byte order
    height: int
    width: int


# a plane file's size, modification time and inode, and its layout (None: it needs decoding)
KnownLayout = tuple[int, int, int, "_RawLayout | None"]


@functools.lru_cache(maxsize=8192)
def _raw_plane(path: str, size: int, mtime_ns: int, inode: int) -> _RawLayout | None:
    """The layout of an uncompressed plane, or None for one that needs decoding.

    Keyed by the file's size, time and inode, so a plane replaced mid-run is parsed again: a
    task reads a band of rows of each plane, so every plane is opened by many tasks, and parsing
    its header each time cost more than reading the band.
    """
    try:
        with _tiff(path) as tif:
            return _plane_layout(tif, path, size)
    except SourceError:
        raise
    except Exception as exc:  # tifffile raises many kinds for damaged files
        raise SourceError(f"cannot read plane {path!r}: {exc}") from exc


def _plane_layout(tif: Any, path: str, size: int) -> _RawLayout | None:
    """`_raw_plane` of an open TiffFile."""
    page = tif.pages.first
    if not (page.is_contiguous and page.compression == 1 and not page.is_tiled):
        return None
    byteorder = "<" if tif.byteorder == "<" else ">"
    dtype = np.dtype(page.dtype).newbyteorder(byteorder)
    offset = int(page.dataoffsets[0])
    height, width = int(page.shape[-2]), int(page.shape[-1])
    if offset + height * width * dtype.itemsize > size:
        raise SourceError(f"plane {path!r} is truncated")
    return _RawLayout(offset, dtype, height, width)


def _read_plane_region_into(
    path: str,
    y0: int,
    y1: int,
    x0: int,
    x1: int,
    out: np.ndarray,
    known: KnownLayout | None = None,
) -> None:
    """Rows y0:y1, columns x0:x1 of a one-plane TIFF into `out`.

    An uncompressed local plane is read with one ``preadv`` of just those rows, straight into
    `out` when they are whole rows in its byte order; anything else goes through tifffile. The
    layout `known` from the header pass is used while the file is still the one it describes.
    """
    if is_remote(path):
        out[...] = _read_plane_region(path, y0, y1, x0, x1)
        return
    with _opened(path, "plane ") as (fd, stat):
        key = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
        plane = known[3] if known is not None and known[:3] == key else _raw_plane(path, *key)
        if plane is None:
            out[...] = _read_plane_region(path, y0, y1, x0, x1)
            return
        _read_rows_into(fd, plane, plane.offset, y0, y1, x0, x1, out, path)


def _read_rows_into(
    fd: int,
    plane: _RawLayout,
    offset: int,
    y0: int,
    y1: int,
    x0: int,
    x1: int,
    out: np.ndarray,
    path: str,
) -> None:
    """Rows y0:y1, columns x0:x1 of the plane at `offset`: read straight into `out` when they
    are whole rows in its byte order, else through one buffer of those rows."""
    whole_rows = (
        x0 == 0 and x1 == plane.width and out.dtype == plane.dtype and out.flags.c_contiguous
    )
    rows = out if whole_rows else np.empty((y1 - y0, plane.width), plane.dtype)
    row_bytes = plane.width * plane.dtype.itemsize
    _read_exactly(fd, rows.data.cast("B"), offset + y0 * row_bytes, path)
    if not whole_rows:
        out[...] = rows[:, x0:x1]


def _read_exactly(fd: int, target: memoryview, offset: int, path: str) -> None:
    done = 0
    while done < len(target):
        try:
            got = _preadinto(fd, target[done:], offset + done)
        except OSError as exc:
            raise SourceError(f"cannot read plane {path!r}: {exc.strerror}") from exc
        if got == 0:
            raise SourceError(f"plane {path!r} is truncated")
        done += got


def _preadinto(fd: int, target: memoryview, offset: int) -> int:
    if hasattr(os, "preadv"):
        return os.preadv(fd, [target], offset)
    os.lseek(fd, offset, os.SEEK_SET)  # Windows has no preadv; the descriptor is this call's own
    data = os.read(fd, len(target))
    target[: len(data)] = data
    return len(data)


def _read_plane_region(path: str, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Rows y0:y1, columns x0:x1 of a one-plane TIFF in an object store or one that needs
    decoding, reading only the rows, strips or tiles needed."""
    try:
        with _tiff(path) as tif:
            page = tif.pages.first
            if page.is_contiguous and page.compression == 1 and not page.is_tiled:
                return _read_rows(tif, page, y0, y1, x0, x1)
            return _decode_segments(tif, page, y0, y1, x0, x1)
    except SourceError:
        raise
    except Exception as exc:  # tifffile and imagecodecs raise many kinds for damaged files
        raise SourceError(f"cannot read plane {path!r}: {exc}") from exc


def _read_samples(path: str) -> np.ndarray:
    """A whole plane of several samples per pixel (RGB) as (y, x, samples)."""
    try:
        with _tiff(path) as tif:
            page = tif.pages.first
            plane = page.asarray()
            if page.axes.startswith("S"):  # planar configuration: one plane per sample
                plane = np.moveaxis(plane, 0, -1)
            return np.asarray(plane, np.dtype(page.dtype).newbyteorder("="))
    except Exception as exc:  # tifffile and imagecodecs raise many kinds for damaged files
        raise SourceError(f"cannot read plane {path!r}: {exc}") from exc


def _read_rows(tif: Any, page: Any, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Rows y0:y1 of an uncompressed plane in a file object: one read of just those rows."""
    dtype = np.dtype(page.dtype).newbyteorder("<" if tif.byteorder == "<" else ">")
    width = page.shape[-1]
    fh = tif.filehandle
    fh.seek(int(page.dataoffsets[0]) + y0 * width * dtype.itemsize)
    raw = fh.read((y1 - y0) * width * dtype.itemsize)
    rows = np.frombuffer(raw, dtype).reshape(y1 - y0, width)
    return np.array(rows[:, x0:x1], dtype.newbyteorder("="))


def _decode_segments(tif: Any, page: Any, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    seg_h, seg_w = page.chunks[-2], page.chunks[-1]
    n_y, n_x = page.chunked[-2], page.chunked[-1]
    out = np.empty((y1 - y0, x1 - x0), np.dtype(page.dtype).newbyteorder("="))
    fh = tif.filehandle
    for iy in range(y0 // seg_h, min(n_y, -(-y1 // seg_h))):
        for ix in range(x0 // seg_w, min(n_x, -(-x1 // seg_w))):
            index = iy * n_x + ix
            fh.seek(page.dataoffsets[index])
            data = fh.read(page.databytecounts[index])
            if len(data) != page.databytecounts[index]:
                raise SourceError(f"plane {tif.filehandle.path!r} is truncated")
            segment, (_, _, sy, sx, _), _ = page.decode(data, index, jpegtables=page.jpegtables)
            if segment is None:
                raise SourceError(f"plane {tif.filehandle.path!r}: cannot decode segment {index}")
            segment = segment.reshape(segment.shape[-3], segment.shape[-2])
            dy0, dy1 = max(sy, y0), min(sy + segment.shape[0], y1)
            dx0, dx1 = max(sx, x0), min(sx + segment.shape[1], x1)
            if dy0 < dy1 and dx0 < dx1:
                out[dy0 - y0 : dy1 - y0, dx0 - x0 : dx1 - x0] = segment[
                    dy0 - sy : dy1 - sy, dx0 - sx : dx1 - sx
                ]
    return out


@dataclass(frozen=True)
class _PlaneHeader:
    shape: tuple[int, ...]
    dtype: str
    samples: int
    pages: int
    segment_bytes: int
    stamp: PlaneStamp
    layout: KnownLayout | None = None


def _read_header(path: str) -> _PlaneHeader:
    try:
        local = None if is_remote(path) else os.stat(path)
        stamp = _stamp(path, local)
        size = stamp.size
        with _tiff(path) as tif:
            page = tif.pages.first
            ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts)]
            if ends and max(ends) > size:
                raise SourceError(
                    f"{path!r} is truncated: its pixel data ends at byte {max(ends)}, "
                    f"the file has {size}"
                )
            return _PlaneHeader(
                shape=tuple(page.shape),
                dtype=np.dtype(page.dtype).name,
                samples=int(page.samplesperpixel),
                pages=len(tif.pages),
                segment_bytes=0
                if page.is_contiguous and page.compression == 1
                else int(np.prod(page.chunks)) * np.dtype(page.dtype).itemsize,
                stamp=stamp,
                layout=None if local is None or len(tif.pages) > 1 else _known(local, tif, path),
            )
    except SourceError:
        raise
    except Exception as exc:
        raise SourceError(f"{path!r} is not a readable TIFF file: {exc}") from exc


def _known(stat: os.stat_result, tif: Any, path: str) -> KnownLayout:
    return (stat.st_size, stat.st_mtime_ns, stat.st_ino, _plane_layout(tif, path, stat.st_size))


def _plane_yx(header: _PlaneHeader) -> tuple[int, int]:
    """The (y, x) shape of a plane, whatever its samples per pixel."""
    if header.samples > 1 and len(header.shape) == 3:
        shape = list(header.shape[:2] if header.shape[2] == header.samples else header.shape[1:])
    else:
        shape = list(header.shape)
    return (int(shape[0]), int(shape[1]))


def _check_plane(path: str, header: _PlaneHeader) -> None:
    if len(header.shape) != (2 if header.samples == 1 else 3):
        raise SourceError(
            f"plane {os.path.basename(path)!r} has shape {header.shape} with "
            f"{header.samples} samples per pixel; expected a plane of one or more samples"
        )
    if header.dtype not in SUPPORTED_DTYPES:
        raise SourceError(
            f"plane {os.path.basename(path)!r} has data type {header.dtype}; "
            f"expected one of {', '.join(SUPPORTED_DTYPES)}"
        )


def open_source(source: str, *, decode_threads: int = 2, order: str = "natural") -> PlaneSource:
    """Open `source`: a glob of TIFF planes, a folder of them, or one multi-page TIFF.

    Planes are taken in `order`: ``natural`` compares the numbers in names as numbers
    (``img_2`` before ``img_10``; the same as alphabetical for zero-padded names),
    ``alphabetical`` compares characters, as the original tool did. Every plane's header is
    checked; raises `SourceError` naming the first bad file.
    """
    if order not in ORDERS:
        raise SourceError(f"order {order!r} is not one of {', '.join(ORDERS)}")
    if is_remote(source):
        paths = _remote_planes(source)
    elif os.path.isdir(source):
        paths = [
            os.path.join(source, name)
            for name in os.listdir(source)
            if name.lower().endswith(TIFF_SUFFIXES)
        ]
        if not paths:
            raise SourceError(f"folder {source!r} holds no .tif or .tiff files")
        if len(paths) == 1:  # as a glob that matches one file: a stack of pages, or one plane
            return _open_multipage(paths[0])
    elif os.path.isfile(source) and not glob.has_magic(source):
        return _open_multipage(source)
    else:
        paths = [p for p in glob.glob(source) if os.path.isfile(p)]
        if not paths:
            raise SourceError(f"--source {source!r} matches no files")
        if len(paths) == 1:
            return _open_multipage(paths[0])
    paths = sort_planes(paths, order)
    _log_order(paths, order)
    return _open_planes(paths, decode_threads=decode_threads)


def sort_planes(paths: Sequence[str], order: str = "natural") -> list[str]:
    """`paths` in `order` (``natural`` or ``alphabetical``, see `open_source`)."""
    if order == "alphabetical":
        return sorted(paths)
    return sorted(paths, key=_natural_key)


def _natural_key(path: str) -> tuple[tuple[Any, ...], str]:
    # re.split with a group puts text at even and digit runs at odd places, so the tuples
    # compare str with str and int with int; the name itself breaks ties (img_01 vs img_1)
    parts = NUMBER.split(path)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), path


def _log_order(paths: Sequence[str], order: str) -> None:
    names = [os.path.basename(p) for p in paths]
    shown = ", ".join(names) if len(names) <= 6 else ", ".join(names[:3] + ["..."] + names[-3:])
    log.info("%d planes in %s order: %s", len(names), order, shown)
    if order == "alphabetical":
        warn_if_unpadded_numbers(paths)
    warn_if_planes_missing(paths)


def _remote_planes(source: str) -> list[str]:
    """The planes of a glob or folder in an object store, as URLs (not yet sorted)."""
    location = _remote_location(source)
    fs, root = location.fs, location.root
    try:
        if glob.has_magic(source):
            found = fs.glob(root)
        else:
            found = [p for p in fs.ls(root, detail=False) if p.lower().endswith(TIFF_SUFFIXES)]
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot list --source {source!r}: {exc}") from exc
    if not found:
        raise SourceError(f"--source {source!r} matches no files")
    return [fs.unstrip_protocol(p) for p in found]


def _open_planes(paths: Sequence[str], *, decode_threads: int) -> TiffPlanesSource:
    headers = _read_headers(paths)
    first_path, first = paths[0], headers[0]
    for path, header in zip(paths, headers):
        _check_plane(path, header)
        if header.pages > 1 and is_remote(path):
            raise SourceError(
                f"{os.path.basename(path)!r} holds {header.pages} pages: a multi-page TIFF is "
                "read from a local disk only (copy it there first); from an object store, give "
                "one plane per file"
            )
        if header.pages > 1:
            raise SourceError(
                f"{os.path.basename(path)!r} holds {header.pages} pages; give a multi-page TIFF "
                "alone as --source, or one plane per file"
            )
        if header.shape != first.shape or header.dtype != first.dtype:
            raise SourceError(
                f"plane {os.path.basename(path)!r} has shape {header.shape} and type "
                f"{header.dtype}; expected {first.shape} and {first.dtype} "
                f"like {os.path.basename(first_path)!r}"
            )
    segment_bytes = max(h.segment_bytes for h in headers)
    stamps = tuple(h.stamp for h in headers)
    return TiffPlanesSource(
        tuple(paths),
        _plane_yx(first),
        first.dtype,
        decode_threads,
        segment_bytes,
        stamps,
        samples=first.samples,
        layouts=tuple(h.layout for h in headers),
    )


HEADER_PROGRESS_SECONDS = 5.0


def _read_headers(paths: Sequence[str]) -> list[_PlaneHeader]:
    """Every plane's header, read by 8 threads, saying how far it got every few seconds: 5,000
    planes took 2.2-3.0 s on a local disk here (the parsing holds the GIL), and each read from
    a bucket waits on the network."""
    headers = []
    last_said = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        for header in pool.map(_read_header, paths):
            headers.append(header)
            if time.monotonic() - last_said >= HEADER_PROGRESS_SECONDS:
                log.info("read the headers of %d of %d planes", len(headers), len(paths))
                last_said = time.monotonic()
    return headers


def _open_multipage(path: str) -> PlaneSource:
    import tifffile

    header = _read_header(path)
    if header.pages == 1:
        _check_plane(path, header)
        return TiffPlanesSource(
            (path,),
            _plane_yx(header),
            header.dtype,
            1,
            header.segment_bytes,
            (header.stamp,),
            samples=header.samples,
        )
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape = tuple(int(s) for s in series.shape)
            axes = series.axes
            dtype = np.dtype(series.dtype).name
            in_series, pages = len(series.pages), len(tif.pages)
    except Exception as exc:
        raise SourceError(f"{path!r} is not a readable TIFF file: {exc}") from exc
    if in_series < pages:
        log.warning(
            "%s holds %d pages; only its first series (%d pages of shape %s) is converted",
            os.path.basename(path),
            pages,
            in_series,
            "x".join(map(str, shape)),
        )
    if dtype not in SUPPORTED_DTYPES:
        raise SourceError(
            f"{os.path.basename(path)!r} has data type {dtype}; "
            f"expected one of {', '.join(SUPPORTED_DTYPES)}"
        )
    return _hyperstack(path, shape, axes, dtype, header.stamp)


def _hyperstack(
    path: str, shape: tuple[int, ...], axes: str, dtype: str, stamp: PlaneStamp
) -> MultiPageTiffSource:
    """A series of pages (z and maybe channels; samples per pixel last) as a source whose
    `num_channels` counts its channels; `channel_sources` splits it."""
    kept = [(a, s) for a, s in zip(axes, shape) if s > 1 or a in "YX"]
    kept_axes = "".join(a for a, _ in kept)
    sizes = dict(kept)
    page_axes = kept_axes.replace("Y", "").replace("X", "").replace("S", "")
    z_axes = [a for a in page_axes if a != "C"]
    if not kept_axes.endswith(("YX", "YXS")) or len(z_axes) > 1 or ("C" in sizes and "S" in sizes):
        raise SourceError(
            f"{os.path.basename(path)!r} holds a stack of shape {shape} with axes {axes!r}; "
            "expected a z-stack of grey or RGB planes, or an ImageJ hyperstack of z and channels"
        )
    n_z = sizes[z_axes[0]] if z_axes else 1
    n_c = sizes.get("C", 1)
    # pages run through the page axes in order, the last fastest
    step, per_c = 1, 0
    if n_c > 1:
        c_first = not z_axes or page_axes.index("C") < page_axes.index(z_axes[0])
        step, per_c = (1, n_z) if c_first else (n_c, 1)
    return MultiPageTiffSource(
        path,
        (n_z, sizes["Y"], sizes["X"]),
        dtype,
        (stamp,),
        page_step=step,
        channel_pages=tuple(c * per_c for c in range(n_c)),
        samples=sizes.get("S", 1),
    )


def recorded_voxel_size_of(source: PlaneSource) -> RecordedVoxelSize | None:
    """The voxel size that the first file of `source` records (`calibration`), or None."""
    if isinstance(source, _PageRange):
        source = source.whole
    if isinstance(source, TiffPlanesSource) and source.paths:
        path = source.paths[0]
    elif isinstance(source, MultiPageTiffSource):
        path = source.path
    else:
        return None
    try:
        with _tiff(path) as tif:
            return recorded_voxel_size(tif)
    except Exception:  # the conversion reads the file again, and says what is wrong with it
        return None


def channel_sources(source: PlaneSource) -> list[PlaneSource]:
    """`source` split into one single-channel source per channel (itself when it has one)."""
    if source.num_channels == 1:
        return [source]
    if isinstance(source, MultiPageTiffSource) and len(source.channel_pages) > 1:
        return [replace(source, channel_pages=(page,)) for page in source.channel_pages]
    if isinstance(source, (MultiPageTiffSource, TiffPlanesSource)):
        return [replace(source, channel=c) for c in range(source.num_channels)]
    raise SourceError(f"cannot split a {type(source).__name__} into its channels")
