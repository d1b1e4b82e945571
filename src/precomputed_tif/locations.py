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
    """A precomputed source served over HTTP(S)."""

    _local = threading.local()

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise StoreError(f"{url!r} is not an http(s) URL")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port
        self.base_path = parts.path

    def _connection(self) -> http.client.HTTPConnection:
        key = (self.scheme, self.host, self.port)
        pool = getattr(self._local, "connections", None)
        if pool is None:
            pool = self._local.connections = {}
        conn = pool.get(key)
        if conn is None:
            if self.scheme == "https":
                conn = http.client.HTTPSConnection(self.host, self.port, timeout=60)
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
            pool[key] = conn
        return conn

    def _get(self, name: str, headers: dict[str, str]) -> bytes | None:
        path = self.base_path + "/" + urllib.parse.quote(name)
        for attempt in range(2):  # a kept-alive connection the server closed: reconnect once
            conn = self._connection()
            try:
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                body = response.read()
            except (http.client.HTTPException, ConnectionError, OSError) as exc:
                conn.close()
                self._local.connections.pop((self.scheme, self.host, self.port), None)
                if attempt:
                    raise StoreError(f"cannot fetch {self.url}/{name}: {exc}") from exc
                continue
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
        return HttpLocation(self.url + "/" + name)


def open_location(url_or_path: str) -> Location:
    """A location for a folder path, ``file://`` URL or ``http(s)://`` URL (``precomputed://``
    prefixes are accepted)."""
    url = url_or_path.removeprefix("precomputed://")
    if url.startswith(("http://", "https://")):
        return HttpLocation(url)
    if url.startswith("file://"):
        return LocalLocation(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
    return LocalLocation(url)
