"""The same conversion tasks on a Dask cluster give byte-identical output."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import random_stack, reference_pyramid, write_planes
from test_cli import _tree
from test_convert import assert_every_chunk_equal

pytest.importorskip("distributed")


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["blockfs", "zarr", "precomputed --sharded"])
def test_local_dask_cluster_matches_the_process_pool(tmp_path, fmt):
    stack = random_stack((40, 70, 90), "uint16", seed=17)
    source = write_planes(tmp_path / "planes", stack)
    common = [
        "--source",
        source,
        "--format",
        *fmt.split(),
        "--chunk-size",
        "16,16,16",
        "--task-memory",
        "1M",
        "--log",
        "WARNING",
    ]
    cli = [sys.executable, "-m", "precomputed_tif.cli.convert"]
    pool = subprocess.run(
        [*cli, *common, "--dest", str(tmp_path / "run_a")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pool.returncode == 0, pool.stderr
    dask = subprocess.run(
        [*cli, *common, "--dest", str(tmp_path / "run_b"), "--dask-workers", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert dask.returncode == 0, dask.stderr
    assert _tree(str(tmp_path / "run_b")) == _tree(str(tmp_path / "run_a"))
    assert_every_chunk_equal(str(tmp_path / "run_b"), reference_pyramid(stack, 4))
