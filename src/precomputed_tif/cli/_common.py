"""What every command shares: the parser, logging, sizes like ``2G``, and errors as one line.

Argument errors are one line plus "see --help" (not argparse's usage block), and OS errors are
said in the user's words (which path, what is wrong), never as ``[Errno 13]``.
"""

from __future__ import annotations

import argparse
import errno
import logging
import math
import os
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from ..errors import PrecomputedTifError
from ..executors import quiet_async_leftovers

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes in a size such as ``2G``, ``500M``, ``1.5GiB`` or ``1000000``."""
    match = _SIZE.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 2G or 500M")
    number, unit = match.groups()
    return int(float(number) * 1024 ** "_kmgt".index(unit.lower() or "_"))


def format_size(n_bytes: float) -> str:
    """`n_bytes` the way a user writes it: ``1K``, ``500M``, ``1.5G`` (powers of 1024)."""
    for unit in ("", "K", "M", "G", "T"):
        if abs(n_bytes) < 1024 or unit == "T":
            text = f"{n_bytes:.1f}".rstrip("0").rstrip(".")
            return f"{text}{unit}" if unit else f"{text} bytes"
        n_bytes /= 1024
    raise AssertionError("unreachable")


def positive_int(text: str) -> int:
    """An integer of at least 1 (worker counts, levels)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors ("see --help") and ``--version`` on every command."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from .. import __version__

        self.add_argument("--version", action="version", version=f"%(prog)s {__version__}")

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parse_xyz(kind: type) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        parts = text.split(",")
        try:
            values = tuple(kind(p) for p in parts)
        except ValueError:
            values = ()
        if len(values) != 3 or any(not (0 < v < math.inf) for v in values):
            raise argparse.ArgumentTypeError(f"{text!r} is not three positive numbers x,y,z")
        return values

    return parse


DEFAULT_VOXEL_SIZE_UM = (1.8, 1.8, 2.0)  # the original's default


def add_voxel_size_argument(parser: argparse.ArgumentParser, *, recorded: bool = False) -> None:
    """``--voxel-size x,y,z`` in microns; with `recorded`, also ``auto`` (the size the planes
    record), and None when not given, so that the command can say what the planes record."""
    xyz = parse_xyz(float)
    if not recorded:
        parser.add_argument(
            "--voxel-size",
            default=DEFAULT_VOXEL_SIZE_UM,
            type=xyz,
            help="voxel size in microns, x,y,z (default 1.8,1.8,2.0)",
        )
        return

    def xyz_or_auto(text: str) -> tuple | str:
        return "auto" if text.strip().lower() == "auto" else xyz(text)

    parser.add_argument(
        "--voxel-size",
        default=None,
        type=xyz_or_auto,
        help="voxel size in microns, x,y,z (default 1.8,1.8,2.0, the original's), or auto: the "
        "size the planes record in their ImageJ or OME-XML metadata",
    )


def add_log_argument(parser: argparse.ArgumentParser, *, bars: bool = True) -> None:
    parser.add_argument(
        "--log",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        help="logging level (default INFO; WARNING also hides the progress bars)"
        if bars
        else "logging level (default INFO; WARNING says only what went wrong)",
    )


# libraries whose INFO lines speak of their own machinery (credentials found, cluster start-up)
CHATTY_LIBRARIES = ("botocore", "aiobotocore", "s3fs", "fsspec", "distributed", "bokeh", "tornado")


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(levelname)s %(message)s", stream=sys.stderr)
    quiet = max(logging.WARNING, logging.getLogger().getEffectiveLevel())
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(quiet)
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        quiet_async_leftovers()
    # distributed sets its own level when imported, in this process and in every worker it
    # starts; its configuration is read from the environment, which the workers inherit
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", logging.getLevelName(quiet).lower())


def run_command(main: Callable[[], int | None], prog: str) -> int:
    """Run `main`; our errors, a full disk and Ctrl-C become one line and a non-zero status."""
    try:
        return main() or 0
    except PrecomputedTifError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:
        print(f"{prog}: error: {describe_os_error(exc)}", file=sys.stderr)
        return EXIT_ERROR


_OS_WORDS = {
    errno.ENOSPC: "no space left on the device",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "the file system is read-only",
    errno.ENOTDIR: "a file stands where a folder is needed",
    errno.EISDIR: "it is a folder, not a file",
    errno.ENOENT: "no such file or folder",
    errno.EDQUOT: "the disk quota is exceeded",
}


def describe_os_error(exc: OSError, what: str | None = None) -> str:
    """An OS error in words: what went wrong and where, without ``[Errno N]``.

    `what` names the path the user gave (such as ``--dest '/data/out'``) when the failing file
    is one of ours inside it.
    """
    words = _OS_WORDS.get(exc.errno or -1, exc.strerror or str(exc))
    where = what or (repr(exc.filename) if exc.filename else "")
    if not where:
        return words
    if exc.errno == errno.ENOSPC:
        return f"{words} writing {where}"
    return f"{where}: {words}"
