"""Executors the converter can run on: a serial one for tests, a process pool for one machine.

Anything implementing `concurrent.futures.Executor` works (a Dask cluster's
``Client.get_executor()`` too); nothing here is special to the converter.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import Any, TypeVar

import psutil

from precomputed_tif_launcher import forkserver_context, start_forkserver

from .errors import RESUME_HINT, IncompleteRunError
from .heap import keep_task_buffers, small_pages_for_task_buffers

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


# how long a shutting-down pool waits for its workers before it stops them
SHUTDOWN_GRACE_SECONDS = 10.0


def process_pool(n_workers: int) -> ProcessPoolExecutor:
    """A pool of `n_workers` processes; forkserver on Linux (fork is unsafe with threads).

    Workers ignore Ctrl-C (the terminal sends it to the whole process group): the driver alone
    decides what an interrupt means. Leaving the pool on an exception stops the workers at once
    instead of waiting for their tasks, which is safe because a task that did not report back
    is not recorded as done and runs again on resume.
    """
    if sys.platform.startswith("linux"):
        context = forkserver_context()
    else:
        context = multiprocessing.get_context("spawn")
    return _StoppablePool(
        max_workers=n_workers,
        mp_context=context,
        initializer=_start_worker,
        initargs=(os.getpid(),),
    )


def start_pool_server_early() -> None:
    """Start the process that forks the workers now, not when the pool is made: its imports
    (~0.4 s of a 2-core run) then overlap the driver's reading of the planes' headers and the
    planning, where they used to come after them. The pool made later finds it running (the
    ``precomputed-tif`` command starts it even earlier, before this package is imported)."""
    if sys.platform.startswith("linux"):
        start_forkserver()


def _start_worker(driver_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_when_gone(driver_pid)
    quiet_async_leftovers()
    _blosc_lock_for_this_process_only()
    keep_task_buffers()  # a task's buffers are the same few sizes, task after task
    small_pages_for_task_buffers()


def _exit_when_gone(driver_pid: int) -> None:
    """End this worker as soon as the driver process ends.

    A driver killed on its own (the OOM killer, ``kill -9`` of its pid, a scheduler that signals
    only the main process) never tells its pool: the workers wait on a queue whose write end they
    hold themselves, and keep the forkserver alive, holding memory on a shared node for good.
    The task in hand is not recorded as done, so ``--resume`` makes it again.
    """

    def watch() -> None:
        try:
            ready = os.pidfd_open(driver_pid)  # Linux 5.3+: readable once the process ends
        except (AttributeError, OSError):  # another platform, an older kernel, or already gone
            while psutil.pid_exists(driver_pid):
                time.sleep(1.0)
        else:
            select.select([ready], [], [])
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-driver", daemon=True).start()


def _blosc_lock_for_this_process_only() -> None:
    """Give numcodecs' Blosc a thread lock instead of the named semaphore it makes lazily.

    Its lock guards Blosc's global state, which is per process; a named semaphore outlives a
    worker stopped on an error and makes the resource tracker print a "leaked semaphore"
    warning under our one-line error. (numcodecs' own module attributes, checked first.)
    """
    import numcodecs.blosc

    if getattr(numcodecs.blosc, "_MUTEX_IS_INIT", True) is False:
        numcodecs.blosc._MUTEX = threading.Lock()
        numcodecs.blosc._MUTEX_IS_INIT = True


def quiet_async_leftovers() -> None:
    """Keep asyncio's "Task exception was never retrieved" tracebacks off the terminal.

    When an object store goes away, fsspec's HTTP client leaves background tasks that fail
    after the request that needed them has already raised; that request's error is the one
    we report (with the resume hint), and the leftover traceback would only bury it.
    """
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


class _StoppablePool(ProcessPoolExecutor):
    """A process pool that, left because of an error or Ctrl-C, stops its workers at once, and
    whose shutdown cannot hang: a worker SIGKILLed while it held the task queue's lock leaves
    its siblings blocked on that lock forever, and the standard shutdown waits for them too."""

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        # the standard shutdown forgets both; keep them to wait (CPython's own attributes)
        processes = list((getattr(self, "_processes", None) or {}).values())
        manager = getattr(self, "_executor_manager_thread", None)
        super().shutdown(wait=False, cancel_futures=cancel_futures)
        if not wait:
            return
        deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
        if manager is not None:
            manager.join(SHUTDOWN_GRACE_SECONDS)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool | None:
        if exc_type is None:
            return super().__exit__(exc_type, exc, tb)
        self.stop()
        return None

    def stop(self) -> None:
        """Cancel queued tasks and end the workers now (running tasks are lost, not recorded)."""
        processes = list((getattr(self, "_processes", None) or {}).values())
        manager = getattr(self, "_executor_manager_thread", None)
        self.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
        # the pool's manager thread closes its wake-up pipe as it ends; if the interpreter exits
        # meanwhile, CPython's exit hook (before 3.12) may write to that pipe as it closes and
        # print an EBADF traceback after our one-line message: let the thread end first
        if manager is not None:
            manager.join(SHUTDOWN_GRACE_SECONDS)


class DaskExecutor:
    """A Dask cluster's executor (existing scheduler, or a local cluster), closed on exit.

    Tasks and results are the same small records as with a process pool: workers read planes
    and write chunks to storage they share with the client.
    """

    def __init__(
        self,
        scheduler: str | None = None,
        n_workers: int | None = None,
        memory_per_worker: int | None = None,
    ) -> None:
        try:
            from distributed import Client, LocalCluster
        except ImportError as exc:
            from .errors import PlanError

            raise PlanError(
                "Dask options need the distributed package: pip install 'precomputed-tif[dask]'"
            ) from exc
        self.cluster = None
        try:
            if scheduler is None:
                self.cluster = LocalCluster(
                    n_workers=n_workers or 1,
                    threads_per_worker=1,
                    processes=True,
                    memory_limit=memory_per_worker or "auto",
                    dashboard_address=":0",  # any free port: 8787 may be taken by another run
                )
                self.client = Client(self.cluster)
            else:
                self.client = Client(scheduler)
        except Exception as exc:  # a worker died at start-up, no scheduler there, a timeout
            if self.cluster is not None:
                with contextlib.suppress(Exception):
                    self.cluster.close()
            where = "a local Dask cluster" if scheduler is None else f"Dask at {scheduler!r}"
            raise IncompleteRunError(f"cannot start {where} ({exc}); {RESUME_HINT}") from exc
        self.executor = self.client.get_executor(pure=False)

    @property
    def n_workers(self) -> int:
        """Tasks that run at once: the threads of every worker."""
        return max(1, sum(self.client.nthreads().values()))

    def memory_per_task(self) -> int | None:
        """The smallest worker's memory limit shared by its threads, None when unlimited."""
        workers = self.client.scheduler_info(n_workers=-1).get("workers", {}).values()
        shares = [
            int(w["memory_limit"]) // max(1, int(w.get("nthreads") or 1))
            for w in workers
            if w.get("memory_limit")
        ]
        return min(shares) if shares else None

    def __enter__(self) -> Executor:
        return self.executor

    def __exit__(self, *exc: object) -> None:
        # a cluster that lost workers may fail to close cleanly: that must not hide the result
        with contextlib.suppress(Exception):
            self.client.close()
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close()
