"""The original precomputed-tif's Python API, replayed the way its callers use it.

Stitchers stream blocks into `BlockfsStack.make_l1_directory` from forked workers and then ask
for the pyramid; a Qt UI runs `main.main(argv)` in-process under a replaced ``tqdm.tqdm``;
pipelines build volumes with the stack classes. Every level is compared with an independent
numpy reference pyramid, and the files with what the converter writes for the same volume.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tqdm

from conftest import convert_stack, random_stack, reference_pyramid, write_planes
from precomputed_tif import SourceError, Stack, ZarrStack
from precomputed_tif import main as original_main
from precomputed_tif.blockfs_stack import BlockfsStack
from precomputed_tif.client import ArrayReader, clear_cache, get_info

CHUNK = 16
SHAPE = (40, 50, 70)  # z, y, x: edge chunks on every axis, 3 levels of 16^3 chunks


def volume_files(root: str) -> dict[str, bytes]:
    """Every file of the volume (not the converter's run state), by relative path."""
    out = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            path = os.path.join(folder, name)
            out[os.path.relpath(path, root)] = Path(path).read_bytes()
    return out


def assert_same_files(ours: str, converter: str) -> None:
    a, b = volume_files(ours), volume_files(converter)
    assert sorted(a) == sorted(b)
    for name in a:
        if name.endswith("precomputed.blockfs"):
            # the directory names its block file by absolute path, so the folders differ there
            a[name], b[name] = without_block_folder(a[name]), without_block_folder(b[name])
        assert a[name] == b[name], name


def without_block_folder(directory: bytes) -> bytes:
    """A blockfs directory file with its block files named without their folder."""
    length = int.from_bytes(directory[8:12], "little")
    metadata = json.loads(directory[16 : 16 + length])
    metadata["BlockFilenames"] = [os.path.basename(p) for p in metadata["BlockFilenames"]]
    return json.dumps(metadata, sort_keys=True).encode() + directory[16 + length :]


def assert_every_chunk(dest: str, pyramid: list[np.ndarray]) -> None:
    """Each chunk of each level, read with the original's client, equals the reference."""
    for level, expected in enumerate(pyramid, start=1):
        reader = ArrayReader(dest, format="blockfs", level=2 ** (level - 1))
        assert reader.shape == expected.shape and reader.dtype == expected.dtype
        nz, ny, nx = expected.shape
        for z, y, x in itertools.product(
            range(0, nz, CHUNK), range(0, ny, CHUNK), range(0, nx, CHUNK)
        ):
            window = np.s_[z : z + CHUNK, y : y + CHUNK, x : x + CHUNK]
            np.testing.assert_array_equal(
                reader[window], expected[window], err_msg=f"level {level} chunk x{x} y{y} z{z}"
            )


STITCHER = textwrap.dedent(
    """
    # a stitcher as the lab's pipelines write one: the directory is a global, forked workers
    # write blocks in random order, then the pyramid is asked for level by level
    import itertools, multiprocessing, sys
    import numpy as np
    from precomputed_tif.blockfs_stack import BlockfsStack

    VOLUME = np.load(sys.argv[1])
    DIRECTORY = None

    def write(start):
        z, y, x = start
        dz, dy, dx = DIRECTORY.get_block_size(x, y, z)
        DIRECTORY.write_block(VOLUME[z : z + dz, y : y + dy, x : x + dx], x, y, z)

    if __name__ == "__main__":
        stack = BlockfsStack(VOLUME.shape, sys.argv[2], chunk_size=(16, 16, 16))
        stack.write_info_file(3, (1800, 1800, 2000))
        DIRECTORY = stack.make_l1_directory(2)
        DIRECTORY.create()
        DIRECTORY.start_writer_processes()
        starts = list(itertools.product(
            range(0, VOLUME.shape[0], DIRECTORY.z_block_size),
            range(0, VOLUME.shape[1], DIRECTORY.y_block_size),
            range(0, VOLUME.shape[2], DIRECTORY.x_block_size)))
        np.random.default_rng(int(sys.argv[3])).shuffle(starts)
        with multiprocessing.get_context("fork").Pool(2) as pool:
            pool.map(write, starts, chunksize=1)
        DIRECTORY.close()
        for level in (2, 3):
            stack.write_level_n(level, silent=True, n_cores=2)
    """
)


@pytest.fixture(scope="module")
def stack_and_planes(tmp_path_factory):
    root = tmp_path_factory.mktemp("original_api")
    stack = random_stack(SHAPE, "uint16", seed=11)
    return stack, write_planes(root / "planes", stack), root


@pytest.fixture(scope="module")
def converter_output(stack_and_planes):
    """What ``precomputed-tif`` writes for the stack, per format (3 levels, 16^3 chunks)."""
    _, planes, root = stack_and_planes
    out = {}
    for fmt in ("tiff", "zarr", "blockfs"):
        out[fmt] = str(root / f"converter_{fmt}")
        convert_stack(planes, out[fmt], fmt, chunk=(CHUNK,) * 3, levels=3)
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the callers fork")
def test_stitcher_streams_random_blocks_from_forked_workers(
    tmp_path, stack_and_planes, converter_output
):
    stack, _, _ = stack_and_planes
    np.save(tmp_path / "volume.npy", stack)
    script = tmp_path / "stitch.py"
    script.write_text(STITCHER)
    dest = str(tmp_path / "stitched")
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "volume.npy"), dest, "5"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert_every_chunk(dest, reference_pyramid(stack, 3))
    # the same files as the converter's: blocks in block order, whoever wrote them when
    assert_same_files(dest, converter_output["blockfs"])
    # no work left behind: only the blocks' checksums, which --verify checks them against
    state = os.path.join(dest, ".precomputed-tif")
    left = [os.path.relpath(os.path.join(r, f), state) for r, _, fs in os.walk(state) for f in fs]
    assert all(name.startswith("checksums" + os.sep) for name in left), left


def test_directory_reads_back_and_is_whole_at_close(tmp_path, stack_and_planes):
    stack, _, _ = stack_and_planes
    blockfs = BlockfsStack(stack.shape, str(tmp_path / "v"), chunk_size=(CHUNK,) * 3)
    blockfs.write_info_file(2, (1800, 1800, 2000))
    directory = blockfs.make_l1_directory(4)
    assert (directory.x_extent, directory.y_extent, directory.z_extent) == (70, 50, 40)
    assert (directory.x_block_size, directory.z_block_size) == (CHUNK, CHUNK)
    assert directory.dtype == np.uint16 and directory.shape == stack.shape
    directory.create()
    directory.start_writer_processes()
    assert directory.get_block_size(64, 48, 32) == (8, 2, 6)
    directory.write_block(stack[32:40, 48:50, 64:70], 64, 48, 32)
    directory.write_block(np.zeros((16, 16, 16), np.uint16), 16, 0, 0)
    directory.write_block(stack[0:16, 0:16, 16:32], 16, 0, 0)  # written again: the last counts
    # before close: readable, but the level does not look finished
    assert not os.path.exists(directory.directory_filename)
    np.testing.assert_array_equal(directory.read_block(16, 0, 0), stack[0:16, 0:16, 16:32])
    with pytest.raises(OSError, match="shape"):
        directory.write_block(stack[0:16, 0:16, 0:15], 0, 0, 0)
    with pytest.raises(OSError, match="block grid"):
        directory.write_block(stack[0:16, 0:16, 0:16], 3, 0, 0)
    # the caller never closes: the pyramid closes it before reading level 1
    blockfs.write_level_n(2, silent=True, n_cores=1)
    assert os.path.exists(directory.directory_filename)
    np.testing.assert_array_equal(directory.read_block(64, 48, 32), stack[32:40, 48:50, 64:70])
    np.testing.assert_array_equal(directory.read_block(0, 0, 0), np.zeros((16, 16, 16)))
    written = np.zeros_like(stack)
    written[32:40, 48:50, 64:70] = stack[32:40, 48:50, 64:70]
    written[0:16, 0:16, 16:32] = stack[0:16, 0:16, 16:32]
    level2 = ArrayReader("file://" + str(tmp_path / "v"), level=2)[:, :, :]
    np.testing.assert_array_equal(level2, reference_pyramid(written, 2)[1])


def test_shape_stack_takes_the_type_of_the_level_1_it_is_given(tmp_path):
    """The original kept ``uint16`` in info above a level 1 of another type (phathom writes
    level 1 with its own blockfs Directory of the input's type)."""
    stack = random_stack((20, 24, 30), "uint8", seed=3)
    elsewhere = str(tmp_path / "uint8")
    convert_stack(write_planes(tmp_path / "p", stack), elsewhere, "blockfs", chunk=(CHUNK,) * 3)
    dest = tmp_path / "warped"
    blockfs = BlockfsStack(stack.shape, str(dest), chunk_size=(CHUNK,) * 3)
    blockfs.write_info_file(3, (1800, 1800, 2000))
    assert get_info(str(dest)).data_type == np.uint16  # the original's default, as there
    os.replace(os.path.join(elsewhere, "1_1_1"), dest / "1_1_1")  # the caller's own level 1
    blockfs.write_level_n(2, silent=True, n_cores=1)
    blockfs.write_level_n(3, silent=True, n_cores=1)
    clear_cache()
    assert get_info(str(dest)).data_type == np.uint8
    for level, expected in enumerate(reference_pyramid(stack, 3), start=1):
        got = ArrayReader(str(dest), level=2 ** (level - 1))[:, :, :]
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("fmt", ["tiff", "zarr", "blockfs"])
def test_stack_classes_write_what_the_converter_writes(
    tmp_path, stack_and_planes, converter_output, fmt
):
    stack, planes, _ = stack_and_planes
    dest = str(tmp_path / fmt)
    cls = {"tiff": Stack, "zarr": ZarrStack, "blockfs": BlockfsStack}[fmt]
    made = cls(planes, dest, chunk_size=(CHUNK,) * 3)
    assert (made.x_extent, made.y_extent, made.z_extent) == (70, 50, 40)
    assert (made.cx(), made.n_x(1), made.n_x(3)) == (CHUNK, 5, 2)
    made.write_info_file(3, (1800, 1800, 2000))
    made.write_level_1(silent=True, n_cores=1)
    made.write_level_n(2, silent=True, n_cores=1)
    made.write_level_n(3, silent=True, n_cores=1)
    assert_same_files(dest, converter_output[fmt])
    for level, expected in enumerate(reference_pyramid(stack, 3), start=1):
        got = ArrayReader(dest, format=fmt, level=2 ** (level - 1))[:, :, :]
        np.testing.assert_array_equal(got, expected)


def test_stack_errors_say_what_to_do(tmp_path, stack_and_planes):
    _, planes, _ = stack_and_planes
    from_shape = BlockfsStack((4, 5, 6), str(tmp_path / "a"))
    with pytest.raises(OSError, match="write_info_file first"):
        from_shape.write_level_n(2)
    from_shape.write_info_file(2)
    with pytest.raises(OSError, match="made from a shape"):
        from_shape.write_level_1()
    with pytest.raises(OSError, match="has 2 levels"):
        from_shape.write_level_n(3, silent=True, n_cores=1)
    with pytest.raises(OSError, match="not uint8"):
        Stack(planes, str(tmp_path / "b"), dtype="uint8")


class RecordingTqdm(tqdm.tqdm):
    """Like the Qt UI's replacement: its own progress bar, driven from ``__iter__``."""

    bars: list[tuple[int, int]] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        del self.sp  # the UI's class does this; it fails if tqdm was created disabled

    def refresh(self, *args, **kwargs):
        pass

    def __iter__(self):
        seen = 0
        for item in self.iterable:
            seen += 1
            yield item
        RecordingTqdm.bars.append((self.total, seen))


def main_args(source: str, dest: str) -> list[str]:
    return [
        "--source",
        source,
        "--dest",
        dest,
        "--levels",
        "3",
        "--format",
        "blockfs",
        "--n-cores",
        "1",
        "--chunk-size",
        "16,16,16",
        "--memory",
        "1G",
    ]


def test_main_in_process_gives_the_command_line_bytes_and_feeds_a_replaced_tqdm(
    tmp_path, stack_and_planes, monkeypatch
):
    stack, planes, _ = stack_and_planes
    monkeypatch.setattr(tqdm, "tqdm", RecordingTqdm)
    RecordingTqdm.bars = []
    in_process = str(tmp_path / "in_process")
    assert original_main.main(main_args(planes, in_process)) is None
    assert RecordingTqdm.bars and all(total == seen > 0 for total, seen in RecordingTqdm.bars)
    command_line = str(tmp_path / "command_line")
    result = subprocess.run(
        [sys.executable, "-m", "precomputed_tif.cli.convert", *main_args(planes, command_line)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert_same_files(in_process, command_line)
    assert_every_chunk(in_process, reference_pyramid(stack, 3))

    # the stack classes report through the replaced class too
    RecordingTqdm.bars = []
    BlockfsStack(planes, in_process, chunk_size=(CHUNK,) * 3).write_level_n(2, n_cores=1)
    assert len(RecordingTqdm.bars) == 1 and RecordingTqdm.bars[0][0] == RecordingTqdm.bars[0][1]
    assert_every_chunk(in_process, reference_pyramid(stack, 3))


def test_main_bad_arguments_exit_other_errors_raise(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        original_main.main(["--dest", str(tmp_path / "x"), "--levels", "three"])
    assert exit_info.value.code == 2
    assert "--levels" in capsys.readouterr().err
    with pytest.raises(SourceError):
        original_main.main(["--source", str(tmp_path / "none*.tif"), "--dest", str(tmp_path / "y")])


def test_cancelled_progress_leaves_a_volume_resume_finishes(
    tmp_path, stack_and_planes, monkeypatch
):
    """The UI's cancel button raises KeyboardInterrupt inside the tqdm loop."""
    _, planes, _ = stack_and_planes

    class Cancelling(RecordingTqdm):
        def __iter__(self):
            for n, item in enumerate(self.iterable):
                if n == 1:
                    raise KeyboardInterrupt("Interrupt in tqdm loop")
                yield item

    dest = str(tmp_path / "cancelled")
    args = main_args(planes, dest) + ["--task-memory", "200K"]  # several tasks per level
    monkeypatch.setattr(tqdm, "tqdm", Cancelling)
    with pytest.raises(KeyboardInterrupt):
        original_main.main(args)
    assert not os.path.exists(os.path.join(dest, "info"))
    monkeypatch.setattr(tqdm, "tqdm", RecordingTqdm)
    original_main.main(args + ["--resume"])
    whole = str(tmp_path / "whole")
    original_main.main(main_args(planes, whole) + ["--task-memory", "200K"])
    assert_same_files(dest, whole)


def _write_blocks(directory, volume: np.ndarray, starts: list[tuple[int, int, int]]) -> int:
    for z, y, x in starts:
        dz, dy, dx = directory.get_block_size(x, y, z)
        directory.write_block(volume[z : z + dz, y : y + dy, x : x + dx], x, y, z)
    return len(starts)


def test_directory_pickles_to_other_processes(tmp_path, stack_and_planes):
    """Handed to a spawned (not forked) worker, the directory writes there just the same."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    stack, _, _ = stack_and_planes
    blockfs = BlockfsStack(stack.shape, str(tmp_path / "v"), chunk_size=(CHUNK,) * 3)
    blockfs.write_info_file(2, (1800, 1800, 2000))
    directory = blockfs.make_l1_directory(2)
    directory.create()
    starts = list(itertools.product(range(0, 40, CHUNK), range(0, 50, CHUNK), range(0, 70, CHUNK)))
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        halves = [starts[::2], starts[1::2]]
        assert sum(pool.map(_write_blocks, [directory] * 2, [stack] * 2, halves)) == len(starts)
    directory.close()
    blockfs.write_level_n(2, silent=True, n_cores=1)
    assert_every_chunk(str(tmp_path / "v"), reference_pyramid(stack, 2))


def test_zarr_stack_from_an_array(tmp_path, stack_and_planes, converter_output):
    """The original's ZarrStack also took a zarr store as its source; any (z, y, x) array does."""
    zarr = pytest.importorskip("zarr")
    stack, _, _ = stack_and_planes
    source = zarr.create_array(
        str(tmp_path / "source.zarr"), shape=stack.shape, chunks=(8, 32, 32), dtype=stack.dtype
    )
    source[:] = stack
    dest = str(tmp_path / "from_zarr")
    made = ZarrStack(source, dest, chunk_size=(CHUNK,) * 3)
    made.write_info_file(3, (1800, 1800, 2000))
    made.write_level_1(silent=True, n_cores=1)
    for level in (2, 3):
        made.write_level_n(level, silent=True, n_cores=1)
    assert_same_files(dest, converter_output["zarr"])


def test_ngff_stack_writes_what_the_converter_writes(tmp_path, stack_and_planes):
    from precomputed_tif.ngff_stack import NGFFStack

    stack, planes, _ = stack_and_planes
    converter = str(tmp_path / "converter" / "brain.ome.zarr")  # the name is in the metadata
    convert_stack(planes, converter, "ngff", chunk=(CHUNK,) * 3, levels=3)
    dest = str(tmp_path / "stack" / "brain.ome.zarr")
    made = NGFFStack(planes, dest, chunk_size=(CHUNK,) * 3)
    made.create()
    made.write_info_file(3, (1800, 1800, 2000))
    made.write_level_1(silent=True, n_cores=1)
    for level in (2, 3):
        made.write_level_n(level, silent=True, n_cores=1)
    assert_same_files(dest, converter)
    assert not os.path.exists(os.path.join(dest, ".precomputed-tif"))


def test_ngff_stack_level_1_written_by_the_caller(tmp_path, stack_and_planes):
    """spimstitch's pattern: blocks assigned to ``create_dataset(1)[0, 0, z, y, x]``, then the
    pyramid; read back by the original's client calls and by zarr-python."""
    from precomputed_tif.client import get_ngff_info, read_chunk
    from precomputed_tif.ngff_stack import NGFFStack

    stack, _, _ = stack_and_planes
    dest = tmp_path / "stitched.ome.zarr"
    made = NGFFStack(stack.shape, str(dest), chunk_size=(CHUNK,) * 3, dtype="uint16")
    made.create()
    made.write_info_file(3, (1800, 1800, 2000))
    dataset = made.create_dataset(1)
    assert dataset.shape == (1, 1, *stack.shape) and dataset.chunks == (1, 1, 16, 16, 16)
    starts = list(itertools.product(range(0, 40, CHUNK), range(0, 50, CHUNK), range(0, 70, CHUNK)))
    np.random.default_rng(3).shuffle(starts)
    for z, y, x in starts:
        dataset[0, 0, z : z + CHUNK, y : y + CHUNK, x : x + CHUNK] = stack[
            z : z + CHUNK, y : y + CHUNK, x : x + CHUNK
        ]
    with pytest.raises(OSError, match="whole chunks"):
        dataset[0, 0, 0:8, 0:16, 0:16] = stack[0:8, 0:16, 0:16]
    for level in (2, 3):
        made.write_level_n(level, silent=True, n_cores=1)
    uri = dest.as_uri()
    pyramid = reference_pyramid(stack, 3)
    assert [s.key for s in get_ngff_info(uri).scales] == ["1_1_1", "2_2_2", "4_4_4"]
    for level, expected in enumerate(pyramid, start=1):
        factor = 2 ** (level - 1)
        reader = ArrayReader(uri, format="ngff", level=factor)
        np.testing.assert_array_equal(reader[:, :, :], expected)
        box = read_chunk(uri, 3, 17, 2, 12, 1, 9, level=factor, format="ngff")
        np.testing.assert_array_equal(box, expected[1:9, 2:12, 3:17])
        np.testing.assert_array_equal(made.get_dataset(level)[0, 0, :, :, :][0, 0], expected)
    zarr = pytest.importorskip("zarr")
    np.testing.assert_array_equal(zarr.open_group(str(dest), mode="r")["0"][0, 0], stack)
