"""Where a volume's files are: a local folder, ``file://`` or ``http(s)://``; bytes in, bytes out.

Reads return None for a missing file (HTTP 404/403, as Neuroglancer treats them), so callers can
tell "never written" from a failure. HTTP keeps one keep-alive connection per thread and host;
``name.gz`` files are tried after ``name`` for local folders written with gzip.
"""

from __future__ import annotations

import gzip
import http.client
import os
import threading
import urllib.parse
from typing import Protocol

from .errors import StoreError


class Location(Protocol):
    url: str

    def read(self, name: str) -> bytes | None: ...

    def read_range(self, name: str, offset: int, size: int) -> bytes | None: ...

    def child(self, name: str) -> Location: ...


class LocalLocation:
    def __init__(self, path: str) -> None:
        self.path = path
        self.url = path

    def _file(self, name: str) -> str:
        return os.path.join(self.path, *name.split("/"))

    def read(self, name: str) -> bytes | None:
        path = self._file(name)
        try:
            with open(path, "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError):
            pass
        try:
            with open(path + ".gz", "rb") as f:
                return gzip.decompress(f.read())
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, EOFError) as exc:
            raise StoreError(f"{path}.gz is damaged: {exc}") from exc

    def read_range(self, name: str, offset: int, size: int) -> bytes | None:
        try:
            with open(self._file(name), "rb") as f:
                f.seek(offset)
                return f.read(size)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def child(self, name: str) -> LocalLocation:
        return LocalLocation(self._file(name))


class HttpLocation:
    """A precomputed source served over HTTP(S), with a pool of keep-alive connections."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise StoreError(f"{url!r} is not an http(s) URL")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port
        self.base_path = parts.path
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._owner = True  # children share the pool; its owner closes it

    def _take(self) -> http.client.HTTPConnection:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.host, self.port, timeout=60)
        return http.client.HTTPConnection(self.host, self.port, timeout=60)

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < 32:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle = list(self._idle)
            self._idle.clear()
        for conn in idle:
            conn.close()

    def __del__(self) -> None:
        if getattr(self, "_owner", False):
            self.close()

    def _get(self, name: str, headers: dict[str, str]) -> bytes | None:
        path = self.base_path + "/" + urllib.parse.quote(name)
        for attempt in range(2):  # a kept-alive connection the server closed: reconnect once
            conn = self._take()
            try:
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                body = response.read()
            except (http.client.HTTPException, OSError) as exc:
                conn.close()
                if attempt:
                    raise StoreError(f"cannot fetch {self.url}/{name}: {exc}") from exc
                continue
            if response.will_close:
                conn.close()
            else:
                self._give_back(conn)
            if response.status in (404, 403):
                return None
            if response.status not in (200, 206):
                raise StoreError(f"{self.url}/{name} answered HTTP {response.status}")
            if response.getheader("Content-Encoding", "").lower() == "gzip":
                body = gzip.decompress(body)
            return body
        return None

    def read(self, name: str) -> bytes | None:
        return self._get(name, {"Accept-Encoding": "gzip"})

    def read_range(self, name: str, offset: int, size: int) -> bytes | None:
        if size <= 0:
            return b""
        return self._get(name, {"Range": f"bytes={offset}-{offset + size - 1}"})

    def child(self, name: str) -> HttpLocation:
        """The location under `name`, sharing this one's connections (same host)."""
        child = HttpLocation(self.url + "/" + name)
        child._idle, child._lock, child._owner = self._idle, self._lock, False
        return child


def open_location(url_or_path: str) -> Location:
    """A location for a folder path, ``file://`` URL or ``http(s)://`` URL (``precomputed://``
    prefixes are accepted)."""
    url = url_or_path.removeprefix("precomputed://")
    if url.startswith(("http://", "https://")):
        return HttpLocation(url)
    if url.startswith("file://"):
        return LocalLocation(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
    return LocalLocation(url)
