"""The ``precomputed-tif`` command starts its workers' server before the package is imported
(`precomputed_tif_launcher`), and the pool forks its workers from that server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points

import numpy as np
import pytest
import tifffile

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forkserver: Linux")

_EARLY = """
import json, os, sys
from multiprocessing import forkserver

import precomputed_tif_launcher

precomputed_tif_launcher.start_forkserver()
imported = sorted(m for m in sys.modules if m.split(".")[0] == "precomputed_tif")
server = forkserver._forkserver._forkserver_pid

from precomputed_tif.executors import process_pool

with process_pool(2) as pool:
    parents = sorted({pool.submit(os.getppid).result() for _ in range(4)})
print(json.dumps({"imported": imported, "server": server, "parents": parents}))
"""


@linux_only
def test_workers_are_forked_by_the_server_started_before_the_package():
    """No module of the package is imported when the launcher starts the server, and the pool
    made later forks every worker from that same server."""
    done = subprocess.run(
        [sys.executable, "-c", _EARLY], capture_output=True, text=True, check=True
    )
    seen = json.loads(done.stdout)
    assert seen["imported"] == []
    assert isinstance(seen["server"], int)
    assert seen["parents"] == [seen["server"]]


_COMMAND = """
import json, os, sys
from multiprocessing import forkserver

import precomputed_tif_launcher

sys.argv = ["precomputed-tif"] + json.loads(sys.argv[1])
try:
    code = precomputed_tif_launcher.convert()
except SystemExit as exit:
    code = exit.code
print(json.dumps({
    "code": code,
    "server": forkserver._forkserver._forkserver_pid,
    "blas": os.environ.get("OPENBLAS_NUM_THREADS"),
}))
"""


def _launch(argv: list[str], **env: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _COMMAND, json.dumps(argv)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@linux_only
def test_the_command_converts_through_the_early_server(tmp_path):
    stack = np.arange(40 * 48 * 36, dtype=np.uint16).reshape(36, 48, 40)
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    dest = tmp_path / "out"
    seen = _launch(
        ["--source", str(tmp_path / "stack.tif"), "--dest", str(dest), "--format", "zarr"]
    )
    assert seen["code"] == 0
    assert isinstance(seen["server"], int)
    # numpy's OpenBLAS threads spin at import in every process; the converter needs none
    assert seen["blas"] == "1"
    import zarr

    assert np.array_equal(zarr.open(str(dest / "1_1_1"), mode="r")[:], stack)


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["--version"], ["--dry-run", "--shape", "64,64,64"], ["--verify", "somewhere"]],
)
def test_no_server_is_started_for_commands_that_start_no_worker(argv):
    seen = _launch(argv)
    assert seen["server"] is None


def test_a_users_blas_threads_are_left_as_they_are():
    assert _launch(["--help"], OPENBLAS_NUM_THREADS="3")["blas"] == "3"


def test_the_command_is_the_launchers():
    (command,) = [e for e in entry_points(group="console_scripts") if e.name == "precomputed-tif"]
    assert command.value == "precomputed_tif_launcher:convert"
