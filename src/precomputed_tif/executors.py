"""Executors the converter can run on: a serial one for tests, a process pool for one machine.

Anything implementing `concurrent.futures.Executor` works (a Dask cluster's
``Client.get_executor()`` too); nothing here is special to the converter.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class SerialExecutor(Executor):
    """Runs each task at once in the calling thread; futures are done when returned."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # the caller sees it through future.result()
            future.set_exception(exc)
        return future


def process_pool(n_workers: int) -> ProcessPoolExecutor:
    """A pool of `n_workers` processes; forkserver on Linux (fork is unsafe with threads)."""
    if sys.platform.startswith("linux"):
        context = multiprocessing.get_context("forkserver")
        # imported once in the server, inherited by every worker it forks
        context.set_forkserver_preload(
            ["precomputed_tif.run", "numcodecs.blosc", "tifffile", "imagecodecs"]
        )
    else:
        context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(max_workers=n_workers, mp_context=context)
