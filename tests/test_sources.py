"""Plane sources: every TIFF flavour reads back exactly; bad input fails with a clear message."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import tifffile

from conftest import random_stack, write_planes
from precomputed_tif import SourceError, open_source
from precomputed_tif.geometry import Box
from precomputed_tif.sources import _raw_stack

FLAVOURS = {
    "uncompressed": {},
    "deflate": {"compression": "zlib"},
    "lzw": {"compression": "lzw"},
    "packbits": {"compression": "packbits"},
    "zstd": {"compression": "zstd"},
    "striped": {"compression": "zlib", "rowsperstrip": 3},
    "uncompressed_striped": {"rowsperstrip": 5},
    "tiled": {"compression": "zstd", "tile": (16, 16)},
    "tiled_uncompressed": {"tile": (16, 32)},
    "bigtiff": {"bigtiff": True, "compression": "zlib"},
    "big_endian": {"byteorder": ">"},
    "big_endian_deflate": {"byteorder": ">", "compression": "zlib", "rowsperstrip": 4},
}


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("dtype", ["uint16", "int32", "float32"])
def test_every_flavour_reads_back_exactly(tmp_path, flavour, dtype):
    stack = random_stack((4, 37, 45), dtype, seed=1)
    source = open_source(write_planes(tmp_path, stack, **FLAVOURS[flavour]))
    assert source.size == (45, 37, 4)
    assert source.dtype == np.dtype(dtype)
    # whole planes, and bands and columns that cut strips and tiles in the middle
    assert_boxes_read_back(
        source,
        stack,
        [Box((0, 0, 0), (45, 37, 4)), Box((7, 5, 1), (40, 22, 3)), Box((44, 36, 3), (45, 37, 4))],
    )


def assert_boxes_read_back(source, stack: np.ndarray, boxes: list[Box]) -> None:
    """Each box reads as native-order voxels equal to the numpy stack's."""
    for box in boxes:
        got = source.read(box)
        assert got.dtype.isnative
        np.testing.assert_array_equal(got, stack[box.numpy_slices()])


def test_folder_source_takes_tif_and_tiff(tmp_path):
    stack = random_stack((3, 8, 9), "uint8")
    names = ["a_0.tif", "a_1.TIFF", "a_2.tiff"]
    write_planes(tmp_path, stack, names=names)
    (tmp_path / "notes.txt").write_text("not a plane")
    source = open_source(str(tmp_path))
    np.testing.assert_array_equal(source.read(Box((0, 0, 0), source.size)), stack)


def test_alphabetical_order_is_the_originals_and_warns_about_unpadded_numbers(tmp_path, caplog):
    stack = random_stack((3, 4, 5), "uint8")
    write_planes(tmp_path, stack, names=["img_1.tif", "img_10.tif", "img_2.tif"])
    with caplog.at_level(logging.WARNING):
        source = open_source(str(tmp_path / "*.tif"), order="alphabetical")
    # alphabetical: img_1, img_10, img_2 -> planes 0, 1, 2 as written
    np.testing.assert_array_equal(source.read(Box((0, 0, 0), source.size)), stack)
    assert "without zero padding" in caplog.text and "'img_10.tif'" in caplog.text


def test_natural_order_takes_unpadded_numbers_by_number(tmp_path, caplog):
    stack = random_stack((20, 4, 5), "uint8", seed=3)
    names = [f"img_{z + 1}.tif" for z in range(20)]
    write_planes(tmp_path, stack, names=names)
    with caplog.at_level(logging.INFO):
        source = open_source(str(tmp_path / "*.tif"))
    np.testing.assert_array_equal(source.read(Box((0, 0, 0), source.size)), stack)
    assert "without zero padding" not in caplog.text
    assert "20 planes in natural order: img_1.tif, img_2.tif, img_3.tif, ..., " in caplog.text
    assert "img_18.tif, img_19.tif, img_20.tif" in caplog.text


def test_natural_order_equals_alphabetical_for_padded_names():
    from precomputed_tif.sources import sort_planes

    names = [f"/d/s{s}/p_{z:04d}.tif" for s in (1, 2) for z in (0, 7, 10, 999)]
    shuffled = names[::-1]
    assert (
        sort_planes(shuffled, "natural") == sorted(names) == sort_planes(shuffled, "alphabetical")
    )
    # digit runs anywhere in the path count, and equal numbers fall back to the text
    assert sort_planes(["a10/x.tif", "a9/x.tif", "a09/x.tif"]) == [
        "a09/x.tif",
        "a9/x.tif",
        "a10/x.tif",
    ]


def test_padded_numbers_do_not_warn(tmp_path, caplog):
    write_planes(tmp_path, random_stack((3, 4, 5), "uint8"))
    with caplog.at_level(logging.WARNING):
        open_source(str(tmp_path / "*.tif"))
    assert caplog.text == ""


def test_empty_glob(tmp_path):
    with pytest.raises(SourceError, match="matches no files"):
        open_source(str(tmp_path / "*.tif"))


def test_empty_folder(tmp_path):
    with pytest.raises(SourceError, match="holds no .tif"):
        open_source(str(tmp_path))


def test_not_a_tiff(tmp_path):
    write_planes(tmp_path, random_stack((2, 4, 5), "uint8"))
    (tmp_path / "plane_0001.tif").write_bytes(b"this is not a tiff at all")
    with pytest.raises(SourceError, match="plane_0001.tif.*not a readable TIFF"):
        open_source(str(tmp_path / "*.tif"))


def test_truncated_tiff(tmp_path):
    write_planes(tmp_path, random_stack((2, 64, 64), "uint16"))
    path = tmp_path / "plane_0001.tif"
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(SourceError, match="plane_0001.tif.*truncated"):
        open_source(str(tmp_path / "*.tif"))


def test_a_plane_rewritten_in_another_layout_after_a_read_reads_its_new_voxels(tmp_path):
    stack = random_stack((2, 30, 40), "uint16", seed=3)
    source = open_source(write_planes(tmp_path, stack))
    box = Box((0, 4, 0), (40, 20, 2))
    np.testing.assert_array_equal(source.read(box), stack[box.numpy_slices()])
    for options in ({"description": "x" * 5000}, {"compression": "zlib"}, {"byteorder": ">"}):
        stack[1] = random_stack((1, 30, 40), "uint16", seed=len(options) + 7)[0] ^ 0x5A5A
        tifffile.imwrite(tmp_path / "plane_0001.tif", stack[1], **options)
        np.testing.assert_array_equal(source.read(box), stack[box.numpy_slices()])


def test_tasks_read_planes_with_the_layouts_the_header_pass_found(tmp_path, monkeypatch):
    """Workers read uncompressed planes by the layout the driver's header pass found (shipped
    in the task's source), not by parsing every header again; a plane replaced since is parsed."""
    from precomputed_tif import sources

    stack = random_stack((4, 30, 40), "uint16", seed=5)
    source = open_source(write_planes(tmp_path, stack))
    task_source = source.sub_stack(1, 4)
    parsed = []
    real = sources._raw_plane.__wrapped__
    sources._raw_plane.cache_clear()
    monkeypatch.setattr(
        sources, "_raw_plane", lambda path, *key: parsed.append(path) or real(path, *key)
    )
    box = Box((3, 2, 0), (40, 30, 3))
    np.testing.assert_array_equal(task_source.read(box), stack[1:4, 2:30, 3:40])
    assert parsed == []
    stack[2] = stack[2] ^ 0x0F0F
    tifffile.imwrite(tmp_path / "plane_0002.tif", stack[2], description="y" * 3000)
    np.testing.assert_array_equal(task_source.read(box), stack[1:4, 2:30, 3:40])
    assert parsed == [str(tmp_path / "plane_0002.tif")]


def test_a_plane_cut_short_after_opening_fails_its_read_with_the_file_named(tmp_path):
    source = open_source(write_planes(tmp_path, random_stack((2, 64, 64), "uint16")))
    whole = Box((0, 0, 0), (64, 64, 2))
    source.read(whole)
    path = tmp_path / "plane_0001.tif"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(SourceError, match="plane_0001.tif.*truncated"):
        source.read(whole)
    path.unlink()
    with pytest.raises(SourceError, match="plane_0001.tif"):
        source.read(whole)


def test_shape_mismatch_names_the_file_and_both_shapes(tmp_path):
    write_planes(tmp_path, random_stack((2, 10, 12), "uint16"))
    tifffile.imwrite(tmp_path / "plane_0002.tif", np.zeros((10, 11), np.uint16))
    with pytest.raises(SourceError) as info:
        open_source(str(tmp_path / "*.tif"))
    message = str(info.value)
    assert "'plane_0002.tif'" in message and "(10, 11)" in message and "(10, 12)" in message
    assert "'plane_0000.tif'" in message


def test_dtype_mismatch(tmp_path):
    write_planes(tmp_path, random_stack((2, 10, 12), "uint16"))
    tifffile.imwrite(tmp_path / "plane_0002.tif", np.zeros((10, 12), np.uint8))
    with pytest.raises(SourceError, match="plane_0002.tif.*uint8.*uint16"):
        open_source(str(tmp_path / "*.tif"))


def test_rgb_planes_read_as_three_channels(tmp_path):
    rgb = np.random.default_rng(3).integers(0, 255, (2, 10, 12, 3), dtype=np.uint8)
    for z in range(2):
        tifffile.imwrite(tmp_path / f"rgb_{z}.tif", rgb[z], photometric="rgb")
    source = open_source(str(tmp_path / "*.tif"))
    assert source.num_channels == 3
    np.testing.assert_array_equal(source.read(Box((1, 2, 0), (11, 9, 2))), rgb[:, 2:9, 1:11])


def test_a_hyperstack_reads_as_its_channels(tmp_path):
    path = tmp_path / "hyperstack.tif"
    data = np.random.default_rng(4).integers(0, 999, (4, 2, 10, 12), dtype=np.uint16)
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZCYX"})
    source = open_source(str(path))
    assert source.num_channels == 2
    np.testing.assert_array_equal(
        source.read(Box((0, 0, 1), (12, 10, 3))), np.moveaxis(data[1:3], 1, -1)
    )


MULTI_PAGE = {
    "contiguous": {},
    "imagej": {"imagej": True, "metadata": {"axes": "ZYX"}},
    "big_endian": {"byteorder": ">"},
    "bigtiff": {"bigtiff": True},
    "deflate": {"compression": "zlib"},
    "page_by_page": {"pages": True},
}


@pytest.mark.parametrize("flavour", MULTI_PAGE)
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_every_multi_page_flavour_reads_back_exactly(tmp_path, flavour, dtype):
    stack = random_stack((5, 37, 45), dtype, seed=2)
    path = tmp_path / "stack.tif"
    options = dict(MULTI_PAGE[flavour])
    if options.pop("pages", False):  # one write per page: an IFD before each page's data
        with tifffile.TiffWriter(path) as tif:
            for plane in stack:
                tif.write(plane, contiguous=False, metadata=None)
    else:
        tifffile.imwrite(path, stack, **options)
    source = open_source(str(path))
    assert source.size == (45, 37, 5) and source.dtype == np.dtype(dtype)
    # the uncompressed stacks are read row by row, past tifffile; the others through it
    stat = os.stat(path)
    raw = _raw_stack(str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    assert (raw is not None) == (flavour not in ("deflate", "page_by_page"))
    assert_boxes_read_back(
        source,
        stack,
        [Box((0, 0, 0), (45, 37, 5)), Box((0, 5, 1), (45, 22, 4)), Box((7, 5, 2), (40, 9, 3))],
    )
    # a task's pages: the sub-stack's page 0 is the file's page 2
    np.testing.assert_array_equal(
        source.sub_stack(2, 5).read(Box((0, 3, 1), (45, 30, 3))), stack[3:5, 3:30, :]
    )


def test_a_hyperstack_of_two_channels_reads_each_channel_alone(tmp_path):
    path = tmp_path / "hyperstack.tif"
    data = np.random.default_rng(5).integers(0, 60000, (6, 2, 20, 24), dtype=np.uint16)
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZCYX"})
    from precomputed_tif.sources import channel_sources

    for c, part in enumerate(channel_sources(open_source(str(path)))):
        box = Box((3, 2, 1), (24, 17, 5))
        np.testing.assert_array_equal(part.read(box), data[1:5, c, 2:17, 3:24])


def test_a_file_of_several_series_warns_that_only_the_first_is_converted(tmp_path, caplog):
    path = tmp_path / "appended.tif"
    with tifffile.TiffWriter(path) as tif:
        for plane in random_stack((5, 20, 24), "uint16"):
            tif.write(plane)  # tifffile's shaped metadata: a series per write
    with caplog.at_level(logging.WARNING):
        source = open_source(str(path))
    assert source.size == (24, 20, 1)
    assert "appended.tif holds 5 pages; only its first series (1 pages" in caplog.text


def test_a_stack_cut_short_after_opening_fails_its_read_with_the_file_named(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, random_stack((6, 64, 64), "uint16"))
    source = open_source(str(path))
    whole = Box((0, 0, 0), (64, 64, 6))
    source.read(whole)
    path.write_bytes(path.read_bytes()[:20000])
    with pytest.raises(SourceError, match="stack.tif"):
        source.read(whole)


def test_unsupported_dtype(tmp_path):
    write_planes(tmp_path, np.zeros((2, 4, 4), np.float64))
    with pytest.raises(SourceError, match="float64"):
        open_source(str(tmp_path / "*.tif"))


def test_multipage_file_inside_a_glob_is_refused(tmp_path):
    write_planes(tmp_path, random_stack((2, 4, 5), "uint8"))
    tifffile.imwrite(
        tmp_path / "plane_0002.tif", np.zeros((3, 4, 5), np.uint8), photometric="minisblack"
    )
    with pytest.raises(SourceError, match="holds 3 pages"):
        open_source(str(tmp_path / "*.tif"))


def test_sources_are_errors_of_the_builtin_kind(tmp_path):
    with pytest.raises(ValueError):
        open_source(str(tmp_path / "*.tif"))


def test_reading_many_headers_says_how_far_it_got(tmp_path, caplog, monkeypatch):
    import precomputed_tif.sources as sources

    stack = random_stack((5, 8, 8), "uint16", seed=9)
    source = write_planes(tmp_path / "planes", stack)
    monkeypatch.setattr(sources, "HEADER_PROGRESS_SECONDS", 0.0)  # say it after every header
    with caplog.at_level(logging.INFO, logger="precomputed_tif"):
        opened = open_source(source)
    said = [r.getMessage() for r in caplog.records if "read the headers" in r.getMessage()]
    assert said == [f"read the headers of {n} of 5 planes" for n in range(1, 6)]
    assert opened.size == (8, 8, 5)


def test_a_folder_holding_one_multi_page_tiff_opens_it(tmp_path):
    stack = random_stack((4, 6, 7), "uint16", seed=12)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    (tmp_path / "notes.txt").write_text("not a plane")
    source = open_source(str(tmp_path))
    assert source.size == (7, 6, 4)
    np.testing.assert_array_equal(source.read(Box((0, 0, 0), (7, 6, 4))), stack)
