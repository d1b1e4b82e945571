"""Helpers for the server tests: a WSGI client and volumes converted once per session."""

from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

from conftest import convert_stack, write_planes


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
