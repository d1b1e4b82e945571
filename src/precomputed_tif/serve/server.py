"""Running the WSGI app on waitress: multi-threaded, pure Python, on Linux, macOS and Windows.

(Chosen by measurement against cheroot; see benchmarks/README.md.) The server binds, reports the
port it got (port 0 picks a free one), and serves until interrupted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class Server:
    """A bound server; `url` is known before `serve_forever` starts answering."""

    def __init__(self, app: Callable[..., Any], host: str, port: int, threads: int) -> None:
        import waitress.server

        self._server = waitress.server.create_server(
            app,
            host=host,
            port=port,
            threads=threads,
            connection_limit=1000,
            channel_timeout=60,
            max_request_header_size=64 * 1024,
            max_request_body_size=1024 * 1024,
            ident="precomputed-tif",
            clear_untrusted_proxy_headers=True,
            send_bytes=1 << 20,  # whole chunks per send(): 18000-byte pieces cost 29 calls each
            outbuf_overflow=4 << 20,
            backlog=1024,
        )
        self.host = host
        self.port = int(self._server.effective_port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def serve_forever(self) -> None:
        self._server.run()

    def close(self) -> None:
        self._server.close()
