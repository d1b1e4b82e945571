"""Faults met the way a user meets them: workers SIGKILLed by pid, runs killed right after a
stage, planes rewritten before ``--resume``; the answer is byte-identical output or a one-line
error that says how to finish, never a volume that looks complete and is not."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil
import pytest
import tifffile

from conftest import random_stack, reference_pyramid, write_planes
from test_cli import CLI, _tree, assert_one_line_error, run_cli
from test_convert import assert_every_chunk_equal

RESUME_HINT = "run again with --resume to finish"


def done_entries(dest: str) -> int:
    """Tasks the run has recorded as finished, over every stage."""
    state = os.path.join(dest, ".precomputed-tif")
    total = 0
    for name in os.listdir(state) if os.path.isdir(state) else []:
        if name.startswith("done-") and not name.endswith(".complete"):
            try:
                with open(os.path.join(state, name)) as f:
                    total += len(f.read().split())
            except FileNotFoundError:
                pass
    return total


def worker_processes(pid: int) -> list[psutil.Process]:
    """The worker processes under a converter (process pool or local Dask cluster)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    found = []
    for child in children:
        try:
            command = " ".join(child.cmdline())
            parent = child.ppid()
        except psutil.Error:
            continue
        # Dask's nannies spawn workers; a pool's forkserver (our child) forks them
        if "spawn_main" in command or "forkserver" in command and parent != pid:
            found.append(child)
    return found


def _described(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())[:120]
    except psutil.Error:
        return f"pid {process.pid}"


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [*CLI, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for(process: subprocess.Popen, ready, timeout: float = 120) -> bool:
    """Poll `ready()` until true; False when the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.002)
    raise AssertionError("the run never reached the point to interrupt it")


def finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def assert_finishes_identically(
    result: subprocess.CompletedProcess, args: list[str], dest: str, reference: str
) -> None:
    """Exit 0 only with the reference's bytes; otherwise a one-line error naming --resume, and
    the resumed run gives the reference's bytes."""
    if result.returncode != 0:
        assert_one_line_error(result, RESUME_HINT)
        assert not os.path.exists(os.path.join(dest, "info"))
        resumed = run_cli(*args, "--dest", dest, "--resume")
        assert resumed.returncode == 0, resumed.stderr
    assert _tree(dest) == _tree(reference)


@pytest.fixture(scope="module")
def big_stack(tmp_path_factory):
    """Large enough that blockfs part files take a while to copy."""
    folder = tmp_path_factory.mktemp("big")
    stack = random_stack((128, 400, 480), "uint16", seed=41)
    return stack, write_planes(folder / "planes", stack)


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(1))
def test_dask_worker_killed_while_the_driver_copies_its_part(tmp_path, big_stack, trial):
    """A worker killed after its task finished makes Dask run the task again while the driver
    copies the first run's part into the block file: the copy must stay whole."""
    pytest.importorskip("distributed")
    stack, source = big_stack
    args = ["--source", source, "--format", "blockfs", "--chunk-size", "64,64,64"]
    args += ["--task-memory", "48M", "--log", "WARNING"]
    reference, dest = str(tmp_path / "ref"), str(tmp_path / "out")
    assert run_cli(*args, "--dest", reference).returncode == 0
    process = start([*args, "--dest", dest, "--dask-workers", "2"])
    wait_for(process, lambda: done_entries(dest) >= 1)
    workers = worker_processes(process.pid)
    if workers:
        workers[trial % len(workers)].kill()
    result = finish(process)
    assert_finishes_identically(result, args, dest, reference)
    assert_every_chunk_equal(dest, reference_pyramid(stack, 4))


def test_a_rerun_of_a_task_cannot_truncate_the_part_being_committed(tmp_path):
    """The race of a lost Dask worker, made deterministic: the same task runs again and, half-way
    through writing, the driver commits the task. The commit must copy the whole first part."""
    from precomputed_tif import ArraySource, Budget, convert, create_store, plan_pyramid
    from precomputed_tif.executors import SerialExecutor
    from precomputed_tif.plan import plan_stages, stage_tasks
    from precomputed_tif.run import run_task
    from precomputed_tif.stores import blockfs

    stack = random_stack((32, 64, 64), "uint16", seed=5)
    source = ArraySource(stack)
    pyramid = plan_pyramid(source.size, "uint16", voxel_size_nm=(1, 1, 1), chunk_size=(16,) * 3)
    budget = Budget(n_workers=1, task_bytes=2**30)
    reference = create_store("blockfs", str(tmp_path / "ref"), pyramid)
    convert(source, reference, executor=SerialExecutor(), budget=budget)

    store = create_store("blockfs", str(tmp_path / "out"), pyramid)
    (stage,) = plan_stages(pyramid, task_budget_bytes=2**30, n_workers=1)
    (task,) = stage_tasks(pyramid, stage, store, source)
    for level in stage.levels:
        store.prepare_level(level)
    run_task(task)  # the first run finished; its worker is lost before the result is used
    committed = []
    original = blockfs._PartWriter.write_chunk

    def write_and_commit(self, box, data):
        original(self, box, data)
        if not committed:  # the driver commits while the rerun is half-way through
            for level in stage.levels:
                store.commit_task(level, task.index)
            committed.append(True)

    blockfs._PartWriter.write_chunk = write_and_commit
    try:
        run_task(task)
    finally:
        blockfs._PartWriter.write_chunk = original
    for level in stage.levels:
        store.finish_level(level)
    store.write_info()
    for level in stage.levels:
        key = pyramid.scale(level).key
        for name in ("precomputed.blockfs.0",):
            assert (tmp_path / "out" / key / name).read_bytes() == (
                tmp_path / "ref" / key / name
            ).read_bytes()
    assert_every_chunk_equal(str(tmp_path / "out"), reference_pyramid(stack, pyramid.n_levels))


def second_stage_started(dest: str) -> bool:
    state = os.path.join(dest, ".precomputed-tif")
    names = os.listdir(state) if os.path.isdir(state) else []
    return any(n.startswith("done-") and n != "done-1" and "." not in n for n in names)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["blockfs", "tiff", "precomputed --sharded"])
def test_killed_right_after_a_stage_finished_resumes_identically(tmp_path, fmt):
    stack = random_stack((64, 96, 96), "uint16", seed=43)
    source = write_planes(tmp_path / "planes", stack)
    args = ["--source", source, "--format", *fmt.split(), "--chunk-size", "16,16,16"]
    args += ["--task-memory", "1M", "--n-cores", "1", "--log", "WARNING"]
    reference, dest = str(tmp_path / "ref"), str(tmp_path / "out")
    assert run_cli(*args, "--dest", reference).returncode == 0
    process = start([*args, "--dest", dest])
    assert wait_for(process, lambda: second_stage_started(dest)), "the run had one stage"
    os.killpg(process.pid, signal.SIGKILL)
    assert finish(process).returncode == -signal.SIGKILL
    resumed = run_cli(*args, "--dest", dest, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert _tree(dest) == _tree(reference)
    again = run_cli(*args, "--dest", dest, "--resume")  # a finished volume: nothing to redo
    assert again.returncode == 0, again.stderr
    assert _tree(dest) == _tree(reference)
    assert_every_chunk_equal(dest, reference_pyramid(stack, 4))


@pytest.mark.slow
@pytest.mark.parametrize("keep_time", [False, True], ids=["new-mtime", "same-mtime"])
def test_a_plane_rewritten_with_the_same_size_is_refused_on_resume(tmp_path, keep_time):
    """Between the kill and --resume a plane gets new voxels but keeps its size (and, copied with
    its times kept, its modification time too): resuming would mix old and new voxels."""
    from test_cli import SLOW_RUN, _interrupt_after_progress

    stack = random_stack((96, 192, 160), "uint16", seed=47)
    source = write_planes(tmp_path / "planes", stack)
    plane = tmp_path / "planes" / "plane_0050.tif"
    for path in (tmp_path / "planes").iterdir():
        os.utime(path, ns=(1_700_000_000 * 10**9,) * 2)  # whole seconds: times untrustworthy
    args = ["--source", source, "--format", "zarr", *SLOW_RUN]
    dest = str(tmp_path / "out")
    killed = _interrupt_after_progress([*args, "--dest", dest], dest, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    before = plane.stat()
    tifffile.imwrite(plane, stack[50] ^ 0xFF)
    assert plane.stat().st_size == before.st_size
    if keep_time:
        os.utime(plane, ns=(before.st_atime_ns, before.st_mtime_ns))
    refused = run_cli(*args, "--dest", dest, "--resume")
    assert_one_line_error(refused, "'plane_0050.tif'", "--overwrite")
    tifffile.imwrite(plane, stack[50])  # the original restored: the run resumes
    os.utime(plane, ns=(before.st_atime_ns, before.st_mtime_ns))
    resumed = run_cli(*args, "--dest", dest, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_every_chunk_equal(dest, reference_pyramid(stack, 4))


def _convert_jpeg(tmp_path, name, stack, task_bytes, *, sharded=False, n_workers=2):
    from precomputed_tif import ArraySource, Budget, convert, create_store, plan_pyramid
    from precomputed_tif.executors import SerialExecutor

    source = ArraySource(stack)
    pyramid = plan_pyramid(
        source.size, "uint8", voxel_size_nm=(1, 1, 1), chunk_size=(16,) * 3, encoding="jpeg"
    )
    if sharded:
        pyramid = pyramid.sharded(task_bytes)
    store = create_store("precomputed", str(tmp_path / name), pyramid)
    budget = Budget(n_workers=n_workers, task_bytes=task_bytes)
    convert(source, store, executor=SerialExecutor(), budget=budget)
    assert not (tmp_path / name / ".precomputed-tif" / "exact").exists()
    return pyramid


def test_jpeg_levels_do_not_depend_on_how_the_run_was_cut(tmp_path):
    """Every level is made from exact voxels, never from decoded jpeg: one stage or many, sharded
    or not, the same stack gives the same pyramid."""
    import numpy as np

    from precomputed_tif import open_volume
    from precomputed_tif.plan import plan_stages

    rng = np.random.default_rng(53)
    stack = (rng.random((64, 96, 112)) * 40 + np.arange(112) * 2).astype("uint8")
    one = _convert_jpeg(tmp_path, "one", stack, 2**30, n_workers=1)
    many = _convert_jpeg(tmp_path, "many", stack, 60_000)
    sharded = _convert_jpeg(tmp_path, "sharded", stack, 60_000, sharded=True)
    assert len(plan_stages(one, task_budget_bytes=2**30, n_workers=1)) == 1
    assert len(plan_stages(many, task_budget_bytes=60_000, n_workers=2)) > 1
    assert len(plan_stages(sharded, task_budget_bytes=60_000, n_workers=2)) == 4
    assert _tree(str(tmp_path / "many")) == _tree(str(tmp_path / "one"))
    volumes = [open_volume(str(tmp_path / name)) for name in ("one", "sharded")]
    for level in range(1, len(volumes[0]) + 1):
        np.testing.assert_array_equal(volumes[1][level][:], volumes[0][level][:])
    # and what they hold is the jpeg of the exact reference, level by level
    exact = reference_pyramid(stack, len(volumes[0]))
    for level, want in enumerate(exact[1:], start=2):
        got = volumes[0][level][:].astype(int)
        assert np.abs(got - want.astype(int)).mean() < 2.5


def _files(root, pattern):
    return sorted(p for p in root.glob(pattern) if p.is_file())


def _flip(path, where: float = 0.5) -> None:
    content = bytearray(path.read_bytes())
    at = int(len(content) * where)
    content[at : at + 8] = bytes(b ^ 0x5A for b in content[at : at + 8])
    path.write_bytes(bytes(content))


def _damage(root, fmt: str) -> list[str]:
    """Delete one piece and corrupt another, as a failing disk or a careless hand would; returns
    fragments of what --verify should name."""
    if fmt == "blockfs":
        _flip(root / "1_1_1" / "precomputed.blockfs.0")  # decodes silently without a checksum
        block_file = root / "2_2_2" / "precomputed.blockfs.0"
        block_file.write_bytes(block_file.read_bytes()[:-100])  # entries past the end
        return ["level 1 chunk", "checksum", "level 2 chunk"]
    if fmt == "precomputed --sharded":
        shards = _files(root / "1_1_1", "*.shard")
        shards[0].unlink()
        _flip(_files(root / "2_2_2", "*.shard")[0], 0.0)  # its shard index
        return ["level 1 chunk", "missing", "level 2 chunk"]
    pattern = {"tiff": "*.tiff", "zarr": "*/*/*", "precomputed": "*-*_*-*_*-*"}[fmt.split()[0]]
    chunks = _files(root / "1_1_1", pattern)
    chunks[len(chunks) // 2].unlink()
    coarser = _files(root / "2_2_2", pattern)
    coarser[0].write_bytes(coarser[0].read_bytes()[:50])
    return ["level 1 chunk", "missing", "level 2 chunk", "damaged"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "fmt",
    [
        "tiff",
        "zarr",
        "blockfs",
        "precomputed",
        "precomputed --sharded",
        "precomputed --encoding jpeg",
    ],
)
def test_verify_finds_damage_and_repair_restores_the_bytes(tmp_path, fmt):
    """Delete and corrupt pieces of a finished volume; --verify names them, --resume --repair
    gives back the bytes of an uninterrupted run (jpeg: coarser levels from exact voxels)."""
    dtype = "uint8" if "jpeg" in fmt else "uint16"
    stack = random_stack((64, 80, 96), dtype, seed=59)
    source = write_planes(tmp_path / "planes", stack)
    args = ["--source", source, "--format", *fmt.split(), "--chunk-size", "16,16,16"]
    args += ["--task-memory", "1M", "--n-cores", "2", "--log", "WARNING"]
    reference, dest = tmp_path / "ref", tmp_path / "out"
    assert run_cli(*args, "--dest", str(reference)).returncode == 0
    assert run_cli(*args, "--dest", str(dest)).returncode == 0
    whole = run_cli("--verify", str(dest), "--source", source)
    assert whole.returncode == 0, whole.stdout + whole.stderr
    assert whole.stdout.startswith("OK: all ") and "match" in whole.stdout

    expected = _damage(dest, fmt)
    found = run_cli("--verify", str(dest))
    assert found.returncode == 1, found.stdout + found.stderr
    verdict, *problems = found.stdout.splitlines()
    assert verdict.startswith("DAMAGED: ") and "--resume --repair" in verdict
    for fragment in expected:
        assert fragment in found.stdout, found.stdout

    repaired = run_cli(*args, "--dest", str(dest), "--resume", "--repair")
    assert repaired.returncode == 0, repaired.stderr
    assert _tree(str(dest)) == _tree(str(reference))
    assert run_cli("--verify", str(dest)).returncode == 0
    if "jpeg" not in fmt:
        assert_every_chunk_equal(str(dest), reference_pyramid(stack, 4))


def _pool_run_under_way(tmp_path, fmt: str, seed: int):
    """A reference run, then the same run started and past its second task, its workers up:
    (args, dest, reference, the running process)."""
    stack = random_stack((64, 96, 96), "uint16", seed=seed)
    source = write_planes(tmp_path / "planes", stack)
    args = ["--source", source, "--format", fmt, "--chunk-size", "16,16,16"]
    args += ["--task-memory", "1M", "--n-cores", "2", "--log", "WARNING"]
    reference, dest = str(tmp_path / "ref"), str(tmp_path / "out")
    assert run_cli(*args, "--dest", reference).returncode == 0
    process = start([*args, "--dest", dest])
    assert wait_for(process, lambda: done_entries(dest) >= 2 and worker_processes(process.pid))
    return args, dest, reference, process


@pytest.mark.slow
def test_a_pool_worker_killed_mid_run_is_one_line_and_resumes(tmp_path):
    args, dest, reference, process = _pool_run_under_way(tmp_path, "blockfs", seed=61)
    worker_processes(process.pid)[0].kill()
    result = finish(process)
    assert_one_line_error(result, "worker process died", RESUME_HINT)
    assert_finishes_identically(result, args, dest, reference)


@pytest.mark.slow
def test_a_driver_killed_alone_takes_its_workers_and_forkserver_with_it(tmp_path):
    """The OOM killer or ``kill -9 PID`` ends the driver only: no pool worker, forkserver or
    resource tracker may live on holding memory, and --resume still finishes the bytes."""
    args, dest, reference, process = _pool_run_under_way(tmp_path, "zarr", seed=62)
    left_behind = psutil.Process(process.pid).children(recursive=True)
    assert len(left_behind) >= 3  # the workers, the forkserver and the resource tracker
    process.kill()  # its own session: nothing else of the tree is signalled
    process.wait(timeout=30)  # not communicate(): orphans would hold its pipes open
    _, alive = psutil.wait_procs(left_behind, timeout=30)
    orphans = [_described(orphan) for orphan in alive]
    for orphan in alive:
        orphan.kill()
    process.communicate(timeout=30)
    assert not orphans, orphans
    resumed = run_cli(*args, "--dest", dest, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert _tree(dest) == _tree(reference)


@pytest.mark.slow
def test_a_dask_worker_killed_at_start_up_is_one_line_and_resumes(tmp_path):
    pytest.importorskip("distributed")
    stack = random_stack((32, 64, 64), "uint16", seed=67)
    source = write_planes(tmp_path / "planes", stack)
    args = ["--source", source, "--format", "zarr", "--chunk-size", "16,16,16"]
    args += ["--task-memory", "1M", "--log", "WARNING"]
    reference, dest = str(tmp_path / "ref"), str(tmp_path / "out")
    assert run_cli(*args, "--dest", reference).returncode == 0
    process = start([*args, "--dest", dest, "--dask-workers", "2"])
    assert wait_for(process, lambda: bool(worker_processes(process.pid)))
    worker_processes(process.pid)[0].kill()
    result = finish(process)
    if result.returncode != 0:
        assert_one_line_error(result, "Dask", RESUME_HINT)
    else:
        assert result.stderr == "" or "Traceback" not in result.stderr
    assert_finishes_identically(result, args, dest, reference)


@pytest.mark.slow
def test_an_object_store_lost_mid_run_is_one_line(tmp_path):
    """The S3 endpoint goes away while tasks write to it: one line naming --resume, exit 2."""
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = dict(os.environ, AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="t")
    env.update(AWS_SECRET_ACCESS_KEY="t", AWS_DEFAULT_REGION="us-east-1", AWS_MAX_ATTEMPTS="2")
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="t",
        aws_secret_access_key="t",
    )
    s3.create_bucket(Bucket="lab")
    stack = random_stack((64, 96, 96), "uint16", seed=71)
    source = write_planes(tmp_path / "planes", stack)
    args = [
        "--source",
        source,
        "--format",
        "zarr",
        "--chunk-size",
        "16,16,16",
        "--dest",
        "s3://lab/v",
    ]
    args += ["--task-memory", "1M", "--n-cores", "2", "--log", "WARNING"]
    process = subprocess.Popen(
        [*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )

    def some_tasks_done() -> bool:
        listed = s3.list_objects_v2(Bucket="lab", Prefix="v/.precomputed-tif/done-1/")
        return listed.get("KeyCount", 0) >= 2

    try:
        assert wait_for(process, some_tasks_done)
    finally:
        server.stop()
    result = finish(process)
    assert_one_line_error(result, RESUME_HINT)
    # nothing else: no leftover asyncio traceback, no leaked-semaphore warning from a worker
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_volume_verify_with_the_planes_finds_chunks_that_decode_but_are_wrong(tmp_path):
    """Two level-1 zarr chunks swapped: both decode, only a comparison with the planes tells."""
    from conftest import convert_stack
    from precomputed_tif import open_source, open_volume

    stack = random_stack((32, 48, 48), "uint16", seed=79)
    source = write_planes(tmp_path / "planes", stack)
    convert_stack(source, str(tmp_path / "out"), "zarr")
    volume = open_volume(str(tmp_path / "out"))
    assert volume.verify().ok
    planes = open_source(source)
    assert volume.verify(source=planes, n_samples=1000).ok
    a, b = (
        tmp_path / "out" / "1_1_1" / "0" / "0" / "0",
        tmp_path / "out" / "1_1_1" / "1" / "2" / "0",
    )
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    a.write_bytes(b_bytes)
    b.write_bytes(a_bytes)
    assert volume.verify().ok  # every chunk decodes
    report = volume.verify(source=planes, n_samples=1000)
    assert not report.ok and report.verdict.startswith("DAMAGED: ")
    level_1 = [p for p in report.problems if p.level == 1]
    assert sorted(p.box.chunk_name for p in level_1) == ["0-16_0-16_0-16", "0-16_32-48_16-32"]
    assert all("differ from what the planes make" in p.what for p in level_1)
    # and the level-2 chunks made from them no longer match what level 1 now holds
    assert {p.level for p in report.problems} == {1, 2}


def test_a_pool_with_a_stuck_worker_still_shuts_down(monkeypatch):
    """A worker SIGKILLed while holding the task queue's lock leaves its siblings blocked for
    good; shutting the pool down must stop them rather than wait forever (a hang seen in the
    randomized crash test). A task that never returns stands in for the blocked sibling."""
    import threading

    from precomputed_tif import executors

    monkeypatch.setattr(executors, "SHUTDOWN_GRACE_SECONDS", 1.0)
    pool = executors.process_pool(1)
    pool.submit(time.sleep, 3600)
    workers = list(pool._processes.values())
    while not workers[0].is_alive():
        time.sleep(0.01)
    closing = threading.Thread(target=pool.shutdown)
    closing.start()
    closing.join(120)
    assert not closing.is_alive(), "shutdown waited for a worker that never finishes"
    assert not workers[0].is_alive()


def test_a_stopped_pool_has_closed_its_wake_up_pipe_before_returning():
    """Ctrl-C stops the pool and the process exits. CPython 3.11's exit hook writes to the pool
    manager's wake-up pipe without its lock, so if the manager thread is still closing that
    pipe the user sees an EBADF traceback after the one-line message (seen once in CI). `stop`
    must leave no manager thread running and the pipe already closed."""
    import threading
    from concurrent.futures import process as cpython_pool

    from precomputed_tif import executors

    pool = executors.process_pool(1)
    pool.submit(time.sleep, 3600)
    workers = list(pool._processes.values())
    while not workers[0].is_alive():
        time.sleep(0.01)
    wakeup = pool._executor_manager_thread_wakeup
    pool.stop()
    managers = [
        t for t in threading.enumerate() if isinstance(t, cpython_pool._ExecutorManagerThread)
    ]
    assert not managers
    assert wakeup._closed
    assert not workers[0].is_alive()
