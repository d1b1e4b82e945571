"""Boxes and chunk grids, in Neuroglancer's xyz order, with no I/O.

A `Box` is a half-open voxel range ``[start, stop)`` per axis, always x, y, z. numpy arrays are
always indexed (z, y, x); `Box.numpy_slices` and `Box.numpy_shape` are the only bridge between the
two orders, so nothing else has to remember which way round they go.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass

XYZ = tuple[int, int, int]

_CHUNK_NAME = re.compile(r"^(\d{1,18})-(\d{1,18})_(\d{1,18})-(\d{1,18})_(\d{1,18})-(\d{1,18})$")


@dataclass(frozen=True)
class Box:
    """A half-open box of voxels: ``start[i] <= v < stop[i]`` on each of x, y, z."""

    start: XYZ
    stop: XYZ

    @property
    def size(self) -> XYZ:
        return (
            self.stop[0] - self.start[0],
            self.stop[1] - self.start[1],
            self.stop[2] - self.start[2],
        )

    @property
    def numpy_shape(self) -> tuple[int, int, int]:
        """The (z, y, x) shape of an array holding this box."""
        sx, sy, sz = self.size
        return (sz, sy, sx)

    @property
    def voxels(self) -> int:
        sx, sy, sz = self.size
        return sx * sy * sz

    def is_empty(self) -> bool:
        return any(b <= a for a, b in zip(self.start, self.stop))

    def intersect(self, other: Box) -> Box:
        start = tuple(max(a, b) for a, b in zip(self.start, other.start))
        stop = tuple(min(a, b) for a, b in zip(self.stop, other.stop))
        return Box(start, stop)  # type: ignore[arg-type]

    def relative_to(self, origin: XYZ) -> Box:
        return Box(
            tuple(a - o for a, o in zip(self.start, origin)),  # type: ignore[arg-type]
            tuple(b - o for b, o in zip(self.stop, origin)),  # type: ignore[arg-type]
        )

    def numpy_slices(self) -> tuple[slice, slice, slice]:
        """Slices that cut this box out of a (z, y, x) array whose origin is voxel 0."""
        return (
            slice(self.start[2], self.stop[2]),
            slice(self.start[1], self.stop[1]),
            slice(self.start[0], self.stop[0]),
        )

    def scaled_down(self, factor: int | XYZ, bound: XYZ) -> Box:
        """The box covering this one at a level `factor` (one, or per axis) times coarser,
        clipped to `bound`."""
        f = _per_axis(factor)
        start = tuple(a // n for a, n in zip(self.start, f))
        stop = tuple(min(-(-b // n), lim) for b, n, lim in zip(self.stop, f, bound))
        return Box(start, stop)  # type: ignore[arg-type]

    def scaled_up(self, factor: int | XYZ, bound: XYZ) -> Box:
        """The box this one covers at a level `factor` (one, or per axis) times finer, clipped
        to `bound`."""
        f = _per_axis(factor)
        start = tuple(a * n for a, n in zip(self.start, f))
        stop = tuple(min(b * n, lim) for b, n, lim in zip(self.stop, f, bound))
        return Box(start, stop)  # type: ignore[arg-type]

    @property
    def chunk_name(self) -> str:
        """Neuroglancer's unsharded chunk name, ``x0-x1_y0-y1_z0-z1``."""
        (x0, y0, z0), (x1, y1, z1) = self.start, self.stop
        return f"{x0}-{x1}_{y0}-{y1}_{z0}-{z1}"

    @classmethod
    def from_chunk_name(cls, name: str) -> Box:
        """Parse ``x0-x1_y0-y1_z0-z1``; raises ValueError for anything else."""
        match = _CHUNK_NAME.match(name)
        if match is None:
            raise ValueError(f"chunk name {name!r} is not of the form x0-x1_y0-y1_z0-z1")
        x0, x1, y0, y1, z0, z1 = (int(g) for g in match.groups())
        return cls((x0, y0, z0), (x1, y1, z1))


def _per_axis(factor: int | XYZ) -> XYZ:
    return (factor, factor, factor) if isinstance(factor, int) else factor


def full_box(size: XYZ) -> Box:
    return Box((0, 0, 0), size)


def grid_shape(size: XYZ, chunk_size: XYZ) -> XYZ:
    """Number of chunks along x, y, z (edge chunks count)."""
    return (
        -(-size[0] // chunk_size[0]),
        -(-size[1] // chunk_size[1]),
        -(-size[2] // chunk_size[2]),
    )


def chunk_box(index: XYZ, chunk_size: XYZ, size: XYZ) -> Box:
    """The box of chunk `index` (grid coordinates), clipped to the volume `size`."""
    start = tuple(i * c for i, c in zip(index, chunk_size))
    stop = tuple(min(a + c, s) for a, c, s in zip(start, chunk_size, size))
    return Box(start, stop)  # type: ignore[arg-type]


def chunks_in(box: Box, chunk_size: XYZ, size: XYZ) -> Iterator[tuple[XYZ, Box]]:
    """Every chunk that intersects `box`, as (grid index, clipped chunk box), x fastest."""
    ranges = [
        range(box.start[i] // chunk_size[i], -(-min(box.stop[i], size[i]) // chunk_size[i]))
        for i in range(3)
    ]
    for gz, gy, gx in itertools.product(ranges[2], ranges[1], ranges[0]):
        index = (gx, gy, gz)
        yield index, chunk_box(index, chunk_size, size)
