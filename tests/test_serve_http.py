"""HTTP semantics of RFC 9110 (conditional requests, ranges, Host), side by side with nginx over
the same files, and property tests of the header parsers.
"""

from __future__ import annotations

import email.utils
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import random_stack
from precomputed_tif.serve.app import PrecomputedApp
from precomputed_tif.serve.config import resolve_source
from precomputed_tif.serve.http import HttpError, parse_http_date, parse_ranges
from servekit import (
    RunningServer,
    call,
    free_port,
    http_get,
    make_volume,
    plain_nginx,
    readable_folder,
    wait_for_http,
)

SIZE = 10_000
SHARD = "1_1_1/0.shard"


@pytest.fixture(scope="module")
def files():
    """A raw folder (an info and a shard-like file) others can read, for nginx's workers."""
    with readable_folder("http-") as folder:
        rng = np.random.default_rng(5)
        (folder / "raw" / "1_1_1").mkdir(parents=True)
        (folder / "raw" / "info").write_text('{"type": "image", "scales": []}' + " " * 2000)
        (folder / "raw" / SHARD).write_bytes(rng.integers(0, 256, SIZE, np.uint8).tobytes())
        past = time.time() - 86400
        os.utime(folder / "raw" / SHARD, (past, past))
        yield folder / "raw"


@pytest.fixture(scope="module")
def servers(files, tmp_path_factory):
    """Our CLI server and a plain nginx over the same folder: name -> port."""
    with (
        plain_nginx(str(files), tmp_path_factory.mktemp("nginx")) as nginx_port,
        RunningServer("-d", str(files), "--format", "raw", log="WARNING") as ours,
    ):
        yield {"ours": ours.port, "nginx": nginx_port}


def _multipart(reply) -> list[tuple[str, bytes]]:
    """(Content-Range, bytes) of each part of a multipart/byteranges body."""
    boundary = reply.headers["content-type"].split("boundary=")[1].strip('"')
    parts = []
    for piece in reply.body.split(b"--" + boundary.encode())[1:]:
        if piece.startswith(b"--"):
            break
        head, _, data = piece.partition(b"\r\n\r\n")
        content_range = re.search(rb"Content-Range: ([^\r\n]+)", head, re.I)
        assert content_range, head
        parts.append((content_range.group(1).decode(), data.removesuffix(b"\r\n")))
    return parts


def _http_date(seconds: float) -> str:
    return email.utils.formatdate(seconds, usegmt=True)


# (name, headers built from the server's own ETag and Last-Modified, what RFC 9110 requires,
# and nginx's answer where it differs)
CASES: list[tuple[str, Callable[[str, str], dict[str, str]], int, int | None]] = [
    ("if-range matching etag", lambda e, m: {"Range": "bytes=0-99", "If-Range": e}, 206, None),
    ("if-range other etag", lambda e, m: {"Range": "bytes=0-99", "If-Range": '"x"'}, 200, None),
    ("if-range weak etag", lambda e, m: {"Range": "bytes=0-99", "If-Range": "W/" + e}, 200, None),
    ("if-range matching date", lambda e, m: {"Range": "bytes=0-99", "If-Range": m}, 206, None),
    (
        "if-range older date",
        lambda e, m: {"Range": "bytes=0-99", "If-Range": _http_date(time.time() - 10 * 86400)},
        200,
        None,
    ),
    ("if-match matching", lambda e, m: {"If-Match": e}, 200, None),
    ("if-match star", lambda e, m: {"If-Match": "*"}, 200, None),
    ("if-match other", lambda e, m: {"If-Match": '"x", "y"'}, 412, None),
    (
        "if-match other with range",
        lambda e, m: {"If-Match": '"x"', "Range": "bytes=0-9"},
        412,
        None,
    ),
    (
        "if-unmodified-since older",
        lambda e, m: {"If-Unmodified-Since": _http_date(time.time() - 10 * 86400)},
        412,
        None,
    ),
    ("if-unmodified-since same", lambda e, m: {"If-Unmodified-Since": m}, 200, None),
    ("if-none-match matching", lambda e, m: {"If-None-Match": e}, 304, None),
    ("if-none-match weak", lambda e, m: {"If-None-Match": "W/" + e}, 304, None),
    ("if-none-match other", lambda e, m: {"If-None-Match": '"x"'}, 200, None),
    ("if-modified-since same", lambda e, m: {"If-Modified-Since": m}, 304, None),
    (
        "if-modified-since in the future",
        lambda e, m: {"If-Modified-Since": _http_date(time.time() + 10 * 86400)},
        200,
        None,
    ),
    ("if-modified-since garbage", lambda e, m: {"If-Modified-Since": "yesterday"}, 200, None),
    (
        "absurd zone",
        lambda e, m: {"If-Modified-Since": "Mon, 01 Jan 2020 00:00:00 +99999999999999999999"},
        200,
        None,
    ),
    (
        "absurd year",
        lambda e, m: {"If-Modified-Since": "Mon, 01 Jan 99999 00:00:00 GMT"},
        200,
        None,
    ),
    ("huge range end", lambda e, m: {"Range": "bytes=100-" + "9" * 90}, 206, 416),
    ("huge suffix", lambda e, m: {"Range": "bytes=-" + "9" * 90}, 206, 416),
    ("huge start", lambda e, m: {"Range": "bytes=" + "9" * 90 + "-"}, 416, None),
    ("two ranges", lambda e, m: {"Range": "bytes=0-9,100-199"}, 206, None),
    ("suffix and start", lambda e, m: {"Range": "bytes=-5,20-29"}, 206, None),
    ("no range satisfiable", lambda e, m: {"Range": "bytes=20000-,30000-"}, 416, None),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_conditional_and_range_requests_as_rfc_9110_and_nginx(servers, files, case):
    _, make_headers, rfc, nginx_differs = case
    whole = (files / SHARD).read_bytes()
    answers = {}
    for name, port in servers.items():
        plain = http_get(port, "/" + SHARD)
        headers = make_headers(plain.headers["etag"], plain.headers["last-modified"])
        reply = http_get(port, "/" + SHARD, headers=headers)
        expected = nginx_differs if name == "nginx" and nginx_differs else rfc
        assert reply.status == expected, (name, reply.status, reply.headers)
        answers[name] = reply
        if reply.status == 200:
            assert reply.body == whole
        elif reply.status == 304:
            assert reply.body == b"" and reply.headers["etag"] == plain.headers["etag"]
        elif reply.status == 416:
            assert reply.headers["content-range"] == f"bytes */{SIZE}"
        elif reply.status == 206 and reply.headers["content-type"].startswith("multipart/"):
            for content_range, data in _multipart(reply):
                start, end = map(int, re.match(r"bytes (\d+)-(\d+)/10000", content_range).groups())
                assert data == whole[start : end + 1]
        elif reply.status == 206:
            start, end = map(
                int, re.match(r"bytes (\d+)-(\d+)/", reply.headers["content-range"]).groups()
            )
            assert reply.body == whole[start : end + 1]
    ours, nginx = answers["ours"], answers["nginx"]
    if nginx_differs:
        return  # nginx reads a number beyond 64 bits as a bad range; RFC 9110 does not
    assert ours.headers.get("content-range") == nginx.headers.get("content-range")
    if ours.headers.get("content-type", "").startswith("multipart/"):
        assert _multipart(ours) == _multipart(nginx)


def test_overlapping_ranges_are_merged(files):
    app = PrecomputedApp(single=resolve_source("", str(files), "raw"))
    reply = call(app, "/" + SHARD, headers={"Range": "bytes=0-99,50-149,500-509"})
    whole = (files / SHARD).read_bytes()
    assert reply.status == 206
    assert _multipart(reply) == [
        (f"bytes 0-149/{SIZE}", whole[:150]),
        (f"bytes 500-509/{SIZE}", whole[500:510]),
    ]
    one = call(app, "/" + SHARD, headers={"Range": "bytes=0-99,50-149"})
    assert one.status == 206 and one.headers["content-range"] == f"bytes 0-149/{SIZE}"
    assert one.body == whole[:150]
    many = ",".join(f"{i}-{i}" for i in range(0, 100, 5))
    assert call(app, "/" + SHARD, headers={"Range": "bytes=" + many}).status == 200


def _raw_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize("who", ["ours", "nginx"])
def test_http_1_1_without_host_is_400(servers, who):
    answer = _raw_request(servers[who], b"GET /info HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:100]
    answer = _raw_request(servers[who], b"GET /info HTTP/1.0\r\n\r\n")
    assert answer.split(b"\r\n")[0].endswith(b"200 OK"), answer[:100]


def test_gzipped_info_revalidates_with_its_own_etag(files):
    app = PrecomputedApp(single=resolve_source("", str(files), "raw"))
    gzipped = call(app, "/info", headers={"Accept-Encoding": "gzip"})
    assert gzipped.headers["content-encoding"] == "gzip"
    tag = gzipped.headers["etag"]
    assert tag.endswith('-gz"')
    again = call(app, "/info", headers={"Accept-Encoding": "gzip", "If-None-Match": tag})
    assert again.status == 304 and again.headers["etag"] == tag
    assert again.headers["vary"] == "Accept-Encoding"
    plain = call(app, "/info")
    assert call(app, "/info", headers={"If-None-Match": plain.headers["etag"]}).status == 304


@pytest.fixture(scope="module")
def decoded(tmp_path_factory):
    stack = random_stack((20, 40, 48), "uint16", seed=2)
    folder = str(tmp_path_factory.mktemp("decoded"))
    return {fmt: make_volume(folder, stack, fmt) for fmt in ("tiff", "zarr", "blockfs")}


@pytest.mark.parametrize("fmt", ["tiff", "zarr", "blockfs"])
def test_decoded_chunks_have_last_modified_and_revalidate(decoded, fmt):
    app = PrecomputedApp(single=resolve_source("", decoded[fmt], None))
    chunk = "/1_1_1/0-16_0-16_0-16"
    first = call(app, chunk)
    assert first.status == 200
    stamp = parse_http_date(first.headers["last-modified"])
    assert stamp is not None and abs(stamp - time.time()) < 3600
    assert (
        call(app, chunk, headers={"If-Modified-Since": first.headers["last-modified"]}).status
        == 304
    )
    earlier = _http_date(stamp - 60)
    assert call(app, chunk, headers={"If-Modified-Since": earlier}).status == 200
    assert call(app, chunk, headers={"If-Unmodified-Since": earlier}).status == 412
    ranged = call(app, chunk, headers={"Range": "bytes=2-5", "If-Range": first.headers["etag"]})
    assert ranged.status == 206 and ranged.body == first.body[2:6]


@pytest.mark.parametrize(
    "header, expected",
    [  # RFC 9110, 14.1.2's examples on a 10000-byte body, and edge cases
        ("bytes=0-499", [(0, 499)]),
        ("bytes=500-999", [(500, 999)]),
        ("bytes=-500", [(9500, 9999)]),
        ("bytes=9500-", [(9500, 9999)]),
        ("bytes=0-0,-1", [(0, 0), (9999, 9999)]),
        ("bytes=500-600,601-999", [(500, 999)]),
        ("bytes=500-700,601-999", [(500, 999)]),
        ("bytes=100-199, ,0-9", [(100, 199), (0, 9)]),
        ("BYTES = 1-2", [(1, 2)]),
        ("bytes=,", None),
        ("bytes=5-1", None),
        ("bytes=1-2,x", None),
        ("lines=1-2", None),
        ("bytes=-0", 416),
        ("bytes=10000-", 416),
        ("bytes=10000-,-0", 416),
    ],
)
def test_range_parser_examples(header, expected):
    if expected == 416:
        with pytest.raises(HttpError):
            parse_ranges(header, SIZE)
    else:
        assert parse_ranges(header, SIZE) == expected


# --- the parsers, for any input -----------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(header=st.text(max_size=60), size=st.integers(0, 10**12))
def test_range_parser_never_fails_on_any_text(header, size):
    _check_ranges(header, size)


RANGE_TEXT = st.lists(
    st.tuples(
        st.one_of(st.just(""), st.integers(0, 10**25).map(str)),
        st.one_of(st.just(""), st.integers(0, 10**25).map(str)),
        st.sampled_from(["", " "]),
    ).map(lambda t: f"{t[2]}{t[0]}{t[2]}-{t[2]}{t[1]}"),
    min_size=1,
    max_size=20,
).map(lambda specs: "bytes=" + ",".join(specs))


@settings(max_examples=400, deadline=None)
@given(header=RANGE_TEXT, size=st.integers(0, 10**6))
def test_range_parser_on_range_like_headers(header, size):
    result = _check_ranges(header, size)
    specs = header.removeprefix("bytes=").split(",")
    if len(specs) == 1 and result is not None:
        first, last = (s.strip() for s in specs[0].split("-"))
        if first:
            assert result == [(int(first), min(int(last) if last else size, size - 1))]
        else:
            assert result == [(max(0, size - int(last)), size - 1)]


def _check_ranges(header: str, size: int):
    try:
        result = parse_ranges(header, size)
    except HttpError as exc:
        assert exc.status == 416
        return None
    if result is not None:
        assert 1 <= len(result) <= 16
        for start, end in result:
            assert 0 <= start <= end < size
    return result


@settings(max_examples=400, deadline=None)
@given(value=st.text(max_size=80))
def test_date_parser_never_fails_on_any_text(value):
    parsed = parse_http_date(value)
    assert parsed is None or isinstance(parsed, float)


@settings(max_examples=200, deadline=None)
@given(seconds=st.integers(0, 253402300799))
def test_date_parser_reads_every_http_date(seconds):
    assert parse_http_date(email.utils.formatdate(seconds, usegmt=True)) == seconds


def test_a_plain_pep_3333_file_wrapper_never_sends_past_a_range(files):
    """wsgiref's wrapper sends the file to its end: ranges are then read and sent by the app."""
    import wsgiref.util

    app = PrecomputedApp(single=resolve_source("", str(files), "raw"))
    whole = (files / SHARD).read_bytes()
    environ: dict = {"PATH_INFO": "/" + SHARD}
    wsgiref.util.setup_testing_defaults(environ)
    environ["wsgi.file_wrapper"] = wsgiref.util.FileWrapper
    for start, end in [(100, 199), (0, 99)]:
        environ["HTTP_RANGE"] = f"bytes={start}-{end}"
        body = app(environ, lambda status, headers, exc_info=None: None)
        assert b"".join(body) == whole[start : end + 1]
    environ.pop("HTTP_RANGE")
    reply = app(environ, lambda status, headers, exc_info=None: None)
    assert isinstance(reply, wsgiref.util.FileWrapper)  # a whole file: the wrapper
    assert b"".join(reply) == whole
    reply.close()


@pytest.mark.skipif(os.name == "nt", reason="gunicorn runs on POSIX only")
def test_ranges_under_gunicorn_come_from_the_open_file(files, tmp_path):
    """gunicorn sends a file wrapper with sendfile(2) from the file's position for
    Content-Length bytes: every range of a shard, single or several, is exactly its bytes."""
    gunicorn_wsgi = pytest.importorskip("gunicorn.http.wsgi")
    app = PrecomputedApp(single=resolve_source("", str(files), "raw"))
    environ: dict = {"PATH_INFO": "/" + SHARD, "HTTP_RANGE": "bytes=4096-8191"}
    environ["wsgi.file_wrapper"] = gunicorn_wsgi.FileWrapper
    body = app(environ, lambda status, headers, exc_info=None: None)
    assert isinstance(body, gunicorn_wsgi.FileWrapper)  # what gunicorn hands to sendfile(2)
    assert body.filelike.tell() == 4096
    body.close()
    config = tmp_path / "sources.json"
    config.write_text(json.dumps([{"name": "raw", "directory": str(files), "format": "raw"}]))
    port = free_port()
    app = f'precomputed_tif.wsgi_webserver:make_app("{config}")'
    argv = [sys.executable, "-m", "gunicorn", "-k", "gthread", "--threads", "4"]
    process = subprocess.Popen(
        [*argv, "-b", f"127.0.0.1:{port}", app],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "HOME": str(tmp_path)},  # gunicorn >= 24 puts a control socket there
    )
    try:
        wait_for_http(port, "/raw/info")
        whole = (files / SHARD).read_bytes()
        for start, end in [(0, 99), (4096, 8191), (9000, 9999), (1, 1)]:
            reply = http_get(port, "/raw/" + SHARD, headers={"Range": f"bytes={start}-{end}"})
            assert reply.status == 206
            assert reply.headers["content-range"] == f"bytes {start}-{end}/{SIZE}"
            assert reply.body == whole[start : end + 1]
        reply = http_get(port, "/raw/" + SHARD, headers={"Range": "bytes=10-19,-5"})
        assert _multipart(reply) == [
            (f"bytes 10-19/{SIZE}", whole[10:20]),
            (f"bytes {SIZE - 5}-{SIZE - 1}/{SIZE}", whole[-5:]),
        ]
        assert http_get(port, "/raw/" + SHARD).body == whole
    finally:
        process.terminate()
        process.wait(timeout=30)
