"""A seeded fuzz of raw-socket requests against the CLI server: no answer is a 5xx, no byte from
outside the served folders (or from a hidden file in them) is ever sent, the server stays up.

The folder is planted with traps: symlinks out of it (to a file and to a folder), a hidden
folder, a secret file beside it. Requests mix encoding tricks in paths, ranges, conditional
headers, Host tricks, huge headers, garbage lines and pipelining. Kept to a few thousand
requests for CI; raise FUZZ_REQUESTS by hand for a long run.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
from pathlib import Path

import pytest

from conftest import random_stack
from servekit import RunningServer, make_volume

REQUESTS = int(os.environ.get("FUZZ_REQUESTS", "1500"))
SECRET = b"SECRET-6b1f0c2e9d"
HIDDEN = b"HIDDEN-0f3a5c7e21"
STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    (root / "secret.txt").write_bytes(SECRET * 20)
    served = root / "served"
    (served / "subdir").mkdir(parents=True)
    (served / ".precomputed-tif").mkdir()
    (served / ".precomputed-tif" / "state").write_bytes(HIDDEN)
    (served / ".hidden").write_bytes(HIDDEN)
    (served / "info").write_text(json.dumps({"type": "image", "scales": []}))
    (served / "a.bin").write_bytes(bytes(range(256)) * 40)
    (served / "subdir" / "inner.txt").write_text("inner\n")
    (served / "out").symlink_to(root / "secret.txt")
    (served / "outdir").symlink_to(root)
    (served / "inlink").symlink_to(served / "subdir" / "inner.txt")
    (served / "subdir" / "up").symlink_to("../../secret.txt")
    volume = make_volume(str(root / "vol"), random_stack((20, 40, 48), "uint16", seed=9), "blockfs")
    sources = root / "sources.json"
    sources.write_text(
        json.dumps(
            [
                {"name": "raw", "directory": str(served), "format": "raw"},
                {"name": "vol", "directory": volume},
            ]
        )
    )
    return root, served, sources


NAMES = [
    "info",
    "a.bin",
    "subdir",
    "inner.txt",
    "out",
    "outdir",
    "inlink",
    "up",
    "secret.txt",
    ".hidden",
    ".precomputed-tif",
    "state",
    "1_1_1",
    "2_2_2",
    "0-16_0-16_0-16",
    "16-32_16-32_0-16",
    "0-999999999999999999999_0-16_0-16",
    "raw",
    "vol",
    "v",
    "ng",
    "",
]
TRICKS = [
    "..",
    ".",
    "%2e%2e",
    "%2E%2e",
    "%252e%252e",
    "%2f",
    "%2F",
    "%5c",
    "\\",
    "%00",
    "%ff",
    "%c0%ae%c0%ae",
    "\u00e9",
    "%e2%80%ae",
    "//",
    "...",
    ";",
    "?x=..",
    "#frag",
    "%",
    "%zz",
    "~",
    "*",
    "a" * 300,
]


REAL = [
    "/info",
    "/a.bin",
    "/subdir/inner.txt",
    "/inlink",
    "/raw/info",
    "/raw/a.bin",
    "/raw/subdir/inner.txt",
    "/vol/info",
    "/vol/1_1_1/0-16_0-16_0-16",
    "/",
    "/vol/2_2_2/0-16_0-16_0-10",
]


def _path(rng: random.Random) -> str:
    if rng.random() < 0.5:
        path = rng.choice(REAL)
        if rng.random() < 0.3:
            cut = rng.randint(0, len(path))
            path = path[:cut] + rng.choice(TRICKS) + path[cut:]
        return path
    if rng.random() < 0.05:
        return "/" + "x/" * rng.randint(500, 2000)
    parts = [rng.choice(NAMES if rng.random() < 0.85 else TRICKS) for _ in range(rng.randint(0, 5))]
    path = "/" + "/".join(parts)
    if rng.random() < 0.1:
        path = "http://127.0.0.1" + path  # absolute form
    if rng.random() < 0.05:
        path = rng.choice(["*", "", "info", "../secret.txt"])
    return path


def _number(rng: random.Random) -> str:
    return rng.choice(["0", "1", "99", "10239", "10240", "5000", "-1", "9" * 90, "1e3", " 7", ""])


def _headers(rng: random.Random) -> list[str]:
    headers = []
    odd_hosts = ["127.0.0.1:99999", "", "x" * 300, "[::1", "a b", "127.0.0.1:-1", None]
    host = rng.choice(odd_hosts) if rng.random() < 0.3 else "127.0.0.1"
    if host is not None:
        headers.append(f"Host: {host}")
    if rng.random() < 0.05:
        headers.append("Host: second")
    if rng.random() < 0.5:
        specs = ",".join(
            f"{_number(rng)}-{_number(rng)}" for _ in range(rng.choice([1, 1, 2, 3, 40]))
        )
        headers.append(f"Range: {rng.choice(['bytes', 'bytes ', 'items', 'BYTES'])}={specs}")
    dates = [
        "Mon, 01 Jan 99999 00:00:00 GMT",
        "Mon, 01 Jan 2020 00:00:00 +99999999999999999999",
        "Thu, 01 Jan 1970 00:00:00 GMT",
        "Fri, 31 Dec 9999 23:59:59 GMT",
        "garbage",
        "",
        "Sun, 06 Nov 1994 08:49:37 GMT",
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "-1",
    ]
    for name in ["If-Modified-Since", "If-Unmodified-Since", "If-Range"]:
        if rng.random() < 0.25:
            headers.append(f"{name}: {rng.choice(dates)}")
    tags = ["*", '"x"', 'W/"x"', '"', ",,", "x" * 500]
    for name in ["If-None-Match", "If-Match", "If-Range"]:
        if rng.random() < 0.2:
            headers.append(f"{name}: {rng.choice(tags)}")
    if rng.random() < 0.3:
        headers.append(f"Accept-Encoding: {rng.choice(['gzip', 'gzip;q=0', '*;q=x', 'br', ''])}")
    if rng.random() < 0.03:
        headers.append("X-Big: " + "y" * rng.choice([10_000, 70_000]))
    if rng.random() < 0.05:
        headers.append(rng.choice(["no colon here", ": empty name", "Bad Name: x", "X:\ty"]))
    if rng.random() < 0.02:
        headers.append(f"Content-Length: {rng.choice(['0', '-1', '9' * 30, 'x'])}")
    return headers


def _request(rng: random.Random) -> bytes:
    if rng.random() < 0.04:
        return rng.randbytes(rng.randint(1, 200)) + b"\r\n\r\n"
    method = rng.choice(["GET"] * 12 + ["HEAD", "OPTIONS", "POST", "DELETE", "get", "G\x00T"])
    version = rng.choice(["HTTP/1.1"] * 16 + ["HTTP/1.0", "HTTP/2.0", "HTTP/9.9", "HTTP/1.1 x"])
    lines = [f"{method} {_path(rng)} {version}", *_headers(rng), "Connection: close"]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
    if rng.random() < 0.05:
        keep = request.replace(b"Connection: close\r\n", b"")
        return keep * rng.randint(1, 3) + request  # pipelined
    return request


def _exchange(port: int, request: bytes) -> bytes:
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        try:
            conn.sendall(request)
            while chunk := conn.recv(1 << 16):
                answer += chunk
        except (TimeoutError, ConnectionResetError, BrokenPipeError):
            pass  # a server may cut off a request it refused
    return answer


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode, server_name", [("folder", "waitress"), ("sources", "waitress"), ("sources", "granian")]
)
def test_fuzzed_requests_never_get_a_5xx_or_a_byte_from_outside(planted, mode, server_name):
    if server_name == "granian":
        pytest.importorskip("granian")
    root, served, sources = planted
    args = (
        ["-d", str(served), "--format", "raw"] if mode == "folder" else ["--config", str(sources)]
    )
    args += ["--server", server_name]
    rng = random.Random(f"fuzz-{mode}")
    with RunningServer(*args, "--timeout", "2", log="WARNING") as server:
        statuses: dict[int, int] = {}
        for i in range(REQUESTS):
            request = _request(rng)
            answer = _exchange(server.port, request)
            for status in (int(s) for s in STATUS.findall(answer)):
                statuses[status] = statuses.get(status, 0) + 1
                assert status < 500, (i, request[:300], answer[:300])
            assert SECRET not in answer and HIDDEN not in answer, (i, request[:300])
        assert server.get("/info" if mode == "folder" else "/vol/info")[0] == 200
        stderr = server.stop()
    assert "Traceback" not in stderr, stderr[-2000:]
    assert statuses.get(200, 0) > REQUESTS // 20 and statuses.get(400, 0) > 0, statuses


def test_the_planted_traps_are_refused(planted):
    """The fuzz's traps do what they should when asked for directly."""
    root, served, sources = planted
    with RunningServer("-d", str(served), "--format", "raw", log="WARNING") as server:
        for path in [
            "/out",
            "/outdir/secret.txt",
            "/subdir/up",
            "/.hidden",
            "/.precomputed-tif/state",
        ]:
            assert server.get(path)[0] == 404, path
        assert server.get("/subdir/inner.txt")[2] == b"inner\n"
        assert server.get("/inlink")[2] == b"inner\n"
        assert server.get("/a.bin")[2] == (served / "a.bin").read_bytes()
    assert Path(root / "secret.txt").read_bytes().startswith(SECRET)
