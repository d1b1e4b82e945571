"""HTTP building blocks with no knowledge of volumes: responses, errors, ranges, validators.

`Response` bodies are bytes, or a file region served through ``wsgi.file_wrapper``; the app turns
them into a WSGI answer in one place. Ranges follow RFC 9110 for a single range (multiple ranges
are answered with the whole body, which the RFC allows).
"""

from __future__ import annotations

import email.utils
import gzip
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

STATUS_TEXT = {
    200: "200 OK",
    204: "204 No Content",
    206: "206 Partial Content",
    304: "304 Not Modified",
    400: "400 Bad Request",
    403: "403 Forbidden",
    404: "404 Not Found",
    405: "405 Method Not Allowed",
    414: "414 URI Too Long",
    416: "416 Range Not Satisfiable",
    500: "500 Internal Server Error",
}

JSON = "application/json"
OCTETS = "application/octet-stream"


class HttpError(Exception):
    """Answer the request with `status` and a short plain-text reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class FileRegion:
    """`length` bytes of the file at `path` from `offset`, sent without loading them all.

    With a `location` (an object store), `path` is a name inside it, read range by range.
    """

    path: str
    offset: int
    length: int
    location: Any = None


@dataclass
class Response:
    status: int = 200
    body: bytes | FileRegion = b""
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return self.body.length if isinstance(self.body, FileRegion) else len(self.body)


def error_response(status: int, reason: str) -> Response:
    return Response(status, (reason + "\n").encode(), {"Content-Type": "text/plain; charset=utf-8"})


_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range a ``Range`` header asks for, None to send everything.

    Raises HttpError(416) for a well-formed range that lies outside the body.
    """
    if not header:
        return None
    match = _RANGE.match(header)
    if match is None:
        return None  # multiple or malformed ranges: the whole body is a valid answer
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        suffix = int(last)
        if suffix == 0:
            raise HttpError(416, "empty suffix range")
        return (max(0, size - suffix), size - 1) if size else _unsatisfiable()
    start = int(first)
    if last and int(last) < start:
        return None  # invalid: ignore the header
    if start >= size:
        _unsatisfiable()
    end = int(last) if last else size - 1
    return (start, min(end, size - 1))


def _unsatisfiable() -> tuple[int, int]:
    raise HttpError(416, "range outside the resource")


def http_date(seconds: float) -> str:
    return email.utils.formatdate(seconds, usegmt=True)


def etag_for(*parts: object) -> str:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=10).hexdigest()
    return f'"{digest}"'


def not_modified(environ: dict[str, object], etag: str, mtime: float | None) -> bool:
    """True when the client's cached copy (If-None-Match / If-Modified-Since) is current."""
    if_none_match = environ.get("HTTP_IF_NONE_MATCH")
    if isinstance(if_none_match, str):
        tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
        return "*" in tags or etag in tags
    since = environ.get("HTTP_IF_MODIFIED_SINCE")
    if isinstance(since, str) and mtime is not None:
        try:
            parsed = email.utils.parsedate_to_datetime(since)
        except (TypeError, ValueError, IndexError):
            return False
        return parsed is not None and int(mtime) <= parsed.timestamp()
    return False


def accepts_gzip(environ: dict[str, object]) -> bool:
    """Whether ``Accept-Encoding`` allows gzip (a q of 0 refuses it)."""
    accept = environ.get("HTTP_ACCEPT_ENCODING")
    if not isinstance(accept, str):
        return False
    for item in accept.split(","):
        name, *params = (part.strip() for part in item.split(";"))
        if name.lower() not in ("gzip", "*"):
            continue
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False


def gzip_bytes(data: bytes, level: int = 1) -> bytes:
    return gzip.compress(data, compresslevel=level, mtime=0)
