"""Our reader against folders the ORIGINAL chunglabmit/precomputed-tif wrote.

The folders in tests/data/original were written by the original tool (see tests/data/README.md for
the commands and commits). Every level read through `precomputed_tif.open_volume` is compared with
a numpy reference pyramid computed here from the input planes, independently of our package.

The original has a chunk-count bug: it counts chunks per axis at level L as
``(X // R + c - 1) // c`` (floor of X / R) while the level's size is ceil(X / R). When
``X // R`` is a multiple of the chunk size c but X % R != 0, the last chunk column of that level
is never written (no tiff file, no zarr chunk, no blockfs entry), and the next level then skips
that source chunk when averaging, so the voxels that would come only from it stay 0. Our reader
must read the unwritten chunks as zeros; the chunks the original did write are compared with what
the original computes (mean over the source voxels it had), which equals the true pyramid
wherever the bug does not reach. The stardist stack at chunk 16 does not hit the bug; the small
synthetic `bugshape` stack (17 x 18 x 19, chunk 8) does, at level 2 (x 8-9) and level 3 (x 4).
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from precomputed_tif import open_volume

DATA = Path(__file__).parent / "data"
ORIGINAL = DATA / "original"
STARDIST_PLANES = DATA / "stacks" / "stardist_img3d" / "planes"
BUGSHAPE_PLANES = ORIGINAL / "bugshape_planes"
LEVELS = 3


def load_planes(folder: Path) -> np.ndarray:
    return np.stack([tifffile.imread(p) for p in sorted(folder.glob("*.tif"))])


def mean_of_existing(previous: np.ndarray, exists: np.ndarray) -> np.ndarray:
    """2x2x2 integer mean (floor, unsigned) of the source voxels that exist.

    `exists` marks the source voxels taken into account: all of them for the true pyramid, only
    those in chunks the original wrote for the original's pyramid. An output voxel without any
    source voxel is 0.
    """
    nz, ny, nx = previous.shape
    shape = ((nz + 1) // 2, (ny + 1) // 2, (nx + 1) // 2)
    total = np.zeros(shape, np.uint64)
    count = np.zeros(shape, np.uint64)
    for dz, dy, dx in itertools.product((0, 1), repeat=3):
        part = previous[dz::2, dy::2, dx::2].astype(np.uint64)
        mask = exists[dz::2, dy::2, dx::2]
        sz, sy, sx = part.shape
        total[:sz, :sy, :sx] += np.where(mask, part, np.uint64(0))
        count[:sz, :sy, :sx] += mask.astype(np.uint64)
    out = np.zeros(shape, np.uint64)
    out[count > 0] = total[count > 0] // count[count > 0]
    return out.astype(previous.dtype)


def reference_level(previous: np.ndarray) -> np.ndarray:
    """The true next level: every output voxel from the source voxels of its (clipped) window."""
    nz, ny, nx = previous.shape
    out = np.zeros(((nz + 1) // 2, (ny + 1) // 2, (nx + 1) // 2), previous.dtype)
    for z in range(out.shape[0]):
        for y in range(out.shape[1]):
            window = previous[2 * z : 2 * z + 2, 2 * y : 2 * y + 2].astype(np.uint64)
            for x in range(out.shape[2]):
                voxels = window[:, :, 2 * x : 2 * x + 2]
                out[z, y, x] = int(voxels.sum()) // voxels.size
    return out


def chunk_ranges(size: int, chunk: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk, size)) for start in range(0, size, chunk)]


def original_chunk_count(extent: int, level: int, chunk: int) -> int:
    """How many chunks the original writes along one axis (its floor-based count)."""
    return (extent // 2 ** (level - 1) + chunk - 1) // chunk


def original_pyramid(
    planes: np.ndarray, chunk_xyz: tuple[int, int, int], levels: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """What the original stores per level: (values, mask of voxels in chunks it wrote)."""
    zyx_chunk = chunk_xyz[::-1]
    result = []
    values = planes
    exists = np.ones(planes.shape, bool)
    for level in range(1, levels + 1):
        if level > 1:
            values = mean_of_existing(values, exists)
            nz, ny, nx = (
                original_chunk_count(extent, level, c) * c
                for extent, c in zip(planes.shape, zyx_chunk)
            )
            exists = np.zeros(values.shape, bool)
            exists[:nz, :ny, :nx] = True
            values = np.where(exists, values, 0).astype(planes.dtype)
        result.append((values, exists))
    return result


def stack_and_chunk(name: str) -> tuple[np.ndarray, tuple[int, int, int]]:
    if name.startswith("stardist"):
        return load_planes(STARDIST_PLANES), (16, 16, 16)
    return load_planes(BUGSHAPE_PLANES), (8, 8, 8)


CASES = [
    ("stardist_tiff", "tiff"),
    ("stardist_zarr", "zarr"),
    ("stardist_blockfs", "blockfs"),
    ("bugshape_tiff", "tiff"),
    ("bugshape_blockfs", "blockfs"),
]


def test_reference_pyramid_helpers_agree():
    """The vectorised mean (used for the original's pyramid) equals the explicit-loop one."""
    rng = np.random.default_rng(7)
    stack = rng.integers(0, 65535, (5, 6, 7), dtype=np.uint16, endpoint=True)
    np.testing.assert_array_equal(
        mean_of_existing(stack, np.ones(stack.shape, bool)), reference_level(stack)
    )
    # a hand-checked corner: the last x column of a 7-wide level averages 2x2x1 voxels
    expected = int(stack[4:5, 4:6, 6].astype(np.int64).sum()) // 2
    assert reference_level(stack)[2, 2, 3] == expected


@pytest.mark.parametrize("name,fmt", CASES)
def test_original_folder_reads_like_the_reference(name, fmt):
    planes, requested_chunk = stack_and_chunk(name)
    volume = open_volume(str(ORIGINAL / name))
    assert volume.format == fmt
    assert len(volume) == LEVELS

    truth = [planes]
    for _ in range(LEVELS - 1):
        truth.append(reference_level(truth[-1]))

    # the original's zarr ignores --chunk-size and always uses 64^3 chunks
    chunk = (64, 64, 64) if fmt == "zarr" else requested_chunk
    written = original_pyramid(planes, chunk, LEVELS)
    bug_voxels = 0
    for level in range(1, LEVELS + 1):
        scale = volume.pyramid.scales[level - 1]
        r = 2 ** (level - 1)
        assert scale.key == f"{r}_{r}_{r}"
        assert scale.size == truth[level - 1].shape[::-1]
        assert scale.chunk_size == chunk
        values, exists = written[level - 1]
        bug_voxels += int((~exists).sum())
        # where the original had every source voxel, its pyramid is the true one
        if level > 1:
            previous_complete = written[level - 2][1].all()
            if previous_complete:
                np.testing.assert_array_equal(values[exists], truth[level - 1][exists])

        data = volume[level]
        whole = data[:, :, :]
        assert whole.dtype == planes.dtype
        assert whole.shape == truth[level - 1].shape
        sx, sy, sz = scale.size
        for (x0, x1), (y0, y1), (z0, z1) in itertools.product(
            chunk_ranges(sx, chunk[0]), chunk_ranges(sy, chunk[1]), chunk_ranges(sz, chunk[2])
        ):
            got = data[z0:z1, y0:y1, x0:x1]
            if exists[z0:z1, y0:y1, x0:x1].all():
                # a chunk the original wrote: exactly what the original computed
                np.testing.assert_array_equal(got, values[z0:z1, y0:y1, x0:x1])
            else:
                # a chunk the original never wrote (the floor-count bug): zeros
                assert not exists[z0:z1, y0:y1, x0:x1].any()
                assert not got.any(), f"level {level} chunk x{x0} y{y0} z{z0} should be zeros"
        np.testing.assert_array_equal(whole, values)

    if name.startswith("stardist"):
        # the real stack does not hit the bug: every level is the true pyramid
        assert bug_voxels == 0
        for level in range(1, LEVELS + 1):
            np.testing.assert_array_equal(volume[level][:, :, :], truth[level - 1])
    else:
        assert bug_voxels > 0  # this folder is here to exercise the bug


def test_bugshape_bug_region_is_where_expected():
    """Pin the bug region so the emulation above cannot silently drift."""
    planes = load_planes(BUGSHAPE_PLANES)
    assert planes.shape == (19, 18, 17)
    for name in ("bugshape_tiff", "bugshape_blockfs"):
        volume = open_volume(str(ORIGINAL / name))
        level2 = volume[2][:, :, :]
        level3 = volume[3][:, :, :]
        assert level2.shape == (10, 9, 9) and level3.shape == (5, 5, 5)
        assert not level2[:, :, 8:].any()  # chunk x 8-9 of level 2 was never written
        assert level2[:, :, :8].all()
        # level 3 x = 4 comes only from level 2 x = 8, which the original skipped
        assert not level3[:, :, 4].any()
        assert level3[:, :, :4].all()
    if (ORIGINAL / "bugshape_tiff" / "2_2_2").exists():
        names = sorted(p.name for p in (ORIGINAL / "bugshape_tiff" / "2_2_2").iterdir())
        assert all(n.startswith("0-8_") for n in names)


@pytest.mark.parametrize("name", ["stardist_blockfs", "bugshape_blockfs"])
def test_original_blockfs_paths_are_absolute_and_gone(name):
    """The original recorded absolute block paths of the folder it wrote, which no longer exist:
    the reads above found the block files beside the directory files."""
    for level_dir in sorted((ORIGINAL / name).glob("*_*_*")):
        raw = (level_dir / "precomputed.blockfs").read_bytes()
        assert raw[:8] == b"BlockFS\0"
        length = int.from_bytes(raw[8:12], "little")
        metadata = json.loads(raw[16 : 16 + length])
        assert len(metadata["BlockFilenames"]) == 2
        for i, recorded in enumerate(metadata["BlockFilenames"]):
            assert os.path.isabs(recorded) and not os.path.exists(recorded)
            assert os.path.basename(recorded) == f"precomputed.blockfs.{i}"
            assert (level_dir / os.path.basename(recorded)).exists()
