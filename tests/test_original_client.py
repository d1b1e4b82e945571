"""The original client API (get_info, read_chunk, ArrayReader) on every layout and server.

Registration tools read boxes of remote volumes with ``read_chunk`` and probe levels with
``ArrayReader``. Checked here on folders, ``file://`` URLs, our server (tiff, zarr, blockfs
folders), a plain static web server (Neuroglancer's own files), volumes with a non-zero
``voxel_offset`` (written by TensorStore) and folders the original tool wrote, against numpy.
"""

from __future__ import annotations

import functools
import json
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from conftest import convert_stack, random_stack, reference_pyramid, write_planes
from precomputed_tif.blockfs_stack import BlockfsStack
from precomputed_tif.client import (
    ArrayReader,
    LevelNotFoundError,
    clear_cache,
    get_info,
    read_chunk,
)
from precomputed_tif.stack import Stack
from precomputed_tif.zarr_stack import ZarrStack
from test_original_layouts import BUGSHAPE_PLANES, ORIGINAL, STARDIST_PLANES, load_planes
from test_serve_cli import RunningServer

LEVELS = 3
FORMATS = ("tiff", "zarr", "blockfs", "precomputed")
# boxes in the level's voxels, x0, x1, y0, y1, z0, z1: inside, across chunks, past every edge
BOXES = [
    (0, 45, 0, 37, 0, 30),
    (5, 40, 3, 20, 7, 29),
    (-3, 10, 30, 45, 25, 35),
    (44, 45, 0, 1, 0, 1),
]


def expected_box(data: np.ndarray, box: tuple[int, ...], offset=(0, 0, 0)) -> np.ndarray:
    """The box of `data` (whose first voxel sits at `offset`, xyz), zeros outside it."""
    x0, x1, y0, y1, z0, z1 = box
    ox, oy, oz = offset
    padded = np.zeros((z1 - z0, y1 - y0, x1 - x0), data.dtype)
    for z in range(z0, z1):
        for y in range(y0, y1):
            for x in range(x0, x1):
                k, j, i = z - oz, y - oy, x - ox
                if 0 <= k < data.shape[0] and 0 <= j < data.shape[1] and 0 <= i < data.shape[2]:
                    padded[z - z0, y - y0, x - x0] = data[k, j, i]
    return padded


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    root = tmp_path_factory.mktemp("client_api")
    stack = random_stack((30, 37, 45), "uint16", seed=21)
    planes = write_planes(root / "planes", stack)
    dests = {}
    for fmt in FORMATS:
        dests[fmt] = str(root / fmt)
        convert_stack(planes, dests[fmt], fmt, chunk=(16, 16, 16), levels=LEVELS)
    return reference_pyramid(stack, LEVELS), dests


def check_url(url: str, pyramid: list[np.ndarray], fmt: str) -> None:
    """The calls registration tools make, on one URL."""
    clear_cache(url)
    info = get_info(url)
    assert info.data_type == np.dtype("uint16") and info.type == "image"
    scale = info.get_scale(1)
    assert scale.shape == [45, 37, 30] and scale.chunk_sizes == [16, 16, 16]
    assert scale.offset == [0, 0, 0] and scale.key == "1_1_1" and scale.encoding == "raw"
    assert info.get_scale((2, 2, 2)).shape == [23, 19, 15]
    with pytest.raises(KeyError):
        info.get_scale(8)
    for level, data in zip((1, 2), pyramid):
        for box in BOXES:
            got = read_chunk(url, *box, level=level, format=fmt)
            np.testing.assert_array_equal(got, expected_box(data, box), err_msg=f"{url} {box}")
    # level probing, as the alignment UI does: 2**k until the reader raises
    found = []
    for k in range(6):
        try:
            reader = ArrayReader(url, format=fmt, level=2**k)
        except KeyError:
            break
        found.append(reader.shape)
        np.testing.assert_array_equal(reader[1:9, ::3, -7:], pyramid[k][1:9, ::3, -7:])
        assert reader.scale.chunk_sizes == [16, 16, 16]
    assert found == [p.shape for p in pyramid]


@pytest.mark.parametrize("fmt", FORMATS)
def test_folders_and_file_urls(volumes, fmt):
    pyramid, dests = volumes
    path = dests[fmt]
    uri = Path(path).as_uri()
    for url in (path, uri, "precomputed://" + uri, uri + "/"):
        check_url(url, pyramid, fmt)


def test_our_server_for_tiff_zarr_blockfs(volumes, tmp_path):
    pyramid, dests = volumes
    config = tmp_path / "sources.json"
    config.write_text(
        json.dumps([{"name": fmt, "directory": dests[fmt]} for fmt in ("tiff", "zarr", "blockfs")])
    )
    server = RunningServer("--config", str(config), log="WARNING")
    try:
        for fmt in ("tiff", "zarr", "blockfs"):
            check_url(f"{server.url}/{fmt}", pyramid, fmt)
            check_url(f"precomputed://{server.url}/{fmt}", pyramid, "blockfs")
    finally:
        server.stop()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


def static_server(directory: str) -> tuple[ThreadingHTTPServer, str]:
    """Python's own static file server: no knowledge of volumes at all."""
    handler = functools.partial(_QuietHandler, directory=directory)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def test_plain_static_server(volumes):
    pyramid, dests = volumes
    server, url = static_server(dests["precomputed"])
    try:
        check_url(url, pyramid, "tiff")  # the original's default format, meaningless over HTTP
    finally:
        server.shutdown()
        server.server_close()


def test_cache_and_clear_cache(volumes, tmp_path):
    pyramid, dests = volumes
    dest = str(tmp_path / "copy")
    shutil.copytree(dests["blockfs"], dest)
    first = get_info(dest)
    assert get_info("precomputed://" + dest) is first
    info = json.loads(Path(dest, "info").read_text())
    info["type"] = "segmentation"
    Path(dest, "info").write_text(json.dumps(info))
    assert get_info(dest).type == "image"  # cached, as in the original
    clear_cache(dest)
    assert get_info(dest).type == "segmentation"
    clear_cache()
    assert get_info(dest) is not first


def tensorstore_volume(path: str, data: np.ndarray, offset: tuple[int, int, int]) -> None:
    """A precomputed volume written by TensorStore: `data` is (z, y, x, c)."""
    ts = pytest.importorskip("tensorstore")
    nz, ny, nx, nc = data.shape
    array = ts.open(
        {
            "driver": "neuroglancer_precomputed",
            "kvstore": Path(path).as_uri() + "/",
            "multiscale_metadata": {
                "data_type": data.dtype.name,
                "num_channels": nc,
                "type": "image",
            },
            "scale_metadata": {
                "size": [nx, ny, nz],
                "voxel_offset": list(offset),
                "chunk_size": [8, 8, 8],
                "resolution": [1, 1, 1],
                "encoding": "raw",
            },
            "create": True,
        }
    ).result()
    array[ts.d[:].translate_to[0]].write(data.transpose(2, 1, 0, 3)).result()


def test_non_zero_voxel_offset(tmp_path):
    """read_chunk takes the level's own coordinates, those of the chunk names (offset
    included), as the original did; ArrayReader indexes from the first stored voxel."""
    data = random_stack((10, 20, 30), "uint16", seed=4)  # z, y, x
    offset = (5, 7, 3)
    path = str(tmp_path / "offset")
    tensorstore_volume(path, data[..., np.newaxis], offset)
    server, url = static_server(path)
    try:
        for source in (path, url):
            clear_cache(source)
            assert get_info(source).get_scale(1).offset == list(offset)
            for box in [(5, 35, 7, 27, 3, 13), (0, 12, 10, 30, 0, 6), (30, 40, 20, 30, 10, 15)]:
                np.testing.assert_array_equal(
                    read_chunk(source, *box), expected_box(data, box, offset), err_msg=str(box)
                )
            np.testing.assert_array_equal(ArrayReader(source)[:, :, :], data)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("name", ["stardist_tiff", "stardist_zarr", "stardist_blockfs"])
def test_folders_the_original_wrote_read_and_serve(name):
    truth = load_planes(STARDIST_PLANES)
    path = str(ORIGINAL / name)
    reader = ArrayReader(Path(path).as_uri(), format=name.split("_")[1])
    np.testing.assert_array_equal(reader[:, :, :], truth)
    server = RunningServer("-d", path, log="WARNING")
    try:
        np.testing.assert_array_equal(
            read_chunk(server.url, 3, 50, 0, 61, 5, 31), truth[5:, :, 3:50]
        )
    finally:
        server.stop()


@pytest.mark.parametrize(
    "name,cls",
    [
        ("stardist_blockfs", BlockfsStack),
        ("bugshape_blockfs", BlockfsStack),
        ("bugshape_tiff", Stack),
        ("stardist_zarr", ZarrStack),
    ],
)
def test_pyramid_over_a_level_1_the_original_wrote(tmp_path, name, cls):
    """The original's level 1 (blockfs with absolute block paths that no longer exist, tiff,
    zarr), pyramided by our stack classes: every level is the true one, including where the
    original's own pyramid left chunks unwritten."""
    planes = load_planes(STARDIST_PLANES if name.startswith("stardist") else BUGSHAPE_PLANES)
    dest = tmp_path / name
    shutil.copytree(ORIGINAL / name, dest)
    stack = cls(planes.shape, str(dest))
    for level in range(2, LEVELS + 1):
        stack.write_level_n(level, silent=True, n_cores=1)
    clear_cache()
    for level, expected in enumerate(reference_pyramid(planes, LEVELS), start=1):
        got = ArrayReader(dest.as_uri(), format=cls.FORMAT, level=2 ** (level - 1))[:, :, :]
        np.testing.assert_array_equal(got, expected, err_msg=f"level {level}")


def test_missing_level_is_a_key_error(volumes):
    _, dests = volumes
    with pytest.raises(LevelNotFoundError, match="no scale 8_8_8") as error:
        ArrayReader(dests["blockfs"], format="blockfs", level=8)
    assert isinstance(error.value, KeyError) and isinstance(error.value, OSError)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ngff_info_from_the_multiscales(tmp_path, zarr_format):
    """OME-Zarr 0.4 (Zarr v2, ``.zattrs``) and 0.5 (Zarr v3, ``ome`` in ``zarr.json``), written
    by zarr-python: one scale per dataset, with the arrays' own type (the original always
    said uint16)."""
    zarr = pytest.importorskip("zarr")
    path = str(tmp_path / "image.ome.zarr")
    group = zarr.open_group(path, mode="w", zarr_format=zarr_format)
    multiscales = [{"version": "0.4", "datasets": [{"path": "0"}, {"path": "1"}]}]
    if zarr_format == 2:
        group.attrs["multiscales"] = multiscales
    else:
        group.attrs["ome"] = {"version": "0.5", "multiscales": multiscales}
    for name, shape in (("0", (1, 1, 10, 20, 30)), ("1", (1, 1, 5, 10, 15))):
        group.create_array(name, shape=shape, chunks=(1, 1, 8, 8, 8), dtype="uint8")
    from precomputed_tif.client import get_ngff_info

    info = get_ngff_info(Path(path).as_uri())
    assert info.data_type == np.uint8
    assert [s.key for s in info.scales] == ["1_1_1", "2_2_2"]
    assert info.get_scale(2).shape == [15, 10, 5] and info.get_scale(1).chunk_sizes == [8, 8, 8]


def test_several_channels_read_as_zyxc(tmp_path):
    """Not the original's (one channel only): TensorStore's multi-channel volumes read whole."""
    data = random_stack((6, 9, 11, 3), "uint8", seed=9)
    path = str(tmp_path / "channels")
    tensorstore_volume(path, data, (0, 0, 0))
    np.testing.assert_array_equal(read_chunk(path, 2, 11, 0, 5, 1, 6), data[1:6, 0:5, 2:11])
    reader = ArrayReader(Path(path).as_uri())
    assert reader.shape == data.shape
    np.testing.assert_array_equal(reader.read_chunk(-1, 4, 0, 9, 0, 6)[:, :, 1:], data[:, :, :4])
