"""The voxel size the planes record (ImageJ, OME-XML): `--voxel-size auto`, the hint when the
default is used instead, and microns turned into the info's nanometres without truncation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from precomputed_tif.calibration import micrometres_per, recorded_voxel_size
from test_cli import assert_one_line_error, run_cli

DATA = Path(__file__).parent / "data" / "stacks"


def _resolution(dest: Path) -> list:
    return json.loads((dest / "info").read_text())["scales"][0]["resolution"]


def _imagej_stack(path: Path, xy_um: float, z_um: float | None, unit: str = "um") -> Path:
    stack = np.arange(4 * 20 * 24, dtype=np.uint16).reshape(4, 20, 24)
    metadata: dict = {"unit": unit, "axes": "ZYX"}
    if z_um is not None:
        metadata["spacing"] = z_um
    tifffile.imwrite(path, stack, imagej=True, resolution=(1 / xy_um, 1 / xy_um), metadata=metadata)
    return path


def test_auto_takes_the_imagej_calibration(tmp_path):
    source = _imagej_stack(tmp_path / "s.tif", 0.1625, 2.5)
    result = run_cli("--source", str(source), "--dest", str(tmp_path / "o"), "--voxel-size", "auto")
    assert result.returncode == 0, result.stderr
    # 0.1625 um is 162.5 nm, kept as it is rather than truncated to a whole nanometre
    assert _resolution(tmp_path / "o") == pytest.approx([162.5, 162.5, 2500])
    assert "0.1625 x 0.1625 x 2.5 µm, from the planes' ImageJ metadata" in result.stderr


def test_the_default_stays_the_original_and_says_what_the_planes_record(tmp_path):
    source = _imagej_stack(tmp_path / "s.tif", 0.5, 3.0)
    result = run_cli("--source", str(source), "--dest", str(tmp_path / "o"))
    assert result.returncode == 0, result.stderr
    assert _resolution(tmp_path / "o") == [1800, 1800, 2000]
    hints = [line for line in result.stderr.splitlines() if "--voxel-size auto" in line]
    assert len(hints) == 1 and "0.5 x 0.5 x 3 µm" in hints[0], result.stderr
    assert "WARNING" not in result.stderr


def test_no_hint_without_a_calibration_or_with_a_given_size(tmp_path):
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.ones((3, 8, 8), np.uint16), photometric="minisblack")
    result = run_cli("--source", str(plain), "--dest", str(tmp_path / "a"))
    assert result.returncode == 0, result.stderr
    assert "voxel-size auto" not in result.stderr
    calibrated = _imagej_stack(tmp_path / "s.tif", 0.5, 3.0)
    args = ["--source", str(calibrated), "--dest", str(tmp_path / "b"), "--voxel-size", "1,1,4"]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert "voxel-size auto" not in result.stderr
    assert _resolution(tmp_path / "b") == [1000, 1000, 4000]


def test_auto_on_real_imagej_stacks():
    # written by ImageJ/Fiji (unit "\u00B5m" escaped in the description, and "mm")
    plate = DATA / "mitotic_plate_calibrated" / "original_xyz_8bit__mitotic_plate_calibrated.tiff"
    with tifffile.TiffFile(plate) as tif:
        found = recorded_voxel_size(tif)
    assert found is not None and found.where == "ImageJ"
    assert found.x_um == pytest.approx(1 / 11.737581, rel=1e-5) and found.z_um == 3.0
    with tifffile.TiffFile(DATA / "mini_t1_head" / "original_mini-t1-head.tif") as tif:
        found = recorded_voxel_size(tif)
    assert found is not None
    assert (found.x_um, found.y_um, found.z_um) == (1500, 1500, 1500)  # 1.5 mm, not 1.5000015


def test_auto_reads_ome_physical_sizes_in_their_units(tmp_path):
    path = tmp_path / "s.ome.tif"
    metadata = {
        "axes": "ZYX",
        "PhysicalSizeX": 650,
        "PhysicalSizeXUnit": "nm",
        "PhysicalSizeY": 0.65,
        "PhysicalSizeZ": 0.002,
        "PhysicalSizeZUnit": "mm",
    }
    stack = np.ones((3, 8, 8), np.uint16)
    tifffile.imwrite(path, stack, photometric="minisblack", metadata=metadata)
    result = run_cli("--source", str(path), "--dest", str(tmp_path / "o"), "--voxel-size", "auto")
    assert result.returncode == 0, result.stderr
    assert _resolution(tmp_path / "o") == pytest.approx([650, 650, 2000])


def test_auto_on_planes_without_a_z_step_is_one_line(tmp_path):
    planes = tmp_path / "planes"
    planes.mkdir()
    for z in range(3):  # ImageJ saves a single plane with its pixel size but no z spacing
        tifffile.imwrite(
            planes / f"p_{z}.tif",
            np.full((8, 8), z, np.uint16),
            imagej=True,
            resolution=(1 / 0.65, 1 / 0.65),
            metadata={"unit": "micron"},
        )
    dest = tmp_path / "o"
    result = run_cli("--source", str(planes), "--dest", str(dest), "--voxel-size", "auto")
    assert_one_line_error(result, "0.65 x 0.65 µm in x and y but no z step", "0.65,0.65,Z")
    assert not dest.exists()


def test_auto_without_a_calibration_is_one_line(tmp_path):
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.ones((3, 8, 8), np.uint16), photometric="minisblack")
    dest = tmp_path / "o"
    result = run_cli("--source", str(plain), "--dest", str(dest), "--voxel-size", "auto")
    assert_one_line_error(result, "record no voxel size", "--voxel-size x,y,z")
    assert not dest.exists()
    shape = run_cli("--shape", "64,64,64", "--dry-run", "--dest", str(dest), "--voxel-size", "auto")
    assert_one_line_error(shape, "give --source")


@pytest.mark.parametrize("text", ["nan,1,1", "1,inf,1", "1,1,0", "1,1"])
def test_voxel_sizes_that_are_not_sizes_are_refused(tmp_path, text):
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.ones((3, 8, 8), np.uint16), photometric="minisblack")
    result = run_cli("--source", str(plain), "--dest", str(tmp_path / "o"), "--voxel-size", text)
    assert_one_line_error(result, "not three positive numbers")
    assert not os.path.exists(tmp_path / "o")


def test_microns_become_the_nearest_nanometre_not_one_below(tmp_path):
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.ones((3, 8, 8), np.uint16), photometric="minisblack")
    # each of these times 1000 lands just below a whole number in binary floating point
    size = "2.01,1.001,2.03"
    result = run_cli("--source", str(plain), "--dest", str(tmp_path / "o"), "--voxel-size", size)
    assert result.returncode == 0, result.stderr
    resolution = _resolution(tmp_path / "o")
    assert resolution == [2010, 1001, 2030]
    assert all(isinstance(r, int) for r in resolution)


def test_unit_names():
    assert micrometres_per("\\u00B5m") == 1.0
    assert micrometres_per("µm") == micrometres_per("micron") == micrometres_per("um") == 1.0
    assert micrometres_per("nm") == 1e-3 and micrometres_per("mm") == 1e3
    assert micrometres_per("pixel") is None and micrometres_per("") is None
