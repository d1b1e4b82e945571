"""The WSGI app in process: every route, format and HTTP behaviour."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import DATA, random_stack
from precomputed_tif import open_volume
from precomputed_tif.geometry import chunks_in, full_box
from precomputed_tif.serve import PrecomputedApp
from precomputed_tif.serve.config import ConfigError, SourceTable, load_sources, resolve_source
from precomputed_tif.wsgi_webserver import make_app, serve_precomputed
from servekit import call, make_volume

FORMATS = ["tiff", "zarr", "blockfs"]


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    stack = random_stack((21, 40, 50), "uint16", seed=21)
    made = {fmt: make_volume(str(root), stack, fmt) for fmt in FORMATS}
    made["raw"] = _raw_volume(str(root / "raw"), made["zarr"])
    return made


def _raw_volume(dest: str, like: str) -> str:
    """A folder in Neuroglancer's own unsharded raw layout, written from another volume."""
    volume = open_volume(like)
    os.makedirs(dest)
    with open(os.path.join(like, "info")) as f:
        info = json.load(f)
    with open(os.path.join(dest, "info"), "w") as f:
        json.dump(info, f)
    for level in range(1, len(volume) + 1):
        scale = volume.pyramid.scale(level)
        os.makedirs(os.path.join(dest, scale.key))
        for _, box in chunks_in(full_box(scale.size), scale.chunk_size, scale.size):
            data = volume[level][box.numpy_slices()]
            with open(os.path.join(dest, scale.key, box.chunk_name), "wb") as f:
                f.write(data.astype("<u2").tobytes())
    with open(os.path.join(dest, "1_1_1", "0.shard"), "wb") as f:
        f.write(bytes(range(256)) * 40)
    return dest


def app_for(directory: str, **options) -> PrecomputedApp:
    return PrecomputedApp(single=resolve_source("", directory, None), **options)


@pytest.mark.parametrize("fmt", [*FORMATS, "raw"])
def test_info(volumes, fmt):
    reply = call(app_for(volumes[fmt]), "/info")
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["access-control-allow-origin"] == "*"
    with open(os.path.join(volumes[fmt], "info")) as f:
        assert json.loads(reply.body) == json.load(f)
    assert int(reply.headers["content-length"]) == len(reply.body)
    assert call(app_for(volumes[fmt]), "/mesh/info").status == 404


@pytest.mark.parametrize("fmt", [*FORMATS, "raw"])
def test_every_chunk_of_every_level_equals_the_read_api(volumes, fmt):
    app = app_for(volumes[fmt])
    volume = open_volume(volumes["zarr"])
    for level in range(1, len(volume) + 1):
        scale = volume.pyramid.scale(level)
        for _, box in chunks_in(full_box(scale.size), scale.chunk_size, scale.size):
            reply = call(app, f"/{scale.key}/{box.chunk_name}")
            assert reply.status == 200, (fmt, level, box)
            got = np.frombuffer(reply.body, "<u2").reshape(box.numpy_shape)
            np.testing.assert_array_equal(got, volume[level][box.numpy_slices()])


@pytest.mark.parametrize("name", ["stardist_tiff", "stardist_zarr", "stardist_blockfs"])
def test_volumes_written_by_the_original_serve_the_same_bytes(name):
    folder = str(DATA / "original" / name)
    app = app_for(folder)
    volume = open_volume(folder)
    assert volume.format == name.split("_")[1]
    for level in range(1, len(volume) + 1):
        scale = volume.pyramid.scale(level)
        for _, box in chunks_in(full_box(scale.size), scale.chunk_size, scale.size):
            reply = call(app, f"/{scale.key}/{box.chunk_name}")
            if reply.status == 404:
                assert volume.store.read_chunk(level, box) is None
                continue
            assert reply.status == 200
            expected = volume[level][box.numpy_slices()]
            np.testing.assert_array_equal(
                np.frombuffer(reply.body, "<u2").reshape(box.numpy_shape), expected
            )


def test_head_has_the_headers_and_no_body(volumes):
    app = app_for(volumes["blockfs"])
    get = call(app, "/1_1_1/0-16_0-16_0-16")
    head = call(app, "/1_1_1/0-16_0-16_0-16", method="HEAD")
    assert head.status == 200 and head.body == b""
    assert head.headers["content-length"] == get.headers["content-length"] == str(16**3 * 2)
    assert head.headers["etag"] == get.headers["etag"]


def test_options_preflight(volumes):
    reply = call(
        app_for(volumes["raw"]),
        "/1_1_1/0.shard",
        method="OPTIONS",
        headers={"Origin": "http://viewer", "Access-Control-Request-Headers": "range"},
    )
    assert reply.status == 204 and reply.body == b""
    assert "range" in reply.headers["access-control-allow-headers"]
    assert "GET" in reply.headers["access-control-allow-methods"]
    assert "Content-Range" in reply.headers["access-control-expose-headers"]
    assert reply.headers["access-control-allow-origin"] == "*"


def test_custom_cors_origin(volumes):
    reply = call(app_for(volumes["tiff"], cors_origin="https://lab.example"), "/info")
    assert reply.headers["access-control-allow-origin"] == "https://lab.example"
    assert "Origin" in reply.headers["vary"]


@pytest.mark.parametrize(
    "header, start, end",
    [
        ("bytes=0-15", 0, 15),
        ("bytes=100-", 100, 10239),
        ("bytes=-16", 10224, 10239),
        ("bytes=10230-99999", 10230, 10239),
        ("bytes=5-5", 5, 5),
    ],
)
def test_single_byte_ranges(volumes, header, start, end):
    content = bytes(range(256)) * 40
    reply = call(app_for(volumes["raw"]), "/1_1_1/0.shard", headers={"Range": header})
    assert reply.status == 206
    assert reply.headers["content-range"] == f"bytes {start}-{end}/{len(content)}"
    assert reply.body == content[start : end + 1]
    assert reply.headers["content-length"] == str(end - start + 1)


@pytest.mark.parametrize("header", ["bytes=10240-", "bytes=99999-100000"])
def test_unsatisfiable_range(volumes, header):
    reply = call(app_for(volumes["raw"]), "/1_1_1/0.shard", headers={"Range": header})
    assert reply.status == 416
    assert reply.headers["content-range"] == "bytes */10240"


@pytest.mark.parametrize("header", ["items=0-5", "bytes=9-3", "bytes=0-1,x"])
def test_ranges_we_do_not_honour_get_the_whole_body(volumes, header):
    reply = call(app_for(volumes["raw"]), "/1_1_1/0.shard", headers={"Range": header})
    assert reply.status == 200 and len(reply.body) == 10240


def test_ranges_on_chunks(volumes):
    app = app_for(volumes["zarr"])
    whole = call(app, "/1_1_1/16-32_0-16_0-16").body
    part = call(app, "/1_1_1/16-32_0-16_0-16", headers={"Range": "bytes=8-23"})
    assert part.status == 206 and part.body == whole[8:24]


@pytest.mark.parametrize("fmt", [*FORMATS, "raw"])
def test_etag_revalidation(volumes, fmt):
    app = app_for(volumes[fmt])
    first = call(app, "/2_2_2/0-16_0-16_0-11")
    assert first.status == 200 and first.headers["etag"]
    again = call(app, "/2_2_2/0-16_0-16_0-11", headers={"If-None-Match": first.headers["etag"]})
    assert again.status == 304 and again.body == b""
    assert again.headers["access-control-allow-origin"] == "*"
    other = call(app, "/2_2_2/0-16_0-16_0-11", headers={"If-None-Match": '"stale"'})
    assert other.status == 200


def test_last_modified_revalidation(volumes):
    app = app_for(volumes["raw"])
    first = call(app, "/info")
    later = call(app, "/info", headers={"If-Modified-Since": first.headers["last-modified"]})
    assert later.status == 304
    earlier = call(app, "/info", headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"})
    assert earlier.status == 200


def test_changed_chunk_gets_a_new_etag_and_new_bytes(tmp_path):
    stack = random_stack((8, 16, 16), "uint8", seed=1)
    dest = make_volume(str(tmp_path), stack, "tiff", chunk=(16, 16, 16))
    app = app_for(dest)
    first = call(app, "/1_1_1/0-16_0-16_0-8")
    time.sleep(0.01)
    import tifffile

    tifffile.imwrite(
        os.path.join(dest, "1_1_1", "0-16_0-16_0-8.tiff"), np.full((8, 16, 16), 7, np.uint8)
    )
    second = call(app, "/1_1_1/0-16_0-16_0-8")
    assert second.headers["etag"] != first.headers["etag"]
    assert second.body == bytes([7]) * (8 * 16 * 16)


def test_gzip_for_info_and_optionally_chunks(volumes):
    app = app_for(volumes["blockfs"])
    info = call(app, "/info", headers={"Accept-Encoding": "gzip, deflate"})
    assert info.headers.get("content-encoding") == "gzip"
    assert json.loads(gzip.decompress(info.body))["data_type"] == "uint16"
    plain_chunk = call(app, "/1_1_1/0-16_0-16_0-16", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in plain_chunk.headers
    gz_app = app_for(volumes["blockfs"], gzip_chunks=True)
    chunk = call(gz_app, "/1_1_1/0-16_0-16_0-16", headers={"Accept-Encoding": "gzip"})
    assert chunk.headers["content-encoding"] == "gzip"
    assert gzip.decompress(chunk.body) == plain_chunk.body
    refused = call(gz_app, "/1_1_1/0-16_0-16_0-16", headers={"Accept-Encoding": "gzip;q=0"})
    assert "content-encoding" not in refused.headers


@pytest.mark.parametrize(
    "path, status",
    [
        ("/1_1_1/0-16_0-16", 400),  # does not parse
        ("/1_1_1/a-b_c-d_e-f", 400),
        ("/1_1_1/0-16_0-16_0-15", 400),  # off the grid
        ("/1_1_1/8-24_0-16_0-16", 400),
        ("/1_1_1/48-64_0-16_0-16", 400),  # past the clipped edge (x size is 50)
        ("/1_1_1/64-80_0-16_0-16", 404),  # outside the level
        ("/1_1_1/0-16_0-16_99999999999999999-99999999999999999", 404),
        ("/1_1_1/0-16_0-16_0-" + "9" * 40, 400),  # huge numbers
        ("/9_9_9/0-16_0-16_0-16", 404),  # no such level
        ("/1_1_1", 404),
        ("/", 404),
        ("/1_1_1/0-16_0-16_0-16/extra", 404),
        ("/.precomputed-tif/run.json", 404),
    ],
)
def test_bad_chunk_requests(volumes, path, status):
    for fmt in FORMATS:
        assert call(app_for(volumes[fmt]), path).status == status, (fmt, path)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "TRACE", "CONNECT", "FOO"])
def test_methods_we_do_not_serve(volumes, method):
    reply = call(app_for(volumes["tiff"]), "/info", method=method)
    assert reply.status == 405
    assert "GET" in reply.headers["allow"]
    assert reply.headers["access-control-allow-origin"] == "*"


TRAVERSALS = [
    "/../secret.txt",
    "/../../../../etc/passwd",
    "/1_1_1/../../secret.txt",
    "/./info",
    "//etc/passwd",
    "/%2e%2e/secret.txt",  # a server that decodes once gives this literally
    "/..%2fsecret.txt",
    "/info\x00.png",
    "/1_1_1\\..\\..\\secret.txt",
    "/link_out/secret.txt",
    "/link_out",
    "/1_1_1/link_file",
    "/" + "a" * 5000,
    "/\xff\xfe",  # not UTF-8
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_nothing_outside_the_folder_is_ever_served(tmp_path, path):
    folder = tmp_path / "vol"
    (folder / "1_1_1").mkdir(parents=True)
    scale = {"key": "1_1_1", "size": [8, 8, 8], "chunk_sizes": [[8, 8, 8]], "resolution": [1, 1, 1]}
    (folder / "info").write_text(json.dumps({"scales": [scale], "data_type": "uint8"}))
    (tmp_path / "secret.txt").write_text("SECRET-CONTENT")
    os.symlink(str(tmp_path), str(folder / "link_out"))
    os.symlink(str(tmp_path / "secret.txt"), str(folder / "1_1_1" / "link_file"))
    for fmt in ["raw", "tiff"]:
        app = PrecomputedApp(single=resolve_source("", str(folder), fmt))
        reply = call(app, path)
        assert 400 <= reply.status < 500, (fmt, path, reply.status)
        assert b"SECRET" not in reply.body


def test_links_made_while_serving_never_lead_outside_the_folder(tmp_path):
    """A folder or file swapped for a link after requests were answered, and the served folder
    itself moved away and its name made a link elsewhere: never a byte from outside. A folder
    made anew under the same name is served again."""
    outside = tmp_path / "outside"
    (outside / "1_1_1").mkdir(parents=True)
    (outside / "1_1_1" / "chunk").write_bytes(b"SECRET-CONTENT")
    (outside / "info").write_text("SECRET-CONTENT")
    served = tmp_path / "vol"

    def make_folder() -> None:
        (served / "1_1_1").mkdir(parents=True)
        (served / "1_1_1" / "chunk").write_bytes(b"inside")
        (served / "info").write_text("{}")

    make_folder()
    app = PrecomputedApp(single=resolve_source("", str(served), "raw"))
    assert call(app, "/1_1_1/chunk").body == b"inside"

    os.rename(served / "1_1_1" / "chunk", tmp_path / "old_chunk")
    os.symlink(outside / "1_1_1" / "chunk", served / "1_1_1" / "chunk")
    assert call(app, "/1_1_1/chunk").status == 404
    os.rename(served / "1_1_1", tmp_path / "old_level")
    os.symlink(outside / "1_1_1", served / "1_1_1")
    assert call(app, "/1_1_1/chunk").status == 404

    os.rename(served, tmp_path / "old_vol")
    os.symlink(outside, served)
    for path in ["/1_1_1/chunk", "/info"]:
        reply = call(app, path)
        assert reply.status == 404 and b"SECRET" not in reply.body, path

    os.unlink(served)
    make_folder()  # a new inode under the configured name
    assert call(app, "/1_1_1/chunk").body == b"inside"
    os.rename(served, tmp_path / "old_vol2")
    os.symlink(outside, served)
    assert call(app, "/1_1_1/chunk").status == 404


@pytest.mark.parametrize("fmt", ["blockfs", "tiff"])
def test_a_decoded_volume_whose_folder_name_is_made_a_link_elsewhere_is_not_served(
    tmp_path, volumes, fmt
):
    """As for raw files: chunks come only from the folder configured, and again from a folder
    made anew under its name."""
    served = tmp_path / "vol"
    shutil.copytree(volumes[fmt], served)
    app = PrecomputedApp(single=resolve_source("", str(served), fmt))
    chunk = "/1_1_1/0-16_0-16_0-16"
    expected = call(app, chunk)
    assert expected.status == 200

    os.rename(served, tmp_path / "moved")
    shutil.copytree(tmp_path / "moved", tmp_path / "copy")
    os.symlink(tmp_path / "copy", served)  # the same bytes, in another folder reached by a link
    assert call(app, chunk).status == 404
    assert call(app, "/info").status == 404

    os.unlink(served)
    shutil.copytree(tmp_path / "copy", served)  # made anew: a new inode under the same name
    again = call(app, chunk)
    assert again.status == 200 and again.body == expected.body


@settings(
    max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None
)
@given(path=st.text(min_size=0, max_size=300))
def test_arbitrary_paths_never_get_a_5xx(volumes, path):
    for fmt in ["blockfs", "raw"]:
        app = app_for(volumes[fmt])
        raw = "/" + path
        reply = call(app, raw.encode("utf-8", "surrogatepass").decode("latin-1"))
        assert reply.status < 500, (fmt, raw)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    level=st.sampled_from(["1_1_1", "2_2_2", "4_4_4", "x"]),
    numbers=st.lists(st.integers(min_value=-(2**70), max_value=2**70), min_size=6, max_size=6),
)
def test_arbitrary_chunk_names_never_get_a_5xx(volumes, level, numbers):
    x0, x1, y0, y1, z0, z1 = numbers
    for fmt in FORMATS:
        reply = call(app_for(volumes[fmt]), f"/{level}/{x0}-{x1}_{y0}-{y1}_{z0}-{z1}")
        assert reply.status in (200, 400, 404)


def test_missing_chunk_is_404_and_damaged_chunk_is_500(tmp_path, caplog):
    stack = random_stack((8, 32, 16), "uint16", seed=3)
    dest = make_volume(str(tmp_path), stack, "tiff", chunk=(16, 16, 16))
    os.unlink(os.path.join(dest, "1_1_1", "0-16_0-16_0-8.tiff"))
    with open(os.path.join(dest, "1_1_1", "0-16_16-32_0-8.tiff"), "wb") as f:
        f.write(b"II*\x00garbage")
    app = app_for(dest)
    assert call(app, "/1_1_1/0-16_0-16_0-8").status == 404
    assert call(app, "/1_1_1/0-16_16-32_0-8").status == 500
    assert "damaged" in caplog.text
    assert call(app, "/info").status == 200  # and the app goes on


# --- sources.json ---------------------------------------------------------------------------


@pytest.fixture
def sources_file(tmp_path, volumes):
    path = tmp_path / "sources.json"
    path.write_text(
        json.dumps(
            [
                {"name": "cells", "directory": volumes["tiff"], "format": "tiff"},
                {"name": "blocks", "directory": volumes["blockfs"], "format": "blockfs"},
                {"name": "arrays", "directory": volumes["zarr"]},
            ]
        )
    )
    return path


def test_sources_index_info_and_chunks(sources_file, volumes):
    table = SourceTable(str(sources_file))
    app = PrecomputedApp(sources=table.current)
    index = call(app, "/")
    assert index.status == 200 and b"cells" in index.body and b"blocks" in index.body
    names = json.loads(call(app, "/", headers={"Accept": "application/json"}).body)
    assert names == ["arrays", "blocks", "cells"]
    expected = open_volume(volumes["zarr"])[1][0:16, 0:16, 0:16]
    for name in names:
        assert call(app, f"/{name}/info").status == 200
        assert call(app, f"/{name}/mesh/info").status == 404
        reply = call(app, f"/{name}/1_1_1/0-16_0-16_0-16")
        np.testing.assert_array_equal(
            np.frombuffer(reply.body, "<u2").reshape(16, 16, 16), expected
        )
    assert call(app, "/nothing/info").status == 404


def test_original_wsgi_entry_point(sources_file):
    reply = call(
        lambda environ, start: serve_precomputed(environ, start, str(sources_file)), "/blocks/info"
    )
    assert reply.status == 200 and json.loads(reply.body)["data_type"] == "uint16"


def test_sources_reload_and_keep_the_last_good_list(sources_file, volumes, caplog):
    table = SourceTable(str(sources_file))
    app = PrecomputedApp(sources=table.current)
    assert call(app, "/cells/info").status == 200
    sources_file.write_text(json.dumps([{"name": "renamed", "directory": volumes["tiff"]}]))
    table._checked = 0  # skip the one-second debounce
    assert call(app, "/renamed/info").status == 200
    assert call(app, "/cells/info").status == 404
    sources_file.write_text("[{not json")
    table._checked = 0
    assert call(app, "/renamed/info").status == 200
    assert "keeping the previous sources" in caplog.text


@pytest.mark.parametrize(
    "content, message",
    [
        ("[{not json", "not valid JSON"),
        ('{"name": "x"}', "JSON list"),
        ('[{"directory": "/tmp"}]', 'needs a string "name"'),
        ('[{"name": "a/b", "directory": "/tmp"}]', "plain word"),
        ('[{"name": "a", "directory": "/does/not/exist"}]', "does not exist"),
        (
            '[{"name": "a", "directory": ".", "format": "raw"}, {"name": "a", "directory": "."}]',
            "twice",
        ),
        ('[{"name": "a", "directory": ".", "format": "png"}]', "not one of"),
        ('[{"name": "a", "directory": "."}]', 'holds no volume .* "format": "raw"'),
        ('[{"name": "a", "directory": "/"}]', "the whole file system"),
        ('[{"name": "a", "directory": "/", "format": "raw"}]', "the whole file system"),
        ('[{"name": "etc", "directory": "/etc"}]', "/etc holds no volume"),
        ('{"sources": [], "options": {"cache_size": "lots"}}', "not a size"),
        ('{"sources": [], "options": {"gzip": "yes"}}', "true or false"),
        ('{"sources": [], "options": {"threads": 4}}', "unknown options"),
    ],
)
def test_bad_sources_file_is_a_clear_error_at_start_up(tmp_path, content, message):
    path = tmp_path / "sources.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_sources(str(path))


def test_format_is_detected(volumes):
    for fmt in [*FORMATS, "raw"]:
        assert resolve_source("x", volumes[fmt], None).format == fmt
    moved = shutil.copytree(volumes["blockfs"], volumes["blockfs"] + "_moved")
    assert resolve_source("x", moved, None).format == "blockfs"


def test_make_app_takes_the_settings_from_arguments_and_the_sources_file(tmp_path, volumes):
    entries = [{"name": "blocks", "directory": volumes["blockfs"], "format": "blockfs"}]
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(entries))
    app = make_app(str(plain))
    assert (app.cors_origin, app.gzip_chunks, app.chunks.capacity) == ("*", False, 2**30)
    chunk = "/blocks/1_1_1/0-16_0-16_0-16"
    assert "content-encoding" not in call(app, chunk, headers={"Accept-Encoding": "gzip"}).headers

    options = {"cache_size": "64M", "gzip": True, "cors_origin": "https://viewer.lab"}
    configured = tmp_path / "configured.json"
    configured.write_text(json.dumps({"sources": entries, "options": options}))
    app = make_app(str(configured))
    assert app.chunks.capacity == 64 * 2**20
    reply = call(app, chunk, headers={"Accept-Encoding": "gzip", "Origin": "https://viewer.lab"})
    assert reply.headers["content-encoding"] == "gzip"
    assert reply.headers["access-control-allow-origin"] == "https://viewer.lab"
    expected = call(make_app(str(plain)), chunk).body
    assert gzip.decompress(reply.body) == expected

    app = make_app(str(configured), cache_bytes=0, gzip_chunks=False, cors_origin="*")
    reply = call(app, chunk, headers={"Accept-Encoding": "gzip"})
    assert app.chunks.capacity == 0 and "content-encoding" not in reply.headers
    assert reply.headers["access-control-allow-origin"] == "*" and reply.body == expected

    served = call(
        lambda environ, start: serve_precomputed(environ, start, str(configured), cache_bytes=5),
        "/blocks/info",
    )
    assert served.headers["access-control-allow-origin"] == "https://viewer.lab"


@pytest.mark.parametrize(
    "info, served",
    [
        ({"@type": "neuroglancer_skeletons", "vertex_attributes": []}, True),
        ({"@type": "neuroglancer_legacy_mesh"}, True),
        ({"annotation_type": "POINT"}, True),
        ({"type": "image", "scales": []}, True),
        ({"hello": "world"}, False),
        (None, False),
    ],
)
def test_only_folders_holding_a_neuroglancer_source_are_detected(tmp_path, info, served):
    if info is not None:
        (tmp_path / "info").write_text(json.dumps(info))
    (tmp_path / "notes.txt").write_text("private")
    if served:
        assert resolve_source("x", str(tmp_path), None).format == "raw"
    else:
        with pytest.raises(ConfigError, match="holds no volume"):
            resolve_source("x", str(tmp_path), None)
    assert resolve_source("x", str(tmp_path), "raw").format == "raw"


def test_the_viewer_states_voxel_size_is_the_infos_in_metres_without_float_noise():
    from precomputed_tif.serve.viewer import viewer_state

    info = {"scales": [{"resolution": [1000, 1800, 2000], "size": [8, 8, 8]}], "num_channels": 1}
    state = viewer_state("http://127.0.0.1:1", [("v", "", info, None, None)])
    assert state["dimensions"] == {"x": [1e-06, "m"], "y": [1.8e-06, "m"], "z": [2e-06, "m"]}
    assert "0000000" not in json.dumps(state["dimensions"])  # 1000 * 1e-9 is 1.0000000000000002e-06


def test_a_raw_file_kept_in_memory_is_read_again_once_rewritten(volumes, tmp_path, monkeypatch):
    """Without a file wrapper (granian), files are read whole and kept with the chunks under
    the ETag of their stat: a file rewritten in place or replaced is read again, at once."""
    import precomputed_tif.serve.app as app_module

    folder = shutil.copytree(volumes["raw"], tmp_path / "raw")
    name = sorted(os.listdir(folder / "1_1_1"))[0]
    path = folder / "1_1_1" / name
    reads = []
    whole_region = app_module._whole_region
    monkeypatch.setattr(
        app_module, "_whole_region", lambda region: reads.append(region) or whole_region(region)
    )
    app = app_for(str(folder))
    url = f"/1_1_1/{name}"
    original = path.read_bytes()
    assert call(app, url).body == original
    assert call(app, url).body == original
    assert len(reads) == 1  # the second answer came from memory

    changed = bytes(255 - b for b in original)
    stat = path.stat()
    path.write_bytes(changed)  # in place: same size and inode, a later time
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert call(app, url).body == changed

    replacement = tmp_path / "replacement"
    replacement.write_bytes(original)
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    os.replace(replacement, path)  # same size and time as the cached bytes, another inode
    assert call(app, url).body == original

    assert call(app, url, headers={"Range": "bytes=10-19"}).body == original[10:20]
    assert call(app, url, headers={"Range": "bytes=20-29"}).body == original[20:30]
    assert call(app_for(str(folder), cache_bytes=0), url).body == original
