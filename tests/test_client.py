"""The original client API (ArrayReader) and precomputed-save, on folders and over HTTP."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tifffile

from conftest import convert_stack, random_stack, reference_pyramid, write_planes
from precomputed_tif import StoreError
from precomputed_tif.client import ArrayReader
from test_serve_cli import RunningServer


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    root = tmp_path_factory.mktemp("client")
    stack = random_stack((20, 36, 44), "uint16", seed=8)
    dest = str(root / "blockfs")
    convert_stack(write_planes(root / "planes", stack), dest, "blockfs", chunk=(16, 16, 16))
    return stack, dest


def test_array_reader_levels_and_slicing(volume):
    stack, dest = volume
    full = ArrayReader(dest, format="blockfs", level=1)
    assert full.shape == stack.shape and full.dtype == np.uint16 and len(full) == 20
    np.testing.assert_array_equal(full[3:9, 5:30, 7:40], stack[3:9, 5:30, 7:40])
    np.testing.assert_array_equal(full[4, :, -10:], stack[4, :, -10:])
    np.testing.assert_array_equal(full[::2, 1:20:3, 5], stack[::2, 1:20:3, 5])
    half = ArrayReader("file://" + dest, level=2)
    np.testing.assert_array_equal(half[:, :, :], reference_pyramid(stack, 2)[1])
    with pytest.raises(StoreError, match="no scale 8_8_8"):
        ArrayReader(dest, level=8)


def test_array_reader_over_http(volume):
    stack, dest = volume
    server = RunningServer("-d", dest, log="WARNING")
    try:
        reader = ArrayReader(f"precomputed://{server.url}", format="blockfs", level=1)
        np.testing.assert_array_equal(reader[2:18, 0:36, 10:44], stack[2:18, 0:36, 10:44])
    finally:
        server.stop()


def save(*args):
    return subprocess.run(
        [sys.executable, "-m", "precomputed_tif.cli.save", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_save_plane_projection_rotation_and_subvolume(tmp_path, volume):
    stack, dest = volume
    out = str(tmp_path / "plane.tif")
    assert save("--url", dest, "--output", out, "--coordinate", "7").returncode == 0
    np.testing.assert_array_equal(tifffile.imread(out), stack[7])
    result = save(
        "--url",
        dest,
        "--output",
        out,
        "--x",
        "--coordinate",
        "10",
        "--depth",
        "4",
        "--rotate-right",
        "--flip-vertically",
    )
    assert result.returncode == 0, result.stderr
    expected = np.rot90(stack[:, :, 10:14].max(axis=2), 1)[::-1]
    np.testing.assert_array_equal(tifffile.imread(out), expected)
    result = save("--url", dest, "--output", out, "--subvolume", "4,40,2,30,1,19")
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(tifffile.imread(out), stack[1:19, 2:30, 4:40])


def test_save_errors_are_one_line(tmp_path, volume):
    _, dest = volume
    result = save("--url", dest, "--output", str(tmp_path / "p.tif"), "--coordinate", "99")
    assert (
        result.returncode == 2 and "outside" in result.stderr and "Traceback" not in result.stderr
    )
    result = save(
        "--url", str(tmp_path / "nothing"), "--output", str(tmp_path / "p.tif"), "--coordinate", "1"
    )
    assert result.returncode == 2 and "no info file" in result.stderr
