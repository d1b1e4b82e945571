"""A new user's first hour (issue 13): each trap re-checked the way a user met it.

Real subprocesses, real signals to a real process group, a real pseudo-terminal read through a
terminal emulator, and one-line messages that say what to do next.
"""

from __future__ import annotations

import errno
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import random_stack, reference_pyramid, write_planes
from precomputed_tif import open_volume
from test_cli import CLI, _tree, assert_one_line_error, run_cli
from test_convert import assert_every_chunk_equal

COMMANDS = {
    "precomputed-tif": "precomputed_tif.cli.convert",
    "precomputed-webserver": "precomputed_tif.cli.serve",
    "precomputed-write-points": "precomputed_tif.cli.write_points",
    "precomputed-save": "precomputed_tif.cli.save",
}


def run_module(module: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300, **kwargs
    )


@pytest.fixture
def unpadded(tmp_path):
    stack = random_stack((20, 12, 10), "uint16", seed=13)
    names = [f"img_{z + 1}.tif" for z in range(20)]
    write_planes(tmp_path / "planes", stack, names=names)
    return stack, str(tmp_path / "planes" / "*.tif")


# 1 ---------------------------------------------------------------------------------------------
def test_unpadded_names_read_back_in_numeric_order(tmp_path, unpadded):
    stack, source = unpadded
    dest = str(tmp_path / "out")
    result = run_cli("--source", source, "--dest", dest, "--chunk-size", "8,8,8")
    assert result.returncode == 0, result.stderr
    assert (
        "20 planes in natural order: img_1.tif, img_2.tif, img_3.tif, ..., "
        "img_18.tif, img_19.tif, img_20.tif" in result.stderr
    )
    np.testing.assert_array_equal(open_volume(dest)[1][:, :, :], stack)
    # the original's order on request, and a resume in another order is another stack
    result = run_cli(
        "--source",
        source,
        "--dest",
        dest,
        "--chunk-size",
        "8,8,8",
        "--resume",
        "--order",
        "alphabetical",
    )
    assert_one_line_error(result, "another order", "img_10.tif", "--overwrite")
    alphabetical = str(tmp_path / "alpha")
    result = run_cli("--source", source, "--dest", alphabetical, "--order", "alphabetical")
    assert result.returncode == 0, result.stderr
    assert "without zero padding" in result.stderr
    order = sorted(range(20), key=lambda z: f"img_{z + 1}.tif")
    np.testing.assert_array_equal(open_volume(alphabetical)[1][:, :, :], stack[order])


# 2 ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slow_stack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slow")
    stack = random_stack((64, 160, 128), "uint16", seed=17)
    return stack, write_planes(folder / "planes", stack)


SLOW = ["--chunk-size", "16,16,16", "--task-memory", "1M", "--n-cores", "2", "--log", "WARNING"]


@pytest.mark.slow
@pytest.mark.parametrize("presses", [2, 3])
def test_any_number_of_ctrl_c_ends_the_run_and_it_resumes(tmp_path, slow_stack, presses):
    stack, source = slow_stack
    dest = str(tmp_path / "out")
    args = [*CLI, "--source", source, "--dest", dest, *SLOW]
    process = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    done_log = os.path.join(dest, ".precomputed-tif", "done-1")
    deadline = time.monotonic() + 120
    while not (os.path.exists(done_log) and os.path.getsize(done_log) > 4):
        assert process.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    for _ in range(presses):  # as a terminal does: the whole foreground group gets each press
        os.killpg(process.pid, signal.SIGINT)
        time.sleep(0.2)
    try:
        _, stderr = process.communicate(timeout=60)  # it hung for good before
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail("the run did not end after Ctrl-C")
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    command = stderr.split("To finish it, run: ")[1].strip()
    assert command.endswith("--resume")
    assert not os.path.exists(os.path.join(dest, "info"))
    argv = shlex.split(command)[1:]
    resumed = run_cli(*argv)
    assert resumed.returncode == 0, resumed.stderr
    reference = str(tmp_path / "reference")
    assert run_cli("--source", source, "--dest", reference, *SLOW).returncode == 0
    assert _tree(dest) == _tree(reference)
    assert_every_chunk_equal(dest, reference_pyramid(stack, len(open_volume(dest))))


# 4 ---------------------------------------------------------------------------------------------
def test_the_readme_command_run_twice_is_success(tmp_path):
    dest = str(tmp_path / "stardist")
    first = run_cli(
        "--example", "--dest", dest, "--chunk-size", "16,16,16", "--voxel-size", "1,1,1"
    )
    assert first.returncode == 0, first.stderr
    second = run_cli(
        "--example", "--dest", dest, "--chunk-size", "16,16,16", "--voxel-size", "1,1,1"
    )
    assert second.returncode == 0, second.stderr
    assert "nothing to do" in second.stderr
    assert f"precomputed-webserver -d {dest} --viewer" in second.stdout
    # a different wish for the same folder is still refused
    other = run_cli("--example", "--dest", dest, "--format", "zarr")
    assert_one_line_error(other, "different volume", "--overwrite")


def test_gitignore_ignores_the_example_output():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        ["git", "check-ignore", "-q", "stardist/info"], cwd=root, capture_output=True
    )
    if result.returncode == 128:
        pytest.skip("not a git checkout")
    assert result.returncode == 0


# 5 ---------------------------------------------------------------------------------------------
def test_off_a_terminal_one_line_per_level_and_a_summary(tmp_path):
    dest = str(tmp_path / "out")
    result = run_cli("--example", "--dest", dest, "--chunk-size", "16,16,16")
    assert result.returncode == 0, result.stderr
    written = [line for line in result.stderr.splitlines() if " written: " in line]
    assert [line.split(" written")[0] for line in written] == [
        "INFO level 1 (1_1_1)",
        "INFO level 2 (2_2_2)",
        "INFO level 3 (4_4_4)",
    ]
    assert "\r" not in result.stderr  # no bar off a terminal
    summary = result.stdout.splitlines()
    assert re.match(r"done in [\d.]+ s: 0\.2 MB of uint16 voxels, [\d.]+ MB/s", summary[0])
    for level, key in enumerate(["1_1_1", "2_2_2", "4_4_4"], start=1):
        line = next(s for s in summary if s.strip().startswith(f"level {level} ({key})"))
        files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(dest, key)) for f in fs]
        assert line.endswith(f" in {len(files)} file{'s' if len(files) > 1 else ''}"), line
    assert summary[-1] == f"serve and view it: precomputed-webserver -d {dest} --viewer"
    quiet = run_cli("--example", "--dest", str(tmp_path / "q"), "--log", "WARNING")
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""


def _on_a_terminal(argv: list[str]) -> tuple[int, list[str]]:
    """Run `argv` on a 200 x 40 pseudo-terminal; its exit status and the screen it leaves."""
    pyte = pytest.importorskip("pyte")
    import pty

    screen = pyte.Screen(200, 40)
    stream = pyte.ByteStream(screen)
    pid, fd = pty.fork()
    if pid == 0:  # the child: a user's terminal
        import fcntl
        import struct
        import termios

        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
        os.execv(argv[0], argv)
    output = b""
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            break
        if not data:
            break
        output += data
    _, status = os.waitpid(pid, 0)
    stream.feed(output)
    return os.waitstatus_to_exitcode(status), [line.rstrip() for line in screen.display]


def test_on_a_terminal_the_bars_are_left_once_and_the_summary_below(tmp_path):
    dest = str(tmp_path / "out")
    status, lines = _on_a_terminal([*CLI, "--example", "--dest", dest, "--chunk-size", "8,8,8"])
    text = "\n".join(lines)
    assert status == 0, text
    for line in lines:
        if line.startswith("INFO"):
            assert "vox/s" not in line and "%|" not in line, text
    # each level's finished bar is left once; nothing stale below the summary
    for key in ("1_1_1", "2_2_2", "4_4_4", "8_8_8"):
        bars = [line for line in lines if f"({key}):" in line and "%|" in line]
        assert len(bars) == 1 and "100%" in bars[0], text
    last = max(i for i, line in enumerate(lines) if line)
    assert lines[last].startswith("serve and view it: precomputed-webserver"), text


BARS_AND_A_LOG_LINE = """
import logging, sys, time
from precomputed_tif.cli._common import setup_logging
from precomputed_tif.cli.convert import _Bars
from precomputed_tif.pyramid import plan_pyramid

setup_logging("INFO")
pyramid = plan_pyramid((64, 64, 64), "uint8", voxel_size_nm=(1, 1, 1), chunk_size=(32, 32, 32))
bars = _Bars(sys.stderr.isatty(), pyramid)
with bars.showing():
    for step in range(4):
        bars(1, 64 * 64 * 16, 64 * 64 * 64)
        bars(2, 32 * 32 * 8, 32 * 32 * 32)
        if step == 1:
            logging.getLogger("precomputed_tif").warning("a plane is slow to read: %s", "p_7.tif")
        time.sleep(0.05)
print("after the bars")
"""


def test_on_a_terminal_a_log_line_during_the_bars_does_not_tear_them():
    status, lines = _on_a_terminal([sys.executable, "-c", BARS_AND_A_LOG_LINE])
    text = "\n".join(lines)
    assert status == 0, text
    shown = [line for line in lines if line]
    assert shown[0] == "WARNING a plane is slow to read: p_7.tif", text  # whole, above the bars
    assert shown[1].startswith("level 1 (1_1_1): 100%|") and shown[2].startswith(
        "level 2 (2_2_2): 100%|"
    ), text
    assert shown[3:] == ["after the bars"], text


# 6 ---------------------------------------------------------------------------------------------
def test_a_fixed_plane_names_itself_and_the_command_that_works(tmp_path):
    stack = random_stack((12, 20, 16), "uint16", seed=5)
    source = write_planes(tmp_path / "planes", stack)
    dest = str(tmp_path / "out")
    common = ["--source", source, "--dest", dest, "--chunk-size", "8,8,8"]
    assert run_cli(*common).returncode == 0
    # the user repairs plane 7 (here: rewrites it compressed, so its size changes)
    import tifffile

    plane = sorted(os.listdir(tmp_path / "planes"))[7]
    tifffile.imwrite(tmp_path / "planes" / plane, stack[7], compression="zlib")
    refused = run_cli(*common, "--resume")
    assert_one_line_error(refused, plane, "changed size", "--overwrite")
    assert "vs" not in refused.stderr  # no bare digests
    result = run_cli(*common, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert_every_chunk_equal(dest, reference_pyramid(stack, len(open_volume(dest))))


# 7 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--levels", "50"], ["--levels 50", "57x61x31", "--levels 7 or less"]),
        (["--levels", "0"], ["--levels", "at least 1"]),
        (["--n-cores", "0"], ["--n-cores", "at least 1"]),
        (["--n-cores", "-3"], ["--n-cores", "at least 1"]),
        (["--memory", "1K"], ["--memory 1K", "too small", "1G"]),
        (["--memory", "lots"], ["--memory", "not a size"]),
        (["--chunk-size", "0,4,4"], ["--chunk-size", "three positive numbers"]),
        (["--format", "hdf5"], ["--format", "invalid choice"]),
        (["--bogus"], ["unrecognized arguments: --bogus"]),
    ],
)
def test_argument_errors_are_one_line(tmp_path, args, fragments):
    result = run_cli("--example", "--dest", str(tmp_path / "o"), *args)
    assert_one_line_error(result, *fragments)
    if args not in (["--levels", "50"], ["--memory", "1K"]):  # these two say the fix instead
        assert "see precomputed-tif --help" in result.stderr
    assert "usage:" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not os.path.exists(tmp_path / "o")


def test_missing_required_argument_is_one_line():
    result = run_cli("--example")
    assert_one_line_error(result, "--dest", "see precomputed-tif --help")
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_unquoted_glob_gets_quote_the_glob(tmp_path, unpadded):
    _, source = unpadded
    import glob

    expanded = sorted(glob.glob(source))  # what the shell does with --source planes/*.tif
    result = run_cli("--source", *expanded, "--dest", str(tmp_path / "o"))
    assert_one_line_error(result, "quote the glob", "20 file names", "*.tif")


def test_no_memory_warning_without_memory(tmp_path):
    result = run_cli(
        "--example", "--dest", str(tmp_path / "o"), "--n-cores", "64", "--dry-run", "--log", "INFO"
    )
    assert result.returncode == 0, result.stderr
    assert "--memory allows" not in result.stderr
    given = run_cli(
        "--example", "--dest", str(tmp_path / "o"), "--n-cores", "64", "--memory", "2G", "--dry-run"
    )
    assert "--memory 2G allows" in given.stderr


# 8 ---------------------------------------------------------------------------------------------
def test_a_file_as_dest_is_said_plainly(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    result = run_cli("--example", "--dest", str(target))
    assert_one_line_error(result, repr(str(target)), "is a file, not a folder")
    assert "Errno" not in result.stderr and ".tmp-" not in result.stderr
    assert target.read_text() == "mine"


def test_a_read_only_dest_is_said_plainly(tmp_path):
    disk = tmp_path / "ro"
    disk.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=1M", "tmpfs", str(disk)], capture_output=True
        ).returncode
    ):
        pytest.skip("needs root to mount a read-only file system")
    try:
        result = run_cli("--example", "--dest", str(disk / "out"))
        assert_one_line_error(result, "read-only file system", str(disk / "out"))
        assert "Errno" not in result.stderr
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_busy_port_is_said_plainly(tmp_path):
    dest = str(tmp_path / "v")
    assert run_cli("--example", "--dest", dest).returncode == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_module(COMMANDS["precomputed-webserver"], "-d", dest, "-p", str(port))
    assert_one_line_error(result, f"port {port}", "in use", "--port")
    assert "Errno" not in result.stderr


# 9 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_version(command):
    from precomputed_tif import __version__

    result = run_module(COMMANDS[command], "--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"{command} {__version__}"


def test_help_says_what_the_code_does():
    serve = run_module(COMMANDS["precomputed-webserver"], "--help").stdout
    points = run_module(COMMANDS["precomputed-write-points"], "--help").stdout
    save = run_module(COMMANDS["precomputed-save"], "--help").stdout
    for text in (serve, points):
        assert "progress bar" not in text
    for flag in ("--rotate-left", "--rotate-right", "--rotate-180", "--flip-horizontally"):
        block = save.split(flag, 1)[1].split("\n  --", 1)[0]
        assert len(block.split()) > 3, f"{flag} has no help"
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "| `--threads` | worker threads (default 16) |" not in readme
    assert "twice the cores" in readme


def test_license_file_is_mit():
    text = (Path(__file__).parent.parent / "LICENSE").read_text()
    assert text.startswith("MIT License")


def test_save_says_what_it_wrote(tmp_path):
    dest = str(tmp_path / "v")
    assert run_cli("--example", "--dest", dest, "--chunk-size", "16,16,16").returncode == 0
    out = str(tmp_path / "z3.tif")
    result = run_module(
        COMMANDS["precomputed-save"],
        "--url",
        dest,
        "--output",
        out,
        "--coordinate",
        "3",
        "--level",
        "2",
    )
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout and "level 2 (2_2_2)" in result.stdout
    import tifffile

    plane = tifffile.imread(out)
    np.testing.assert_array_equal(plane, open_volume(dest)[2][3])


# 10 --------------------------------------------------------------------------------------------
def test_the_example_is_the_stardist_stack():
    import tifffile

    from precomputed_tif.example import example_planes

    data = os.path.join(os.path.dirname(__file__), "data", "stacks", "stardist_img3d")
    planes = sorted(os.listdir(os.path.join(data, "planes")))
    expected = np.stack([tifffile.imread(os.path.join(data, "planes", p)) for p in planes])
    np.testing.assert_array_equal(tifffile.imread(example_planes()), expected)
    assert os.path.isfile(example_planes().replace(".tif", ".LICENSE.md"))


# 3 ---------------------------------------------------------------------------------------------
def test_the_viewer_page_gets_a_quiet_event_stream_before_the_client(tmp_path):
    pytest.importorskip("neuroglancer")
    from precomputed_tif.serve import PrecomputedApp
    from precomputed_tif.serve.config import resolve_source
    from precomputed_tif.serve.viewer import QUIET_EVENTS_SCRIPT, client_folder
    from servekit import call

    dest = str(tmp_path / "v")
    assert run_cli("--example", "--dest", dest).returncode == 0
    folder = client_folder()
    app = PrecomputedApp(single=resolve_source("", dest, None), viewer=folder)
    page = call(app, "/v/ng/")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    original = (Path(folder) / "index.html").read_bytes()
    html = page.body.decode()
    assert html.replace(QUIET_EVENTS_SCRIPT, "", 1).encode() == original
    assert html.index(QUIET_EVENTS_SCRIPT) < html.index("<script defer")
    assert call(app, "/v/ng/index.html").body == page.body
    script = next(n for n in os.listdir(folder) if n.endswith(".js"))
    assert call(app, f"/v/ng/{script}").body == (Path(folder) / script).read_bytes()


# 11 --------------------------------------------------------------------------------------------
def test_without_the_segmentation_extra_the_encoding_says_what_to_install(monkeypatch):
    from precomputed_tif import PlanError, plan_pyramid

    monkeypatch.setitem(sys.modules, "compressed_segmentation", None)  # import fails
    with pytest.raises(PlanError, match=r"pip install 'precomputed-tif\[segmentation\]'"):
        plan_pyramid(
            (8, 8, 8), "uint32", voxel_size_nm=(1, 1, 1), encoding="compressed_segmentation"
        )
