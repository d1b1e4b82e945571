"""Where a volume's files are: a local folder, ``file://``, ``http(s)://`` or any fsspec URL
(``s3://``, ``gs://``, ...); bytes in, bytes out, by names relative to the volume's root.

Reads return None for a missing file (HTTP 404/403, as Neuroglancer treats them), so callers can
tell "never written" from a failure. HTTP keeps one keep-alive connection per thread and host;
``name.gz`` files are tried after ``name`` for local folders written with gzip. Folders and
object stores can also be written: every write replaces a whole file at once (a file linked or
renamed into place once written, or one PUT), so readers never see half a chunk. Gzipped files
follow each place's convention: ``name.gz`` in folders (web servers' ``gzip_static``), the plain
name with ``Content-Encoding: gzip`` metadata in buckets (what browsers and TensorStore unpack).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import os
import secrets
import shutil
import threading
import urllib.parse
import zlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from .errors import StoreError

if TYPE_CHECKING:  # imported where used: 25 ms of every process's start, for remote volumes
    import http.client

LOCAL_SCHEMES = ("", "file")
# an object store answers a stat in milliseconds, not microseconds: metadata that only changes
# when a volume is rewritten is looked at again after this long
REMOTE_RECHECK_SECONDS = 5.0
HTTP_SCHEMES = ("http", "https")


def url_scheme(url: str) -> str:
    """``s3`` for ``s3://bucket/key``; ``""`` for a plain path."""
    scheme, sep, _ = url.removeprefix("precomputed://").partition("://")
    return scheme.lower() if sep and scheme.isalnum() else ""


def is_remote(url: str) -> bool:
    """Whether `url` names an object store or web server rather than a local folder."""
    return url_scheme(url) not in LOCAL_SCHEMES


# a file's content: one buffer, or a list of buffers (bytes, memoryviews, numpy arrays) written
# one after another, so that a shard of tens of MiB is never joined into one more copy
Content = bytes | memoryview | list[Any]


def _buffers(data: Content) -> list[Any]:
    pieces = data if isinstance(data, list) else [data]
    return [
        np.ascontiguousarray(p).reshape(-1).view(np.uint8) if isinstance(p, np.ndarray) else p
        for p in pieces
    ]


def joined(data: Content) -> bytes:
    """`data` as one bytes object (for stores that take a whole object in one request)."""
    return b"".join(bytes(p) for p in _buffers(data))


def write_atomically(path: str, data: Content, tmp_dir: str | None = None) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one.

    On Linux the bytes go to a nameless file that gets `path`'s name once whole; elsewhere, and
    on file systems without such files, to a temporary file in `tmp_dir` (on the same file
    system; default: beside `path`), so a process killed mid-write leaves its debris there, not
    among the chunks. The file gets the modes the user's umask gives, as ``cp`` would
    (``mkstemp``'s 0600 would leave a volume unreadable by the web server meant to serve it).
    """
    if _write_unnamed(path, data):
        return
    folder = tmp_dir or os.path.dirname(path) or "."
    name = os.path.basename(path)
    try:
        fd, tmp = create_temporary(folder, name)
    except FileNotFoundError:
        if tmp_dir is None:
            raise
        os.makedirs(tmp_dir, exist_ok=True)
        fd, tmp = create_temporary(folder, name)
    with _removed_on_failure(tmp):
        _write_all(fd, data, close=True)
        os.replace(tmp, path)


def _write_all(fd: int, data: Content, *, close: bool) -> None:
    # os.write, not a file object: making one per chunk file was 2% of a zarr task's time
    try:
        for piece in _buffers(data):
            view = memoryview(piece).cast("B")
            while view:
                view = view[os.write(fd, view) :]
    finally:
        if close:
            os.close(fd)


@contextlib.contextmanager
def _removed_on_failure(tmp: str) -> Iterator[None]:
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


_TMPFILE = getattr(os, "O_TMPFILE", 0)


@functools.cache
def _root_fd() -> int:
    return os.open("/", os.O_RDONLY)


def _write_unnamed(path: str, data: Content) -> bool:
    """Write `path` through a nameless file in its folder that is linked in once whole (Linux).

    This takes half the directory work of a temporary file renamed into place (ext4 spent a
    tenth of a zarr conversion's CPU on those), and a process killed mid-write leaves nothing at
    all. False, having written nothing under any name, where that cannot be done: no
    ``O_TMPFILE`` on this system or file system (NFS), no ``/proc``, or a folder that is missing;
    the caller then goes the portable way, which also reports any error.
    """
    if not _TMPFILE:
        return False
    try:
        fd = os.open(os.path.dirname(path) or ".", _TMPFILE | os.O_WRONLY, 0o666)
    except OSError:
        return False
    try:
        _write_all(fd, data, close=False)
        return _link_whole(fd, path)
    finally:
        os.close(fd)


def _link_whole(fd: int, path: str) -> bool:
    global _TMPFILE

    def link(name: str) -> None:
        # linkat(2) through /proc with AT_SYMLINK_FOLLOW, as open(2) documents for O_TMPFILE;
        # a directory fd makes Python call linkat rather than link (the path is absolute)
        os.link(f"/proc/self/fd/{fd}", name, src_dir_fd=_root_fd(), follow_symlinks=True)

    try:
        link(path)
        return True
    except FileExistsError:
        pass  # a rewrite: give the whole file a hidden name and rename it over the old one
    except OSError:
        # no /proc, or a security module that forbids the link: every later file would be
        # written twice, so this process goes the portable way from now on
        _TMPFILE = 0
        return False
    try:
        _, tmp = _under_hidden_name(*os.path.split(path), make=link)
    except OSError:
        return False
    with _removed_on_failure(tmp):
        os.replace(tmp, path)
    return True


T = TypeVar("T")


def _under_hidden_name(folder: str, name: str, make: Callable[[str], T]) -> tuple[T, str]:
    """``make(tmp)`` for a new hidden name `tmp` beside `name`, trying another if it exists."""
    while True:
        tmp = os.path.join(folder, f".tmp-{secrets.token_hex(6)}-{name}")
        try:
            return make(tmp), tmp
        except FileExistsError:
            continue


def create_temporary(folder: str, name: str) -> tuple[int, str]:
    """A new hidden file beside `name`, open for writing, mode 0666 less the umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    return _under_hidden_name(folder, name, lambda tmp: os.open(tmp, flags, 0o666))


def file_stamp(path: str) -> tuple[int, int] | None:
    """(modification time in ns, size) of a file, or None when it does not exist."""
    try:
        stat = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (stat.st_mtime_ns, stat.st_size)


GZIP_MAGIC = b"\x1f\x8b\x08"
# how each object store's fsspec file system is told to store Content-Encoding: gzip
GZIP_METADATA: dict[str, dict[str, Any]] = {
    "s3": {"ContentEncoding": "gzip"},
    "s3a": {"ContentEncoding": "gzip"},
    "gs": {"fixed_key_metadata": {"content_encoding": "gzip"}},
    "gcs": {"fixed_key_metadata": {"content_encoding": "gzip"}},
}


def can_write_gzip(url: str) -> bool:
    """Whether gzipped files written to `url` stay readable by others (folders, s3, gs)."""
    return not is_remote(url) or url_scheme(url) in GZIP_METADATA


def gzip_content(blob: bytes) -> bytes | None:
    """The unpacked content when `blob` is a whole gzip stream (its checksum holds), else None.

    Object-store clients hand over objects stored with ``Content-Encoding: gzip`` as stored; a
    file whose bytes merely begin like gzip fails the checksum and is left alone.
    """
    if not blob.startswith(GZIP_MAGIC):
        return None
    try:
        return gzip.decompress(blob)
    except (OSError, EOFError, zlib.error):
        return None


def _gunzip(content: bytes, where: str) -> bytes:
    """A ``name.gz`` file's content (chunks written with ``--gzip``)."""
    try:
        return gzip.decompress(content)
    except (OSError, EOFError) as exc:
        raise StoreError(f"{where} is damaged: {exc}") from exc


class Location(Protocol):
    url: str

    def read(self, name: str) -> bytes | None: ...

    def read_range(self, name: str, offset: int, size: int) -> bytes | None: ...

    def read_suffix(self, name: str, size: int) -> bytes | None:
        """The last `size` bytes (all of a shorter file): zarr v3 shard indexes end a file."""
        ...

    def child(self, name: str) -> Location: ...


class WritableLocation(Location, Protocol):
    """A location that can also be written: a local folder or an object store."""

    def write(self, name: str, data: Content) -> None: ...

    def write_gzip(self, name: str, packed: bytes) -> None:
        """Store gzip bytes so that web servers and readers unpack them for `name`."""
        ...

    def stamp(self, name: str) -> tuple[int, int] | None:
        """(a number that changes when the file does, size), or None when it is missing."""
        ...

    def names(self, name: str = "") -> list[str]:
        """The entries directly under folder `name` (empty when there is none)."""
        ...

    def remove(self, name: str) -> None:
        """Delete a file or a whole folder."""
        ...

    def child(self, name: str) -> WritableLocation: ...


class LocalLocation:
    def __init__(self, path: str, tmp_dir: str | None = None) -> None:
        self.path = path
        self.url = path
        self.tmp_dir = tmp_dir

    def _file(self, name: str) -> str:
        return os.path.join(self.path, *name.split("/")) if name else self.path

    def write(self, name: str, data: Content) -> None:
        path = self._file(name)
        try:
            write_atomically(path, data, self.tmp_dir)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_atomically(path, data, self.tmp_dir)

    def write_gzip(self, name: str, packed: bytes) -> None:
        self.write(name + ".gz", packed)  # what gzip_static web servers look for

    def stamp(self, name: str) -> tuple[int, int] | None:
        return file_stamp(self._file(name))

    def names(self, name: str = "") -> list[str]:
        try:
            return os.listdir(self._file(name))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def remove(self, name: str) -> None:
        path = self._file(name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def read(self, name: str) -> bytes | None:
        path = self._file(name)
        try:
            with open(path, "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError):
            pass
        try:
            with open(path + ".gz", "rb") as f:
                return _gunzip(f.read(), path + ".gz")
        except (FileNotFoundError, NotADirectoryError):
            return None

    def read_range(self, name: str, offset: int, size: int) -> bytes | None:
        try:
            with open(self._file(name), "rb") as f:
                f.seek(offset)
                return f.read(size)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def read_suffix(self, name: str, size: int) -> bytes | None:
        try:
            with open(self._file(name), "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - size))
                return f.read(size)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def child(self, name: str) -> LocalLocation:
        return LocalLocation(self._file(name), self.tmp_dir)


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
        import http.client

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
        import http.client

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

    def read_suffix(self, name: str, size: int) -> bytes | None:
        body = self._get(name, {"Range": f"bytes=-{size}"})
        return None if body is None else body[-size:]  # a server ignoring Range sends it all

    def child(self, name: str) -> HttpLocation:
        """The location under `name`, sharing this one's connections (same host)."""
        child = HttpLocation(self.url + "/" + name)
        child._idle, child._lock, child._owner = self._idle, self._lock, False
        return child


class FsspecLocation:
    """An object store (or any fsspec file system) under one prefix.

    Credentials and endpoints come from the usual places (``AWS_*`` variables, ``~/.aws``,
    ``GOOGLE_APPLICATION_CREDENTIALS``, fsspec's ``FSSPEC_<PROTOCOL>_<OPTION>`` variables), so
    workers on other machines find them the same way.
    """

    def __init__(self, url: str, fs: Any = None, root: str | None = None) -> None:
        self.url = url.rstrip("/")
        if fs is None:
            try:
                import fsspec

                fs, root = fsspec.core.url_to_fs(self.url)
            except ImportError as exc:
                raise StoreError(
                    f"{url!r} needs fsspec and the package for its scheme (s3fs for s3://, "
                    "gcsfs for gs://): pip install 'precomputed-tif[s3]'"
                ) from exc
            except ValueError as exc:
                raise StoreError(f"cannot open {url!r}: {exc}") from exc
        self.fs = fs
        self.root = str(root).rstrip("/")

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}" if name else self.root

    def _fail(self, what: str, name: str, exc: Exception) -> StoreError:
        return StoreError(f"cannot {what} {self.url}/{name}: {exc}")

    def read(self, name: str) -> bytes | None:
        for stored in (name, name + ".gz"):
            try:
                content = bytes(self.fs.cat_file(self._path(stored)))
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as exc:
                raise self._fail("read", stored, exc) from exc
            return content if stored == name else _gunzip(content, f"{self.url}/{stored}")
        return None

    def read_range(self, name: str, offset: int, size: int) -> bytes | None:
        if size <= 0:
            return b""
        try:
            return bytes(self.fs.cat_file(self._path(name), start=offset, end=offset + size))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise self._fail("read", name, exc) from exc

    def read_suffix(self, name: str, size: int) -> bytes | None:
        try:
            total = int(self.fs.size(self._path(name)))
            start = max(0, total - size)
            return bytes(self.fs.cat_file(self._path(name), start=start, end=total))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise self._fail("read", name, exc) from exc

    def write(self, name: str, data: Content) -> None:
        try:
            self.fs.pipe_file(self._path(name), joined(data))
        except (OSError, ValueError) as exc:
            raise self._fail("write", name, exc) from exc

    def write_gzip(self, name: str, packed: bytes) -> None:
        metadata = GZIP_METADATA.get(url_scheme(self.url))
        if metadata is None:
            raise StoreError(f"{self.url} cannot store Content-Encoding: gzip for {name}")
        try:
            self.fs.pipe_file(self._path(name), packed, **metadata)
        except (OSError, ValueError) as exc:
            raise self._fail("write", name, exc) from exc

    def stamp(self, name: str) -> tuple[int, int] | None:
        try:
            info = self.fs.info(self._path(name))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise self._fail("look up", name, exc) from exc
        if info.get("type") == "directory":
            return None
        version = str(info.get("ETag") or info.get("etag") or info.get("mtime") or info)
        digest = int.from_bytes(hashlib.blake2b(version.encode(), digest_size=7).digest(), "big")
        return (digest, int(info.get("size") or 0))

    def names(self, name: str = "") -> list[str]:
        try:
            self.fs.invalidate_cache(self._path(name))
            entries = self.fs.ls(self._path(name), detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except (OSError, ValueError) as exc:
            raise self._fail("list", name, exc) from exc
        prefix = self._path(name).rstrip("/") + "/"
        return sorted({str(e).removeprefix(prefix).split("/")[0] for e in entries} - {""})

    def remove(self, name: str) -> None:
        try:
            self.fs.rm(self._path(name), recursive=True)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            raise self._fail("delete", name, exc) from exc

    def child(self, name: str) -> FsspecLocation:
        return FsspecLocation(f"{self.url}/{name}", self.fs, self._path(name))


def open_location(url_or_path: str) -> Location:
    """A location for a folder path, ``file://``, ``http(s)://`` or fsspec URL (``precomputed://``
    prefixes are accepted)."""
    url = url_or_path.removeprefix("precomputed://")
    if url_scheme(url) in HTTP_SCHEMES:
        return HttpLocation(url)
    return open_writable(url)


def open_writable(url_or_path: str) -> WritableLocation:
    """A location that can be written: a folder path, ``file://`` or fsspec URL."""
    url = url_or_path.removeprefix("precomputed://")
    scheme = url_scheme(url)
    if scheme in HTTP_SCHEMES:
        raise StoreError(f"{url!r} is a web server: it can be read, not written")
    if scheme == "file":
        return LocalLocation(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
    if scheme:
        return FsspecLocation(url)
    return LocalLocation(url)
