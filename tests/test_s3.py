"""Volumes in an object store: written, served and read back at ``s3://`` URLs.

The store is moto's S3 server on loopback (a real HTTP server speaking S3, as s3fs's own tests
use), reached through the standard ``AWS_ENDPOINT_URL`` variable, so the converter's worker
processes find it the way they would find a lab's S3 or MinIO.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import random_stack, reference_pyramid, write_planes
from servekit import call
from test_cli import assert_one_line_error
from test_convert import assert_every_chunk_equal

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

BUCKET = "lab-volumes"
CLI = [sys.executable, "-m", "precomputed_tif.cli.convert"]


@pytest.fixture(scope="module")
def s3():
    """An S3 server on 127.0.0.1 with one bucket; the environment points clients at it."""
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    import fsspec

    fsspec.filesystem("s3").mkdir(BUCKET)
    try:
        yield f"s3://{BUCKET}"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        fsspec.filesystem("s3").clear_instance_cache()
        server.stop()


def _objects(url: str) -> dict[str, bytes]:
    """Every object under `url` but the run state, by name relative to it."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    names = [p for p in fs.find(root) if "/.precomputed-tif/" not in p]
    return {p[len(root) + 1 :]: fs.cat_file(p) for p in names}


def _files(folder: str) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones too: .zarray) but the run state."""
    out = {}
    for parent, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if d != ".precomputed-tif"]
        for name in names:
            path = os.path.join(parent, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


@pytest.fixture(scope="module")
def stack_and_planes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("s3planes")
    stack = random_stack((48, 80, 96), "uint16", seed=31)
    return stack, write_planes(folder / "planes", stack)


FORMATS = ["zarr", "precomputed", "precomputed --sharded", "precomputed --gzip"]


def _convert(source: str, dest: str, fmt: str, *extra: str) -> None:
    args = ["--source", source, "--dest", dest, "--format", *fmt.split()]
    args += ["--chunk-size", "16,16,16", "--task-memory", "1M", "--log", "WARNING", *extra]
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_written_to_s3_equals_the_local_folder(tmp_path, s3, stack_and_planes, fmt):
    stack, planes = stack_and_planes
    local = str(tmp_path / "local")
    url = f"{s3}/{fmt.replace(' --', '-')}"
    _convert(planes, local, fmt)
    _convert(planes, url, fmt)
    assert _objects(url) == _files(local)
    assert_every_chunk_equal(url, reference_pyramid(stack, 4))


@pytest.mark.parametrize("fmt", ["ngff", "ngff --sharded"])
def test_ome_zarr_written_to_s3_equals_the_local_folder_and_is_served(
    tmp_path, s3, stack_and_planes, fmt
):
    """The image is named after its folder: both destinations end in the same name."""
    from precomputed_tif import open_volume
    from precomputed_tif.serve import PrecomputedApp
    from precomputed_tif.serve.config import resolve_source

    stack, planes = stack_and_planes
    local = str(tmp_path / "vol.ome.zarr")
    url = f"{s3}/{fmt.replace(' --', '-')}/vol.ome.zarr"
    _convert(planes, local, fmt)
    _convert(planes, url, fmt)
    assert _objects(url) == _files(local)
    assert_every_chunk_equal(url, reference_pyramid(stack, 4))
    assert open_volume(url).format == "ngff"
    remote_app = PrecomputedApp(single=resolve_source("", url, None))
    local_app = PrecomputedApp(single=resolve_source("", local, None))
    assert json.loads(call(remote_app, "/info").body) == json.loads(call(local_app, "/info").body)
    metadata = "/zarr.json" if "sharded" in fmt else "/.zattrs"
    for path in (metadata, "/1_1_1/0-16_16-32_32-48", "/4_4_4/16-24_0-16_0-12"):
        got, want = call(remote_app, path), call(local_app, path)
        assert got.status == want.status == 200 and got.body == want.body, path


@pytest.mark.slow
def test_dask_workers_write_to_s3(tmp_path, s3, stack_and_planes):
    pytest.importorskip("distributed")
    stack, planes = stack_and_planes
    url = f"{s3}/dask-zarr"
    _convert(planes, str(tmp_path / "local"), "zarr")
    _convert(planes, url, "zarr", "--dask-workers", "2")
    assert _objects(url) == _files(str(tmp_path / "local"))


def test_an_interrupted_s3_run_resumes(tmp_path, s3, stack_and_planes):
    """The run state lives beside the volume in the bucket: any machine can resume it."""
    from precomputed_tif import Budget, convert, create_store, open_source, plan_pyramid
    from precomputed_tif.executors import SerialExecutor

    stack, planes = stack_and_planes
    source = open_source(planes)
    pyramid = plan_pyramid(source.size, "uint16", voxel_size_nm=(1, 1, 1), chunk_size=(16,) * 3)
    budget = Budget(n_workers=1, task_bytes=100_000)
    url = f"{s3}/resumed"
    finished = []

    def stop_after_three(level: int, voxels: int, total: int) -> None:
        if voxels:
            finished.append(voxels)
        if len(finished) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(
            source,
            create_store("precomputed", url, pyramid),
            executor=SerialExecutor(),
            budget=budget,
            progress=stop_after_three,
        )
    assert "info" not in _objects(url), "an interrupted run must not look complete"
    store = create_store("precomputed", url, pyramid)
    ran = []
    convert(
        source,
        store,
        executor=SerialExecutor(),
        budget=budget,
        resume=True,
        progress=lambda level, voxels, total: ran.append(voxels),
    )
    assert ran[0] > 0, "the resumed run must start from the tasks recorded in the bucket"
    assert_every_chunk_equal(url, reference_pyramid(stack, 4))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["zarr", "precomputed --sharded", "precomputed --gzip"])
def test_served_from_s3_like_the_local_folder(tmp_path, s3, stack_and_planes, fmt):
    from precomputed_tif import open_volume
    from precomputed_tif.serve import PrecomputedApp
    from precomputed_tif.serve.config import resolve_source

    stack, planes = stack_and_planes
    name = "served-" + fmt.replace(" --", "-")
    local = str(tmp_path / "local")
    _convert(planes, local, fmt)
    _convert(planes, f"{s3}/{name}", fmt)
    remote_app = PrecomputedApp(single=resolve_source("", f"{s3}/{name}", None))
    local_app = PrecomputedApp(single=resolve_source("", local, None))

    info = call(remote_app, "/info")
    assert info.status == 200
    assert json.loads(info.body) == json.loads(call(local_app, "/info").body)
    volume = open_volume(local)
    paths = []
    for scale in json.loads(info.body)["scales"]:
        if "sharding" in scale:
            names = sorted(os.listdir(os.path.join(local, scale["key"])))
            paths += [f"/{scale['key']}/{n}" for n in names]
        else:
            cx, cy, cz = scale["chunk_sizes"][0]
            sx, sy, sz = scale["size"]
            for x0, y0, z0 in [(0, 0, 0), (sx - 1, sy - 1, sz - 1)]:
                x0, y0, z0 = x0 // cx * cx, y0 // cy * cy, z0 // cz * cz
                box = f"{x0}-{min(x0 + cx, sx)}_{y0}-{min(y0 + cy, sy)}_{z0}-{min(z0 + cz, sz)}"
                paths.append(f"/{scale['key']}/{box}")
    for path in paths:
        for headers in ({}, {"Range": "bytes=3-40"}, {"Accept-Encoding": "gzip"}):
            got, want = (
                call(remote_app, path, headers=headers),
                call(local_app, path, headers=headers),
            )
            assert got.status == want.status and got.status in (200, 206), path
            assert got.body == want.body, (path, headers)
            assert got.headers.get("content-encoding") == want.headers.get("content-encoding")
    assert call(remote_app, "/1_1_1/0-16_0-16_999-1015").status in (400, 404)
    assert call(remote_app, "/.precomputed-tif/run.json").status == 404
    assert call(remote_app, "/../info").status == 400
    assert volume.pyramid.n_levels == 4


def test_read_back_from_an_s3_url(tmp_path, s3, stack_and_planes):
    from precomputed_tif import open_volume

    stack, planes = stack_and_planes
    url = f"{s3}/read-back"
    _convert(planes, url, "precomputed --sharded")
    volume = open_volume(url)
    np.testing.assert_array_equal(volume[1][5:40, 7:70, 3:90], stack[5:40, 7:70, 3:90])


def test_formats_that_need_a_file_system_say_so(tmp_path, s3, stack_and_planes):
    _, planes = stack_and_planes
    args = ["--source", planes, "--dest", f"{s3}/blockfs", "--format", "blockfs"]
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)
    assert_one_line_error(done, "zarr or precomputed", "s3://")


def test_a_missing_bucket_is_one_line(tmp_path, s3, stack_and_planes):
    _, planes = stack_and_planes
    args = ["--source", planes, "--dest", "s3://no-such-bucket/vol", "--format", "zarr"]
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)
    assert_one_line_error(done, "s3://no-such-bucket/vol")


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_planes_read_from_s3(tmp_path, s3, compression):
    """Input planes in a bucket (uncompressed: only the rows a task needs; compressed: strips)."""
    import fsspec

    stack = random_stack((12, 70, 50), "uint16", seed=37)
    local_planes = write_planes(tmp_path / "planes", stack, compression=compression)
    fs = fsspec.filesystem("s3")
    prefix = f"{BUCKET}/planes-{compression}"
    for path in sorted((tmp_path / "planes").iterdir()):
        fs.put_file(str(path), f"{prefix}/{path.name}")
    local, remote = str(tmp_path / "run_a"), str(tmp_path / "run_b")
    _convert(local_planes, local, "zarr")
    _convert(f"s3://{prefix}/*.tif", remote, "zarr")
    assert _files(remote) == _files(local)
    assert_every_chunk_equal(remote, reference_pyramid(stack, 4))
    missing = subprocess.run(
        [*CLI, "--source", f"s3://{prefix}/*.nothing", "--dest", str(tmp_path / "c")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_one_line_error(missing, "matches no files")
