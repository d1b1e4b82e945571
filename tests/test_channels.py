"""Several channels: one --source each, RGB planes, ImageJ hyperstacks; read back per channel.

Every channel is compared with a numpy reference pyramid by independent readers: zarr-python and
ome-zarr-py for the OME-Zarr image with a ``c`` axis, TensorStore for the precomputed volumes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from conftest import reference_pyramid, write_planes
from test_cli import assert_one_line_error

NAMES = ("488", "561", "642")


def channel_stacks(shape=(12, 40, 52), seed=5) -> np.ndarray:
    """Three uint16 channels (c, z, y, x), each with its own bright block at its own place."""
    rng = np.random.default_rng(seed)
    stacks = rng.integers(0, 200, (3, *shape), dtype=np.uint16)
    _, ny, nx = shape
    places = [(slice(2, ny // 3), slice(2, nx // 3))]
    places.append((slice(ny // 2, ny - 2), slice(nx // 3, 2 * nx // 3)))
    places.append((slice(2, ny // 3), slice(2 * nx // 3 + 1, nx - 2)))
    for c, (ys, xs) in enumerate(places):
        stacks[c][:, ys, xs] += np.uint16(3000 + 1000 * c)
    return stacks


def write_channels(folder, stacks) -> list[str]:
    return [write_planes(folder / name, stack) for name, stack in zip(NAMES, stacks)]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "precomputed_tif.cli.convert", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def sources(globs) -> list[str]:
    return [a for g in globs for a in ("--source", g)]


def test_three_channels_become_one_ome_zarr_image_with_a_c_axis(tmp_path):
    import zarr

    stacks = channel_stacks()
    dest = str(tmp_path / "image.ome.zarr")
    done = run(
        *sources(write_channels(tmp_path, stacks)),
        "--dest",
        dest,
        "--format",
        "ngff",
        "--chunk-size",
        "16,16,8",
        "--n-cores",
        "2",
        "--log",
        "WARNING",
    )
    assert done.returncode == 0, done.stderr
    with open(os.path.join(dest, ".zattrs")) as f:
        attributes = json.load(f)
    channels = attributes["omero"]["channels"]
    assert [c["label"] for c in channels] == list(NAMES)
    assert len({c["color"] for c in channels}) == 3
    for c, channel in enumerate(channels):  # windows from each channel's own data
        window = channel["window"]
        assert window["end"] > 2000 + 1000 * c and window["start"] < 300, window
    expected = [reference_pyramid(stack, 3) for stack in stacks]
    for level in range(3):
        array = zarr.open_array(os.path.join(dest, str(level)), mode="r")
        assert array.shape[:2] == (1, 3) and array.chunks[1] == 1
        for c in range(3):
            np.testing.assert_array_equal(array[0, c], expected[c][level])


def test_ome_zarr_py_sees_three_named_channels(tmp_path):
    pytest.importorskip("ome_zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import OMERO, Multiscales, Reader

    stacks = channel_stacks(seed=6)
    dest = str(tmp_path / "sharded")
    done = run(
        *sources(write_channels(tmp_path, stacks)),
        "--dest",
        dest,
        "--format",
        "ngff",
        "--sharded",
        "--task-memory",
        "1M",
        "--chunk-size",
        "16,16,8",
        "--log",
        "WARNING",
        "--channel-names",
        "dapi,gfp,rfp",
    )
    assert done.returncode == 0, done.stderr
    image = list(Reader(parse_url(dest))())[0]
    assert image.load(Multiscales) is not None and image.load(OMERO) is not None
    assert image.metadata["channel_names"] == ["dapi", "gfp", "rfp"]
    for level, data in enumerate(image.data):
        want = [reference_pyramid(s, level + 1)[level] for s in stacks]
        np.testing.assert_array_equal(np.asarray(data)[0], np.stack(want))


def test_channels_as_precomputed_volumes_listed_by_sources_json(tmp_path):
    import tensorstore as ts

    stacks = channel_stacks(seed=7)
    dest = tmp_path / "out"
    done = run(
        *sources(write_channels(tmp_path, stacks)),
        "--dest",
        str(dest),
        "--format",
        "precomputed",
        "--chunk-size",
        "16,16,8",
        "--n-cores",
        "2",
    )
    assert done.returncode == 0, done.stderr
    assert f"--config {dest / 'sources.json'} --viewer" in done.stdout
    listed = json.loads((dest / "sources.json").read_text())
    assert [e["name"] for e in listed] == list(NAMES)
    assert [e["directory"] for e in listed] == list(NAMES)
    assert len({e["color"] for e in listed}) == 3
    for name, stack in zip(NAMES, stacks):
        expected = reference_pyramid(stack, 3)
        for level in range(3):
            vol = ts.open(
                {
                    "driver": "neuroglancer_precomputed",
                    "kvstore": f"file://{dest / name}",
                    "scale_index": level,
                }
            ).result()
            got = np.asarray(vol.read().result())[..., 0].transpose(2, 1, 0)
            np.testing.assert_array_equal(got, expected[level])
    from precomputed_tif.serve.config import load_sources

    served = load_sources(str(dest / "sources.json"))
    assert [s.color for s in served.values()] == [e["color"] for e in listed]


def test_an_interrupted_set_of_channels_resumes_to_the_same_bytes(tmp_path):
    stacks = channel_stacks(seed=8)
    globs = write_channels(tmp_path, stacks)
    common = [*sources(globs), "--format", "zarr", "--chunk-size", "16,16,8", "--log", "WARNING"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert run(*common, "--dest", str(whole)).returncode == 0
    assert run(*common, "--dest", str(cut)).returncode == 0
    # as a kill between two channels leaves it: no sources.json, the last channel not begun
    os.remove(cut / "sources.json")
    subprocess.run(["rm", "-rf", str(cut / "642")], check=True)
    refused = run(*common, "--dest", str(cut), "--channel-names", "a,b,c")
    assert_one_line_error(refused, "holds other channels")
    resumed = run(*common, "--dest", str(cut), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert _tree(whole) == _tree(cut)
    again = run(*common, "--dest", str(cut))
    assert again.returncode == 0 and "nothing to do" in again.stderr
    checked = run("--verify", str(cut), *sources(globs))
    assert checked.returncode == 0, checked.stdout
    assert checked.stdout.count("OK:") == 3


def _tree(root) -> dict[str, bytes]:
    out = {}
    for folder, _, files in os.walk(root):
        if ".precomputed-tif" in folder:
            continue
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def test_rgb_planes_as_one_three_channel_precomputed_volume(tmp_path):
    import tensorstore as ts

    rng = np.random.default_rng(9)
    rgb = rng.integers(0, 255, (6, 33, 47, 3), dtype=np.uint8)
    write_planes(tmp_path / "rgb", rgb, photometric="rgb")
    dest = tmp_path / "out"
    done = run(
        "--source",
        str(tmp_path / "rgb"),
        "--dest",
        str(dest),
        "--format",
        "precomputed",
        "--chunk-size",
        "16,16,4",
        "--log",
        "WARNING",
    )
    assert done.returncode == 0, done.stderr
    info = json.loads((dest / "info").read_text())
    assert info["num_channels"] == 3
    for level in range(len(info["scales"])):
        vol = ts.open(
            {
                "driver": "neuroglancer_precomputed",
                "kvstore": f"file://{dest}",
                "scale_index": level,
            }
        ).result()
        got = np.asarray(vol.read().result()).transpose(2, 1, 0, 3)
        want = np.stack([reference_pyramid(rgb[..., c], level + 1)[level] for c in range(3)], -1)
        np.testing.assert_array_equal(got, want)
    smooth = rgb_blocks()  # jpeg keeps flat colours, not noise
    write_planes(tmp_path / "smooth", smooth, photometric="rgb")
    jpeg = tmp_path / "jpeg"
    done = run(
        "--source",
        str(tmp_path / "smooth"),
        "--dest",
        str(jpeg),
        "--format",
        "precomputed",
        "--encoding",
        "jpeg",
        "--log",
        "WARNING",
    )
    assert done.returncode == 0, done.stderr
    vol = ts.open({"driver": "neuroglancer_precomputed", "kvstore": f"file://{jpeg}"}).result()
    got = np.asarray(vol.read().result()).transpose(2, 1, 0, 3).astype(float)
    assert got.shape == smooth.shape
    assert np.abs(got - smooth).mean() < 6


def rgb_blocks(shape=(6, 48, 64)) -> np.ndarray:
    """An RGB stack (z, y, x, 3) of a red, a green and a blue block on grey."""
    nz, ny, nx = shape
    rgb = np.full((nz, ny, nx, 3), 40, np.uint8)
    rgb[:, 4 : ny // 2, 4 : nx // 3] = (230, 20, 20)
    rgb[:, ny // 2 : ny - 4, nx // 3 : 2 * nx // 3] = (20, 230, 20)
    rgb[:, 4 : ny // 2, 2 * nx // 3 : nx - 4] = (20, 20, 230)
    return rgb


def test_rgb_planes_default_to_three_channels_elsewhere(tmp_path):
    import zarr

    rng = np.random.default_rng(10)
    rgb = rng.integers(0, 255, (5, 20, 24, 3), dtype=np.uint8)
    write_planes(tmp_path / "rgb", rgb, photometric="rgb")
    dest = tmp_path / "out"
    done = run(
        "--source",
        str(tmp_path / "rgb"),
        "--dest",
        str(dest),
        "--format",
        "ngff",
        "--log",
        "WARNING",
    )
    assert done.returncode == 0, done.stderr
    array = zarr.open_array(str(dest / "0"), mode="r")
    np.testing.assert_array_equal(np.moveaxis(array[0], 0, -1), rgb)
    labels = [c["label"] for c in json.loads((dest / ".zattrs").read_text())["omero"]["channels"]]
    assert labels == ["red", "green", "blue"]
    tiffs = tmp_path / "tiffs"
    done = run("--source", str(tmp_path / "rgb"), "--dest", str(tiffs), "--log", "WARNING")
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(tiffs)) == [".precomputed-tif", "blue", "green", "red", "sources.json"]
    from precomputed_tif import open_volume

    for c, name in enumerate(("red", "green", "blue")):
        np.testing.assert_array_equal(open_volume(str(tiffs / name))[1][:, :, :], rgb[..., c])


@pytest.mark.parametrize("axes", ["ZCYX", "CZYX"])
def test_an_imagej_hyperstack_becomes_its_channels(tmp_path, axes):
    import zarr

    stacks = channel_stacks((7, 21, 26), seed=11)  # (c, z, y, x)
    data = np.moveaxis(stacks, 0, 1) if axes == "ZCYX" else stacks
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, data, imagej=axes == "ZCYX", metadata={"axes": axes})
    dest = tmp_path / "out"
    done = run(
        "--source",
        str(path),
        "--dest",
        str(dest),
        "--format",
        "ngff",
        "--chunk-size",
        "8,8,8",
        "--log",
        "WARNING",
    )
    assert done.returncode == 0, done.stderr
    for level in range(2):
        array = zarr.open_array(str(dest / str(level)), mode="r")
        for c in range(3):
            np.testing.assert_array_equal(array[0, c], reference_pyramid(stacks[c], 2)[level])


def test_a_one_plane_imagej_file_of_channels_becomes_a_volume_per_channel(tmp_path):
    from precomputed_tif import open_volume

    planes = channel_stacks((1, 20, 24), seed=5)[:, 0]  # (c, y, x): one z, three channels
    path = tmp_path / "cyx.tif"
    tifffile.imwrite(path, planes, imagej=True, metadata={"axes": "CYX"})
    dest = tmp_path / "out"
    done = run("--source", str(path), "--dest", str(dest), "--format", "zarr", "--log", "WARNING")
    assert done.returncode == 0, done.stderr
    for c in range(3):
        np.testing.assert_array_equal(open_volume(str(dest / f"c{c}"))[1][0], planes[c])


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ("planes", "channel 'bad' has 11 planes; expected 12 like channel '488'"),
        ("shape", "channel 'bad' has planes of 53x40 pixels; expected 52x40"),
        ("dtype", "channel 'bad' has data type uint8; expected uint16"),
        ("names", "--channel-names gives 2 names for 3 channels"),
    ],
)
def test_channels_that_differ_are_refused_and_nothing_is_written(tmp_path, bad, fragment):
    stacks = channel_stacks()
    globs = write_channels(tmp_path, stacks)
    extra = []
    if bad == "planes":
        globs[2] = write_planes(tmp_path / "bad", stacks[2][:-1])
    elif bad == "shape":
        globs[2] = write_planes(tmp_path / "bad", np.pad(stacks[2], ((0, 0), (0, 0), (0, 1))))
    elif bad == "dtype":
        globs[2] = write_planes(tmp_path / "bad", stacks[2].astype(np.uint8))
    else:
        extra = ["--channel-names", "a,b"]
    dest = tmp_path / "out"
    for format_name in ("ngff", "precomputed"):
        refused = run(*sources(globs), *extra, "--dest", str(dest), "--format", format_name)
        assert_one_line_error(refused, fragment)
        assert not dest.exists()


def test_the_served_link_shows_each_channel_in_its_colour_and_contrast(tmp_path):
    import urllib.parse

    from servekit import RunningServer

    stacks = channel_stacks(seed=13)
    dest = tmp_path / "out"
    done = run(*sources(write_channels(tmp_path, stacks)), "--dest", str(dest), "--log", "WARNING")
    assert done.returncode == 0, done.stderr
    listed = json.loads((dest / "sources.json").read_text())
    with RunningServer("--config", str(dest / "sources.json"), "--viewer", log="WARNING") as srv:
        link = srv.viewer_line.split("Viewer: ", 1)[1].strip()
        status, _, _ = srv.get("/561/info")
    assert status == 200
    state = json.loads(urllib.parse.unquote(link.split("#!", 1)[1]))
    layers = state["layers"]
    assert [layer["name"] for layer in layers] == list(NAMES)
    for c, (layer, entry) in enumerate(zip(layers, listed)):
        assert layer["source"] == f"precomputed://{srv.url}/{NAMES[c]}"
        assert layer["blend"] == "additive"
        assert f'default="#{entry["color"].lower()}"' in layer["shader"]
        low, high = layer["shaderControls"]["normalized"]["range"]
        assert low < 300 and high > 2000 + 1000 * c  # each channel's own bright end


def test_a_bad_colour_in_sources_json_is_refused(tmp_path):
    from precomputed_tif.serve.config import ConfigError, load_sources

    stacks = channel_stacks(seed=14)
    write_planes(tmp_path / "vol", stacks[0])
    dest = tmp_path / "one"
    assert run("--source", str(tmp_path / "vol"), "--dest", str(dest)).returncode == 0
    config = tmp_path / "sources.json"
    config.write_text(json.dumps([{"name": "a", "directory": "one", "color": "red"}]))
    with pytest.raises(ConfigError, match="expected RRGGBB"):
        load_sources(str(config))


def test_memory_planning_counts_every_channel():
    import dataclasses

    from precomputed_tif import plan_pyramid
    from precomputed_tif.plan import task_bytes

    one = plan_pyramid((512, 512, 64), "uint16", voxel_size_nm=(1000, 1000, 1000))
    three = dataclasses.replace(one, num_channels=3)
    for first in (1, 2):
        region = (256, 256, 64)
        assert task_bytes(three, first, region, 0) == 3 * task_bytes(one, first, region, 0)


@pytest.mark.parametrize("format_name", ["ngff", "zarr"])
def test_a_run_of_channels_killed_mid_way_resumes_to_the_same_bytes(tmp_path, format_name):
    """A real SIGKILL: ngff mid-way through its one run of all channels; zarr during the second
    channel's volume. The killed run must not look finished; --resume gives the same bytes."""
    import signal
    import time

    stacks = channel_stacks((32, 64, 64), seed=15)
    globs = write_channels(tmp_path, stacks)
    args = [*sources(globs), "--format", format_name, "--chunk-size", "16,16,16"]
    args += ["--task-memory", "400K", "--n-cores", "1", "--log", "WARNING"]
    whole = tmp_path / "whole" / "vol"
    assert run(*args, "--dest", str(whole)).returncode == 0
    dest = tmp_path / "killed" / "vol"
    process = subprocess.Popen(
        [sys.executable, "-m", "precomputed_tif.cli.convert", *args, "--dest", str(dest)]
    )
    inner = dest if format_name == "ngff" else dest / NAMES[1]
    done_log = inner / ".precomputed-tif" / "done-1"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if done_log.exists() and done_log.stat().st_size > 6:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    if process.returncode == -signal.SIGKILL:
        finished = dest / (".zattrs" if format_name == "ngff" else "sources.json")
        assert not finished.exists(), "a killed run must not look complete"
    resumed = run(*args, "--dest", str(dest), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert _tree(whole) == _tree(dest)
