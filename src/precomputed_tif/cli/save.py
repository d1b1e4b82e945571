"""``precomputed-save``: save a plane, a projection or a subvolume of any precomputed source."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ._common import Parser, add_log_argument, positive_int, run_command, setup_logging

if TYPE_CHECKING:
    import numpy as np

    from ..client import ArrayReader


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="precomputed-save",
        description="Save a plane (or a maximum projection, or a subvolume) of a precomputed "
        "source to a TIFF file.",
    )
    parser.add_argument(
        "--url", required=True, help="the source: a folder, file:// or http(s):// URL"
    )
    parser.add_argument("--output", required=True, help="the TIFF file to write")
    axis = parser.add_mutually_exclusive_group()
    axis.add_argument("--x", action="store_true", help="the plane is normal to x")
    axis.add_argument("--y", action="store_true", help="the plane is normal to y")
    parser.add_argument("--coordinate", type=int, help="the plane's coordinate (level voxels)")
    parser.add_argument(
        "--depth", type=int, default=1, help="maximum projection over this many planes"
    )
    parser.add_argument(
        "--subvolume",
        metavar="X0,X1,Y0,Y1,Z0,Z1",
        help="save this box (level voxels, ends exclusive) as a multi-page TIFF instead",
    )
    parser.add_argument(
        "--level",
        type=positive_int,
        default=1,
        help="the level by its mipmap factor, as in the original tool: 1 is level 1 (1_1_1, "
        "full resolution), 2 is level 2 (2_2_2), 4 is level 3 (4_4_4), ... (default 1)",
    )
    parser.add_argument("--format", default=None, help="layout of a local source (detected)")
    rotate = parser.add_mutually_exclusive_group()
    rotate.add_argument(
        "--rotate-left", action="store_true", help="turn the saved plane 90 degrees to the left"
    )
    rotate.add_argument(
        "--rotate-right", action="store_true", help="turn the saved plane 90 degrees to the right"
    )
    rotate.add_argument("--rotate-180", action="store_true", help="turn the saved plane around")
    parser.add_argument(
        "--flip-horizontally",
        action="store_true",
        help="mirror the saved plane left to right (after any rotation)",
    )
    parser.add_argument(
        "--flip-vertically",
        action="store_true",
        help="mirror the saved plane top to bottom (after any rotation)",
    )
    add_log_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log)

    def work() -> int:
        import numpy as np
        import tifffile

        from ..client import ArrayReader
        from ..errors import PrecomputedTifError

        reader = ArrayReader(args.url, format=args.format, level=args.level)
        if len(reader.shape) != 3:
            raise PrecomputedTifError(
                f"{args.url} has {reader.shape[3]} channels; precomputed-save saves "
                "single-channel volumes"
            )
        nz, ny, nx = reader.shape
        if args.subvolume:
            try:
                x0, x1, y0, y1, z0, z1 = (int(v) for v in args.subvolume.split(","))
            except ValueError:
                raise PrecomputedTifError(
                    f"--subvolume {args.subvolume!r} is not six integers"
                ) from None
            planes = _read_planes(reader, z0, z1, y0, y1, x0, x1, show=args.log != "WARNING")
            tifffile.imwrite(args.output, planes, photometric="minisblack")
            _say_written(args, planes)
            return 0
        if args.coordinate is None:
            raise PrecomputedTifError("give --coordinate (or --subvolume)")
        size = nx if args.x else ny if args.y else nz
        if not 0 <= args.coordinate < size or args.depth < 1:
            raise PrecomputedTifError(
                f"--coordinate {args.coordinate} is outside 0..{size - 1} of the level"
            )
        end = min(size, args.coordinate + args.depth)
        if args.x:
            block = reader[:, :, args.coordinate : end]
            plane = block.max(axis=2)
        elif args.y:
            block = reader[:, args.coordinate : end, :]
            plane = block.max(axis=1)
        else:
            block = _read_planes(
                reader, args.coordinate, end, 0, ny, 0, nx, show=args.log != "WARNING"
            )
            plane = block.max(axis=0)
        turns = 1 if args.rotate_right else 2 if args.rotate_180 else 3 if args.rotate_left else 0
        plane = np.rot90(plane, turns)
        if args.flip_horizontally:
            plane = plane[:, ::-1]
        if args.flip_vertically:
            plane = plane[::-1]
        tifffile.imwrite(args.output, np.ascontiguousarray(plane), photometric="minisblack")
        _say_written(args, plane)
        return 0

    return run_command(work, "precomputed-save")


def _say_written(args: argparse.Namespace, array: np.ndarray) -> None:
    """One line on success: what was written where, from which level (named as everywhere)."""
    if args.log in ("WARNING", "ERROR", "CRITICAL"):
        return
    factor = args.level
    level = factor.bit_length()  # factor 2**(N-1) is level N
    shape = "x".join(str(n) for n in array.shape[::-1])
    key = f"{factor}_{factor}_{factor}"
    print(f"wrote {args.output}: {shape} {array.dtype} from level {level} ({key})")


def _read_planes(
    reader: ArrayReader, z0: int, z1: int, y0: int, y1: int, x0: int, x1: int, *, show: bool
) -> np.ndarray:
    """Planes z0:z1 of the box, a chunk's depth at a time, with a progress bar."""
    import numpy as np
    from tqdm import tqdm

    out = np.empty((max(0, z1 - z0), max(0, y1 - y0), max(0, x1 - x0)), reader.dtype)
    step = 64
    with tqdm(total=out.shape[0], unit="plane", disable=not show or not sys.stderr.isatty()) as bar:
        for z in range(z0, z1, step):
            top = min(z1, z + step)
            out[z - z0 : top - z0] = reader[z:top, y0:y1, x0:x1]
            bar.update(top - z)
    return out


if __name__ == "__main__":
    sys.exit(main())
