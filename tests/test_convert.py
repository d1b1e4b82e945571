"""Every chunk of every level, for each format, dtype and odd shape, equals a numpy reference."""

from __future__ import annotations

import glob
import os
import pickle

import numpy as np
import pytest
import tifffile

from conftest import DATA, convert_stack, random_stack, reference_pyramid, write_planes
from precomputed_tif import create_store, open_source, open_volume, plan_pyramid
from precomputed_tif.executors import process_pool
from precomputed_tif.geometry import chunks_in, full_box
from precomputed_tif.plan import plan_stages, stage_tasks

FORMATS = ["tiff", "zarr", "blockfs"]
DTYPES = ["uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "float32"]


def assert_every_chunk_equal(dest: str, expected: list[np.ndarray]) -> None:
    volume = open_volume(dest)
    assert len(volume) == len(expected)
    for level, want in enumerate(expected, start=1):
        scale = volume.pyramid.scale(level)
        assert scale.size == (want.shape[2], want.shape[1], want.shape[0])
        for _, box in chunks_in(full_box(scale.size), scale.chunk_size, scale.size):
            got = volume.store.read_chunk(level, box)
            assert got is not None, f"level {level} chunk {box.chunk_name} missing"
            np.testing.assert_array_equal(
                got, want[box.numpy_slices()], err_msg=f"level {level} chunk {box.chunk_name}"
            )
        np.testing.assert_array_equal(volume[level][:, :, :], want)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_and_format(tmp_path, fmt, dtype):
    stack = random_stack((19, 23, 37), dtype, seed=DTYPES.index(dtype))
    source = write_planes(tmp_path / "planes", stack)
    convert_stack(source, str(tmp_path / "out"), fmt, chunk=(8, 8, 8))
    # 37x23x19 with 8^3 chunks: levels until one chunk holds the coarsest (37 -> 19 -> 10 -> 5)
    assert_every_chunk_equal(str(tmp_path / "out"), reference_pyramid(stack, 4))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 5), (17, 64, 65), (33, 10, 129)])
def test_odd_shapes_and_small_tasks(tmp_path, fmt, shape):
    """Tasks much smaller than the volume: many tasks, several stages, edge chunks everywhere."""
    stack = random_stack(shape, "uint16", seed=sum(shape))
    source = write_planes(tmp_path / "planes", stack)
    pyramid = convert_stack(source, str(tmp_path / "out"), fmt, task_bytes=150_000)
    assert_every_chunk_equal(str(tmp_path / "out"), reference_pyramid(stack, pyramid.n_levels))


@pytest.mark.parametrize("fmt", FORMATS)
def test_segmentation_takes_the_most_frequent_label(tmp_path, fmt):
    rng = np.random.default_rng(5)
    stack = rng.choice(
        np.array([0, 7, 2**31 + 3, 12], np.uint32), size=(13, 18, 21), p=[0.4, 0.3, 0.2, 0.1]
    )
    source = write_planes(tmp_path / "planes", stack)
    convert_stack(source, str(tmp_path / "out"), fmt, chunk=(8, 8, 8), segmentation=True)
    info = open_volume(str(tmp_path / "out")).pyramid
    assert info.volume_type == "segmentation"
    assert_every_chunk_equal(str(tmp_path / "out"), reference_pyramid(stack, 3, segmentation=True))


@pytest.mark.parametrize("fmt", FORMATS)
def test_process_pool_gives_the_same_bytes_as_serial(tmp_path, fmt):
    stack = random_stack((40, 50, 60), "uint16", seed=3)
    source = write_planes(tmp_path / "planes", stack)
    with process_pool(2) as pool:
        convert_stack(source, str(tmp_path / "run_a"), fmt, task_bytes=200_000, executor=pool)
    convert_stack(source, str(tmp_path / "run_b"), fmt, task_bytes=200_000)
    assert_every_chunk_equal(str(tmp_path / "run_a"), reference_pyramid(stack, 3))
    assert _tree_bytes(tmp_path / "run_a") == _tree_bytes(tmp_path / "run_b")


def _tree_bytes(root) -> dict[str, bytes]:
    """Every file under a volume folder (but the run record), by relative path."""
    out = {}
    for path in glob.glob(os.path.join(str(root), "**", "*"), recursive=True):
        if os.path.isfile(path) and ".precomputed-tif" not in path:
            with open(path, "rb") as f:
                content = f.read()
            # blockfs records absolute block file paths, which differ between folders
            out[os.path.relpath(path, root)] = content.replace(str(root).encode(), b"ROOT")
    return out


@pytest.mark.parametrize(
    "stack_name",
    [
        "mini_t1_head",
        "stardist_img3d",
        "mitotic_plate_calibrated",
        "float32_10z",
        "spot_input1_zyx_u16",
    ],
)
def test_real_stacks(tmp_path, stack_name):
    """Stacks nobody here made (see tests/data/stacks/*/SOURCE.json for origin and licence)."""
    planes = sorted(glob.glob(str(DATA / "stacks" / stack_name / "planes" / "*.tif")))
    stack = np.stack([tifffile.imread(p) for p in planes])
    for fmt in FORMATS:
        dest = str(tmp_path / fmt)
        pyramid = convert_stack(
            str(DATA / "stacks" / stack_name / "planes"), dest, fmt, chunk=(16, 16, 16)
        )
        assert_every_chunk_equal(dest, reference_pyramid(stack, pyramid.n_levels))


@pytest.mark.parametrize("stack_name", ["mini_t1_head", "float32_10z", "stardist_img3d"])
def test_multipage_tiff_equals_its_planes(tmp_path, stack_name):
    original = glob.glob(str(DATA / "stacks" / stack_name / "original_*"))[0]
    stack = tifffile.imread(original)
    dest = str(tmp_path / "out")
    pyramid = convert_stack(original, dest, "zarr", chunk=(16, 16, 16))
    assert_every_chunk_equal(
        dest, reference_pyramid(stack.reshape(-1, *stack.shape[-2:]), pyramid.n_levels)
    )


def test_zarr_output_opens_in_the_zarr_library(tmp_path):
    zarr = pytest.importorskip("zarr")
    stack = random_stack((20, 30, 40), "int16", seed=9)
    source = write_planes(tmp_path / "planes", stack)
    convert_stack(source, str(tmp_path / "out"), "zarr", chunk=(16, 16, 16))
    expected = reference_pyramid(stack, 3)
    for level, key in enumerate(["1_1_1", "2_2_2", "4_4_4"]):
        array = zarr.open_array(str(tmp_path / "out" / key), mode="r")
        assert array.chunks == (16, 16, 16)
        np.testing.assert_array_equal(array[...], expected[level])


def test_tiff_chunks_are_3d_tiffs_named_like_neuroglancer_chunks(tmp_path):
    stack = random_stack((20, 30, 40), "uint16", seed=4)
    source = write_planes(tmp_path / "planes", stack)
    convert_stack(source, str(tmp_path / "out"), "tiff", chunk=(16, 16, 16))
    chunk = tifffile.imread(tmp_path / "out" / "1_1_1" / "32-40_16-30_16-20.tiff")
    np.testing.assert_array_equal(chunk, stack[16:20, 16:30, 32:40])
    with tifffile.TiffFile(tmp_path / "out" / "1_1_1" / "0-16_0-16_0-16.tiff") as tif:
        assert len(tif.pages) == 16
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE


def test_info_file(tmp_path):
    stack = random_stack((20, 30, 129), "uint16")
    source = write_planes(tmp_path / "planes", stack)
    convert_stack(source, str(tmp_path / "out"), "tiff", chunk=(64, 64, 64))
    import json

    info = json.loads((tmp_path / "out" / "info").read_text())
    assert info["@type"] == "neuroglancer_multiscale_volume"
    assert info["data_type"] == "uint16" and info["num_channels"] == 1 and info["type"] == "image"
    assert "mesh" not in info
    assert [s["key"] for s in info["scales"]] == ["1_1_1", "2_2_2", "4_4_4"]
    assert [s["size"] for s in info["scales"]] == [[129, 30, 20], [65, 15, 10], [33, 8, 5]]
    assert info["scales"][1]["resolution"] == [3600, 3600, 4000]
    assert all(s["chunk_sizes"] == [[64, 64, 64]] for s in info["scales"])
    assert all(s["encoding"] == "raw" and s["voxel_offset"] == [0, 0, 0] for s in info["scales"])


def test_task_records_pickle(tmp_path):
    stack = random_stack((10, 20, 30), "uint8")
    source = open_source(write_planes(tmp_path / "planes", stack))
    pyramid = plan_pyramid(source.size, "uint8", voxel_size_nm=(1, 1, 1), chunk_size=(8, 8, 8))
    for fmt in FORMATS:
        store = create_store(fmt, str(tmp_path / fmt), pyramid)
        for stage in plan_stages(pyramid, task_budget_bytes=10_000, n_workers=2):
            for task in stage_tasks(pyramid, stage, store, source):
                assert pickle.loads(pickle.dumps(task)) == task or pickle.loads(pickle.dumps(task))


def test_zarr_output_opens_in_tensorstore(tmp_path):
    ts = pytest.importorskip("tensorstore")
    stack = random_stack((20, 30, 40), "uint16", seed=10)
    source = write_planes(tmp_path / "planes", stack)
    convert_stack(source, str(tmp_path / "out"), "zarr", chunk=(16, 16, 16))
    expected = reference_pyramid(stack, 3)
    for level, key in enumerate(["1_1_1", "2_2_2", "4_4_4"]):
        array = ts.open(
            {"driver": "zarr", "kvstore": {"driver": "file", "path": str(tmp_path / "out" / key)}}
        ).result()
        np.testing.assert_array_equal(array.read().result(), expected[level])


def test_warns_when_a_level_crowds_one_folder(tmp_path, monkeypatch, caplog):
    import importlib
    import logging

    monkeypatch.setattr(importlib.import_module("precomputed_tif.convert"), "CROWDED_FOLDER", 20)
    stack = random_stack((8, 40, 40), "uint8")
    source = write_planes(tmp_path / "planes", stack)
    with caplog.at_level(logging.WARNING):
        convert_stack(source, str(tmp_path / "t"), "tiff", chunk=(8, 8, 8))
    assert "level 1 puts 25 chunk files in one folder" in caplog.text
    assert "blockfs" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        convert_stack(source, str(tmp_path / "b"), "blockfs", chunk=(8, 8, 8))
    assert caplog.text == ""


@pytest.mark.parametrize("fmt", ["precomputed", "blockfs"])
@pytest.mark.parametrize("factors", [(2, 2, 2), (2, 2, 1)])
@pytest.mark.parametrize("method", ["mean", "max"])
def test_a_coarser_level_is_made_a_slab_at_a_time_with_the_whole_regions_voxels(
    tmp_path, monkeypatch, fmt, factors, method
):
    """A later stage's task reads the finer level one slab of chunks' depth at a time (the whole
    region at once was most of its memory); every output plane must come out as from the whole
    region, also where the volume's odd edge ends a slab short."""
    from precomputed_tif.run import downsample_channels, downsampled_region

    stack = random_stack((45, 21, 30), "uint16", seed=11)  # z 45: five 8-plane slabs and an odd end
    source = write_planes(tmp_path / "planes", stack)
    pyramid = convert_stack(source, str(tmp_path / "out"), fmt, chunk=(8, 8, 8), factors=factors)
    store = create_store(fmt, str(tmp_path / "out"), pyramid)
    level2 = full_box(pyramid.scale(2).size)
    whole = downsample_channels(
        store.read_region(1, full_box(pyramid.scale(1).size)), pyramid.factor(2), method=method
    )
    depths = []
    read_region = type(store).read_region

    def recording(self, level, box, *, keep=True):
        depths.append(box.stop[2] - box.start[2])
        assert keep is False  # read once: no store cache may keep these chunks
        return read_region(self, level, box, keep=keep)

    monkeypatch.setattr(type(store), "read_region", recording)
    made = downsampled_region(store, 2, level2, method=method)
    assert depths == [8, 8, 8, 8, 8, 5]
    np.testing.assert_array_equal(made, whole)
    if factors == (2, 2, 2) and method == "mean":
        np.testing.assert_array_equal(made, reference_pyramid(stack, 2)[1])


def test_a_region_read_once_is_not_kept_in_the_chunk_cache(tmp_path):
    stack = random_stack((20, 20, 20), "uint16", seed=2)
    source = write_planes(tmp_path / "planes", stack)
    pyramid = convert_stack(source, str(tmp_path / "out"), "precomputed", chunk=(8, 8, 8))
    store = create_store("precomputed", str(tmp_path / "out"), pyramid)
    region = full_box(pyramid.scale(1).size)
    np.testing.assert_array_equal(store.read_region(1, region, keep=False), stack)
    assert store._cache.size == 0
    np.testing.assert_array_equal(store.read_region(1, region), stack)
    assert store._cache.size == stack.nbytes  # its 27 chunks, kept for the next read


def _plan_1024(n_workers: int):
    from precomputed_tif.plan import count_tasks, task_bytes

    pyramid = plan_pyramid((1024, 1024, 256), "uint16", voxel_size_nm=(1, 1, 1))
    stages = plan_stages(pyramid, task_budget_bytes=200 << 20, n_workers=n_workers)
    covered = [level for stage in stages for level in stage.levels]
    assert covered == list(range(1, pyramid.n_levels + 1))
    return [
        (stage, count_tasks(pyramid, stage), task_bytes(pyramid, stage.first, stage.region, 0))
        for stage in stages
    ]


def test_small_last_levels_are_spread_over_the_workers():
    """Levels 3-5 of 1024x1024x256 fit one task; one worker made them while the other waited.
    With two workers each stage that reads more than a trifle has a task for each."""
    for stage, tasks, size in _plan_1024(n_workers=2):
        assert tasks >= 2 or size < 32 << 20, (stage, tasks, size)
    spread = [(s, n) for s, n, _ in _plan_1024(n_workers=2) if s.first == 3]
    assert spread and spread[0][1] >= 2
    # one worker: the last levels stay one stage of one task
    assert [(s.first, s.last, n) for s, n, _ in _plan_1024(n_workers=1)][-1] == (3, 5, 1)
