"""Reading precomputed volumes other tools wrote: voxel offsets, channels, folder-tree layouts.

TensorStore and CloudVolume write the volumes; numpy arrays written by hand are the reference.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import random_stack
from precomputed_tif import open_volume

# two scales, the second with its own offset (as a downsampled scale of a cropped volume has)
TS_SCALES = [
    {"key": "a", "size": [35, 27, 18], "voxel_offset": [100, 37, 5], "resolution": [4, 4, 40]},
    {"key": "b", "size": [18, 14, 9], "voxel_offset": [50, 18, 2], "resolution": [8, 8, 80]},
]


def _tensorstore_volume(ts, path: str) -> list[np.ndarray]:
    """Write TS_SCALES with TensorStore; returns each scale's data (z, y, x)."""
    stacks = []
    for index, scale in enumerate(TS_SCALES):
        data = random_stack(tuple(scale["size"][::-1]), "uint16", seed=20 + index)
        array = ts.open(
            {
                "driver": "neuroglancer_precomputed",
                "kvstore": {"driver": "file", "path": path},
                "multiscale_metadata": {"type": "image", "data_type": "uint16", "num_channels": 1},
                "scale_metadata": {
                    **scale,
                    "encoding": "raw",
                    "chunk_size": [16, 8, 4],
                },
                "create": True,
            }
        ).result()
        # TensorStore indexes from the offset's origin: the stored box starts at voxel_offset
        ox, oy, oz = scale["voxel_offset"]
        sx, sy, sz = scale["size"]
        array[ox : ox + sx, oy : oy + sy, oz : oz + sz, 0].write(data.transpose(2, 1, 0)).result()
        stacks.append(data)
    return stacks


def test_voxel_offset_from_tensorstore(tmp_path):
    ts = pytest.importorskip("tensorstore")
    path = str(tmp_path / "ts")
    stacks = _tensorstore_volume(ts, path)
    volume = open_volume(path)
    for level, (scale, data) in enumerate(zip(TS_SCALES, stacks), start=1):
        ours = volume[level]
        assert ours.voxel_offset == tuple(scale["voxel_offset"])
        assert ours.shape == data.shape
        # index 0 is the first stored voxel, whatever the offset
        np.testing.assert_array_equal(ours[:, :, :], data)
        np.testing.assert_array_equal(ours[3:8, 5:12, 7:15], data[3:8, 5:12, 7:15])
        # ... which TensorStore reads at the offset's coordinates
        ox, oy, oz = ours.voxel_offset
        theirs = ts.open(
            {
                "driver": "neuroglancer_precomputed",
                "kvstore": {"driver": "file", "path": path},
                "scale_index": level - 1,
            }
        ).result()
        window = np.asarray(theirs[ox + 7 : ox + 15, oy + 5 : oy + 12, oz + 3 : oz + 8, 0])
        np.testing.assert_array_equal(ours[3:8, 5:12, 7:15], window.transpose(2, 1, 0))


@pytest.mark.filterwarnings("ignore")
def test_voxel_offset_from_cloudvolume(tmp_path):
    cloudvolume = pytest.importorskip("cloudvolume")
    data = random_stack((12, 21, 30), "uint8", seed=5)  # z, y, x
    offset = (64, 9, 3)
    info = cloudvolume.CloudVolume.create_new_info(
        num_channels=1,
        layer_type="image",
        data_type="uint8",
        encoding="raw",
        resolution=[4, 4, 40],
        voxel_offset=list(offset),
        chunk_size=[16, 16, 8],
        volume_size=list(data.shape[::-1]),
    )
    path = "file://" + str(tmp_path / "cv")
    vol = cloudvolume.CloudVolume(path, info=info, progress=False)
    vol.commit_info()
    ox, oy, oz = offset
    vol[ox : ox + 30, oy : oy + 21, oz : oz + 12] = data.transpose(2, 1, 0)
    level = open_volume(str(tmp_path / "cv"))[1]
    assert level.voxel_offset == offset
    np.testing.assert_array_equal(level[:, :, :], data)
    cv_window = np.asarray(vol[ox + 4 : ox + 25, oy + 2 : oy + 11, oz + 1 : oz + 10])[..., 0]
    np.testing.assert_array_equal(level[1:10, 2:11, 4:25], cv_window.transpose(2, 1, 0))


def test_our_volumes_have_zero_offset(tmp_path):
    from conftest import convert_stack, write_planes

    stack = random_stack((6, 10, 12), "uint8", seed=2)
    dest = str(tmp_path / "v")
    convert_stack(write_planes(tmp_path / "planes", stack), dest, "zarr", chunk=(8, 8, 8))
    volume = open_volume(dest)
    assert all(level.voxel_offset == (0, 0, 0) for level in volume)
    info = json.loads((tmp_path / "v" / "info").read_text())
    assert [s["voxel_offset"] for s in info["scales"]] == [[0, 0, 0]] * len(volume)


# --- several channels: (z, y, x, c) ---------------------------------------------------------

CHANNEL_CASES = [
    ("raw", "uint16", 2, None),
    ("raw", "float32", 3, "sharded"),
    ("png", "uint8", 2, None),
    ("jpeg", "uint8", 3, None),
]


def _tensorstore_channels(ts, path, encoding, dtype, channels, sharding=None) -> np.ndarray:
    """A (10, 21, 30) volume of `channels` written by TensorStore; what it reads back (z, y, x,
    c)."""
    z, y, x = np.mgrid[0:10, 0:21, 0:30]
    # smooth, different per channel: jpeg is lossy, a smooth image keeps its error small
    data = np.stack(
        [(90 + 50 * np.sin(x / (4 + c)) * np.cos(y / 5) + 3 * z + 20 * c) for c in range(channels)],
        axis=-1,
    ).astype(dtype)  # z, y, x, c
    scale: dict = {
        "key": "1_1_1",  # the original client API (precomputed-save) names levels so
        "encoding": encoding,
        "chunk_size": [16, 8, 4],
        "resolution": [4, 4, 40],
        "size": [30, 21, 10],
        "voxel_offset": [0, 0, 0],
    }
    if sharding:
        scale["sharding"] = {
            "@type": "neuroglancer_uint64_sharded_v1",
            "preshift_bits": 0,
            "hash": "identity",
            "minishard_bits": 1,
            "shard_bits": 1,
            "minishard_index_encoding": "gzip",
            "data_encoding": "gzip",
        }
    array = ts.open(
        {
            "driver": "neuroglancer_precomputed",
            "kvstore": {"driver": "file", "path": path},
            "multiscale_metadata": {"type": "image", "data_type": dtype, "num_channels": channels},
            "scale_metadata": scale,
            "create": True,
        }
    ).result()
    array.write(data.transpose(2, 1, 0, 3)).result()  # TensorStore: x, y, z, c
    truth = np.asarray(array.read().result()).transpose(2, 1, 0, 3)  # what it decodes
    if encoding != "jpeg":
        np.testing.assert_array_equal(truth, data)
    return truth


@pytest.mark.parametrize("encoding, dtype, channels, sharding", CHANNEL_CASES)
def test_channels_written_by_tensorstore(tmp_path, encoding, dtype, channels, sharding):
    ts = pytest.importorskip("tensorstore")
    truth = _tensorstore_channels(ts, str(tmp_path / "ts"), encoding, dtype, channels, sharding)
    level = open_volume(str(tmp_path / "ts"))[1]
    assert level.shape == (10, 21, 30, channels) and level.ndim == 4 and level.channels == channels
    np.testing.assert_array_equal(level[:, :, :], truth)
    np.testing.assert_array_equal(level[2:7, 3:19, 5:27], truth[2:7, 3:19, 5:27])
    np.testing.assert_array_equal(level[4], truth[4])  # a z plane, every channel
    np.testing.assert_array_equal(level[2:7, 3:19, 5:27, 1], truth[2:7, 3:19, 5:27, 1])
    np.testing.assert_array_equal(level[:, 5, :, -1], truth[:, 5, :, -1])
    np.testing.assert_array_equal(np.asarray(level), truth)


# --- neuroglancer-scripts' folder tree: key/x0-x1/y0-y1/z0-z1 ---------------------------------


def _write_tree_volume(folder, data, chunk, *, gzipped, offset=(0, 0, 0), skip=()):
    """The layout neuroglancer-scripts writes by default ("flat": false, gzip on), by hand."""
    import gzip
    import os

    nz, ny, nx = data.shape
    info = {
        "@type": "neuroglancer_multiscale_volume",
        "type": "image",
        "data_type": data.dtype.name,
        "num_channels": 1,
        "scales": [
            {
                "key": "full",
                "size": [nx, ny, nz],
                "resolution": [1000, 1000, 1000],
                "voxel_offset": list(offset),
                "chunk_sizes": [list(chunk)],
                "encoding": "raw",
            }
        ],
    }
    os.makedirs(folder)
    (folder / "info").write_text(json.dumps(info))
    cx, cy, cz = chunk
    ox, oy, oz = offset
    written = 0
    for z0 in range(0, nz, cz):
        for y0 in range(0, ny, cy):
            for x0 in range(0, nx, cx):
                if (x0, y0, z0) in skip:
                    continue
                z1, y1, x1 = min(z0 + cz, nz), min(y0 + cy, ny), min(x0 + cx, nx)
                path = folder.joinpath(
                    "full", f"{x0 + ox}-{x1 + ox}", f"{y0 + oy}-{y1 + oy}", f"{z0 + oz}-{z1 + oz}"
                )
                path.parent.mkdir(parents=True, exist_ok=True)
                blob = np.ascontiguousarray(data[z0:z1, y0:y1, x0:x1]).astype("<u2").tobytes()
                if gzipped:
                    path = path.with_name(path.name + ".gz")
                    blob = gzip.compress(blob)
                path.write_bytes(blob)
                written += 1
    return written


@pytest.mark.parametrize("gzipped", [True, False])
def test_neuroglancer_scripts_folder_tree(tmp_path, gzipped):
    data = random_stack((13, 22, 37), "uint16", seed=9)
    skip = {(16, 8, 0)}  # a chunk never written reads as zeros, as in the flat layout
    assert _write_tree_volume(
        tmp_path / "ngs", data, (16, 8, 4), gzipped=gzipped, offset=(5, 0, 2), skip=skip
    )
    want = data.copy()
    want[0:4, 8:16, 16:32] = 0
    level = open_volume(str(tmp_path / "ngs"))[1]
    assert level.voxel_offset == (5, 0, 2)
    np.testing.assert_array_equal(level[:, :, :], want)
    np.testing.assert_array_equal(level[3:11, 2:20, 9:30], want[3:11, 2:20, 9:30])
    assert open_volume(str(tmp_path / "ngs")).format == "precomputed"


def test_precomputed_save_refuses_several_channels(tmp_path):
    import subprocess
    import sys

    from test_cli import assert_one_line_error

    ts = pytest.importorskip("tensorstore")
    _tensorstore_channels(ts, str(tmp_path / "ts"), "raw", "uint8", 2)
    done = subprocess.run(
        [sys.executable, "-m", "precomputed_tif.cli.save", "--url", str(tmp_path / "ts")]
        + ["--output", str(tmp_path / "z.tif"), "--coordinate", "3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_one_line_error(done, "2 channels")
    assert not (tmp_path / "z.tif").exists()
