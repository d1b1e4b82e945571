"""The WSGI application: route a request to a volume, then apply HTTP's rules in one place.

Routes (``NAME/`` only when serving a sources.json):
``GET /`` lists the sources; ``GET /NAME/info``; ``GET /NAME/R_R_R/x0-x1_y0-y1_z0-z1`` a chunk;
any file of a ``raw`` folder; ``/v/...`` the bundled Neuroglancer viewer when enabled.
Every answer carries CORS headers; GET and HEAD get RFC 9110's conditional requests (ETag and
Last-Modified: 304, 412, If-Range), byte ranges (several as ``multipart/byteranges``) and gzip
when it is enabled and accepted. Errors map to status codes here and nowhere else: bad paths
400/404/414, a method we do not serve 405, damaged data 500 (logged).
"""

from __future__ import annotations

import gzip
import html
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..errors import StoreError
from ..stores.ngff import NGFF_METADATA
from . import volumes
from .config import Source
from .http import (
    JSON,
    OCTETS,
    STATUS_TEXT,
    Body,
    FileRegion,
    HttpError,
    Pieces,
    Response,
    accepts_gzip,
    error_response,
    gzip_bytes,
    gzip_etag,
    http_date,
    parse_ranges,
    preconditions,
    range_applies,
)

log = logging.getLogger("precomputed_tif.serve")

MAX_PATH = 2048
GZIP_MIN_BYTES = 1024
METHODS = ("GET", "HEAD", "OPTIONS")
DEFAULT_CACHE_BYTES = 2**30

StartResponse = Callable[..., Any]


class PrecomputedApp:
    """Serve one volume (`single`) or the named volumes `sources()` returns.

    Parameters
    ----------
    sources
        A function giving the current name -> Source table (re-read for hot reloads).
    single
        Serve this one volume at the root instead of named sources.
    beside
        With `single`: more sources served under ``/NAME/`` (point annotations, say).
    cors_origin
        The ``Access-Control-Allow-Origin`` value (``*`` by default).
    gzip_chunks
        Gzip chunk bodies for clients that accept it (info is always gzipped when accepted).
    cache_bytes
        Memory for decoded chunk bytes shared by all requests.
    viewer
        A folder holding the Neuroglancer client, served under ``/v/<token>/``.
    """

    def __init__(
        self,
        *,
        sources: Callable[[], dict[str, Source]] | None = None,
        single: Source | None = None,
        beside: dict[str, Source] | None = None,
        cors_origin: str = "*",
        gzip_chunks: bool = False,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        viewer: str | None = None,
    ) -> None:
        if (sources is None) == (single is None):
            raise ValueError("give exactly one of sources= and single=")
        self.sources = sources
        self.single = single
        self.beside = beside or {}
        self.cors_origin = cors_origin
        self.gzip_chunks = gzip_chunks
        self.viewer = os.path.realpath(viewer) if viewer else None
        self.stores = volumes.StoreCache()
        self.chunks = volumes.ChunkCache(cache_bytes)

    # --- WSGI ------------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        try:
            response = self._respond(method, environ)
        except HttpError as exc:
            response = error_response(exc.status, exc.reason)
            if exc.status == 405:
                response.headers["Allow"] = ", ".join(METHODS)
        except StoreError as exc:
            log.error("%s %s: damaged data: %s", method, _request_path(environ), exc)
            response = error_response(500, "the stored data is damaged")
        except Exception:
            log.exception("%s %s failed", method, _request_path(environ))
            response = error_response(500, "internal error")
        self._add_cors(environ, response)
        body = self._emit(method, environ, response)
        status = STATUS_TEXT.get(response.status, f"{response.status} Unknown")
        start_response(status, list(response.headers.items()))
        if log.isEnabledFor(logging.INFO):
            log.info(
                "%s %s %d %s %.1f ms",
                method,
                _request_path(environ),
                response.status,
                response.headers.get("Content-Length", "-"),
                (time.perf_counter() - started) * 1000,
            )
        return body

    # --- routing ---------------------------------------------------------------------------
    def _respond(self, method: str, environ: dict[str, Any]) -> Response:
        parts = _path_parts(environ)
        if environ.get("SERVER_PROTOCOL") == "HTTP/1.1" and not environ.get("HTTP_HOST"):
            raise HttpError(400, "an HTTP/1.1 request needs a Host header")  # RFC 9112, 3.2
        if method == "OPTIONS":
            return Response(204)
        if method not in METHODS:
            raise HttpError(405, f"method {method} is not served")
        if self.viewer is not None and parts and parts[0] == "v":
            return self._viewer_file(parts[1:])
        if self.single is not None and parts[0] in self.beside:
            response = self._volume(self.beside[parts[0]], parts[1:])
        elif self.single is not None:
            response = self._volume(self.single, parts)
        elif parts in ([], [""]):
            response = self._index(environ)
        else:
            assert self.sources is not None
            source = self.sources().get(parts[0])
            if source is None:
                raise HttpError(404, f"no source named {parts[0]!r}")
            response = self._volume(source, parts[1:])
        return self._revalidate_and_range(environ, response)

    def _volume(self, source: Source, parts: list[str]) -> Response:
        if parts == ["info"]:
            return volumes.serve_info(source, self.stores)
        if source.format == "ngff":
            return self._ngff(source, parts)
        if source.format == "raw":
            if not parts or parts == [""]:
                raise HttpError(404, "not found")
            return volumes.serve_file(source, parts)
        if len(parts) == 2:
            return volumes.serve_chunk(source, self.stores, self.chunks, parts[0], parts[1])
        raise HttpError(404, "not found")

    def _ngff(self, source: Source, parts: list[str]) -> Response:
        """An OME-Zarr folder: precomputed chunks by scale key, else its own files (zarr://)."""
        if len(parts) == 2 and "_" in parts[0] and "-" in parts[1]:
            keys = {scale.key for scale in self.stores.get(source).pyramid.scales}
            if parts[0] in keys:
                return volumes.serve_chunk(source, self.stores, self.chunks, parts[0], parts[1])
        if not parts or parts == [""]:
            raise HttpError(404, "not found")
        return volumes.serve_file(source, parts, hidden=NGFF_METADATA)

    def _index(self, environ: dict[str, Any]) -> Response:
        assert self.sources is not None
        names = sorted(self.sources())
        if "application/json" in str(environ.get("HTTP_ACCEPT", "")):
            return Response(200, json.dumps(names).encode(), {"Content-Type": JSON})
        rows = "".join(
            f'<li><a href="{html.escape(n)}/info">{html.escape(n)}</a></li>' for n in names
        )
        page = f"<!doctype html><html><body><h1>Sources</h1><ul>{rows}</ul></body></html>"
        return Response(200, page.encode(), {"Content-Type": "text/html; charset=utf-8"})

    def _viewer_file(self, parts: list[str]) -> Response:
        assert self.viewer is not None
        if len(parts) < 1 or not parts[0]:
            raise HttpError(404, "the viewer lives at /v/ng/")
        files = parts[1:] if len(parts) > 1 and parts[1] else ["index.html"]
        if files == ["index.html"]:
            from .viewer import index_page

            html_type = {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-cache"}
            return Response(200, index_page(self.viewer), html_type)
        viewer = Source("viewer", self.viewer, "raw")
        return volumes.serve_file(viewer, files)

    # --- HTTP rules ------------------------------------------------------------------------
    def _revalidate_and_range(self, environ: dict[str, Any], response: Response) -> Response:
        etag = response.headers.get("ETag")
        mtime = response.mtime
        if mtime is not None:
            response.headers.setdefault("Last-Modified", http_date(mtime))
        if etag is not None or mtime is not None:
            verdict = preconditions(environ, etag, mtime)
            if verdict == 412:
                return error_response(412, "the precondition failed: the file has changed")
            if verdict == 304:
                kept = {k: v for k, v in response.headers.items() if k != "Content-Type"}
                if self._gzip_applies(response):
                    kept["Vary"] = "Accept-Encoding"
                    if etag is not None and accepts_gzip(environ):
                        kept["ETag"] = gzip_etag(etag)
                return Response(304, b"", kept)
        response.headers["Accept-Ranges"] = "bytes"
        if environ.get("HTTP_RANGE") and range_applies(environ, etag, mtime):
            size = response.length
            try:
                ranges = parse_ranges(environ.get("HTTP_RANGE"), size)
            except HttpError:
                return Response(416, b"", {"Content-Range": f"bytes */{size}"})
            if ranges is not None:
                return _partial(response, ranges, size)
        self._maybe_gzip(environ, response)
        return response

    def _gzip_applies(self, response: Response) -> bool:
        """Whether the answer has a gzipped variant that clients accepting gzip get."""
        if response.headers.get("Content-Encoding") == "gzip":
            return False  # a stored .gz file: one variant, unpacked for those refusing gzip
        is_json = response.headers.get("Content-Type") == JSON
        return (is_json or self.gzip_chunks) and response.length >= GZIP_MIN_BYTES

    def _maybe_gzip(self, environ: dict[str, Any], response: Response) -> None:
        if response.headers.get("Content-Encoding") == "gzip":  # a stored .gz file
            response.headers["Vary"] = "Accept-Encoding"
            if not accepts_gzip(environ):
                response.body = gzip.decompress(_read_all(response.body))
                del response.headers["Content-Encoding"]
            return
        if not self._gzip_applies(response):
            return
        response.headers["Vary"] = "Accept-Encoding"
        if not accepts_gzip(environ):
            return
        body = _read_all(response.body)
        response.body = gzip_bytes(body)
        response.headers["Content-Encoding"] = "gzip"
        if "ETag" in response.headers:
            response.headers["ETag"] = gzip_etag(response.headers["ETag"])

    def _add_cors(self, environ: dict[str, Any], response: Response) -> None:
        headers = response.headers
        headers["Access-Control-Allow-Origin"] = self.cors_origin
        if self.cors_origin != "*":
            headers["Vary"] = ", ".join(filter(None, [headers.get("Vary"), "Origin"]))
        headers["Access-Control-Expose-Headers"] = "Content-Range, Content-Length, ETag"
        if str(environ.get("REQUEST_METHOD", "")).upper() == "OPTIONS":
            headers["Access-Control-Allow-Methods"] = ", ".join(METHODS)
            headers["Access-Control-Allow-Headers"] = (
                "range, if-none-match, if-modified-since, x-requested-with"
            )
            headers["Access-Control-Max-Age"] = "86400"

    def _emit(self, method: str, environ: dict[str, Any], response: Response) -> Iterable[bytes]:
        """Set the framing headers and return the body iterable (empty for HEAD, 204, 304)."""
        headers = response.headers
        if response.status in (204, 304):
            headers.pop("Content-Length", None)
            return []
        headers["Content-Length"] = str(response.length)
        if method == "HEAD":
            return []
        body = response.body
        if isinstance(body, bytes):
            return [body]
        if isinstance(body, Pieces):
            return _pieces(body)
        wrapper = environ.get("wsgi.file_wrapper")
        if wrapper is not None and body.location is None:
            try:
                handle = open(body.path, "rb")
            except OSError:
                return _file_blocks(body)
            if _bounded_by_length(wrapper) or (
                body.offset == 0 and body.length == os.fstat(handle.fileno()).st_size
            ):
                # from the file's position for Content-Length bytes: sendfile(2) under
                # gunicorn and mod_wsgi, also for a byte range of a shard
                handle.seek(body.offset)
                return wrapper(handle, 1 << 18)
            handle.close()
        elif body.location is None and body.length <= WHOLE_READ_BYTES:
            # no file wrapper (granian): one read and one body part, not a generator of blocks
            return self._whole_region_cached(body, headers.get("ETag"))
        return _file_blocks(body)

    def _whole_region_cached(self, region: FileRegion, etag: str | None) -> list[bytes]:
        """A file's bytes kept with the decoded chunks, under the ETag of the file's ``stat``
        for this request (its time in ns, size and inode), so a rewritten file is read again.
        Under granian, reading a 512 KiB raw chunk file each time cost a third more CPU per
        request than a chunk answered from this cache (benchmarks/README.md, session 8)."""
        key = ("file", region.path, region.offset, region.length, etag)
        if etag is not None:
            kept = self.chunks.get(key)
            if kept is not None:
                return [kept]
        parts = _whole_region(region)
        if etag is not None and parts and len(parts[0]) == region.length:
            self.chunks.put(key, parts[0])
        return parts


# file wrappers known to send Content-Length bytes from the file's position (PEP 3333 only
# promises the whole file): waitress's, gunicorn's (sendfile with the offset) and mod_wsgi's
_LENGTH_BOUNDED_WRAPPERS = ("waitress.", "gunicorn.", "mod_wsgi")


def _bounded_by_length(wrapper: Any) -> bool:
    return str(getattr(wrapper, "__module__", "")).startswith(_LENGTH_BOUNDED_WRAPPERS)


def _path_parts(environ: dict[str, Any]) -> list[str]:
    raw = environ.get("PATH_INFO", "") or "/"
    if len(raw) > MAX_PATH:
        raise HttpError(414, "path too long")
    try:
        path = raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError) as exc:
        raise HttpError(400, "path is not UTF-8") from exc
    if "\x00" in path or "\\" in path or not path.startswith("/"):
        raise HttpError(400, "malformed path")
    parts = path[1:].split("/")
    for i, part in enumerate(parts):
        if part in (".", ".."):
            raise HttpError(400, "relative path segments are not allowed")
        if part == "" and i != len(parts) - 1:
            raise HttpError(400, "empty path segment")
    return parts


def _request_path(environ: dict[str, Any]) -> str:
    path = str(environ.get("PATH_INFO", ""))[:200]
    return path.encode("latin-1", "replace").decode("utf-8", "replace")


def _partial(response: Response, ranges: list[tuple[int, int]], size: int) -> Response:
    """The 206 answer: one range as it is, several as ``multipart/byteranges``."""
    response.status = 206
    if len(ranges) == 1:
        start, end = ranges[0]
        response.headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        response.body = _slice(response.body, start, end + 1)
        return response
    boundary = secrets.token_hex(10)
    content_type = response.headers.get("Content-Type", OCTETS)
    parts: list[bytes | FileRegion] = []
    for start, end in ranges:
        head = f"\r\n--{boundary}\r\nContent-Type: {content_type}\r\n"
        parts.append(f"{head}Content-Range: bytes {start}-{end}/{size}\r\n\r\n".encode())
        parts.append(_slice(response.body, start, end + 1))
    parts.append(f"\r\n--{boundary}--\r\n".encode())
    response.body = Pieces(tuple(parts))
    response.headers["Content-Type"] = f"multipart/byteranges; boundary={boundary}"
    return response


def _slice(body: Body, start: int, stop: int) -> bytes | FileRegion:
    if isinstance(body, bytes):
        return body[start:stop]
    if isinstance(body, Pieces):
        raise TypeError("a multipart body is never sliced again")
    return FileRegion(body.path, body.offset + start, stop - start, body.location)


def _read_all(body: Body) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, Pieces):
        return b"".join(_pieces(body))
    if body.location is not None:
        return body.location.read_range(body.path, body.offset, body.length) or b""
    with open(body.path, "rb") as f:
        f.seek(body.offset)
        return f.read(body.length)


def _pieces(body: Pieces) -> Iterator[bytes]:
    for part in body.parts:
        if isinstance(part, bytes):
            yield part
        else:
            yield from _file_blocks(part)


# a chunk or a shard's range read at once when the server has no file wrapper
WHOLE_READ_BYTES = 8 << 20


def _whole_region(region: FileRegion) -> list[bytes]:
    try:
        with open(region.path, "rb") as f:
            f.seek(region.offset)
            return [f.read(region.length)]
    except OSError:
        return []  # gone since its headers were sent: the client sees a short body


def _file_blocks(region: FileRegion, block: int = 1 << 18) -> Iterator[bytes]:
    if region.location is not None:
        for start in range(region.offset, region.offset + region.length, 1 << 22):
            size = min(1 << 22, region.offset + region.length - start)
            yield region.location.read_range(region.path, start, size) or b""
        return
    with open(region.path, "rb") as f:
        f.seek(region.offset)
        left = region.length
        while left > 0:
            data = f.read(min(block, left))
            if not data:
                return
            left -= len(data)
            yield data
