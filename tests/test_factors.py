"""Per-axis downsampling factors (``--factors``) and downsampling methods (``--downsample``).

Every expectation comes from a reference written here the slow, plain way (one output voxel at a
time, in Python integers), and outputs are read back by independent readers (TensorStore for
precomputed, zarr-python for zarr and OME-Zarr) as well as by ours.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import random_stack, write_planes
from test_cli import _tree, assert_one_line_error, run_cli
from test_convert import assert_every_chunk_equal
from test_faults import finish, second_stage_started, start, wait_for

METHODS = ["mean", "mode", "max", "min", "stride"]


# --- the reference ------------------------------------------------------------------------------
def reference_level(previous: np.ndarray, factors: tuple[int, int, int], method: str) -> np.ndarray:
    """The next level written plainly: each output voxel from its block of the voxels that exist
    (`factors` are x, y, z; arrays are z, y, x)."""
    fx, fy, fz = factors
    nz, ny, nx = previous.shape
    out = np.zeros((-(-nz // fz), -(-ny // fy), -(-nx // fx)), previous.dtype)
    for z, y, x in itertools.product(*(range(n) for n in out.shape)):
        block = previous[z * fz : z * fz + fz, y * fy : y * fy + fy, x * fx : x * fx + fx]
        values = block.ravel().tolist()  # Python numbers: no overflow, no rounding
        if method == "mean":
            if previous.dtype.kind == "f":
                out[z, y, x] = sum(values) / len(values)
            else:
                total = sum(values)
                # truncated toward zero, as the original tool does
                out[z, y, x] = total // len(values) if total >= 0 else -(-total // len(values))
        elif method == "mode":
            best = max(set(values), key=lambda v: (values.count(v), -v))  # ties: the smallest
            out[z, y, x] = best
        elif method == "max":
            out[z, y, x] = max(values)
        elif method == "min":
            out[z, y, x] = min(values)
        else:  # stride: the block's voxel at its lowest x, y, z
            out[z, y, x] = block[0, 0, 0]
    return out


def reference_pyramid(stack: np.ndarray, keys: list[str], method: str = "mean") -> list[np.ndarray]:
    """Levels named by their keys (the cumulative factor per axis)."""
    totals = [tuple(int(v) for v in key.split("_")) for key in keys]
    levels = [stack]
    for finer, coarser in zip(totals, totals[1:]):
        factor = tuple(c // f for c, f in zip(coarser, finer))
        levels.append(reference_level(levels[-1], factor, method))  # type: ignore[arg-type]
    return levels


def _stack(shape, dtype, method, seed):
    stack = random_stack(shape, dtype, seed=seed)
    if method == "mode":
        stack = (stack % 4).astype(dtype)  # few values, so blocks hold repeats and ties
    return stack


def _assert_levels_equal(got, want, what):
    if want.dtype.kind == "f":  # the sum's order differs from the reference's by rounding only
        np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=what)
    else:
        np.testing.assert_array_equal(got, want, err_msg=what)


# --- the downsampling functions -----------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint64", "float32"])
@pytest.mark.parametrize("factors", [(2, 2, 2), (2, 2, 1), (1, 2, 2), (2, 1, 1), (1, 1, 2)])
def test_each_method_matches_the_reference(method, dtype, factors):
    """Odd sizes on every axis, and more planes than the 16 worked on at a time."""
    from precomputed_tif.downsample import downsample

    if method == "mode" and dtype == "float32":
        pytest.skip("mode is refused for float data")
    stack = _stack((35, 9, 11), dtype, method, seed=len(method) + len(dtype))
    got = downsample(stack, factors, method=method)
    want = reference_level(stack, factors, method)
    assert got.dtype == stack.dtype and got.shape == want.shape
    _assert_levels_equal(got, want, f"{method} {dtype} {factors}")


def test_mean_of_negative_integers_truncates_and_max_keeps_a_thin_line():
    from precomputed_tif.downsample import downsample

    block = np.array([[[-3, -4]]], np.int16)  # one x pair: mean -3.5 -> -3 (toward zero)
    assert downsample(block, (2, 1, 1), method="mean").tolist() == [[[-3]]]
    line = np.zeros((8, 8, 8), np.uint16)
    line[:, 3, 5] = 1000  # a one-voxel-thin bright line along z
    assert downsample(line, (2, 2, 2), method="max")[:, 1, 2].tolist() == [1000] * 4
    assert downsample(line, (2, 2, 2), method="mean")[:, 1, 2].tolist() == [250] * 4


# --- the factors --------------------------------------------------------------------------------
def _keys(voxel_size_nm, size=(100_000, 100_000, 100_000), levels=8, factors="auto"):
    from precomputed_tif import plan_pyramid

    pyramid = plan_pyramid(
        size, "uint16", voxel_size_nm=voxel_size_nm, levels=levels, factors=factors
    )
    return [s.key for s in pyramid.scales], pyramid


def test_auto_factors_for_smartspim_voxels():
    """0.66 x 0.66 x 2.0 um. The rule: halve an axis when its voxel, halved, is at most 1.5 x the
    coarsest; if none is, halve all three.
    level 1: 0.66 0.66 2.0  -> x, y: 1.32 <= 3.0 yes; z: 4.0 <= 3.0 no    -> 2_2_1
    level 2: 1.32 1.32 2.0  -> x, y: 2.64 <= 3.0 yes; z no                -> 4_4_1
    level 3: 2.64 2.64 2.0  -> x, y: 5.28 <= 3.96 no; z: 4.0 <= 3.96 no   -> all: 8_8_2
    level 4: 5.28 5.28 4.0  -> x, y: 10.56 <= 7.92 no; z: 8.0 <= 7.92 no  -> all: 16_16_4
    and all three from then on."""
    keys, pyramid = _keys((660, 660, 2000))
    assert keys == ["1_1_1", "2_2_1", "4_4_1", "8_8_2", "16_16_4", "32_32_8", "64_64_16",
                    "128_128_32"]  # fmt: skip
    assert pyramid.scale(4).resolution_nm == (5280, 5280, 4000)


def test_auto_factors_for_confocal_voxels():
    """0.3 x 0.3 x 2 um.
    level 1: 0.3 0.3 2   -> x, y: 0.6 <= 3 yes; z: 4 <= 3 no   -> 2_2_1
    level 2: 0.6 0.6 2   -> 1.2 <= 3 yes                      -> 4_4_1
    level 3: 1.2 1.2 2   -> 2.4 <= 3 yes                      -> 8_8_1
    level 4: 2.4 2.4 2   -> x, y: 4.8 <= 3.6 no; z: 4 <= 3.6 no -> all: 16_16_2
    level 5: 4.8 4.8 4   -> x, y: 9.6 <= 7.2 no; z: 8 <= 7.2 no -> all: 32_32_4"""
    keys, _ = _keys((300, 300, 2000), levels=6)
    assert keys == ["1_1_1", "2_2_1", "4_4_1", "8_8_1", "16_16_2", "32_32_4"]


def test_auto_factors_for_serial_em_voxels():
    """4 x 4 x 40 nm.
    level 1: 4 4 40    -> x, y: 8 <= 60 yes; z: 80 <= 60 no      -> 2_2_1
    level 2: 8 8 40    -> 16 <= 60 yes                          -> 4_4_1
    level 3: 16 16 40  -> 32 <= 60 yes                          -> 8_8_1
    level 4: 32 32 40  -> x, y: 64 <= 60 no; z: 80 <= 60 no      -> all: 16_16_2
    level 5: 64 64 80  -> x, y: 128 <= 120 no; z: 160 <= 120 no  -> all: 32_32_4"""
    keys, _ = _keys((4, 4, 40), levels=6)
    assert keys == ["1_1_1", "2_2_1", "4_4_1", "8_8_1", "16_16_2", "32_32_4"]


def test_default_and_near_isotropic_voxels_keep_the_original_keys():
    assert _keys((1800, 1800, 2000), levels=4)[0] == ["1_1_1", "2_2_2", "4_4_4", "8_8_8"]
    assert _keys((1800, 1800, 2000), levels=4, factors=(2, 2, 2))[0] == [
        "1_1_1", "2_2_2", "4_4_4", "8_8_8"]  # fmt: skip


def test_levels_stop_when_the_halved_axes_fit_one_chunk():
    """2,2,1 never shrinks z: levels stop once x and y fit one chunk, whatever z holds; auto
    stops when the coarsest fits one chunk on every axis."""
    from precomputed_tif import plan_pyramid

    pyramid = plan_pyramid(
        (300, 200, 500), "uint8", voxel_size_nm=(1, 1, 1), chunk_size=(64, 64, 64),
        factors=(2, 2, 1),
    )  # fmt: skip
    # x: 300 150 75 38; y: 200 100 50 25 -> level 4 fits one chunk in x and y
    assert [s.size for s in pyramid.scales] == [
        (300, 200, 500), (150, 100, 500), (75, 50, 500), (38, 25, 500)]  # fmt: skip
    assert [s.key for s in pyramid.scales][-1] == "8_8_1"
    auto = plan_pyramid(
        (300, 200, 50), "uint8", voxel_size_nm=(4, 4, 40), chunk_size=(64, 64, 64), factors="auto"
    )
    # 2_2_1 (150x100x50), 4_4_1 (75x50x50), 8_8_1 (38x25x50): fits one chunk
    assert [s.key for s in auto.scales] == ["1_1_1", "2_2_1", "4_4_1", "8_8_1"]


def test_too_many_levels_for_the_halved_axes_is_refused():
    from precomputed_tif import plan_pyramid
    from precomputed_tif.errors import PlanError

    # x, y: 8 -> 4 -> 2 -> 1 in 4 levels; z (kept) does not count
    plan_pyramid((8, 8, 100), "uint8", voxel_size_nm=(1, 1, 1), levels=4, factors=(2, 2, 1))
    with pytest.raises(PlanError, match="give --levels 4 or less"):
        plan_pyramid((8, 8, 100), "uint8", voxel_size_nm=(1, 1, 1), levels=5, factors=(2, 2, 1))


# --- conversion, every format -------------------------------------------------------------------
FORMATS = ["tiff", "zarr", "blockfs", "precomputed", "precomputed --sharded", "ngff",
           "ngff --sharded"]  # fmt: skip


def _convert(tmp_path, stack, fmt, *, factors, method=None, voxel=(660, 660, 2000), task=60_000):
    """In process, serially, with small tasks: several tasks and stages per level."""
    from precomputed_tif import ArraySource, Budget, convert, create_store, plan_pyramid
    from precomputed_tif.executors import SerialExecutor

    name, *flags = fmt.split()
    source = ArraySource(stack)
    pyramid = plan_pyramid(
        source.size,
        source.dtype.name,
        voxel_size_nm=voxel,
        chunk_size=(8, 8, 8),
        factors=factors,
        downsampling=method,
    )
    if "--sharded" in flags:
        pyramid = pyramid.zarr_sharded(task) if name == "ngff" else pyramid.sharded(task)
    dest = str(tmp_path / f"{name}{'_sharded' if flags else ''}.out")
    store = create_store(name, dest, pyramid)
    convert(source, store, executor=SerialExecutor(), budget=Budget(2, task))
    return dest, pyramid


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("factors", ["auto", (2, 2, 1), (1, 2, 2)], ids=["auto", "221", "122"])
def test_every_format_follows_the_factors(tmp_path, fmt, factors):
    stack = random_stack((21, 37, 43), "uint16", seed=5)
    dest, pyramid = _convert(tmp_path, stack, fmt, factors=factors)
    keys = [s.key for s in pyramid.scales]
    expected_keys = {
        # 660 660 2000 (see test_auto_factors_for_smartspim_voxels), 8-voxel chunks:
        # 43x37x21, 22x19x21, 11x10x21, 6x5x11, 3x3x6 (fits one chunk)
        "auto": ["1_1_1", "2_2_1", "4_4_1", "8_8_2", "16_16_4"],
        # z (21) is never halved: x, y fit one 8-voxel chunk at 43 -> 22 -> 11 -> 6
        (2, 2, 1): ["1_1_1", "2_2_1", "4_4_1", "8_8_1"],
        (1, 2, 2): ["1_1_1", "1_2_2", "1_4_4", "1_8_8"],
    }[factors]
    assert keys == expected_keys
    assert_every_chunk_equal(dest, reference_pyramid(stack, keys))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint32", "float32"])
def test_every_method_through_tensorstore(tmp_path, method, dtype):
    """Sharded precomputed with 2,2,1 then auto factors, read by TensorStore scale by scale."""
    ts = pytest.importorskip("tensorstore")
    if method == "mode" and dtype == "float32":
        pytest.skip("mode is refused for float data")
    stack = _stack((19, 27, 33), dtype, method, seed=3)
    dest, pyramid = _convert(
        tmp_path, stack, "precomputed --sharded", factors="auto", method=method
    )
    keys = [s.key for s in pyramid.scales]
    expected = reference_pyramid(stack, keys, method)
    for level, want in enumerate(expected):
        spec = {"driver": "neuroglancer_precomputed", "kvstore": {"driver": "file", "path": dest}}
        array = ts.open({**spec, "scale_metadata": {"key": keys[level]}}).result()
        got = np.asarray(array.read().result())[..., 0].transpose(2, 1, 0)
        _assert_levels_equal(got, want, f"{method} {dtype} level {level + 1}")


@pytest.mark.parametrize("sharded", [False, True], ids=["0.4", "0.5"])
def test_ngff_read_by_zarr_python_with_per_axis_scales(tmp_path, sharded):
    zarr = pytest.importorskip("zarr")
    stack = random_stack((21, 37, 43), "int16", seed=8)
    fmt = "ngff --sharded" if sharded else "ngff"
    dest, pyramid = _convert(tmp_path, stack, fmt, factors="auto", method="max")
    keys = [s.key for s in pyramid.scales]
    expected = reference_pyramid(stack, keys, "max")
    group = zarr.open_group(dest, mode="r")
    attributes = dict(group.attrs)
    multiscales = (attributes.get("ome") or attributes)["multiscales"][0]
    assert multiscales["type"] == "max"
    for level, (dataset, want) in enumerate(zip(multiscales["datasets"], expected)):
        np.testing.assert_array_equal(group[dataset["path"]][0, 0], want)
        scale, translation = (t[t["type"]] for t in dataset["coordinateTransformations"])
        fx, fy, fz = (int(v) for v in keys[level].split("_"))
        # micrometres per voxel, z y x; a max covers its block: centres move by half a block
        assert scale[2:] == pytest.approx([2.0 * fz, 0.66 * fy, 0.66 * fx])
        want_shift = [2.0 * (fz - 1) / 2, 0.66 * (fy - 1) / 2, 0.66 * (fx - 1) / 2]
        assert translation[2:] == pytest.approx(want_shift)


def test_zarr_levels_read_by_zarr_python(tmp_path):
    zarr = pytest.importorskip("zarr")
    stack = random_stack((21, 37, 43), "uint8", seed=2)
    dest, pyramid = _convert(tmp_path, stack, "zarr", factors=(2, 2, 1), method="min")
    keys = [s.key for s in pyramid.scales]
    for key, want in zip(keys, reference_pyramid(stack, keys, "min")):
        np.testing.assert_array_equal(zarr.open_array(os.path.join(dest, key), mode="r")[...], want)


def test_original_client_finds_anisotropic_scales(tmp_path):
    from precomputed_tif.client import ArrayReader, clear_cache, get_info, read_chunk

    stack = random_stack((21, 37, 43), "uint16", seed=4)
    dest, pyramid = _convert(tmp_path, stack, "blockfs", factors="auto")
    expected = reference_pyramid(stack, [s.key for s in pyramid.scales])
    clear_cache()
    scale = get_info(dest).get_scale((2, 2, 1))
    assert scale.key == "2_2_1" and scale.shape == [22, 19, 21]
    assert get_info(dest).get_scale([8, 8, 2]).resolution == [5280, 5280, 4000]
    np.testing.assert_array_equal(
        read_chunk(dest, 0, 22, 0, 19, 0, 21, level=(2, 2, 1)),
        expected[1],  # type: ignore
    )
    np.testing.assert_array_equal(ArrayReader(dest, level=(4, 4, 1))[:, :, :], expected[2])
    with pytest.raises(KeyError, match="2_2_2"):
        ArrayReader(dest, level=2)
    # precomputed-save takes the per-axis factor too
    out = str(tmp_path / "plane.tif")
    saved = subprocess.run(
        [sys.executable, "-m", "precomputed_tif.cli.save", "--url", dest, "--output", out,
         "--level", "8,8,2", "--coordinate", "5"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert saved.returncode == 0, saved.stderr
    assert "from scale 8_8_2" in saved.stdout
    np.testing.assert_array_equal(tifffile.imread(out), expected[3][5])


# --- the command line ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def planes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("aniso")
    stack = random_stack((40, 70, 90), "uint16", seed=31)
    return stack, write_planes(folder / "planes", stack)


def _cli_args(source, *extra):
    return ["--source", source, "--chunk-size", "16,16,16", "--voxel-size", "0.66,0.66,2.0",
            "--task-memory", "1M", "--n-cores", "1", "--log", "WARNING", *extra]  # fmt: skip


@pytest.mark.parametrize(
    "bad, fragments",
    [
        (["--factors", "3,2,1"], ["--factors 3,2,1", "1 or 2 per axis"]),
        (["--factors", "1,1,1"], ["--factors 1,1,1", "at least one 2"]),
        (["--factors", "2,2"], ["--factors 2,2", "x,y,z"]),
        (["--factors", "two"], ["--factors", "1 or 2 per axis"]),
        (["--downsample", "median"], ["--downsample", "invalid choice"]),
    ],
)
def test_bad_factors_and_methods_are_one_line_errors(tmp_path, planes, bad, fragments):
    dest = tmp_path / "out"
    result = run_cli(*_cli_args(planes[1], *bad), "--dest", str(dest))
    assert_one_line_error(result, *fragments)
    assert not dest.exists()


def test_mode_on_float_data_is_refused_saying_why(tmp_path):
    stack = random_stack((4, 10, 12), "float32", seed=1)
    source = write_planes(tmp_path / "planes", stack)
    dest = tmp_path / "out"
    result = run_cli(*_cli_args(source, "--downsample", "mode"), "--dest", str(dest))
    assert_one_line_error(result, "--downsample mode", "float32", "never repeat")
    assert not dest.exists()


def test_dry_run_plans_the_factors(tmp_path, planes):
    result = run_cli(*_cli_args(planes[1], "--factors", "auto", "--dry-run"), "--dest",
                     str(tmp_path / "out"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    # 90x70x40 at 0.66x0.66x2.0: 45x35x40 (2_2_1), 23x18x40 (4_4_1), 12x9x20 (8_8_2)
    assert "level 2 (2_2_1): 45x35x40 voxels" in result.stdout
    assert "level 3 (4_4_1): 23x18x40 voxels" in result.stdout
    assert "level 4 (8_8_2): 12x9x20 voxels" in result.stdout
    assert not (tmp_path / "out").exists()


def test_resume_refuses_another_method(tmp_path):
    from test_cli import SLOW_RUN, _interrupt_after_progress

    stack = random_stack((96, 192, 160), "uint16", seed=11)  # large enough to interrupt
    source = write_planes(tmp_path / "planes", stack)
    dest = str(tmp_path / "out")
    args = ["--source", source, "--format", "zarr", "--factors", "auto", *SLOW_RUN]
    args += ["--voxel-size", "0.66,0.66,2.0"]
    killed = _interrupt_after_progress([*args, "--downsample", "max", "--dest", dest], dest,
                                       signal.SIGKILL)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL
    refused = run_cli(*args, "--dest", dest, "--resume")  # the default: mean
    assert_one_line_error(refused, "--downsample max", "--downsample mean", "--overwrite")
    with open(os.path.join(dest, ".precomputed-tif", "run.json")) as f:
        assert json.load(f)["downsample"] == "max"
    resumed = run_cli(*args, "--downsample", "max", "--dest", dest, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    with open(os.path.join(dest, "info")) as f:
        keys = [s["key"] for s in json.load(f)["scales"]]
    assert keys[:3] == ["1_1_1", "2_2_1", "4_4_1"]
    assert_every_chunk_equal(dest, reference_pyramid(stack, keys, "max"))
    verified = run_cli("--verify", dest, "--source", source, "--n-cores", "1")
    assert verified.returncode == 0 and verified.stdout.startswith("OK"), verified.stdout


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["blockfs", "precomputed --sharded", "ngff"])
def test_sigkill_then_resume_is_byte_identical_with_auto_factors(tmp_path, planes, fmt):
    stack, source = planes
    args = _cli_args(source, "--format", *fmt.split(), "--factors", "auto")
    reference, dest = str(tmp_path / "ref"), str(tmp_path / "out")
    assert run_cli(*args, "--dest", reference).returncode == 0
    process = start([*args, "--dest", dest])
    assert wait_for(process, lambda: second_stage_started(dest)), "the run had one stage"
    os.killpg(process.pid, signal.SIGKILL)
    assert finish(process).returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(dest, "info"))
    resumed = run_cli(*args, "--dest", dest, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert _tree(dest) == _tree(reference)
    keys = [s.key for s in __import__("precomputed_tif").open_volume(dest).pyramid.scales]
    if fmt != "ngff":  # OME-Zarr levels are read back keyed 2**i, as the original named them
        assert keys[:4] == ["1_1_1", "2_2_1", "4_4_1", "8_8_2"]
    assert_every_chunk_equal(
        dest, reference_pyramid(stack, ["1_1_1", "2_2_1", "4_4_1", "8_8_2", "16_16_4"][: len(keys)])
    )


def test_served_anisotropic_volume_answers_at_its_keys(tmp_path, planes):
    from servekit import RunningServer

    stack, source = planes
    dest = str(tmp_path / "out")
    result = run_cli(*_cli_args(source, "--format", "tiff", "--factors", "2,2,1"), "--dest", dest)
    assert result.returncode == 0, result.stderr
    expected = reference_pyramid(stack, ["1_1_1", "2_2_1"])[1]
    with RunningServer("-d", dest, log="WARNING") as server:
        status, _, body = server.get("/info")
        assert status == 200
        assert [s["key"] for s in json.loads(body)["scales"]][:2] == ["1_1_1", "2_2_1"]
        status, _, body = server.get("/2_2_1/16-32_0-16_16-32")
        assert status == 200
        got = np.frombuffer(body, "<u2").reshape(16, 16, 16)
        np.testing.assert_array_equal(got, expected[16:32, 0:16, 16:32])
        assert server.get("/2_2_2/0-16_0-16_0-16")[0] == 404


def test_another_factor_choice_is_another_volume(tmp_path, planes):
    dest = str(tmp_path / "out")
    assert run_cli(*_cli_args(planes[1], "--format", "tiff"), "--dest", dest).returncode == 0
    other = run_cli(*_cli_args(planes[1], "--format", "tiff", "--factors", "2,2,1"), "--dest", dest)
    assert_one_line_error(other, "2_2_2", "2_2_1", "(--factors)", "--overwrite")


def test_pyramid_with_factors_and_method_pickles_and_keeps_them():
    import pickle

    from precomputed_tif import plan_pyramid

    pyramid = plan_pyramid(
        (300, 200, 50), "uint8", voxel_size_nm=(4, 4, 40), factors="auto", downsampling="max"
    )
    again = pickle.loads(pickle.dumps(pyramid))
    assert again == pyramid and again.downsample_method == "max"
    assert [again.factor(level) for level in range(1, 4)] == [(1, 1, 1), (2, 2, 1), (2, 2, 1)]
    assert again.factor_between(1, 3) == (4, 4, 1)


@pytest.mark.slow
def test_dask_cluster_matches_the_process_pool_with_auto_factors_and_max(tmp_path, planes):
    pytest.importorskip("distributed")
    stack, source = planes
    args = _cli_args(source, "--format", "precomputed", "--sharded", "--factors", "auto")
    args += ["--downsample", "max"]
    pool, dask = str(tmp_path / "pool"), str(tmp_path / "dask")
    assert run_cli(*args, "--dest", pool).returncode == 0
    result = run_cli(*args, "--dest", dask, "--dask-workers", "2")
    assert result.returncode == 0, result.stderr
    assert _tree(dask) == _tree(pool)
    keys = [s.key for s in __import__("precomputed_tif").open_volume(dask).pyramid.scales]
    assert_every_chunk_equal(dask, reference_pyramid(stack, keys, "max"))


@pytest.mark.slow
def assert_same_files(dest: str, reference: str, log: str = "") -> None:
    """Every chunk file of `dest` has `reference`'s bytes; a failure names the files and says
    whether their voxels differ too (a codec difference) or only their bytes."""
    ours, theirs = _tree(dest), _tree(reference)
    differing = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    details = []
    for name in differing:
        if name in ours and name in theirs and name.endswith(".tiff"):
            a, b = (tifffile.imread(os.path.join(r, name)) for r in (dest, reference))
            same = np.array_equal(a, b) and a.dtype == b.dtype
            x, y = (Path(r, name).read_bytes() for r in (dest, reference))
            at = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
            details.append(
                f"{name}: voxels {'equal' if same else 'differ'} ({a.dtype}, {b.dtype}); "
                f"{len(x)} and {len(y)} bytes, first difference at byte {at}: "
                f"{x[max(0, at - 8) : at + 24].hex()} / {y[max(0, at - 8) : at + 24].hex()}"
            )
        else:
            details.append(f"{name}: {'missing' if name not in ours else 'extra or not tiff'}")
    assert not differing, "\n".join(details) + "\n" + log


def test_repair_with_auto_factors_and_max_restores_the_bytes(tmp_path, planes):
    """A lost level-1 chunk and a lost 2_2_1 chunk: --resume --repair makes them, and every
    coarser chunk made from them, again; the bytes are those of an uninterrupted run."""
    stack, source = planes
    args = _cli_args(source, "--format", "tiff", "--factors", "auto", "--downsample", "max")
    reference, dest = str(tmp_path / "ref"), str(tmp_path / "out")
    assert run_cli(*args, "--dest", reference).returncode == 0
    assert run_cli(*args, "--dest", dest).returncode == 0
    assert_same_files(dest, reference)  # an uninterrupted run is deterministic
    os.remove(os.path.join(dest, "1_1_1", "16-32_16-32_16-32.tiff"))
    os.remove(os.path.join(dest, "2_2_1", "32-45_16-32_0-16.tiff"))
    found = run_cli("--verify", dest)
    assert found.returncode == 1 and "2_2_1" not in found.stdout  # levels are named by number
    assert "level 2 chunk 32-45_16-32_0-16: missing" in found.stdout, found.stdout
    repaired = run_cli(*args, "--dest", dest, "--resume", "--repair", "--log", "INFO")
    assert repaired.returncode == 0, repaired.stderr
    assert_same_files(dest, reference, repaired.stderr)
    verified = run_cli("--verify", dest, "--source", source)
    assert verified.stdout.startswith("OK") and "match" in verified.stdout, verified.stdout
