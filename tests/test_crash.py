"""Randomized crashes: kill whole runs and single workers at random moments, resume, and expect the
bytes of an uninterrupted run every time, in every format.

CI runs a few trials per format. By hand, more (and Dask workers too)::

    CRASH_TRIALS=40 CRASH_DASK=1 pytest tests/test_crash.py -s -m slow

prints a table: trials per format, identical, differing, failed.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter

import pytest

from conftest import random_stack, write_planes
from test_cli import _tree, run_cli
from test_faults import done_entries, finish, start, worker_processes

FORMATS = ["tiff", "zarr", "blockfs", "precomputed", "precomputed --sharded"]
TRIALS = int(os.environ.get("CRASH_TRIALS", "2"))
KINDS = ["run", "worker"] + (["dask-worker"] if os.environ.get("CRASH_DASK") else [])
RESULTS: dict[str, Counter[str]] = {}


@pytest.fixture(scope="module")
def stack_glob(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crash")
    stack = random_stack((64, 96, 112), "uint16", seed=73)
    return write_planes(folder / "planes", stack)


def _args(source: str, fmt: str) -> list[str]:
    args = ["--source", source, "--format", *fmt.split(), "--chunk-size", "16,16,16"]
    return args + ["--task-memory", "1M", "--n-cores", "2", "--log", "WARNING"]


def _crash_once(
    args: list[str], dest: str, kind: str, rng: random.Random, expected: dict[str, bytes]
) -> str:
    """Start a run, kill it (or one of its workers) at a random moment; returns what happened."""
    extra = ["--dask-workers", "2"] if kind == "dask-worker" else []
    process = start([*args, "--dest", dest, *extra])
    target = rng.randint(0, 40)
    delay = rng.random() * 0.05
    reached = True
    deadline = time.monotonic() + 120
    while done_entries(dest) < target or kind != "run" and not worker_processes(process.pid):
        if process.poll() is not None:
            reached = False
            break
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.002)
    if reached:
        time.sleep(delay)
        if kind == "run":
            os.killpg(process.pid, signal.SIGKILL)
        else:
            workers = worker_processes(process.pid)
            if workers:
                rng.choice(workers).kill()
    result = finish(process)
    if result.returncode not in (0, 2, -signal.SIGKILL):
        return f"exit {result.returncode}: {result.stderr.strip()[-300:]}"
    if result.returncode == 2 and "--resume" not in result.stderr:
        return f"error without the --resume hint: {result.stderr.strip()[-300:]}"
    # a run killed after its last byte and its info were written must be whole already
    killed = result.returncode != 0
    if killed and os.path.exists(os.path.join(dest, "info")) and _tree(dest) != expected:
        return "an interrupted run wrote info before its volume was whole"
    return ""


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_random_crashes_resume_to_identical_bytes(tmp_path, stack_glob, fmt):
    args = _args(stack_glob, fmt)
    reference = str(tmp_path / "reference")
    assert run_cli(*args, "--dest", reference).returncode == 0
    expected = _tree(reference)
    rng = random.Random(f"{fmt}:{os.environ.get('CRASH_SEED', '0')}")
    outcomes: Counter[str] = RESULTS.setdefault(fmt, Counter())
    failures = []
    for trial in range(TRIALS):
        kind = KINDS[trial % len(KINDS)]
        dest = str(tmp_path / f"trial{trial:04d}"[: len("reference")])
        trouble = _crash_once(args, dest, kind, rng, expected)
        resumed = run_cli(*args, "--dest", dest, "--resume")
        debris = [
            os.path.join(parent, name)
            for parent, _, names in os.walk(dest)
            for name in names
            if name.startswith(".tmp-")
        ]
        if trouble or resumed.returncode != 0 or debris:
            outcomes["failed"] += 1
            failures.append(f"{kind}: {trouble or resumed.stderr.strip()[-300:] or debris}")
        elif _tree(dest) == expected:
            outcomes["identical"] += 1
        else:
            outcomes["differing"] += 1
            failures.append(f"{kind}: resumed output differs from the uninterrupted run")
        os.system(f"rm -rf '{dest}'")
    print(f"\n{fmt}: {TRIALS} trials, {dict(outcomes)}")
    assert not failures, failures
