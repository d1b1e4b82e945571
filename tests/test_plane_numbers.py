"""Planes missing from a numbered sequence are said in one warning; regular, unnumbered or
multi-number names are not."""

from __future__ import annotations

import logging

import pytest

from conftest import random_stack, write_planes
from precomputed_tif.plane_numbers import plane_numbers, warn_if_planes_missing
from test_cli import run_cli


def _warnings(caplog: pytest.LogCaptureFixture, names: list[str]) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="precomputed_tif"):
        warn_if_planes_missing([f"/data/stack/{n}" for n in names])
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_missing_plane_is_named(caplog):
    names = [f"img_{z:04d}.tif" for z in range(12) if z != 5]
    (message,) = _warnings(caplog, names)
    assert message.startswith("1 plane(s) missing from the numbering? It jumps from 4 to 6")
    assert "img_0004.tif, img_0006.tif" in message


def test_several_gaps_count_every_missing_plane(caplog):
    kept = [z for z in range(40) if z not in (3, 17, 18, 30)]
    (message,) = _warnings(caplog, [f"Z{z:03d}_C1.tif" for z in kept])
    assert message.startswith("4 plane(s) missing") and "and 2 more gap(s)" in message


def test_z_positions_in_steps_of_twenty(caplog):
    # SmartSPIM names planes by z position in tenths of a micron
    regular = [f"{75080 + 20 * i:06d}.tif" for i in range(10)]
    assert _warnings(caplog, regular) == []
    gapped = regular[:4] + regular[6:]
    (message,) = _warnings(caplog, gapped)
    assert message.startswith("2 plane(s) missing") and "from 75140 to 75200" in message


@pytest.mark.parametrize(
    "names",
    [
        [f"img_{z:04d}.tif" for z in range(10)],  # complete
        ["a.tif", "b.tif", "c.tif"],  # no numbers
        ["s_0_t5.tif", "s_1_t9.tif", "s_3_t2.tif"],  # two numbers change: no guess
        ["img_0.tif", "img_5.tif", "img_10.tif", "img_17.tif"],  # spaced unevenly on purpose
        ["img_1.tif", "img_3.tif"],  # too few to tell a step
        ["img_2.tif", "img_10.tif", "img_1.tif"],  # not increasing (alphabetical, unpadded)
    ],
)
def test_no_warning_without_a_regular_count(caplog, names):
    assert _warnings(caplog, names) == []


def test_plane_numbers_takes_the_one_changing_field():
    names = [f"/d/ch488_Z{z:03d}_t0001.tif" for z in (4, 5, 7)]
    assert plane_numbers(names) == [4, 5, 7]
    assert plane_numbers(["/d/a1.tif", "/d/a1_b2.tif"]) is None


def test_the_command_warns_once_and_still_converts(tmp_path):
    stack = random_stack((6, 16, 16), "uint16", seed=4)
    names = [f"plane_{z:04d}.tif" for z in (0, 1, 2, 4, 5, 6)]
    source = write_planes(tmp_path / "planes", stack, names=names)
    result = run_cli("--source", source, "--dest", str(tmp_path / "o"), "--chunk-size", "8,8,8")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "It jumps from 2 to 4" in warnings[0], result.stderr
