"""``precomputed-webserver``: serve a volume folder, or a sources.json, to Neuroglancer."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..serve.server import DEFAULT_CONNECTION_LIMIT, DEFAULT_TIMEOUT
from ._common import Parser, add_log_argument, parse_size, run_command, setup_logging

if TYPE_CHECKING:
    from ..serve.granian_server import GranianServer
    from ..serve.server import Server

log = logging.getLogger("precomputed_tif")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="precomputed-webserver",
        description="Serve precomputed volumes over HTTP with CORS, for Neuroglancer.",
    )
    parser.add_argument("-p", "--port", type=int, default=9000, help="TCP port (default 9000)")
    parser.add_argument(
        "-a", "--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument(
        "-d", "--directory", default=".", help="volume folder to serve (default: the current one)"
    )
    parser.add_argument(
        "-f",
        "--format",
        default=None,
        choices=["tiff", "zarr", "blockfs", "ngff", "raw"],
        help="layout of the folder (default: detected)",
    )
    parser.add_argument(
        "--config", help="serve the volumes named in this sources.json instead of --directory"
    )
    parser.add_argument(
        "--points",
        action="append",
        default=[],
        metavar="DIR",
        help="also serve this annotation source (precomputed-write-points output) under "
        "/NAME/, NAME being its folder name; may be repeated",
    )
    parser.add_argument(
        "--cors-origin",
        default=None,
        help="Access-Control-Allow-Origin value (default *, or the sources.json options')",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads running requests (default: twice the cores, at least 8 with granian and 4 "
        "with waitress)",
    )
    parser.add_argument(
        "--cache-size",
        type=parse_size,
        default=None,
        help="memory for decoded chunks, shared by all requests (default 1G)",
    )
    parser.add_argument(
        "--gzip",
        action="store_true",
        default=None,
        help="gzip chunk answers for clients that accept it (costs CPU; helps slow networks)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds before an idle connection, or one sending its request too slowly, is "
        f"closed (default {DEFAULT_TIMEOUT})",
    )
    parser.add_argument(
        "--connection-limit",
        type=int,
        default=DEFAULT_CONNECTION_LIMIT,
        help=f"connections open at once (default {DEFAULT_CONNECTION_LIMIT}); more wait",
    )
    parser.add_argument(
        "--server",
        choices=["auto", "granian", "waitress"],
        default="auto",
        help="the HTTP server: granian (HTTP in Rust, 2-3x waitress's requests per CPU second) "
        "where it is installed, else waitress (pure Python); default auto",
    )
    parser.add_argument(
        "--viewer",
        action="store_true",
        help="also serve the Neuroglancer viewer and print a link to it (needs [viewer] extra)",
    )
    add_log_argument(parser, bars=False)
    return parser


@dataclass
class BuiltApp:
    """The app a command line asks for, and what it serves (for the messages and the link)."""

    app: Any
    served: list[tuple[str, str, str, str | None]]
    where: str
    source_format: str | None


def build_app(args: argparse.Namespace) -> BuiltApp:
    """The WSGI app of parsed command-line `args` (the CLI's, and granian's worker's)."""
    from ..heap import keep_freed_blocks
    from ..serve.app import DEFAULT_CACHE_BYTES, PrecomputedApp
    from ..serve.config import Options, SourceTable, resolve_source

    keep_freed_blocks()  # every decoded chunk is a block of the same few sizes
    viewer = None
    if args.viewer:
        from ..serve.viewer import client_folder

        viewer = client_folder()
    options = Options()
    if args.config:
        table = SourceTable(args.config)
        options = table.options
    common = {
        "cors_origin": _first(args.cors_origin, options.cors_origin, "*"),
        "gzip_chunks": _first(args.gzip, options.gzip_chunks, False),
        "cache_bytes": _first(args.cache_size, options.cache_bytes, DEFAULT_CACHE_BYTES),
        "viewer": viewer,
    }
    if args.config:
        served = [(s.name, "/" + s.name, s.directory, s.color) for s in table.current().values()]
        return BuiltApp(PrecomputedApp(sources=table.current, **common), served, args.config, None)
    source = resolve_source("", args.directory, args.format)
    beside = {}
    for folder in args.points:
        name = os.path.basename(os.path.normpath(folder))
        beside[name] = resolve_source(name, folder, "raw")
    app = PrecomputedApp(single=source, beside=beside, **common)
    served = [(os.path.basename(source.directory) or "volume", "", source.directory, None)]
    served += [(name, "/" + name, s.directory, None) for name, s in beside.items()]
    return BuiltApp(app, served, source.directory, source.format)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    setup_logging(args.log)
    # waitress warns whenever requests wait for a thread: that is load, not a problem
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)

    def work() -> int:
        from ..errors import PrecomputedTifError
        from ..serve.granian_server import granian_installed

        if args.server == "auto":
            args.server = "granian" if granian_installed() else "waitress"
        elif args.server == "granian" and not granian_installed():
            raise PrecomputedTifError(
                "--server granian needs granian: pip install granian (or --server waitress)"
            )
        if args.threads is None:
            # granian's threads only run the app (Rust reads and writes the sockets): more of
            # them keep the cores busy while others wait on files (benchmarks/README.md)
            args.threads = max(8 if args.server == "granian" else 4, 2 * (os.cpu_count() or 1))
        built = build_app(args)  # here too for granian: a bad folder is refused before binding
        server = _bind(built.app, args, argv)

        def announce() -> None:
            print(f"Serving {built.where} at {server.url}", flush=True)
            if args.viewer:
                print(f"Viewer: {_link(server.url, built.served)}", flush=True)
            if built.source_format == "ngff":
                print(
                    f"OME-Zarr: zarr://{server.url}/ (the same URL works from any static web "
                    "server or bucket that sends CORS headers and answers byte ranges)",
                    flush=True,
                )

        try:
            server.serve_forever(ready=announce)
        except KeyboardInterrupt:
            pass
        finally:
            server.close()
        return 0

    return run_command(work, "precomputed-webserver")


def _first(*values: object) -> Any:
    return next(v for v in values if v is not None)


def _bind(app: Any, args: argparse.Namespace, argv: list[str]) -> Server | GranianServer:
    """The bound server, or the reason it cannot bind in a user's words."""
    from ..errors import PrecomputedTifError
    from ..serve.server import Server

    address = (args.bind, args.port, args.threads)
    limits = {"timeout": args.timeout, "connection_limit": args.connection_limit}
    try:
        if args.server == "granian":
            from ..serve.granian_server import GranianServer

            # granian's worker builds the app again from the command line
            return GranianServer(argv, *address, **limits)
        return Server(app, *address, **limits)
    except OSError as exc:
        where = f"port {args.port} on {args.bind}"
        if exc.errno == errno.EADDRINUSE:
            reason = (
                "is in use (another server?): choose another --port, or --port 0 for any free one"
            )
        elif exc.errno == errno.EACCES:
            reason = "needs administrator rights (ports below 1024): choose --port 1024 or above"
        elif exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) or isinstance(
            exc, socket.gaierror
        ):
            reason = "cannot be used: this machine has no such address (see --bind)"
        else:
            reason = f"cannot be used: {exc.strerror or exc}"
        raise PrecomputedTifError(f"{where} {reason}") from exc


def _link(base_url: str, served: list[tuple[str, str, str, str | None]]) -> str:
    from ..errors import StoreError
    from ..serve.viewer import Layer, display_range, viewer_link, viewer_state
    from ..stores import open_store
    from ..stores.base import read_info

    layers: list[Layer] = []
    for name, path, directory, color in served:
        try:
            store = open_store(directory)
        except StoreError:
            store = None
        if store is not None and store.format_name == "ngff":
            # the folder's own files, as any OME-Zarr reader would fetch them
            url = f"zarr://{base_url}{path}/"
            info = store.pyramid.to_info()
            layers.append((name, url, info, display_range(directory), None))
            continue
        try:
            info = read_info(directory)
        except StoreError:
            continue
        is_image = "scales" in info
        layers.append((name, path, info, display_range(directory) if is_image else None, color))
    layers.sort(key=lambda layer: "scales" not in layer[2])  # images first, points on top
    if not layers:
        return base_url + "/v/ng/"
    return viewer_link(base_url, viewer_state(base_url, layers))


if __name__ == "__main__":
    sys.exit(main())
