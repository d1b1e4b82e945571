"""The WSGI entry point of the original precomputed-tif, kept for existing deployments.

Under Apache mod_wsgi::

    from precomputed_tif.wsgi_webserver import serve_precomputed
    def application(environ, start_response):
        return serve_precomputed(environ, start_response, "/etc/precomputed/sources.json")

(with ``WSGIApplicationGroup %{GLOBAL}``: numpy cannot load in a sub-interpreter; README.md has
the whole Apache configuration). Under gunicorn:
``gunicorn 'precomputed_tif.wsgi_webserver:make_app("sources.json")'``. Settings (chunk cache,
gzip, CORS origin) come from arguments or the ``options`` of sources.json.
Standalone: ``python -m precomputed_tif.wsgi_webserver sources.json [PORT]``.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterable
from typing import Any

from .serve.app import DEFAULT_CACHE_BYTES, PrecomputedApp, StartResponse
from .serve.config import SourceTable

_apps: dict[str, PrecomputedApp] = {}
_lock = threading.Lock()


def make_app(
    config_file: str,
    *,
    cors_origin: str | None = None,
    gzip_chunks: bool | None = None,
    cache_bytes: int | None = None,
) -> PrecomputedApp:
    """The app serving the sources named in `config_file` (re-read when it changes).

    Each setting left None is taken from the file's ``options`` (``cors_origin``, ``gzip``,
    ``cache_size``), else from the CLI's defaults: origin ``*``, no chunk gzip, 1 GiB of decoded
    chunks per process.
    """
    table = SourceTable(config_file)
    options = table.options
    return PrecomputedApp(
        sources=table.current,
        cors_origin=_first(cors_origin, options.cors_origin, "*"),
        gzip_chunks=_first(gzip_chunks, options.gzip_chunks, False),
        cache_bytes=_first(cache_bytes, options.cache_bytes, DEFAULT_CACHE_BYTES),
    )


def _first(*values: Any) -> Any:
    return next(v for v in values if v is not None)


def serve_precomputed(
    environ: dict[str, Any],
    start_response: StartResponse,
    config_file: str,
    **settings: Any,
) -> Iterable[bytes]:
    """Answer one request for the sources in `config_file` (the original's signature).

    `settings` (``cors_origin``, ``gzip_chunks``, ``cache_bytes``) are those of `make_app`; the
    app is made at the first request of each process and kept.
    """
    key = os.path.abspath(config_file)
    app = _apps.get(key)
    if app is None:
        with _lock:
            app = _apps.get(key)
            if app is None:
                app = _apps[key] = make_app(key, **settings)
    return app(environ, start_response)


def main(argv: list[str] | None = None) -> int:
    from .cli.serve import main as serve_main

    args = sys.argv[1:] if argv is None else argv
    if not args or args[0].startswith("-"):
        return serve_main(args)
    port = ["--port", args[1]] if len(args) > 1 else ["--port", "8080"]
    return serve_main(["--config", args[0], *port])


if __name__ == "__main__":
    sys.exit(main())
