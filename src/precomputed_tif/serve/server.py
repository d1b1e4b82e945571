"""Running the WSGI app on waitress: multi-threaded, pure Python, on Linux, macOS and Windows.

``precomputed-webserver``'s fallback server (``--server waitress``, or where granian, its
default, is not installed: see `granian_server`).

(Chosen by measurement against cheroot; gunicorn's threaded workers cost as much CPU per
request, see benchmarks/README.md, and a few clients sending their request headers slowly hold
all of their threads, which waitress's asynchronous reading and `timeout` prevent.) The server
binds, reports the port it got (port 0 picks a free one), and serves until interrupted. Idle
connections and clients that send a request slower than `timeout` are closed (slow-loris), and
at most `connection_limit` connections are open at once, as nginx's client_header_timeout and
worker_connections bound them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 60  # seconds, as nginx's client_header_timeout
DEFAULT_CONNECTION_LIMIT = 4000


class Server:
    """A bound server; `url` is known before `serve_forever` starts answering.

    Parameters
    ----------
    app
        The WSGI application.
    host, port
        Where to listen (port 0: any free one).
    threads
        Worker threads running the application.
    timeout
        Seconds a connection may stay idle, and may take to send a request's headers.
    connection_limit
        Connections open at once; more wait in the listen queue.
    """

    def __init__(
        self,
        app: Callable[..., Any],
        host: str,
        port: int,
        threads: int,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        connection_limit: int = DEFAULT_CONNECTION_LIMIT,
    ) -> None:
        import waitress.server

        _allow_open_files(connection_limit + threads + 64)
        self._server = waitress.server.create_server(
            app,
            host=host,
            port=port,
            threads=threads,
            connection_limit=connection_limit,
            channel_timeout=max(1, round(timeout)),
            cleanup_interval=max(1, min(30, round(timeout / 2))),
            asyncore_use_poll=True,  # select() stops at 1024 descriptors
            max_request_header_size=64 * 1024,
            max_request_body_size=1024 * 1024,
            ident="precomputed-tif",
            clear_untrusted_proxy_headers=True,
            send_bytes=1 << 20,  # whole chunks per send(): 18000-byte pieces cost 29 calls each
            outbuf_overflow=4 << 20,
            backlog=1024,
        )
        for listener in _listeners(self._server):
            _close_slow_requests(listener, timeout)
        self.host = host
        self.port = int(_listeners(self._server)[0].effective_port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def serve_forever(self, ready: Callable[[], None] | None = None) -> None:
        """Serve until interrupted; `ready` is called first (the socket is already listening)."""
        if ready is not None:
            ready()
        self._server.run()

    def close(self) -> None:
        self._server.close()


def _listeners(server: Any) -> list[Any]:
    """The listening dispatchers of a waitress server (several when a name has many addresses)."""
    from waitress.server import BaseWSGIServer

    if isinstance(server, BaseWSGIServer):
        return [server]
    return [d for d in server.map.values() if isinstance(d, BaseWSGIServer)]


def _close_slow_requests(listener: Any, timeout: float) -> None:
    """Make `listener` close connections whose request headers take longer than `timeout`.

    waitress only closes connections with no activity at all, so a client sending one byte every
    few seconds would hold its connection forever; a few hundred such clients lock everyone out.
    """
    from waitress.channel import HTTPChannel

    class Channel(HTTPChannel):
        reading_since: float | None = None  # the first byte of the request being read

        def received(self, data: bytes) -> bool:
            if self.request is None and data:
                self.reading_since = time.monotonic()
            result = super().received(data)
            if self.request is None:
                self.reading_since = None
            return bool(result)

    waitress_maintenance = listener.maintenance

    def maintenance(now: float) -> None:
        waitress_maintenance(now)
        cutoff = time.monotonic() - timeout
        for channel in list(listener.active_channels.values()):
            since = getattr(channel, "reading_since", None)
            if since is not None and since < cutoff and not channel.requests:
                channel.will_close = True

    listener.channel_class = Channel
    listener.maintenance = maintenance


def _allow_open_files(wanted: int) -> None:
    """Raise the soft limit on open files towards `wanted` (Linux's default soft limit is 1024)."""
    try:
        import resource
    except ImportError:  # Windows: no such limit
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit to %d: %s", target, exc)
