"""The command line as a user meets it: one-line errors, refusals, and resuming killed runs."""

from __future__ import annotations

import glob
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile

from conftest import random_stack, reference_pyramid, write_planes
from precomputed_tif import open_volume
from test_convert import assert_every_chunk_equal

CLI = [sys.executable, "-m", "precomputed_tif.cli.convert"]


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, **kwargs)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.fixture
def small_stack(tmp_path):
    stack = random_stack((9, 20, 30), "uint16", seed=2)
    return stack, write_planes(tmp_path / "planes", stack)


def test_converts_and_matches_the_reference(tmp_path, small_stack):
    stack, source = small_stack
    result = run_cli("--source", source, "--dest", str(tmp_path / "out"), "--chunk-size", "8,8,8")
    assert result.returncode == 0, result.stderr
    assert_every_chunk_equal(str(tmp_path / "out"), reference_pyramid(stack, 3))
    info = json.loads((tmp_path / "out" / "info").read_text())
    assert info["scales"][0]["resolution"] == [1800, 1800, 2000]


def test_voxel_size_in_microns(tmp_path, small_stack):
    _, source = small_stack
    result = run_cli(
        "--source",
        source,
        "--dest",
        str(tmp_path / "o"),
        "--voxel-size",
        "0.5,0.25,4",
        "--levels",
        "2",
    )
    assert result.returncode == 0, result.stderr
    scales = json.loads((tmp_path / "o" / "info").read_text())["scales"]
    assert [s["resolution"] for s in scales] == [[500, 250, 4000], [1000, 500, 8000]]


def test_quiet_with_log_warning(tmp_path, small_stack):
    _, source = small_stack
    result = run_cli("--source", source, "--dest", str(tmp_path / "o"), "--log", "WARNING")
    assert result.returncode == 0 and result.stderr == ""


def test_empty_glob(tmp_path):
    assert_one_line_error(
        run_cli("--source", str(tmp_path / "*.tif"), "--dest", str(tmp_path / "o")),
        "matches no files",
    )


def test_not_a_tiff(tmp_path, small_stack):
    _, source = small_stack
    with open(os.path.join(os.path.dirname(source), "plane_0003.tif"), "wb") as f:
        f.write(b"GIF89a not a tiff")
    assert_one_line_error(
        run_cli("--source", source, "--dest", str(tmp_path / "o")),
        "plane_0003.tif",
        "not a readable TIFF",
    )


def test_truncated(tmp_path, small_stack):
    _, source = small_stack
    path = os.path.join(os.path.dirname(source), "plane_0004.tif")
    with open(path, "rb") as f:
        content = f.read()
    with open(path, "wb") as f:
        f.write(content[: len(content) // 2])
    assert_one_line_error(
        run_cli("--source", source, "--dest", str(tmp_path / "o")), "plane_0004.tif", "truncated"
    )


def test_shape_mismatch(tmp_path, small_stack):
    _, source = small_stack
    tifffile.imwrite(
        os.path.join(os.path.dirname(source), "plane_0005.tif"), np.zeros((20, 31), np.uint16)
    )
    assert_one_line_error(
        run_cli("--source", source, "--dest", str(tmp_path / "o")),
        "plane_0005.tif",
        "(20, 31)",
        "(20, 30)",
    )


def test_rgb_planes_become_three_channel_volumes(tmp_path):
    for z in range(2):
        tifffile.imwrite(tmp_path / f"c_{z}.tif", np.zeros((5, 6, 3), np.uint8), photometric="rgb")
    done = run_cli("--source", str(tmp_path / "*.tif"), "--dest", str(tmp_path / "o"))
    assert done.returncode == 0, done.stderr
    listed = json.loads((tmp_path / "o" / "sources.json").read_text())
    assert [e["name"] for e in listed] == ["red", "green", "blue"]


def test_memory_too_small(tmp_path, small_stack):
    _, source = small_stack
    assert_one_line_error(
        run_cli("--source", source, "--dest", str(tmp_path / "o"), "--memory", "100M"), "--memory"
    )


def test_destination_with_a_different_volume_is_refused(tmp_path, small_stack):
    stack, source = small_stack
    dest = str(tmp_path / "o")
    assert run_cli("--source", source, "--dest", dest, "--format", "zarr").returncode == 0
    before = sorted(glob.glob(dest + "/**", recursive=True))
    result = run_cli("--source", source, "--dest", dest, "--format", "blockfs")
    assert_one_line_error(result, "different volume", "--overwrite")
    assert sorted(glob.glob(dest + "/**", recursive=True)) == before
    again = run_cli("--source", source, "--dest", dest, "--format", "zarr")
    assert again.returncode == 0 and "nothing to do" in again.stderr, again.stderr
    result = run_cli("--source", source, "--dest", dest, "--format", "blockfs", "--overwrite")
    assert result.returncode == 0, result.stderr
    assert open_volume(dest).format == "blockfs"
    assert not os.path.exists(os.path.join(dest, "1_1_1", ".zarray"))


def test_destination_with_foreign_files_is_never_overwritten(tmp_path, small_stack):
    _, source = small_stack
    dest = tmp_path / "home"
    dest.mkdir()
    (dest / "thesis.docx").write_text("precious")
    for extra in ([], ["--overwrite"]):
        result = run_cli("--source", source, "--dest", str(dest), *extra)
        assert_one_line_error(result, "thesis.docx", "empty or new folder")
        assert "--overwrite" not in result.stderr  # it would not work: never suggest it
    assert (dest / "thesis.docx").read_text() == "precious"
    # the folder it suggests does work
    suggested = re.search(r"--dest '([^']+)'\s*$", result.stderr.strip()).group(1)
    assert run_cli("--source", source, "--dest", suggested).returncode == 0
    assert (dest / "thesis.docx").read_text() == "precious"


def _tree(root: str) -> dict[str, bytes]:
    out = {}
    for path in glob.glob(os.path.join(root, "**", "*"), recursive=True):
        if os.path.isfile(path) and ".precomputed-tif" not in path:
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read().replace(root.encode(), b"ROOT")
    return out


@pytest.fixture(scope="module")
def resumable_stack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resumable")
    stack = random_stack((96, 192, 160), "uint16", seed=11)
    return stack, write_planes(folder / "planes", stack)


SLOW_RUN = ["--chunk-size", "32,32,32", "--task-memory", "1M", "--n-cores", "1", "--log", "WARNING"]


def _interrupt_after_progress(args: list[str], dest: str, sig: int) -> subprocess.CompletedProcess:
    """Start a real conversion, wait until some tasks are done, then send `sig` to its group."""
    process = subprocess.Popen(
        [*CLI, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    done_log = os.path.join(dest, ".precomputed-tif", "done-1")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with open(done_log) as f:
                if len(f.read().split()) >= 3:
                    break
        except FileNotFoundError:
            pass
        assert process.poll() is None, "the run finished before it could be interrupted"
        time.sleep(0.002)
    os.killpg(process.pid, sig)
    stdout, stderr = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.mark.slow
@pytest.mark.parametrize(
    "fmt",
    [
        "tiff",
        "zarr",
        "blockfs",
        "precomputed",
        "precomputed --sharded",
        "precomputed --sharded --shard-data-encoding raw",
    ],
)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "ctrl-c"])
def test_interrupted_run_resumes_to_identical_bytes(tmp_path, resumable_stack, fmt, sig):
    stack, source = resumable_stack
    reference, dest = str(tmp_path / "run_a"), str(tmp_path / "run_b")
    common = ["--source", source, "--format", *fmt.split(), *SLOW_RUN]
    assert run_cli(*common, "--dest", reference).returncode == 0

    killed = _interrupt_after_progress([*common, "--dest", dest], dest, sig)
    if sig == signal.SIGINT:
        assert killed.returncode == 130, killed.stderr
        assert "--resume" in killed.stderr and "Traceback" not in killed.stderr
    else:
        assert killed.returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(dest, "info")), (
        "an interrupted run must not look complete"
    )

    assert_one_line_error(run_cli(*common, "--dest", dest), "unfinished", "--resume")
    resumed = run_cli(*common, "--dest", dest, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert _tree(dest) == _tree(reference)
    assert_every_chunk_equal(dest, reference_pyramid(stack, 4))


def _mount_tmpfs(path: str, size: str) -> bool:
    os.makedirs(path, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], capture_output=True
    )
    return result.returncode == 0


@pytest.mark.slow
def test_disk_full_is_one_line_and_resumable(tmp_path, resumable_stack):
    if not (hasattr(os, "geteuid") and os.geteuid() == 0) or not _mount_tmpfs(
        str(tmp_path / "disk"), "2M"
    ):
        pytest.skip("needs root to mount a small tmpfs")
    disk = str(tmp_path / "disk")
    try:
        stack, source = resumable_stack
        common = ["--source", source, "--format", "blockfs", *SLOW_RUN]
        dest = os.path.join(disk, "vol")
        full = run_cli(*common, "--dest", dest)
        assert_one_line_error(full, "no space left")
        assert not os.path.exists(os.path.join(dest, "info"))
        subprocess.run(["mount", "-o", "remount,size=64M", disk], check=True)
        resumed = run_cli(*common, "--dest", dest, "--resume")
        assert resumed.returncode == 0, resumed.stderr
        assert_every_chunk_equal(dest, reference_pyramid(stack, 4))
    finally:
        subprocess.run(["umount", "-l", disk], capture_output=True)


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, small_stack):
    _, source = small_stack
    dest = tmp_path / "never"
    result = run_cli(
        "--source",
        source,
        "--dest",
        str(dest),
        "--chunk-size",
        "8,8,8",
        "--format",
        "precomputed",
        "--sharded",
        "--dry-run",
    )
    assert result.returncode == 0, result.stderr
    assert "tasks of" in result.stdout and "MiB each" in result.stdout
    assert "level 1 (1_1_1): 30x20x9 voxels, 24 chunks in 1 files" in result.stdout
    assert "in all:" in result.stdout
    assert not dest.exists()


def _plan_numbers(stdout: str) -> tuple[dict[int, int], dict[str, tuple[int, int]], int]:
    """Tasks per stage (by first level), (chunks, files) per level key, total raw bytes."""
    tasks, levels = {}, {}
    raw_gib = 0.0
    for line in stdout.splitlines():
        if match := re.match(r"levels (\d+)-\d+: (\d+) tasks", line):
            tasks[int(match[1])] = int(match[2])
        elif match := re.match(
            r"level \d+ \((\S+)\): \S+ voxels, (\d+) chunks in (\d+) files", line
        ):
            levels[match[1]] = (int(match[2]), int(match[3]))
        elif match := re.match(r"in all: \d+ files, ([\d.]+) GiB", line):
            raw_gib = float(match[1])
    return tasks, levels, round(raw_gib * 2**30)


@pytest.mark.parametrize("fmt", ["precomputed", "precomputed --sharded", "blockfs"])
def test_the_plan_agrees_with_a_real_run(tmp_path, resumable_stack, fmt):
    """--shape plans without data; its numbers are what a real run of that shape does."""
    stack, source = resumable_stack
    z, y, x = stack.shape
    common = ["--format", *fmt.split(), "--chunk-size", "16,16,16", "--task-memory", "1M"]
    common += ["--n-cores", "2", "--log", "WARNING"]
    dest = tmp_path / "real"
    planned = run_cli("--shape", f"{x},{y},{z}", "--dest", str(dest), *common, "--dry-run")
    assert planned.returncode == 0, planned.stderr
    assert not dest.exists()
    tasks, levels, raw_bytes = _plan_numbers(planned.stdout)
    from_headers = run_cli("--source", source, "--dest", str(dest), *common, "--dry-run")
    assert _plan_numbers(from_headers.stdout)[1:] == (levels, raw_bytes)

    assert run_cli("--source", source, "--dest", str(dest), *common).returncode == 0
    for first, count in tasks.items():
        with open(dest / ".precomputed-tif" / f"done-{first}") as f:
            assert len(set(f.read().split())) == count, f"stage from level {first}"
    for key, (_, files) in levels.items():
        names = [n for n in os.listdir(dest / key) if not n.startswith(".")]
        assert len(names) == files, key
    volume = json.loads((dest / "info").read_text())
    assert [s["key"] for s in volume["scales"]] == list(levels)
    voxels = sum(int(np.prod(s["size"])) for s in volume["scales"])
    assert abs(voxels * stack.itemsize - raw_bytes) <= 0.005 * 2**30


def test_the_100_tb_plan_takes_no_time_and_adds_up(tmp_path):
    shape = (25_000, 25_000, 20_000)
    result = run_cli(
        *("--shape", ",".join(map(str, shape)), "--dest", str(tmp_path / "big")),
        *("--format", "precomputed", "--sharded", "--memory", "8G", "--n-cores", "4"),
        "--dry-run",
    )
    assert result.returncode == 0, result.stderr
    tasks, levels, raw_bytes = _plan_numbers(result.stdout)
    assert list(levels)[0] == "1_1_1" and len(levels) == 10
    assert levels["1_1_1"][0] == math.prod(-(-s // 64) for s in shape)
    assert (
        abs(raw_bytes - 2 * sum(math.prod(-(-s // 2**i) for s in shape) for i in range(10)))
        <= 0.005 * 2**30
    )
    assert tasks[1] > 1000 and not (tmp_path / "big").exists()


def test_shape_needs_dry_run(tmp_path):
    result = run_cli("--shape", "10,10,10", "--dest", str(tmp_path / "x"))
    assert_one_line_error(result, "--dry-run")
