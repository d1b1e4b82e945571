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
@pytest.mark.parametrize(
    "fmt",
    ["tiff", "zarr", "blockfs", "precomputed", "precomputed --sharded", "ngff", "ngff --sharded"],
)
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
        [*cli, *common, "--dest", str(tmp_path / "run_a" / "vol")],  # ngff: the name is kept
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pool.returncode == 0, pool.stderr
    dask = subprocess.run(
        [*cli, *common, "--dest", str(tmp_path / "run_b" / "vol"), "--dask-workers", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert dask.returncode == 0, dask.stderr
    assert _tree(str(tmp_path / "run_b" / "vol")) == _tree(str(tmp_path / "run_a" / "vol"))
    assert_every_chunk_equal(str(tmp_path / "run_b" / "vol"), reference_pyramid(stack, 4))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["blockfs", "precomputed"])
def test_a_worker_killed_mid_run_costs_only_its_tasks(tmp_path, fmt):
    """SIGKILL one worker process while tasks run on it: Dask reruns them, the bytes match."""
    import os
    import signal

    from precomputed_tif import Budget, convert, create_store, open_source, plan_pyramid
    from precomputed_tif.executors import DaskExecutor, SerialExecutor

    stack = random_stack((64, 128, 128), "uint16", seed=23)
    source = open_source(write_planes(tmp_path / "planes", stack))
    pyramid = plan_pyramid(source.size, "uint16", voxel_size_nm=(1, 1, 1), chunk_size=(16, 16, 16))
    budget = Budget(n_workers=2, task_bytes=200_000)

    reference = create_store(fmt, str(tmp_path / "run_a"), pyramid)
    convert(source, reference, executor=SerialExecutor(), budget=budget)

    dask = DaskExecutor(n_workers=2)
    killed: list[int] = []

    def kill_a_busy_worker(level: int, voxels: int, total: int) -> None:
        if killed or voxels == 0:
            return
        busy = [addr for addr, tasks in dask.client.processing().items() if tasks]
        pids = dask.client.run(os.getpid, workers=busy[:1])
        for pid in pids.values():
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    with dask as executor:
        store = create_store(fmt, str(tmp_path / "run_b"), pyramid)
        convert(source, store, executor=executor, budget=budget, progress=kill_a_busy_worker)
    assert killed, "no worker was busy when the first task finished"
    assert _tree(str(tmp_path / "run_b")) == _tree(str(tmp_path / "run_a"))
    assert_every_chunk_equal(str(tmp_path / "run_b"), reference_pyramid(stack, pyramid.n_levels))


@pytest.mark.slow
def test_a_client_killed_mid_run_leaves_a_run_that_resumes(tmp_path):
    import signal

    from test_cli import _interrupt_after_progress

    stack = random_stack((64, 128, 128), "uint16", seed=29)
    source = write_planes(tmp_path / "planes", stack)
    common = ["--source", source, "--format", "blockfs", "--chunk-size", "16,16,16"]
    common += ["--task-memory", "1M", "--dask-workers", "2", "--log", "WARNING"]
    cli = [sys.executable, "-m", "precomputed_tif.cli.convert"]
    dest = str(tmp_path / "run_b")
    killed = _interrupt_after_progress([*common, "--dest", dest], dest, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    resumed = subprocess.run(
        [*cli, *common, "--dest", dest, "--resume"], capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    reference = subprocess.run(
        [*cli, *common[:-4], "--dest", str(tmp_path / "run_a"), "--log", "WARNING"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert reference.returncode == 0, reference.stderr
    assert _tree(dest) == _tree(str(tmp_path / "run_a"))
    assert_every_chunk_equal(dest, reference_pyramid(stack, 4))
