"""Running the WSGI app on granian: HTTP in Rust (hyper and tokio), the app in Python threads.

``precomputed-webserver``'s server wherever granian is installed (a dependency on x86-64 and
ARM64, where it has wheels for Linux, macOS and Windows; ``--server waitress`` or any other
platform runs `server.Server`). Measured against nginx on the same volume (benchmarks/README.md,
"Every serving path"), granian answers 2-3x the requests of waitress for the same CPU: decoded
chunks from the cache at about 0.9x nginx where waitress reaches 0.35x. It closes connections
whose request headers take longer than ``--timeout`` (at most 60 s), as nginx's
client_header_timeout does; the slow-client and hostile-request tests run on both servers.

granian runs the app in a worker process it starts itself and imports the app from a name, so
the worker rebuilds the app from the command line (kept in an environment variable), exactly
as the CLI builds it for waitress.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

ARGV_VARIABLE = "PRECOMPUTED_TIF_SERVE_ARGV"
_LOG_TO_STDERR = {
    "formatters": {
        "generic": {"()": "logging.Formatter", "fmt": "%(levelname)s granian: %(message)s"}
    },
    "handlers": {
        "console": {
            "formatter": "generic",
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stderr",
        },
        "access": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"},
    },
}
MAX_HEADER_TIMEOUT_S = 60  # granian's own upper bound


def granian_installed() -> bool:
    return importlib.util.find_spec("granian") is not None


def app_from_command_line() -> Callable[..., Any]:
    """The WSGI app of the command line the CLI left in the environment (granian's factory)."""
    from ..cli._common import setup_logging
    from ..cli.serve import build_app, build_parser

    args = build_parser().parse_args(json.loads(os.environ[ARGV_VARIABLE]))
    setup_logging(args.log)
    return build_app(args).app


class GranianServer:
    """The same interface as `server.Server`: bound (the port is checked) before serving."""

    def __init__(
        self,
        argv: list[str],
        host: str,
        port: int,
        threads: int,
        *,
        timeout: float,
        connection_limit: int,
    ) -> None:
        from granian import Granian
        from granian.constants import HTTPModes, Interfaces
        from granian.http import HTTP1Settings
        from granian.log import LogLevels

        from .server import _allow_open_files

        # every slow or idle connection holds a descriptor until `timeout` closes it; the
        # worker inherits the raised limit
        _allow_open_files(connection_limit + threads + 64)
        self.host = host
        self.port = _usable_port(host, port)  # raises OSError as a bind would
        os.environ[ARGV_VARIABLE] = json.dumps(argv)
        header_timeout_ms = int(1000 * max(1.0, min(float(MAX_HEADER_TIMEOUT_S), timeout)))
        self._granian = Granian(
            f"{__name__}:app_from_command_line",
            factory=True,
            address=host,
            port=self.port,
            interface=Interfaces.WSGI,
            workers=1,  # one process: the decoded-chunk cache is shared by every request
            blocking_threads=threads,
            http=HTTPModes.http1,
            websockets=False,
            backlog=1024,
            backpressure=connection_limit,
            http1_settings=HTTP1Settings(header_read_timeout=header_timeout_ms),
            # stdout carries the URL lines scripts read; granian's own warnings are about its
            # settings (it finds 8 threads many for 2 cores: measured, they serve more)
            log_level=LogLevels.error,
            log_dictconfig=_LOG_TO_STDERR,
        )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def wait_until_answering(self, seconds: float = 30.0) -> None:
        """Block until the worker accepts connections (granian binds once `serve` runs)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)

    def serve_forever(self, ready: Callable[[], None] | None = None) -> None:
        """Serve until SIGINT or SIGTERM; `ready` is called once connections are answered."""
        if ready is not None:

            def announce() -> None:
                self.wait_until_answering()
                ready()

            threading.Thread(target=announce, daemon=True).start()
        self._granian.serve()

    def close(self) -> None:
        """granian stops its workers itself when `serve` returns."""


def _usable_port(host: str, port: int) -> int:
    """`port`, or a free one for 0; OSError when it cannot be bound (in use, no rights)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
        return int(probe.getsockname()[1])
