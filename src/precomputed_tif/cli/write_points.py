"""``precomputed-write-points``: points (JSON, CSV or .npy) to a Neuroglancer annotation source."""

from __future__ import annotations

import argparse
import logging
import sys

from ._common import (
    Parser,
    add_log_argument,
    add_voxel_size_argument,
    run_command,
    setup_logging,
)

log = logging.getLogger("precomputed_tif")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="precomputed-write-points",
        description="write-points writes a Neuroglancer data source for a set of points.",
    )
    parser.add_argument(
        "--input",
        required=True,
        help="a JSON list of [x, y, z] points in voxels, a CSV with x, y, z columns (other "
        "numeric columns become properties), or an N x 3 .npy array",
    )
    parser.add_argument(
        "--output-directory", required=True, help="the folder to write the annotation source to"
    )
    add_voxel_size_argument(parser)
    parser.add_argument(
        "--lower-bound", type=_bound, default=None, help="x,y,z in voxels (default: from points)"
    )
    parser.add_argument(
        "--upper-bound",
        type=_bound,
        default=None,
        help="x,y,z in voxels, exclusive (default: just past the largest point)",
    )
    parser.add_argument(
        "--no-by-id", action="store_true", help="do not write the by-id index (one entry per point)"
    )
    parser.add_argument(
        "--sharded",
        action="store_true",
        help="write every index as shards: a few hundred files instead of one per point and cell",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="most points in one spatial cell, i.e. per request (default 5000)",
    )
    parser.add_argument(
        "--clip", action="store_true", help="drop points outside the bounds instead of failing"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an annotation source in the folder"
    )
    add_log_argument(parser, bars=False)
    return parser


def _bound(text: str) -> tuple[float, float, float]:
    parts = text.split(",")
    try:
        x, y, z = (float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not three numbers x,y,z") from None
    return (x, y, z)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log)

    def work() -> int:
        from ..annotations import DEFAULT_LIMIT, read_points_file, write_points

        points, properties = read_points_file(args.input)
        if len(points) == 0:
            log.warning("%s holds no points: writing an empty annotation source", args.input)
        summary = write_points(
            points,
            args.output_directory,
            voxel_size_um=args.voxel_size,
            lower_bound=args.lower_bound,
            upper_bound=args.upper_bound,
            properties=properties,
            by_id=not args.no_by_id,
            sharded=args.sharded,
            limit=args.limit or DEFAULT_LIMIT,
            clip=args.clip,
            overwrite=args.overwrite,
        )
        log.info(
            "wrote %d points (%d dropped outside the bounds) in %d spatial levels, %d files, to %s",
            summary.points,
            summary.clipped,
            summary.levels,
            summary.files,
            args.output_directory,
        )
        return 0

    return run_command(work, "precomputed-write-points")


if __name__ == "__main__":
    sys.exit(main())
