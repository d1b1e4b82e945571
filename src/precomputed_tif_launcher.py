"""The ``precomputed-tif`` command's entry point, kept outside the package on purpose.

Importing `precomputed_tif` takes about 0.25 s (numpy, zarr, tifffile, ...), and so does
starting the server process that forks a conversion's workers, which imports the same modules.
Started here, before the package is imported, the server's imports run on another core while
the driver imports and reads the planes' headers; started from the package, they ran after the
headers were read, and the first tasks waited for them (0.1-0.25 s of a 2-3 s run at
1024x1024x256 on two cores).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from multiprocessing.context import ForkServerContext

# what the worker-forking server imports once for every worker it forks
FORKSERVER_PRELOAD = ("precomputed_tif.run", "numcodecs.blosc", "tifffile", "imagecodecs")

# options after which no worker is started: the server would only be stopped again
_NO_WORKERS = (
    "-h",
    "--help",
    "--version",
    "--dry-run",
    "--verify",
    "--dask-scheduler",
    "--dask-workers",
)


def convert() -> int:
    """``precomputed-tif``: `precomputed_tif.cli.convert.main`, with its workers' server
    started first."""
    # numpy's OpenBLAS starts a thread per core that spins for ~0.1 s of CPU in every process
    # that imports numpy; the converter does no linear algebra, and its start-up is two such
    # processes competing for the cores with the workers' first tasks
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if sys.platform.startswith("linux") and not _no_workers(sys.argv[1:]):
        start_forkserver()
    from precomputed_tif.cli.convert import main

    return main()


def forkserver_context() -> ForkServerContext:
    """The forkserver start method, its server set to import `FORKSERVER_PRELOAD`."""
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(FORKSERVER_PRELOAD))
    return context


def start_forkserver() -> None:
    """Start the process that forks the workers, if it is not running yet."""
    from multiprocessing import forkserver

    forkserver_context()
    forkserver.ensure_running()


def _no_workers(args: list[str]) -> bool:
    return any(arg.split("=")[0] in _NO_WORKERS for arg in args) or not args
