"""What every command shares: logging, sizes like ``2G``, and errors as one line."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import sys
from collections.abc import Callable

from ..errors import PrecomputedTifError

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


def parse_xyz(kind: type) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        parts = text.split(",")
        try:
            values = tuple(kind(p) for p in parts)
        except ValueError:
            values = ()
        if len(values) != 3 or any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError(f"{text!r} is not three positive numbers x,y,z")
        return values

    return parse


def add_voxel_size_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--voxel-size",
        default="1.8,1.8,2.0",
        type=parse_xyz(float),
        help="voxel size in microns, x,y,z (default 1.8,1.8,2.0)",
    )


def add_log_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        help="logging level (default INFO; WARNING also hides the progress bars)",
    )


# libraries whose INFO lines speak of their own machinery (credentials found, cluster start-up)
CHATTY_LIBRARIES = ("botocore", "aiobotocore", "s3fs", "fsspec", "distributed", "bokeh", "tornado")


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(levelname)s %(message)s", stream=sys.stderr)
    quiet = max(logging.WARNING, logging.getLogger().getEffectiveLevel())
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(quiet)
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
        if exc.errno == errno.ENOSPC:
            where = f" writing {exc.filename!r}" if exc.filename else ""
            print(f"{prog}: error: no space left on the device{where}", file=sys.stderr)
        else:
            print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
