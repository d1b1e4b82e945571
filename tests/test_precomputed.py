"""--format precomputed and the reader for any precomputed source, proven against TensorStore."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest

from conftest import convert_stack, random_stack, reference_pyramid, write_planes
from precomputed_tif import open_volume
from precomputed_tif.geometry import chunks_in, full_box
from precomputed_tif.serve import PrecomputedApp
from precomputed_tif.serve.config import resolve_source
from servekit import call
from test_serve_cli import RunningServer

CASES = [
    ("raw", "uint16", False, False),
    ("raw", "float32", True, False),
    ("png", "uint16", False, False),
    ("png", "uint8", False, False),
    ("jpeg", "uint8", False, False),
    ("compressed_segmentation", "uint32", True, True),
    ("compressed_segmentation", "uint64", False, True),
]


def _stack(dtype: str, segmentation: bool) -> np.ndarray:
    if segmentation:
        rng = np.random.default_rng(7)
        labels = np.array([0, 5, 2**31 + 9, 77], np.uint64 if dtype == "uint64" else np.uint32)
        return rng.choice(labels, size=(18, 27, 35), p=[0.5, 0.2, 0.2, 0.1])
    if dtype == "uint8":
        # smooth content: jpeg is lossy, and a smooth image keeps its error small
        z, y, x = np.mgrid[0:18, 0:27, 0:35]
        return (100 + 60 * np.sin(x / 6) * np.cos(y / 5) + z).astype(np.uint8)
    return random_stack((18, 27, 35), dtype, seed=3)


def _make(
    tmp_path, encoding, dtype, gzip_files, segmentation, sharded_bytes=None, shard_encoding="gzip"
):
    stack = _stack(dtype, segmentation)
    source = write_planes(tmp_path / "planes", stack)
    dest = str(tmp_path / "out")
    from precomputed_tif import Budget, convert, create_store, open_source, plan_pyramid
    from precomputed_tif.executors import SerialExecutor

    src = open_source(source)
    pyramid = plan_pyramid(
        src.size,
        src.dtype.name,
        voxel_size_nm=(1000, 1000, 1000),
        chunk_size=(16, 16, 16),
        segmentation=segmentation,
        encoding=encoding,
    )
    if sharded_bytes:
        pyramid = pyramid.sharded(sharded_bytes, shard_encoding)
    store = create_store("precomputed", dest, pyramid, gzip_files=gzip_files)
    convert(src, store, executor=SerialExecutor(), budget=Budget(1, 2**30))
    return stack, dest, pyramid.n_levels


def _close(got, want, encoding):
    if encoding == "jpeg":
        assert np.abs(got.astype(int) - want.astype(int)).mean() < 3
    else:
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("encoding, dtype, gzip_files, segmentation", CASES)
def test_every_encoding_round_trips(tmp_path, encoding, dtype, gzip_files, segmentation):
    stack, dest, levels = _make(tmp_path, encoding, dtype, gzip_files, segmentation)
    expected = reference_pyramid(stack, levels, segmentation)
    volume = open_volume(dest)
    assert volume.format == "precomputed"
    info = json.loads((tmp_path / "out" / "info").read_text())
    assert {s["encoding"] for s in info["scales"]} == {encoding}
    names = os.listdir(tmp_path / "out" / "1_1_1")
    assert all(n.endswith(".gz") for n in names) == gzip_files
    for level in range(1, levels + 1):
        _close(volume[level][:, :, :], expected[level - 1], encoding)


@pytest.mark.parametrize("encoding, dtype, gzip_files, segmentation", CASES)
def test_tensorstore_reads_our_precomputed_output(
    tmp_path, encoding, dtype, gzip_files, segmentation
):
    """From the folder; gzip-file volumes through our server (.gz is an HTTP convention)."""
    ts = pytest.importorskip("tensorstore")
    stack, dest, levels = _make(tmp_path, encoding, dtype, gzip_files, segmentation)
    expected = reference_pyramid(stack, levels, segmentation)
    server = RunningServer("-d", dest, log="WARNING") if gzip_files else None
    kvstore = (
        {"driver": "http", "base_url": server.url + "/"}
        if server
        else {"driver": "file", "path": dest}
    )
    try:
        for level in range(levels):
            array = ts.open(
                {"driver": "neuroglancer_precomputed", "kvstore": kvstore, "scale_index": level}
            ).result()
            got = np.asarray(array.read().result())[..., 0]  # x, y, z, channel
            _close(got.transpose(2, 1, 0), expected[level], encoding)
    finally:
        if server:
            server.stop()


TS_CASES = [
    ("raw", "uint16", None),
    ("raw", "uint16", "sharded"),
    ("compressed_segmentation", "uint32", None),
    ("compressed_segmentation", "uint64", "sharded"),
    ("png", "uint8", None),
    ("jpeg", "uint8", "sharded"),
]


@pytest.mark.parametrize("encoding, dtype, sharding", TS_CASES)
def test_we_read_what_tensorstore_wrote(tmp_path, encoding, dtype, sharding):
    ts = pytest.importorskip("tensorstore")
    data = _stack(dtype, encoding == "compressed_segmentation").transpose(2, 1, 0)  # x, y, z
    scale: dict = {
        "encoding": encoding,
        "chunk_size": [16, 16, 8],
        "resolution": [4, 4, 40],
        "size": list(data.shape),
        "voxel_offset": [3, 5, 7],
    }
    if sharding:
        scale["sharding"] = {
            "@type": "neuroglancer_uint64_sharded_v1",
            "preshift_bits": 1,
            "hash": "murmurhash3_x86_128",
            "minishard_bits": 2,
            "shard_bits": 1,
            "minishard_index_encoding": "gzip",
            "data_encoding": "gzip",
        }
    if encoding == "compressed_segmentation":
        scale["compressed_segmentation_block_size"] = [8, 8, 4]
    spec = {
        "driver": "neuroglancer_precomputed",
        "kvstore": {"driver": "file", "path": str(tmp_path / "ts")},
        "multiscale_metadata": {
            "type": "segmentation" if "seg" in encoding else "image",
            "data_type": dtype,
            "num_channels": 1,
        },
        "scale_metadata": scale,
        "create": True,
    }
    array = ts.open(spec).result()
    region = array[..., 0]
    region.write(data).result()
    truth = np.asarray(region.read().result()).transpose(2, 1, 0)
    got = open_volume(str(tmp_path / "ts"))[1][:, :, :]
    np.testing.assert_array_equal(got, truth)


def test_reading_over_http_equals_reading_the_folder(tmp_path):
    stack = random_stack((20, 40, 48), "uint16", seed=12)
    dest = str(tmp_path / "tiff")
    convert_stack(write_planes(tmp_path / "planes", stack), dest, "tiff", chunk=(16, 16, 16))
    server = RunningServer("-d", dest, log="WARNING")
    try:
        remote = open_volume(f"precomputed://{server.url}")
        local = open_volume(dest)
        assert len(remote) == len(local) and remote.format == "precomputed"
        for level in range(1, len(local) + 1):
            np.testing.assert_array_equal(remote[level][:, :, :], local[level][:, :, :])
        np.testing.assert_array_equal(remote[1][3:17, 5:38, 1:47], stack[3:17, 5:38, 1:47])
    finally:
        server.stop()


def test_file_url(tmp_path):
    stack = random_stack((8, 16, 16), "uint8", seed=1)
    dest = str(tmp_path / "v")
    convert_stack(write_planes(tmp_path / "planes", stack), dest, "zarr", chunk=(8, 8, 8))
    np.testing.assert_array_equal(open_volume("file://" + dest)[1][:, :, :], stack)


def test_server_sends_stored_gzip_chunks_with_content_encoding(tmp_path):
    stack, dest, _ = _make(tmp_path, "raw", "uint16", True, False)
    app = PrecomputedApp(single=resolve_source("", dest, None))
    volume = open_volume(dest)
    scale = volume.pyramid.scale(1)
    for _, box in list(chunks_in(full_box(scale.size), scale.chunk_size, scale.size))[:5]:
        zipped = call(app, f"/1_1_1/{box.chunk_name}", headers={"Accept-Encoding": "gzip"})
        assert zipped.status == 200 and zipped.headers["content-encoding"] == "gzip"
        import gzip

        raw = gzip.decompress(zipped.body)
        np.testing.assert_array_equal(
            np.frombuffer(raw, "<u2").reshape(box.numpy_shape), stack[box.numpy_slices()]
        )
        plain = call(app, f"/1_1_1/{box.chunk_name}")
        assert "content-encoding" not in plain.headers and plain.body == raw


SHARDED = [
    ("raw", "uint16", False),
    ("compressed_segmentation", "uint64", True),
    ("jpeg", "uint8", False),
    ("png", "uint16", False),
]


@pytest.mark.parametrize("encoding, dtype, segmentation", SHARDED)
def test_sharded_output_read_by_tensorstore_and_by_us(tmp_path, encoding, dtype, segmentation):
    ts = pytest.importorskip("tensorstore")
    # small shards: several shard files per level, each one task's block of chunks
    stack, dest, levels = _make(tmp_path, encoding, dtype, False, segmentation, 100_000)
    expected = reference_pyramid(stack, levels, segmentation)
    info = json.loads((tmp_path / "out" / "info").read_text())
    assert all(s["sharding"]["hash"] == "identity" for s in info["scales"])
    shard_files = [n for n in os.listdir(tmp_path / "out" / "1_1_1")]
    assert len(shard_files) > 1 and all(n.endswith(".shard") for n in shard_files)
    volume = open_volume(dest)
    for level in range(levels):
        array = ts.open(
            {
                "driver": "neuroglancer_precomputed",
                "kvstore": {"driver": "file", "path": dest},
                "scale_index": level,
            }
        ).result()
        got = np.asarray(array.read().result())[..., 0].transpose(2, 1, 0)
        _close(got, expected[level], encoding)
        _close(volume[level + 1][:, :, :], expected[level], encoding)


@pytest.mark.parametrize(
    "encoding, dtype, segmentation",
    [("raw", "uint16", False), ("compressed_segmentation", "uint32", True)],
)
def test_raw_shards_hold_the_chunks_as_they_are(tmp_path, encoding, dtype, segmentation):
    """``data_encoding: raw``: TensorStore, CloudVolume and we read it; bytes stay uncompressed."""
    ts = pytest.importorskip("tensorstore")
    cloudvolume = pytest.importorskip("cloudvolume")
    stack, dest, levels = _make(tmp_path, encoding, dtype, False, segmentation, 100_000, "raw")
    expected = reference_pyramid(stack, levels, segmentation)
    info = json.loads((tmp_path / "out" / "info").read_text())
    assert {s["sharding"]["data_encoding"] for s in info["scales"]} == {"raw"}
    shards = [(tmp_path / "out" / "1_1_1" / n).read_bytes() for n in os.listdir(dest + "/1_1_1")]
    assert len(shards) > 1
    if encoding == "raw":
        # the first chunk's little-endian bytes sit verbatim in one of the shard files
        first = np.ascontiguousarray(stack[:16, :16, :16], "<u2").tobytes()
        assert sum(first in shard for shard in shards) == 1
    volume = open_volume(dest)
    for level in range(levels):
        array = ts.open(
            {
                "driver": "neuroglancer_precomputed",
                "kvstore": {"driver": "file", "path": dest},
                "scale_index": level,
            }
        ).result()
        got = np.asarray(array.read().result())[..., 0].transpose(2, 1, 0)
        np.testing.assert_array_equal(got, expected[level])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vol = cloudvolume.CloudVolume("file://" + dest, mip=level, progress=False)
            cv = np.asarray(vol[:, :, :])[..., 0].transpose(2, 1, 0)
        np.testing.assert_array_equal(cv, expected[level])
        np.testing.assert_array_equal(volume[level + 1][:, :, :], expected[level])


def test_shard_data_encoding_on_the_command_line(tmp_path):
    from test_cli import assert_one_line_error, run_cli

    stack = random_stack((20, 40, 70), "uint16", seed=8)
    source = write_planes(tmp_path / "planes", stack)
    common = ["--source", source, "--format", "precomputed", "--chunk-size", "16,16,16"]
    result = run_cli(
        *common, "--dest", str(tmp_path / "out"), "--sharded", "--shard-data-encoding", "raw"
    )
    assert result.returncode == 0, result.stderr
    info = json.loads((tmp_path / "out" / "info").read_text())
    assert {s["sharding"]["data_encoding"] for s in info["scales"]} == {"raw"}
    volume = open_volume(str(tmp_path / "out"))
    for level, want in enumerate(reference_pyramid(stack, volume.pyramid.n_levels), start=1):
        np.testing.assert_array_equal(volume[level][:, :, :], want)
    unsharded = run_cli(*common, "--dest", str(tmp_path / "o2"), "--shard-data-encoding", "raw")
    assert_one_line_error(unsharded, "--shard-data-encoding", "--sharded")
    assert not (tmp_path / "o2" / "info").exists()


def test_sharded_levels_nest_in_one_stage(tmp_path):
    """A level-1 task also writes the level-2 and level-3 shards of its block: one stage, no
    reading back, each shard file of those levels the level-1 block downsampled."""
    ts = pytest.importorskip("tensorstore")
    from precomputed_tif import Budget, convert, create_store, open_source, plan_pyramid
    from precomputed_tif.executors import SerialExecutor
    from precomputed_tif.plan import plan_stages
    from precomputed_tif.sharding import ShardingSpec, block_voxels

    stack = random_stack((128, 128, 128), "uint16", seed=12)
    source = open_source(write_planes(tmp_path / "planes", stack))
    pyramid = plan_pyramid(
        source.size, "uint16", voxel_size_nm=(1, 1, 1), chunk_size=(16, 16, 16)
    ).sharded(1_300_000, "raw")  # level-1 shards of 4x4x4 chunks
    dest, levels = str(tmp_path / "out"), pyramid.n_levels
    convert(
        source,
        create_store("precomputed", dest, pyramid),
        executor=SerialExecutor(),
        budget=Budget(1, 1_300_000),
    )
    stages = plan_stages(pyramid, task_budget_bytes=1_300_000, n_workers=1)
    assert stages[0].first == 1 and stages[0].last >= 3
    blocks = [
        block_voxels(s.grid_shape, s.chunk_size, ShardingSpec.from_json(s.sharding_json or {}))
        for s in pyramid.scales[:3]
    ]
    assert blocks[1] == tuple(b // 2 for b in blocks[0]) and blocks[2] == tuple(
        b // 4 for b in blocks[0]
    )
    files = [len(os.listdir(os.path.join(dest, s.key))) for s in pyramid.scales[:3]]
    assert files[0] > 1 and files[0] == files[1] == files[2]
    for level, want in enumerate(reference_pyramid(stack, levels)):
        array = ts.open(
            {
                "driver": "neuroglancer_precomputed",
                "kvstore": {"driver": "file", "path": dest},
                "scale_index": level,
            }
        ).result()
        got = np.asarray(array.read().result())[..., 0].transpose(2, 1, 0)
        np.testing.assert_array_equal(got, want)


def test_sharded_through_our_server_and_over_http(tmp_path):
    stack, dest, levels = _make(tmp_path, "raw", "uint16", False, False, 200_000)
    server = RunningServer("-d", dest, log="WARNING")
    try:
        remote = open_volume(server.url)
        for level, want in enumerate(reference_pyramid(stack, levels), start=1):
            np.testing.assert_array_equal(remote[level][:, :, :], want)
    finally:
        server.stop()


# --- CloudVolume, the other common reader and writer ------------------------------------------

CV_CASES = [
    ("raw", "uint16", False, 0),
    ("raw", "uint16", False, 100_000),
    ("compressed_segmentation", "uint32", True, 0),
    ("jpeg", "uint8", False, 0),
]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("encoding, dtype, segmentation, sharded_bytes", CV_CASES)
def test_cloudvolume_reads_our_output(tmp_path, encoding, dtype, segmentation, sharded_bytes):
    cloudvolume = pytest.importorskip("cloudvolume")
    stack, dest, levels = _make(tmp_path, encoding, dtype, False, segmentation, sharded_bytes)
    expected = reference_pyramid(stack, levels, segmentation)
    for level in range(levels):
        vol = cloudvolume.CloudVolume("file://" + dest, mip=level, progress=False)
        got = np.asarray(vol[:, :, :])[..., 0].transpose(2, 1, 0)
        _close(got, expected[level], encoding)


@pytest.mark.filterwarnings("ignore")
def test_cloudvolume_reads_a_gzip_folder(tmp_path):
    """name.gz files are CloudVolume's own convention for folders: it reads them directly."""
    cloudvolume = pytest.importorskip("cloudvolume")
    stack, dest, levels = _make(tmp_path, "compressed_segmentation", "uint32", True, True)
    expected = reference_pyramid(stack, levels, True)
    assert all(n.endswith(".gz") for n in os.listdir(os.path.join(dest, "1_1_1")))
    for level in range(levels):
        vol = cloudvolume.CloudVolume("file://" + dest, mip=level, progress=False)
        got = np.asarray(vol[:, :, :])[..., 0].transpose(2, 1, 0)
        np.testing.assert_array_equal(got, expected[level])


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(
    "encoding, dtype, compress",
    [
        ("raw", "uint16", "gzip"),
        ("raw", "float32", False),
        ("compressed_segmentation", "uint64", False),
    ],
)
def test_we_read_what_cloudvolume_wrote(tmp_path, encoding, dtype, compress):
    cloudvolume = pytest.importorskip("cloudvolume")
    data = _stack(dtype, encoding == "compressed_segmentation").transpose(2, 1, 0)  # x, y, z
    info = cloudvolume.CloudVolume.create_new_info(
        num_channels=1,
        layer_type="segmentation" if "seg" in encoding else "image",
        data_type=dtype,
        encoding=encoding,
        resolution=[4, 4, 40],
        voxel_offset=[3, 5, 7],
        chunk_size=[16, 16, 8],
        volume_size=list(data.shape),
    )
    path = "file://" + str(tmp_path / "cv")
    vol = cloudvolume.CloudVolume(path, info=info, progress=False, compress=compress)
    vol.commit_info()
    vol[3 : 3 + data.shape[0], 5 : 5 + data.shape[1], 7 : 7 + data.shape[2]] = data
    if compress == "gzip":
        assert any(n.endswith(".gz") for n in os.listdir(tmp_path / "cv" / "4_4_40"))
    got = open_volume(str(tmp_path / "cv"))[1][:, :, :]
    np.testing.assert_array_equal(got, data.transpose(2, 1, 0))
