"""HTTP building blocks with no knowledge of volumes: responses, errors, ranges, validators.

`Response` bodies are bytes, a file region served through ``wsgi.file_wrapper``, or the pieces of
a ``multipart/byteranges`` answer; the app turns them into a WSGI answer in one place. Ranges and
conditional requests follow RFC 9110; a header that is malformed is ignored, as nginx does.
"""

from __future__ import annotations

import email.utils
import functools
import gzip
import hashlib
import re
import time
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
    412: "412 Precondition Failed",
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


@dataclass(frozen=True)
class Pieces:
    """A body sent piece after piece: the parts of a ``multipart/byteranges`` answer."""

    parts: tuple[bytes | FileRegion, ...]

    @property
    def length(self) -> int:
        return sum(len(p) if isinstance(p, bytes) else p.length for p in self.parts)


Body = bytes | FileRegion | Pieces


@dataclass
class Response:
    status: int = 200
    body: Body = b""
    headers: dict[str, str] = field(default_factory=dict)
    mtime: float | None = None  # when the representation last changed, if known

    @property
    def length(self) -> int:
        return len(self.body) if isinstance(self.body, bytes) else self.body.length


def error_response(status: int, reason: str) -> Response:
    return Response(status, (reason + "\n").encode(), {"Content-Type": "text/plain; charset=utf-8"})


MAX_RANGES = 16  # more ranges in one request is a probe, not a viewer: answered whole
_DIGITS = 18  # longer numbers are clamped: they exceed any file, and int() of 5000 digits raises
_RANGE_SPEC = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")


def _number(digits: str) -> int:
    return int(digits) if len(digits) <= _DIGITS else 10**_DIGITS


def parse_ranges(header: str | None, size: int) -> list[tuple[int, int]] | None:
    """The inclusive byte ranges a ``Range`` header asks for (RFC 9110, 14.1.2), in the order
    asked, overlapping ones merged; None to send the whole body (no header, another unit, a
    malformed or invalid spec, too many ranges: the RFC lets a server ignore those).

    Raises HttpError(416) when the header is valid but no range overlaps the body.
    """
    if not header:
        return None
    unit, sep, specs = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    parts = specs.split(",")
    if len(parts) > MAX_RANGES:
        return None
    wanted: list[tuple[int, int]] = []
    if not any(part.strip() for part in parts):
        return None
    for part in parts:
        if not part.strip():
            continue  # the grammar allows empty list elements
        match = _RANGE_SPEC.match(part)
        if match is None:
            return None
        first, last = match.groups()
        if not first:
            if not last:
                return None
            suffix = _number(last)
            if suffix > 0 and size > 0:
                wanted.append((max(0, size - suffix), size - 1))
            continue
        start = _number(first)
        if last and _number(last) < start:
            return None  # invalid: ignore the whole header
        if start < size:
            wanted.append((start, min(_number(last), size - 1) if last else size - 1))
    if not wanted:
        raise HttpError(416, "range outside the resource")
    return _merge_overlapping(wanted)


def _merge_overlapping(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Ranges that overlap or touch merged (RFC 9110 lets a server coalesce them)."""
    if len(ranges) == 1:
        return ranges
    merged: list[list[int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    if len(merged) == len(ranges):
        return ranges  # nothing overlapped: keep the order the client asked for
    return [(a, b) for a, b in merged]


@functools.lru_cache(maxsize=4096)
def http_date(seconds: float) -> str:
    """The HTTP date of a time (kept: the same files' times are formatted again and again)."""
    return email.utils.formatdate(seconds, usegmt=True)


def parse_http_date(value: object) -> float | None:
    """Seconds since the epoch of an HTTP date, None for anything that is not a valid one."""
    if not isinstance(value, str) or len(value) > 100:
        return None
    try:
        parsed = email.utils.parsedate_tz(value)
        if parsed is None or not 1 <= parsed[0] <= 9999:
            return None
        return float(email.utils.mktime_tz(parsed))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def etag_for(*parts: object) -> str:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=10).hexdigest()
    return f'"{digest}"'


def gzip_etag(etag: str) -> str:
    """The ETag of the gzipped variant of the representation tagged `etag`."""
    return etag[:-1] + '-gz"'


def _tags(header: str) -> list[str]:
    return [t.strip() for t in header.split(",")]


CONDITIONS = (
    "HTTP_IF_MATCH",
    "HTTP_IF_NONE_MATCH",
    "HTTP_IF_MODIFIED_SINCE",
    "HTTP_IF_UNMODIFIED_SINCE",
)


def preconditions(environ: dict[str, object], etag: str | None, mtime: float | None) -> int | None:
    """412 or 304 when the conditional headers say so (RFC 9110, 13.2.2), None to go on.

    `etag` is the current representation's tag (a cached copy of its gzipped variant is current
    too); `mtime` its modification time, when known.
    """
    if not any(name in environ for name in CONDITIONS):
        return None
    etags = (etag, gzip_etag(etag)) if etag else ()
    if_match = environ.get("HTTP_IF_MATCH")
    if isinstance(if_match, str):
        tags = _tags(if_match)
        if "*" not in tags and not any(t in etags for t in tags):  # strong: W/ never matches
            return 412
    elif mtime is not None:
        since = parse_http_date(environ.get("HTTP_IF_UNMODIFIED_SINCE"))
        if since is not None and int(mtime) > since:
            return 412
    if_none_match = environ.get("HTTP_IF_NONE_MATCH")
    if isinstance(if_none_match, str):
        tags = [t.removeprefix("W/") for t in _tags(if_none_match)]
        return 304 if "*" in tags or any(t in etags for t in tags) else None
    if mtime is not None:
        since = parse_http_date(environ.get("HTTP_IF_MODIFIED_SINCE"))
        # a date in the future is not a valid one (the client's clock is wrong): ignored
        if since is not None and since <= time.time() and int(mtime) <= since:
            return 304
    return None


def range_applies(environ: dict[str, object], etag: str | None, mtime: float | None) -> bool:
    """Whether ``If-Range`` (absent, or naming the current version) lets ``Range`` apply."""
    if_range = environ.get("HTTP_IF_RANGE")
    if not isinstance(if_range, str):
        return True
    value = if_range.strip()
    if value.startswith('"') or value.startswith("W/"):
        return etag is not None and value == etag  # strong comparison
    date = parse_http_date(value)
    return date is not None and mtime is not None and int(mtime) == date


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
