"""Deploying as a sysadmin would: file modes from the umask, plain nginx, Apache with mod_wsgi.

Volumes are converted by the real CLI in a subprocess with a set umask, into a folder other users
can enter, and served by web servers whose workers run unprivileged (www-data when started by
root), so a file they cannot read shows up as a 403 or 500 here exactly as it would for a user.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import random_stack, write_planes
from precomputed_tif import open_volume
from servekit import http_get, plain_nginx, readable_folder

CONVERT = [sys.executable, "-m", "precomputed_tif.cli.convert"]
POINTS = [sys.executable, "-m", "precomputed_tif.cli.write_points"]
QUIET = ["--chunk-size", "16,16,16", "--n-cores", "1", "--log", "WARNING"]
VOLUMES = {
    "tiff": ["--format", "tiff"],
    "zarr": ["--format", "zarr"],
    "blockfs": ["--format", "blockfs"],
    "precomputed": ["--format", "precomputed"],
    "sharded": ["--format", "precomputed", "--sharded", "--task-memory", "1M"],
    "gzip": ["--format", "precomputed", "--gzip"],
}
NEUROGLANCER_FORMATS = ("precomputed", "sharded")


def _convert(planes: str, dest: Path, args: list[str], umask: int, *more: str) -> None:
    result = subprocess.run(
        [*CONVERT, "--source", planes, "--dest", str(dest), *QUIET, *args, *more],
        capture_output=True,
        text=True,
        umask=umask,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr


def _write_points(folder: Path, umask: int) -> Path:
    cells = folder / "cells.json"
    cells.write_text(json.dumps([[1, 2, 3], [30, 20, 10], [47, 39, 19]]))
    dest = folder / "points"
    result = subprocess.run(
        [*POINTS, "--input", str(cells), "--output-directory", str(dest), "--sharded"],
        capture_output=True,
        text=True,
        umask=umask,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return dest


def _modes(root: Path) -> dict[str, int]:
    """Permission bits of `root` and of everything under it, by path relative to `root`."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def _assert_umask_modes(root: Path, umask: int) -> None:
    files, folders = 0o666 & ~umask, 0o777 & ~umask
    wrong = {
        name: oct(mode)
        for name, mode in _modes(root).items()
        if mode != (folders if (root / name).is_dir() else files)
    }
    assert not wrong, f"modes other than {oct(files)}/{oct(folders)} under {root}: {wrong}"


@pytest.fixture(scope="module")
def stack():
    return random_stack((20, 40, 48), "uint16", seed=17)


@pytest.fixture(scope="module")
def deployed(stack):
    """Every format converted under Debian's default umask into a folder others can enter."""
    with readable_folder("deploy-") as folder:
        planes = write_planes(folder / "planes", stack)
        for name, args in VOLUMES.items():
            _convert(planes, folder / name, args, 0o022)
        _write_points(folder, 0o022)
        yield folder


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_every_file_and_folder_gets_the_modes_the_umask_gives(tmp_path, stack, umask):
    planes = write_planes(tmp_path / "planes", stack)
    for name, args in VOLUMES.items():
        _convert(planes, tmp_path / name, args, umask)
        _assert_umask_modes(tmp_path / name, umask)
    _assert_umask_modes(_write_points(tmp_path, umask), umask)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["blockfs", "sharded", "tiff"])
def test_a_resumed_run_gets_the_modes_the_umask_gives(tmp_path, fmt):
    """Part files moved into place and files written after --resume: the umask's modes too."""
    stack = random_stack((64, 128, 128), "uint16", seed=3)
    planes = write_planes(tmp_path / "planes", stack)
    dest = tmp_path / "vol"
    args = [*VOLUMES[fmt], "--chunk-size", "32,32,32", "--task-memory", "1M"]
    process = subprocess.Popen(
        [*CONVERT, "--source", planes, "--dest", str(dest), *QUIET, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        umask=0o027,
        start_new_session=True,
    )
    done_log = dest / ".precomputed-tif" / "done-1"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if done_log.exists() and len(done_log.read_text().split()) >= 2:
            break
        time.sleep(0.002)
    assert process.poll() is None, "the run finished before it could be interrupted"
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    assert not (dest / "info").exists()
    _convert(planes, dest, args, 0o027, "--resume")
    _assert_umask_modes(dest, 0o027)
    np.testing.assert_array_equal(open_volume(str(dest))[1][:, :, :], stack)


def test_plain_nginx_serves_every_fresh_volume_without_chmod(deployed, stack, tmp_path):
    """nginx's unprivileged workers read every file; Neuroglancer's formats read back whole."""
    with plain_nginx(str(deployed), tmp_path / "nginx") as port:
        for name in [*VOLUMES, "points"]:
            for path in sorted((deployed / name).rglob("*")):
                relative = path.relative_to(deployed)
                if path.is_dir() or any(p.startswith(".") for p in relative.parts):
                    continue
                reply = http_get(port, "/" + relative.as_posix())
                assert reply.status == 200, f"nginx answers {reply.status} for {relative}"
                assert reply.body == path.read_bytes(), relative
        for name in NEUROGLANCER_FORMATS:
            volume = open_volume(f"precomputed://http://127.0.0.1:{port}/{name}")
            np.testing.assert_array_equal(volume[1][:, :, :], stack, err_msg=name)
            np.testing.assert_array_equal(
                volume[2][:, :, :], open_volume(str(deployed / name))[2][:, :, :], err_msg=name
            )
