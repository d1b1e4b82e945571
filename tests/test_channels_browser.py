"""The real Neuroglancer client, in headless Chromium, shows several channels in their colours.

Three channels converted into ``DEST/NAME`` volumes are served with ``--config DEST/sources.json
--viewer``: the printed link must show three layers, each channel's bright block in that
channel's colour where the data has it. An RGB stack (``num_channels`` 3, jpeg) shows in colour.
"""

from __future__ import annotations

import json
import urllib.parse

import numpy as np
import pytest

from browserkit import screenshots
from conftest import write_planes
from test_channels import NAMES, channel_stacks, rgb_blocks, run, sources, write_channels
from test_serve_cli import RunningServer, _need_browser, _outline


def _view(link: str, size_xyz, z: int, *, plain: bool = True) -> str:
    """An xy view of plane z filling the panel; `plain` hides axis lines and scale bar (seen
    here to leave a jpeg RGB layer undrawn at screenshot time, so that test keeps them)."""
    state = json.loads(urllib.parse.unquote(link.split("#!", 1)[1]))
    state.update(
        layout="xy",
        position=[size_xyz[0] / 2, size_xyz[1] / 2, z + 0.5],
        crossSectionScale=max(size_xyz[:2]) / 700,
    )
    if plain:
        state.update(showAxisLines=False, showScaleBar=False)
    return link.split("#!", 1)[0] + "#!" + urllib.parse.quote(json.dumps(state))


def _colour_at(image, box, shape_yx, ys: slice, xs: slice) -> np.ndarray:
    """The mean RGB drawn over the voxels ys, xs of the outlined volume."""
    top, bottom, left, right = box
    ny, nx = shape_yx
    rows = [int(top + (y + 0.5) * (bottom - top) / ny) for y in range(ys.start, ys.stop)]
    cols = [int(left + (x + 0.5) * (right - left) / nx) for x in range(xs.start, xs.stop)]
    return image[np.ix_(rows, cols)][..., :3].reshape(-1, 3).astype(float).mean(axis=0)


def _middle(ys: slice, xs: slice) -> tuple[slice, slice]:
    """The inner half of a block (edges blur between voxels on screen)."""
    dy, dx = (ys.stop - ys.start) // 4, (xs.stop - xs.start) // 4
    return slice(ys.start + dy, ys.stop - dy), slice(xs.start + dx, xs.stop - dx)


def _dominant(colour: np.ndarray) -> int:
    return int(np.argmax(colour))


@pytest.mark.slow
def test_three_channels_open_as_three_coloured_layers(tmp_path):
    _need_browser()
    stacks = channel_stacks((8, 40, 52), seed=12)
    dest = tmp_path / "out"
    done = run(
        *sources(write_channels(tmp_path, stacks)),
        "--dest",
        str(dest),
        "--format",
        "precomputed",
        "--voxel-size",
        "1,1,1",
        "--log",
        "WARNING",
    )
    assert done.returncode == 0, done.stderr
    _, ny, nx = stacks[0].shape
    blocks = [
        (slice(2, ny // 3), slice(2, nx // 3)),
        (slice(ny // 2, ny - 2), slice(nx // 3, 2 * nx // 3)),
        (slice(2, ny // 3), slice(2 * nx // 3 + 1, nx - 2)),
    ]
    with RunningServer("--config", str(dest / "sources.json"), "--viewer", log="WARNING") as srv:
        link = srv.viewer_line.split("Viewer: ", 1)[1].strip()
        state = json.loads(urllib.parse.unquote(link.split("#!", 1)[1]))
        assert [layer["name"] for layer in state["layers"]] == list(NAMES)
        assert all(layer["blend"] == "additive" for layer in state["layers"])
        found = None
        for image in screenshots(_view(link, (nx, ny, 8), 4), tmp_path / "shots"):
            box = _outline(image)
            if box is None:
                continue
            colours = [_colour_at(image, box, (ny, nx), *_middle(*b)) for b in blocks]
            background = _colour_at(image, box, (ny, nx), slice(ny - 6, ny - 2), slice(2, 8))
            found = colours, background
            if [_dominant(c) for c in colours] == [0, 1, 2]:
                break
    assert found is not None, "the volume's outline never showed"
    colours, background = found
    print("channel blocks drawn as", [c.round() for c in colours], "background", background)
    for c, colour in enumerate(colours):
        assert _dominant(colour) == c, f"channel {NAMES[c]}'s block is drawn {colour}"
        assert colour[c] > 80 and colour[c] > background[c] + 60, colour
        assert max(np.delete(colour, c)) < colour[c] / 2, colour  # that channel's colour alone


@pytest.mark.slow
@pytest.mark.parametrize("encoding", ["raw", "jpeg"])
def test_an_rgb_stack_shows_in_colour(tmp_path, encoding):
    _need_browser()
    rgb = rgb_blocks()
    write_planes(tmp_path / "rgb", rgb, photometric="rgb")
    dest = tmp_path / "out"
    done = run(
        "--source",
        str(tmp_path / "rgb"),
        "--dest",
        str(dest),
        "--format",
        "precomputed",
        "--encoding",
        encoding,
        "--voxel-size",
        "1,1,1",
        "--log",
        "WARNING",
    )
    assert done.returncode == 0, done.stderr
    nz, ny, nx, _ = rgb.shape
    blocks = [
        (slice(4, ny // 2), slice(4, nx // 3)),
        (slice(ny // 2, ny - 4), slice(nx // 3, 2 * nx // 3)),
        (slice(4, ny // 2), slice(2 * nx // 3, nx - 4)),
    ]
    with RunningServer("-d", str(dest), "--viewer", log="WARNING") as srv:
        link = srv.viewer_line.split("Viewer: ", 1)[1].strip()
        found = None
        for image in screenshots(
            _view(link, (nx, ny, nz), nz // 2, plain=False), tmp_path / "shots"
        ):
            box = _outline(image)
            if box is None:
                continue
            found = [_colour_at(image, box, (ny, nx), *_middle(*b)) for b in blocks]
            if [_dominant(c) for c in found] == [0, 1, 2]:
                break
    assert found is not None, "the volume's outline never showed"
    print("RGB blocks drawn as", [c.round() for c in found])
    for c, colour in enumerate(found):
        assert _dominant(colour) == c and colour[c] > 150, f"block {c} is drawn {colour}"
