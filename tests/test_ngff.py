"""``--format ngff``: OME-Zarr pyramids read back by zarr-python, TensorStore and ome-zarr-py.

Every level is compared with the independent numpy reference pyramid; the metadata is checked
against the OME-Zarr 0.4 / 0.5 rules (units, per-level scale and half-voxel translation, omero
window); folders written by others (zarr-python, ome-zarr-py, the original's NGFF 0.2) are read.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import convert_stack, random_stack, reference_pyramid, write_planes
from precomputed_tif import Budget, convert, create_store, open_source, open_volume, plan_pyramid
from precomputed_tif.executors import SerialExecutor
from test_cli import assert_one_line_error
from test_convert import _tree_bytes, assert_every_chunk_equal

DTYPES = ["uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "float32"]
CLI = [sys.executable, "-m", "precomputed_tif.cli.convert"]


def _convert(tmp_path, stack, *, sharded=False, chunk=(8, 8, 8), task_bytes=2**30, **kw):
    source = write_planes(tmp_path / "planes", stack)
    dest = str(tmp_path / "out.ome.zarr")
    pyramid = _pyramid(source, chunk, sharded, task_bytes, kw.get("segmentation", False))
    store = create_store("ngff", dest, pyramid)
    convert(
        open_source(source),
        store,
        executor=SerialExecutor(),
        budget=Budget(n_workers=2, task_bytes=task_bytes),
    )
    return dest, pyramid


def _pyramid(source, chunk, sharded, task_bytes, segmentation):
    src = open_source(source)
    pyramid = plan_pyramid(
        src.size,
        src.dtype.name,
        voxel_size_nm=(1800, 1800, 2000),
        chunk_size=chunk,
        segmentation=segmentation,
    )
    return pyramid.zarr_sharded(task_bytes) if sharded else pyramid


def _zarr_levels(dest):
    import zarr

    group = zarr.open_group(dest, mode="r")
    paths = [d["path"] for d in _multiscales(dest)["datasets"]]
    return group, [group[p] for p in paths]


def _attributes(dest) -> dict:
    if os.path.exists(os.path.join(dest, "zarr.json")):
        with open(os.path.join(dest, "zarr.json")) as f:
            return json.load(f)["attributes"]["ome"]
    with open(os.path.join(dest, ".zattrs")) as f:
        return json.load(f)


def _multiscales(dest) -> dict:
    return _attributes(dest)["multiscales"][0]


@pytest.mark.parametrize("sharded", [False, True], ids=["v2", "v3-sharded"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_zarr_python_and_tensorstore_read_every_level(tmp_path, dtype, sharded):
    ts = pytest.importorskip("tensorstore")
    stack = random_stack((19, 23, 37), dtype, seed=DTYPES.index(dtype))
    dest, pyramid = _convert(tmp_path, stack, sharded=sharded, task_bytes=40_000)
    expected = reference_pyramid(stack, pyramid.n_levels)
    _, arrays = _zarr_levels(dest)
    assert len(arrays) == len(expected) == 4
    driver = "zarr3" if sharded else "zarr"
    for level, (array, want) in enumerate(zip(arrays, expected)):
        assert array.shape == (1, 1, *want.shape)
        assert array.metadata.zarr_format == (3 if sharded else 2)
        np.testing.assert_array_equal(array[0, 0], want, err_msg=f"zarr-python level {level}")
        spec = {"driver": driver, "kvstore": f"file://{dest}/{level}/"}
        got = ts.open(spec, read=True).result().read().result()
        np.testing.assert_array_equal(got[0, 0], want, err_msg=f"tensorstore level {level}")
    assert_every_chunk_equal(dest, expected)


@pytest.mark.parametrize("sharded", [False, True], ids=["v2", "v3-sharded"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 5), (17, 64, 65), (33, 10, 129)])
def test_odd_shapes_and_small_tasks(tmp_path, shape, sharded):
    import zarr

    stack = random_stack(shape, "uint16", seed=sum(shape))
    dest, pyramid = _convert(
        tmp_path, stack, chunk=(16, 16, 16), sharded=sharded, task_bytes=150_000
    )
    expected = reference_pyramid(stack, pyramid.n_levels)
    group = zarr.open_group(dest, mode="r")
    for level, want in enumerate(expected):
        np.testing.assert_array_equal(group[str(level)][0, 0], want)
    assert_every_chunk_equal(dest, expected)


def test_sharded_levels_nest_in_one_stage_and_read_back(tmp_path):
    """A task that makes a level-1 shard also makes the shards of the next levels from the
    voxels it holds (their shards are its shard downsampled), as precomputed --sharded does;
    on an odd shape every level must still read back as the reference through TensorStore."""
    from precomputed_tif.plan import plan_stages

    ts = pytest.importorskip("tensorstore")
    stack = random_stack((37, 45, 70), "uint16", seed=9)
    dest, pyramid = _convert(tmp_path, stack, sharded=True, task_bytes=60_000)
    stages = plan_stages(pyramid, task_budget_bytes=60_000, n_workers=2)
    nested = [stage for stage in stages if stage.last > stage.first]
    assert nested, stages
    for stage in nested:
        for level in range(stage.first + 1, stage.last + 1):
            finer, scale = pyramid.scale(level - 1), pyramid.scale(level)
            for f, s, n, c in zip(finer.shard_size, scale.shard_size, scale.size, scale.chunk_size):
                assert s == f // 2 or s >= n, (level, finer.shard_size, scale.shard_size)
                assert s % c == 0
    expected = reference_pyramid(stack, pyramid.n_levels)
    for level, want in enumerate(expected):
        spec = {"driver": "zarr3", "kvstore": f"file://{dest}/{level}/"}
        got = ts.open(spec, read=True).result().read().result()
        np.testing.assert_array_equal(got[0, 0], want, err_msg=f"level {level}")
    assert_every_chunk_equal(dest, expected)


def test_v2_metadata_follows_ome_zarr_04(tmp_path):
    stack = random_stack((20, 30, 40), "uint16", seed=2)
    dest, pyramid = _convert(tmp_path, stack, chunk=(16, 8, 4))
    with open(os.path.join(dest, ".zgroup")) as f:
        assert json.load(f) == {"zarr_format": 2}
    ms = _multiscales(dest)
    assert ms["version"] == "0.4" and ms["name"] == "out" and ms["type"] == "mean"
    assert [a["name"] for a in ms["axes"]] == ["t", "c", "z", "y", "x"]
    assert [a.get("unit") for a in ms["axes"]] == [None, None, "micrometer"] * 1 + [
        "micrometer",
        "micrometer",
    ]
    assert [a["type"] for a in ms["axes"]] == ["time", "channel", "space", "space", "space"]
    for k, dataset in enumerate(ms["datasets"]):
        assert dataset["path"] == str(k)
        scale, translation = dataset["coordinateTransformations"]
        voxel = np.array([2.0, 1.8, 1.8]) * 2**k
        np.testing.assert_allclose(scale["scale"], [1, 1, *voxel])
        # a 2x mean's voxel centre moves by half the growth of the voxel: (s_k - s_0) / 2
        np.testing.assert_allclose(
            translation["translation"], [0, 0, *((voxel - voxel / 2**k) / 2)], atol=1e-9
        )
    with open(os.path.join(dest, "0", ".zarray")) as f:
        zarray = json.load(f)
    assert zarray == {
        "chunks": [1, 1, 4, 8, 16],
        "compressor": {"id": "blosc", "cname": "zstd", "clevel": 1, "shuffle": 1, "blocksize": 0},
        "dimension_separator": "/",
        "dtype": "<u2",
        "fill_value": 0,
        "filters": None,
        "order": "C",
        "shape": [1, 1, 20, 30, 40],
        "zarr_format": 2,
    }
    omero = _attributes(dest)["omero"]
    channel = omero["channels"][0]
    coarsest = reference_pyramid(stack, pyramid.n_levels)[-1]
    low, high = np.percentile(coarsest, [0.5, 99.5])
    assert channel["window"] == {"min": 0, "max": 65535, "start": low, "end": high}
    assert channel["color"] == "FFFFFF" and len(omero["channels"]) == 1


def test_v3_sharded_metadata_follows_ome_zarr_05(tmp_path):
    stack = random_stack((20, 30, 40), "int16", seed=3)
    dest, _ = _convert(tmp_path, stack, chunk=(8, 8, 8), sharded=True, task_bytes=100_000)
    with open(os.path.join(dest, "zarr.json")) as f:
        group = json.load(f)
    assert group["zarr_format"] == 3 and group["node_type"] == "group"
    ome = group["attributes"]["ome"]
    assert ome["version"] == "0.5" and "version" not in ome["multiscales"][0]
    assert ome["omero"]["channels"][0]["window"]["min"] == -32768
    assert not os.path.exists(os.path.join(dest, ".zattrs")), "v2 and v3 metadata must not mix"
    with open(os.path.join(dest, "0", "zarr.json")) as f:
        array = json.load(f)
    assert array["dimension_names"] == ["t", "c", "z", "y", "x"]
    assert array["data_type"] == "int16" and array["fill_value"] == 0
    (codec,) = array["codecs"]
    assert codec["name"] == "sharding_indexed"
    inner = codec["configuration"]["chunk_shape"]
    shard = array["chunk_grid"]["configuration"]["chunk_shape"]
    assert inner == [1, 1, 8, 8, 8] and shard[:2] == [1, 1]
    assert all(s % i == 0 for s, i in zip(shard, inner)) and shard != inner
    shards = [os.path.join(p, n) for p, _, ns in os.walk(os.path.join(dest, "0", "c")) for n in ns]
    grid = [-(-n // s) for n, s in zip((20, 30, 40), shard[2:])]
    assert len(shards) == np.prod(grid), "one file per shard"


def test_segmentation_is_an_image_label_downsampled_by_mode(tmp_path):
    rng = np.random.default_rng(5)
    stack = rng.choice(
        np.array([0, 7, 2**31 + 3, 12], np.uint32), size=(13, 18, 21), p=[0.4, 0.3, 0.2, 0.1]
    )
    dest, _ = _convert(tmp_path, stack, segmentation=True)
    attributes = _attributes(dest)
    assert "image-label" in attributes and "omero" not in attributes
    assert _multiscales(dest)["type"] == "mode"
    expected = reference_pyramid(stack, 3, segmentation=True)
    assert open_volume(dest).pyramid.volume_type == "segmentation"
    assert_every_chunk_equal(dest, expected)


@pytest.mark.parametrize("sharded", [False, True], ids=["0.4", "0.5"])
def test_ome_zarr_py_finds_the_pyramid(tmp_path, sharded):
    pytest.importorskip("ome_zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    stack = random_stack((20, 30, 40), "uint8", seed=4)
    dest, pyramid = _convert(tmp_path, stack, sharded=sharded, task_bytes=100_000)
    nodes = list(Reader(parse_url(dest))())
    image = nodes[0]
    assert image.load(Multiscales) is not None
    expected = reference_pyramid(stack, pyramid.n_levels)
    assert len(image.data) == len(expected)
    for level, want in zip(image.data, expected):
        np.testing.assert_array_equal(np.asarray(level)[0, 0], want)
    assert image.metadata["axes"][2] == {"name": "z", "type": "space", "unit": "micrometer"}


def test_interrupted_run_is_no_image_and_resume_gives_the_same_bytes(tmp_path):
    stack = random_stack((30, 40, 50), "uint16", seed=6)
    source = write_planes(tmp_path / "planes", stack)
    budget = Budget(n_workers=1, task_bytes=60_000)
    pyramid = _pyramid(source, (8, 8, 8), False, 60_000, False)
    finished = []

    def stop_after_five(level: int, voxels: int, total: int) -> None:
        if voxels:
            finished.append(voxels)
        if len(finished) == 5:
            raise KeyboardInterrupt

    dest = str(tmp_path / "resumed" / "vol.zarr")
    with pytest.raises(KeyboardInterrupt):
        convert(
            open_source(source),
            create_store("ngff", dest, pyramid),
            executor=SerialExecutor(),
            budget=budget,
            progress=stop_after_five,
        )
    assert not os.path.exists(os.path.join(dest, ".zattrs")), "must not look complete"
    with pytest.raises(Exception, match="no zarr group metadata|OME"):
        open_volume(dest, "ngff")
    convert(
        open_source(source),
        create_store("ngff", dest, pyramid),
        executor=SerialExecutor(),
        budget=budget,
        resume=True,
    )
    whole = tmp_path / "whole" / "vol.zarr"
    convert_stack(source, str(whole), "ngff", chunk=(8, 8, 8), task_bytes=60_000)
    assert _tree_bytes(whole) == _tree_bytes(dest)
    assert len(_tree_bytes(whole)) > 20


@pytest.mark.parametrize("sharded", [False, True], ids=["0.4", "0.5-sharded"])
def test_resume_after_sigkill_gives_the_same_bytes(tmp_path, sharded):
    """A real process killed mid-run, then the same command with --resume."""
    stack = random_stack((64, 96, 96), "uint16", seed=7)
    planes = write_planes(tmp_path / "planes", stack)
    extra = ["--sharded"] if sharded else []
    args = ["--source", planes, "--format", "ngff", *extra, "--chunk-size", "16,16,16"]
    args += ["--task-memory", "300K", "--n-cores", "1", "--log", "WARNING"]
    whole = str(tmp_path / "whole" / "vol.zarr")  # the same name: it is the image's name
    subprocess.run([*CLI, *args, "--dest", whole], check=True, timeout=300)
    dest = str(tmp_path / "killed" / "vol.zarr")
    process = subprocess.Popen([*CLI, *args, "--dest", dest])
    done_log = os.path.join(dest, ".precomputed-tif", "done-1")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if os.path.exists(done_log) and os.path.getsize(done_log) > 6:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    if process.returncode == -signal.SIGKILL:
        group = "zarr.json" if sharded else ".zattrs"
        assert not os.path.exists(os.path.join(dest, group)), "a killed run must not look complete"
    subprocess.run([*CLI, *args, "--dest", dest, "--resume"], check=True, timeout=300)
    assert _tree_bytes(whole) == _tree_bytes(dest)
    assert_every_chunk_equal(dest, reference_pyramid(stack, 4))  # 96 -> 48 -> 24 -> 12


def test_flags_that_do_not_apply_say_so(tmp_path):
    planes = write_planes(tmp_path / "planes", random_stack((4, 8, 8), "uint8"))
    for flag in (["--gzip"], ["--encoding", "jpeg"]):
        args = ["--source", planes, "--dest", str(tmp_path / "o"), "--format", "ngff", *flag]
        done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)
        assert_one_line_error(done, "--format ngff", "--sharded")
    assert not os.path.exists(tmp_path / "o")


# --- reading OME-Zarr written by others -----------------------------------------------------
def test_reads_a_multichannel_image_zarr_python_wrote_with_other_chunks(tmp_path):
    """czyx, 2 channels, chunks spanning both channels, "." keys, zlib: read as (z, y, x, c)."""
    import numcodecs
    import zarr

    rng = np.random.default_rng(8)
    data = rng.integers(0, 4000, (2, 11, 26, 35), dtype=np.uint16)
    dest = str(tmp_path / "theirs.zarr")
    group = zarr.open_group(dest, mode="w", zarr_format=2)
    levels = [data, data[:, ::2, ::2, ::2]]
    for k, level in enumerate(levels):
        array = group.create_array(
            str(k),
            shape=level.shape,
            dtype=level.dtype,
            chunks=(2, 5, 7, 9),
            compressors=numcodecs.Zlib(level=3),
            chunk_key_encoding={"name": "v2", "separator": "."},
        )
        array[...] = level
    axes = [{"name": "c", "type": "channel"}] + [
        {"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"
    ]
    datasets = [
        {"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": [1, *s]}]}
        for k, s in enumerate([[300, 100, 100], [600, 200, 200]])
    ]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": datasets}]
    volume = open_volume(dest)
    assert volume.format == "ngff"
    assert volume.pyramid.scale(1).resolution_nm == (100, 100, 300)
    assert [s.key for s in volume.pyramid.scales] == ["1_1_1", "2_2_2"]
    assert volume.pyramid.num_channels == 2
    for k, level in enumerate(levels, start=1):
        np.testing.assert_array_equal(volume[k][:, :, :], np.moveaxis(level, 0, -1))
    np.testing.assert_array_equal(
        volume[1][3:9, 5:20, 2:30], np.moveaxis(data[:, 3:9, 5:20, 2:30], 0, -1)
    )


def test_reads_a_v3_sharded_image_zarr_python_wrote(tmp_path):
    """zarr-python's own shards: Morton order, zstd, a 3-D zyx array, index CRC."""
    import zarr

    rng = np.random.default_rng(9)
    data = rng.integers(-500, 500, (21, 40, 33), dtype=np.int32)
    dest = str(tmp_path / "theirs3.zarr")
    group = zarr.open_group(dest, mode="w", zarr_format=3)
    array = group.create_array(
        "s0", shape=data.shape, dtype=data.dtype, chunks=(4, 8, 8), shards=(8, 16, 16)
    )
    array[...] = data
    axes = [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    datasets = [
        {"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [2, 1, 1]}]}
    ]
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": datasets}]}
    volume = open_volume(dest)
    assert volume.pyramid.scale(1).chunk_size == (8, 8, 4)
    np.testing.assert_array_equal(volume[1][:, :, :], data)


def test_reads_the_originals_ngff_02_folder(tmp_path):
    """The original NGFFStack's layout: 5-D arrays, nested keys, multiscales 0.2 without axes,
    and a precomputed ``info`` beside it that holds the voxel size."""
    import numcodecs
    import zarr

    rng = np.random.default_rng(10)
    data = rng.integers(0, 60000, (9, 20, 30), dtype=np.uint16)
    dest = str(tmp_path / "original.ngff")
    group = zarr.open_group(dest, mode="w", zarr_format=2)
    levels = [data, reference_pyramid(data, 2)[1]]
    for k, level in enumerate(levels):
        array = group.create_array(
            str(k),
            shape=(1, 1, *level.shape),
            dtype=level.dtype,
            chunks=(1, 1, 8, 8, 8),
            compressors=numcodecs.Blosc("zstd", 5),
            chunk_key_encoding={"name": "v2", "separator": "/"},
        )
        array[...] = level[None, None]
    group.attrs["multiscales"] = [
        {"version": 0.2, "name": "original", "datasets": [{"path": "0"}, {"path": "1"}]}
    ]
    # the precomputed info the original wrote beside it (its write_info_file): every level
    scales = [
        {
            "key": f"{r}_{r}_{r}",
            "size": list(level.shape[::-1]),
            "resolution": [1800.0 * r, 1800.0 * r, 2000.0 * r],
            "chunk_sizes": [[8, 8, 8]],
            "encoding": "raw",
            "voxel_offset": [0, 0, 0],
        }
        for r, level in zip((1, 2), levels)
    ]
    info = {"data_type": "uint16", "num_channels": 1, "type": "image", "scales": scales}
    with open(os.path.join(dest, "info"), "w") as f:
        json.dump(info, f)
    from precomputed_tif.client import ArrayReader

    reader = ArrayReader(f"file://{dest}", format="ngff", level=2)
    np.testing.assert_array_equal(reader[:, :, :], levels[1])
    volume = open_volume(dest)
    assert volume.pyramid.scale(2).resolution_nm == (3600, 3600, 4000)
    np.testing.assert_array_equal(volume[1][:, :, :], data)


# --- serving ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served_pair(tmp_path_factory):
    """One stack converted as --format precomputed, ngff and ngff --sharded."""
    folder = tmp_path_factory.mktemp("served")
    stack = random_stack((21, 40, 47), "uint16", seed=11)
    planes = write_planes(folder / "planes", stack)
    out = {}
    for name, extra in [("precomputed", []), ("ngff", []), ("ngff-sharded", ["--sharded"])]:
        dest = str(folder / name)
        fmt = name.split("-")[0]
        args = ["--source", planes, "--dest", dest, "--format", fmt, *extra, "--n-cores", "1"]
        args += ["--chunk-size", "16,16,8", "--voxel-size", "1,1,1", "--task-memory", "200K"]
        subprocess.run([*CLI, *args, "--log", "WARNING"], check=True, timeout=300)
        out[name] = dest
    return stack, out


@pytest.mark.parametrize("name", ["ngff", "ngff-sharded"])
def test_server_answers_an_ome_zarr_folder_like_the_precomputed_one(served_pair, name):
    from precomputed_tif.geometry import chunks_in, full_box
    from precomputed_tif.serve import PrecomputedApp
    from precomputed_tif.serve.config import resolve_source
    from servekit import call

    stack, dests = served_pair
    ours = PrecomputedApp(single=resolve_source("", dests[name], None))
    theirs = PrecomputedApp(single=resolve_source("", dests["precomputed"], None))
    assert resolve_source("", dests[name], None).format == "ngff"
    info = call(ours, "/info")
    assert info.status == 200 and json.loads(info.body) == json.loads(call(theirs, "/info").body)
    volume = open_volume(dests["precomputed"])
    for scale in volume.pyramid.scales:
        for _, box in chunks_in(full_box(scale.size), scale.chunk_size, scale.size):
            path = f"/{scale.key}/{box.chunk_name}"
            got, want = call(ours, path), call(theirs, path)
            assert got.status == want.status == 200, path
            assert got.body == want.body, path
    assert call(ours, "/1_1_1/0-16_0-16_0-7").status == 400
    assert call(ours, "/1_1_1/0-16_0-16_800-808").status == 404


def test_server_serves_the_ome_zarr_files_with_ranges(served_pair):
    from precomputed_tif.serve import PrecomputedApp
    from precomputed_tif.serve.config import resolve_source
    from servekit import call

    _, dests = served_pair
    for name in ("ngff", "ngff-sharded"):
        app = PrecomputedApp(single=resolve_source("", dests[name], None))
        for path in ("/.zattrs", "/.zgroup", "/0/.zarray") if name == "ngff" else ("/zarr.json",):
            reply = call(app, path)
            with open(dests[name] + path, "rb") as f:
                assert reply.status == 200 and reply.body == f.read(), path
            assert reply.headers["access-control-allow-origin"] == "*"
        assert call(app, "/.precomputed-tif/run.json").status == 404
        assert call(app, "/../info").status == 400
        assert call(app, "/0/.zarray").status == (200 if name == "ngff" else 404)
    shard = "/0/c/0/0/0/0/0"
    with open(dests["ngff-sharded"] + shard, "rb") as f:
        content = f.read()
    app = PrecomputedApp(single=resolve_source("", dests["ngff-sharded"], None))
    head = call(app, shard, method="HEAD")
    assert head.status == 200 and head.headers["content-length"] == str(len(content))
    part = call(app, shard, headers={"Range": "bytes=10-99"})
    assert part.status == 206 and part.body == content[10:100]
    assert part.headers["content-range"] == f"bytes 10-99/{len(content)}"
    suffix = call(app, shard, headers={"Range": "bytes=-132"})
    assert suffix.status == 206 and suffix.body == content[-132:]


@pytest.mark.parametrize("name", ["ngff", "ngff-sharded"])
def test_read_over_http_as_ome_zarr_and_as_precomputed(served_pair, name):
    """Our server as a plain file server (zarr files, ranges) and as a precomputed source."""
    from precomputed_tif.client import ArrayReader
    from servekit import RunningServer

    stack, dests = served_pair
    server = RunningServer("-d", dests[name], log="WARNING")
    try:
        expected = reference_pyramid(stack, 3)
        as_zarr = open_volume(server.url, "ngff")
        as_precomputed = open_volume(server.url)
        assert (as_zarr.format, as_precomputed.format) == ("ngff", "precomputed")
        for level, want in enumerate(expected, start=1):
            np.testing.assert_array_equal(as_zarr[level][:, :, :], want)
            np.testing.assert_array_equal(as_precomputed[level][:, :, :], want)
        np.testing.assert_array_equal(open_volume(f"zarr://{server.url}/")[3][:, :, :], expected[2])
        reader = ArrayReader(server.url, format="ngff", level=2)
        np.testing.assert_array_equal(reader[2:9, 3:17, 1:20], expected[1][2:9, 3:17, 1:20])
    finally:
        server.stop()


def test_sources_json_names_ngff_folders_as_the_original_did(served_pair, tmp_path):
    """``"format": "ngff"`` (the original's word) or no format at all: both are served."""
    from precomputed_tif.serve import PrecomputedApp
    from precomputed_tif.serve.config import SourceTable
    from servekit import call

    _, dests = served_pair
    config = tmp_path / "sources.json"
    entries = [
        {"name": "a", "directory": dests["ngff"], "format": "ngff"},
        {"name": "b", "directory": dests["ngff-sharded"]},
        {"name": "p", "directory": dests["precomputed"]},
    ]
    config.write_text(json.dumps(entries))
    app = PrecomputedApp(sources=SourceTable(str(config)).current)
    want = call(app, "/p/2_2_2/16-24_0-16_0-8")
    assert want.status == 200
    for name in ("a", "b"):
        got = call(app, f"/{name}/2_2_2/16-24_0-16_0-8")
        assert got.status == 200 and got.body == want.body
    assert call(app, "/a/.zattrs").status == 200 and call(app, "/b/zarr.json").status == 200


def test_stores_and_tasks_pickle(tmp_path):
    """Stores cross process and Dask boundaries: ours, and one opened from anyone's metadata."""
    import pickle

    from precomputed_tif.plan import plan_stages, stage_tasks
    from precomputed_tif.stores import open_store

    stack = random_stack((10, 20, 30), "uint8", seed=12)
    dest, pyramid = _convert(tmp_path, stack, sharded=True, task_bytes=20_000)
    opened = open_store(dest)
    copy = pickle.loads(pickle.dumps(opened))
    assert copy.pyramid == opened.pyramid and copy.image == opened.image
    np.testing.assert_array_equal(copy.read_region(1, opened_box(opened)), stack)
    source = open_source(str(tmp_path / "planes" / "*.tif"))
    writer = create_store("ngff", str(tmp_path / "again"), pyramid)
    for stage in plan_stages(pyramid, task_budget_bytes=20_000, n_workers=2):
        for task in stage_tasks(pyramid, stage, writer, source):
            again = pickle.loads(pickle.dumps(task))
            assert again.box == task.box and again.store.pyramid == pyramid


def opened_box(store):
    from precomputed_tif.geometry import full_box

    return full_box(store.pyramid.scale(1).size)


def test_reads_a_2d_image(tmp_path):
    """yx only: a single plane, read as a volume one voxel deep."""
    import zarr

    data = np.arange(30 * 41, dtype=np.uint16).reshape(30, 41)
    dest = str(tmp_path / "plane.zarr")
    group = zarr.open_group(dest, mode="w", zarr_format=2)
    group.create_array("0", shape=data.shape, dtype=data.dtype, chunks=(16, 16))[...] = data
    axes = [{"name": a, "type": "space", "unit": "micrometer"} for a in "yx"]
    datasets = [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [0.5, 0.5]}]}
    ]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": datasets}]
    volume = open_volume(dest)
    assert volume[1].shape == (1, 30, 41)
    assert volume.pyramid.scale(1).resolution_nm[:2] == (500, 500)
    np.testing.assert_array_equal(volume[1][0], data)


def test_array_reader_levels_of_an_anisotropic_pyramid(tmp_path):
    """z kept at full resolution: level=2 is the second dataset (key 2_2_2, as the original
    named dataset 1), with its own voxel size."""
    import zarr

    from precomputed_tif.client import ArrayReader

    data = np.arange(6 * 20 * 24, dtype=np.uint16).reshape(6, 20, 24)
    levels = [data, data[:, ::2, ::2]]
    dest = str(tmp_path / "aniso.zarr")
    group = zarr.open_group(dest, mode="w", zarr_format=2)
    for k, level in enumerate(levels):
        group.create_array(str(k), shape=level.shape, dtype=level.dtype, chunks=(4, 8, 8))[...] = (
            level
        )
    axes = [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    datasets = [
        {"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": s}]}
        for k, s in enumerate([[4, 1, 1], [4, 2, 2]])
    ]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": datasets}]
    pyramid = open_volume(dest).pyramid
    assert [s.key for s in pyramid.scales] == ["1_1_1", "2_2_2"]
    assert pyramid.scale(2).resolution_nm == (2000, 2000, 4000)
    np.testing.assert_array_equal(ArrayReader(dest, format="ngff", level=2)[:, :, :], levels[1])
    with pytest.raises(Exception, match="no scale 4_4_4"):
        ArrayReader(dest, format="ngff", level=4)


@pytest.mark.parametrize("sharded", [False, True], ids=["0.4", "0.5"])
def test_verify_finds_a_lost_or_damaged_chunk(tmp_path, sharded):
    """Every chunk is stored (zeros too), so a missing one is a lost one."""
    stack = random_stack((12, 20, 24), "uint16", seed=13)
    stack[:, :8, :8] = 0  # an all-zero chunk is stored like any other
    dest, _ = _convert(tmp_path, stack, sharded=sharded, task_bytes=20_000)
    assert open_volume(dest).verify().ok
    if sharded:
        shard = os.path.join(dest, "0", "c", "0", "0", "0", "0", "0")
        with open(shard, "r+b") as f:
            f.seek(20)
            f.write(b"\xff" * 16)  # inside the first inner chunk's Blosc frame
        report = open_volume(dest).verify()
        assert not report.ok and "damaged" in report.problems[0].what
    else:
        os.remove(os.path.join(dest, "0", "0", "0", "0", "0", "0"))
        report = open_volume(dest).verify()
        assert not report.ok and [p.what for p in report.problems] == ["missing"]
