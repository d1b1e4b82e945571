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
import urllib.parse

import numpy as np
import pytest
import tifffile

from conftest import DATA, random_stack, reference_pyramid, write_planes
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
    local_files = _files(local)
    if "--gzip" in fmt:  # name.gz in folders, the same bytes under the plain name in buckets
        assert sum(name.endswith(".gz") for name in local_files) > 100
        local_files = {name.removesuffix(".gz"): data for name, data in local_files.items()}
    assert _objects(url) == local_files
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


@pytest.fixture(scope="module")
def gzip_bucket(s3, stack_and_planes):
    """The stack converted with --gzip into the bucket, under gzip-plain/."""
    _convert(stack_and_planes[1], f"{s3}/gzip-plain", "precomputed --gzip")
    return f"{s3}/gzip-plain"


def test_gzip_in_a_bucket_has_content_encoding_and_tensorstore_reads_it(
    gzip_bucket, stack_and_planes
):
    """--gzip to s3://: plain chunk names, Content-Encoding: gzip, as Neuroglancer expects."""
    import fsspec

    stack, _ = stack_and_planes
    url = gzip_bucket
    objects = _objects(url)
    chunks = [name for name in objects if name != "info"]
    assert chunks and not any(name.endswith(".gz") for name in chunks)
    fs = fsspec.filesystem("s3")
    for name in chunks[:: max(1, len(chunks) // 12)]:
        head = fs.call_s3("head_object", Bucket=BUCKET, Key=f"gzip-plain/{name}")
        assert head.get("ContentEncoding") == "gzip", name
        assert objects[name][:2] == b"\x1f\x8b"
    expected = reference_pyramid(stack, 4)
    assert_every_chunk_equal(url, expected)  # our reader
    ts = pytest.importorskip("tensorstore")
    kvstore = {
        "driver": "s3",
        "bucket": BUCKET,
        "path": "gzip-plain/",
        "endpoint": os.environ["AWS_ENDPOINT_URL"],
        "aws_region": "us-east-1",
    }
    for level, want in enumerate(expected):
        array = ts.open(
            {"driver": "neuroglancer_precomputed", "kvstore": kvstore, "scale_index": level}
        ).result()
        got = np.asarray(array.read().result())[..., 0].transpose(2, 1, 0)
        np.testing.assert_array_equal(got, want, err_msg=f"level {level + 1}")


def test_a_gzip_folder_copied_to_a_bucket_reads_and_serves(tmp_path, s3, stack_and_planes):
    """name.gz objects (a --gzip folder copied as it is, or written by an earlier version)."""
    import gzip

    import fsspec

    from precomputed_tif.serve import PrecomputedApp
    from precomputed_tif.serve.config import resolve_source

    stack, planes = stack_and_planes
    local = str(tmp_path / "local")
    _convert(planes, local, "precomputed --gzip")
    fs = fsspec.filesystem("s3")
    for name, data in _files(local).items():
        fs.pipe_file(f"{BUCKET}/copied/{name}", data)
    url = f"{s3}/copied"
    assert any(name.endswith(".gz") for name in _objects(url))
    expected = reference_pyramid(stack, 4)
    assert_every_chunk_equal(url, expected)
    app = PrecomputedApp(single=resolve_source("", url, None))
    path = "/1_1_1/16-32_0-16_32-48"
    packed = call(app, path, headers={"Accept-Encoding": "gzip"})
    assert packed.status == 200 and packed.headers["content-encoding"] == "gzip"
    got = np.frombuffer(gzip.decompress(packed.body), "<u2").reshape(16, 16, 16)
    np.testing.assert_array_equal(got, expected[0][32:48, 0:16, 16:32])
    plain = call(app, path)
    assert "content-encoding" not in plain.headers and plain.body == got.tobytes()


def _public_with_cors(fs) -> None:
    """Anyone may GET the bucket's objects, from any origin (as a data-sharing bucket is set)."""
    public = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::{BUCKET}/*",
            }
        ],
    }
    fs.call_s3("put_bucket_policy", Bucket=BUCKET, Policy=json.dumps(public))
    cors = {"CORSRules": [{"AllowedOrigins": ["*"], "AllowedMethods": ["GET"]}]}
    fs.call_s3("put_bucket_cors", Bucket=BUCKET, CORSConfiguration=cors)


@pytest.mark.filterwarnings("ignore")
def test_cloudvolume_reads_a_gzip_bucket_over_http(gzip_bucket, stack_and_planes):
    import fsspec

    cloudvolume = pytest.importorskip("cloudvolume")
    stack, _ = stack_and_planes
    fs = fsspec.filesystem("s3")
    _public_with_cors(fs)
    try:
        url = f"precomputed://{os.environ['AWS_ENDPOINT_URL']}/{BUCKET}/gzip-plain"
        for level, want in enumerate(reference_pyramid(stack, 4)[:2]):
            vol = cloudvolume.CloudVolume(url, mip=level, progress=False)
            got = np.asarray(vol[:, :, :])[..., 0].transpose(2, 1, 0)
            np.testing.assert_array_equal(got, want, err_msg=f"level {level + 1}")
    finally:
        fs.call_s3("delete_bucket_policy", Bucket=BUCKET)


@pytest.mark.slow
def test_viewer_shows_a_gzip_volume_from_the_bucket(tmp_path, s3):
    """Neuroglancer in headless Chromium reads the --gzip bucket directly (public, with CORS)."""
    import fsspec

    from test_serve_cli import RunningServer, _best_correlation, _need_browser, _stardist_volume

    _need_browser()
    stack, local = _stardist_volume(tmp_path, "--format", "precomputed", "--gzip")
    planes = str(DATA / "stacks" / "stardist_img3d" / "planes")
    _convert(planes, f"{s3}/viewer-gzip", "precomputed --gzip", "--voxel-size", "1,1,1")
    fs = fsspec.filesystem("s3")
    _public_with_cors(fs)
    viewer = RunningServer("-d", local, "--viewer", log="WARNING")  # hands out the client
    try:
        link = viewer.viewer_line.split("Viewer: ", 1)[1].strip()
        state = json.loads(urllib.parse.unquote(link.split("#!", 1)[1]))
        bucket_url = f"{os.environ['AWS_ENDPOINT_URL']}/{BUCKET}/viewer-gzip"
        state["layers"][0]["source"] = f"precomputed://{bucket_url}"
        low, high = state["layers"][0]["shaderControls"]["normalized"]["range"]
        link = link.split("#!", 1)[0] + "#!" + urllib.parse.quote(json.dumps(state))
        z = 15
        best = _best_correlation(link, stack, (low, high), z, tmp_path / "shots")
    finally:
        viewer.stop()
        fs.call_s3("delete_bucket_policy", Bucket=BUCKET)
    assert best > 0.9, f"the --gzip volume in the bucket does not show: {best:.2f}"


def test_gzip_to_a_store_that_cannot_keep_content_encoding(tmp_path, stack_and_planes):
    _, planes = stack_and_planes
    args = ["--source", planes, "--dest", "memory://vol", "--format", "precomputed", "--gzip"]
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)
    assert_one_line_error(done, "--gzip", "memory://", "s3://")


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


def test_a_multi_page_tiff_in_a_bucket_is_refused_in_one_line(tmp_path, s3):
    import fsspec

    stack_file = tmp_path / "stack.tif"
    tifffile.imwrite(stack_file, random_stack((5, 16, 16), "uint16", seed=3))
    fsspec.filesystem("s3").put_file(str(stack_file), f"{BUCKET}/multipage/stack.tif")
    dest = tmp_path / "o"
    for source in (f"{s3}/multipage/stack.tif", f"{s3}/multipage"):
        done = subprocess.run(
            [*CLI, "--source", source, "--dest", str(dest)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert_one_line_error(done, "holds 5 pages", "local disk", "one plane per file")
        assert not dest.exists()
