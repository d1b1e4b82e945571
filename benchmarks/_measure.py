"""Measurement helpers for the benchmarks: wall time and peak RSS of a process tree.

`run_measured` starts a command with `subprocess.Popen` and samples, every ~20 ms, the summed RSS
of the process and all of its descendants (worker processes included), keeping the maximum.
`tree_size` counts the files and bytes under a folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

SAMPLE_INTERVAL_S = 0.02


@dataclass
class RunResult:
    """What `run_measured` saw of one command."""

    argv: list[str]
    returncode: int
    wall_s: float
    peak_rss_bytes: int
    stdout: str = ""
    stderr: str = ""
    samples: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def peak_rss_mib(self) -> float:
        return self.peak_rss_bytes / 2**20


def _tree_rss(proc: psutil.Process) -> int:
    """Summed RSS of `proc` and all of its live descendants (0 for ones that just exited)."""
    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            continue
    return total


def run_measured(
    argv: Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float | None = None,
    interval_s: float = SAMPLE_INTERVAL_S,
) -> RunResult:
    """Run `argv` to completion; return its wall time and the peak RSS of its process tree.

    stdout and stderr are captured to temporary files (not pipes) so a chatty child can never
    block on a full pipe while we are sampling.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        popen = subprocess.Popen(
            list(argv), cwd=cwd, env=dict(env) if env is not None else None, stdout=out, stderr=err
        )
        peak = 0
        samples = 0
        try:
            proc = psutil.Process(popen.pid)
            while True:
                peak = max(peak, _tree_rss(proc))
                samples += 1
                try:
                    popen.wait(timeout=interval_s)
                    break
                except subprocess.TimeoutExpired:
                    if timeout_s is not None and time.perf_counter() - start > timeout_s:
                        _kill_tree(proc)
                        popen.wait()
                        break
        except psutil.NoSuchProcess:
            popen.wait()
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        return RunResult(
            argv=list(argv),
            returncode=popen.returncode,
            wall_s=wall,
            peak_rss_bytes=peak,
            stdout=out.read(),
            stderr=err.read(),
            samples=samples,
        )


def _kill_tree(proc: psutil.Process) -> None:
    """Kill `proc` and its descendants (only ever called on a process tree we started)."""
    try:
        children = proc.children(recursive=True)
    except psutil.Error:
        children = []
    for member in [*children, proc]:
        with contextlib.suppress(psutil.Error):
            member.kill()


def tree_size(root: str | os.PathLike[str]) -> tuple[int, int]:
    """(number of files, total bytes) of the regular files under `root`."""
    files = 0
    total = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            try:
                st = os.stat(Path(dirpath) / name, follow_symlinks=False)
            except OSError:
                continue
            files += 1
            total += st.st_size
    return files, total


def last_json(text: str) -> dict[str, Any]:
    """The last line of `text` that is a JSON object (a recipe's summary), or {}."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return {}
