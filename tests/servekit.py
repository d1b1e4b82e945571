"""Helpers for the server tests: a WSGI client and volumes converted once per session."""

from __future__ import annotations

import contextlib
import http.client
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest

from conftest import convert_stack, write_planes


class RunningServer:
    """``precomputed-webserver ARGS`` in a subprocess on a free port (a context manager)."""

    def __init__(self, *args: str, log: str = "INFO") -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "precomputed_tif.cli.serve", "-p", "0", "--log", log, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline()
        match = re.search(r"at http://127\.0\.0\.1:(\d+)", line)
        if not match:
            stderr = self.stop()  # a server still running would never close its stderr
            raise AssertionError(f"no URL line: {line!r}; stderr: {stderr}")
        self.port = int(match.group(1))
        self.url = f"http://127.0.0.1:{self.port}"
        self.viewer_line = self.process.stdout.readline() if "--viewer" in args else ""

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def get(self, path: str, method: str = "GET", headers: dict | None = None):
        conn = self.connection()
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        conn.close()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> str:
        self.process.terminate()
        try:
            _, stderr = self.process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, stderr = self.process.communicate()
        return stderr


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes = field(repr=False)


def call(app: Any, path: str, method: str = "GET", headers: dict[str, str] | None = None) -> Reply:
    """Run one request through a WSGI app, the way a server would (PATH_INFO latin-1)."""
    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)
    environ["REQUEST_METHOD"] = method
    environ["PATH_INFO"] = path
    environ["wsgi.input"] = io.BytesIO(b"")
    environ["wsgi.errors"] = sys.stderr
    for key, value in (headers or {}).items():
        environ["HTTP_" + key.upper().replace("-", "_")] = value
    captured: dict[str, Any] = {}

    def start_response(
        status: str, header_list: list[tuple[str, str]], exc_info: Any = None
    ) -> Any:
        captured["status"] = int(status.split()[0])
        captured["headers"] = {k.lower(): v for k, v in header_list}
        return lambda data: None

    chunks = app(environ, start_response)
    try:
        body = b"".join(chunks)
    finally:
        if hasattr(chunks, "close"):
            chunks.close()
    return Reply(captured["status"], captured["headers"], body)


def make_volume(folder: str, stack, fmt: str, chunk=(16, 16, 16), segmentation=False) -> str:
    """`stack` written as planes under `folder` and converted to `folder/fmt`."""
    planes = write_planes(Path(folder) / "planes", stack)
    dest = os.path.join(folder, fmt)
    convert_stack(
        planes, dest, fmt, chunk=chunk, segmentation=segmentation, voxel_size_nm=(1000, 1000, 1000)
    )
    return dest


NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
_NGINX_CONF = """
worker_processes 1;
{user}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{
            add_header Access-Control-Allow-Origin "*" always;
            try_files $uri =404;
        }}
    }}
}}
"""


def need_nginx() -> str:
    """nginx's path; CI installs it (.ci/run), elsewhere the test is skipped without it."""
    if NGINX is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's nginx (see .ci/run)")
        pytest.skip("nginx is not installed")
    return NGINX


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def unprivileged_user() -> tuple[str, str] | None:
    """(user, group) a root-started server should drop to, as Debian's packages do."""
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        return None
    import grp
    import pwd

    for name in ("www-data", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return name, grp.getgrgid(entry.pw_gid).gr_name
    return None


def wait_for_http(port: int, path: str = "/", seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            try:
                conn.request("GET", path)
                conn.getresponse().read()
                return
            finally:
                conn.close()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextlib.contextmanager
def plain_nginx(root: str, workdir: Path) -> Iterator[int]:
    """A stock nginx serving `root` as static files, its workers unprivileged as packaged
    (www-data when started by root): it reads only what the files' modes allow. Yields the port.
    """
    nginx = need_nginx()
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    who = unprivileged_user()
    user = f"user {who[0]} {who[1]};" if who else ""
    conf = workdir / "nginx.conf"
    conf.write_text(_NGINX_CONF.format(user=user, prefix=workdir, port=port, root=root))
    process = subprocess.Popen(
        [nginx, "-p", str(workdir) + "/", "-c", str(conf), "-g", "daemon off;"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_http(port)
        yield port
    finally:
        process.terminate()
        process.communicate(timeout=20)


def http_get(
    port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
    finally:
        conn.close()


@contextlib.contextmanager
def readable_folder(prefix: str) -> Iterator[Path]:
    """A new folder other users can enter (pytest's own are 0700), as a data folder would be."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        folder.chmod(0o755)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
