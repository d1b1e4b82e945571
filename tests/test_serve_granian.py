"""granian (the CLI's server where installed) answers every request as waitress (the pure-Python
fallback) does: same app, another HTTP server. Compared request by request (status, body and
the headers a viewer acts on) over decoded chunks, plain files, byte ranges, conditional and
hostile requests."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import random_stack
from servekit import RunningServer, make_volume

pytest.importorskip("granian")

STACK = random_stack((24, 40, 36), "uint16", seed=5)  # z, y, x
COMPARED = ("content-type", "content-range", "etag", "access-control-allow-origin", "allow")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("granian")
    volume = make_volume(str(root / "v"), STACK, "blockfs")
    raw = root / "raw"
    raw.mkdir()
    (raw / "info").write_text(json.dumps({"type": "image", "scales": []}))
    (raw / "a.bin").write_bytes(bytes(range(256)) * 64)
    sources = root / "sources.json"
    sources.write_text(
        json.dumps(
            [
                {"name": "v", "directory": volume},
                {"name": "raw", "directory": str(raw), "format": "raw"},
            ]
        )
    )
    return volume, sources


REQUESTS = [
    ("GET", "/v/info", {}),
    ("GET", "/v/1_1_1/0-16_0-16_0-16", {}),
    ("GET", "/v/1_1_1/32-36_32-40_16-24", {}),  # an edge chunk
    ("GET", "/v/2_2_2/0-16_0-16_0-12", {}),
    ("HEAD", "/v/1_1_1/0-16_0-16_0-16", {}),
    ("GET", "/v/1_1_1/0-16_0-16_0-16", {"Range": "bytes=100-199"}),
    ("GET", "/v/1_1_1/0-16_0-16_0-16", {"Range": "bytes=999999-"}),
    ("GET", "/raw/a.bin", {}),
    ("GET", "/raw/a.bin", {"Range": "bytes=-10"}),
    ("GET", "/raw/a.bin", {"Range": "bytes=0-" + "9" * 90}),
    ("GET", "/raw/a.bin", {"If-Modified-Since": "Mon, 01 Jan 99999 00:00:00 GMT"}),
    ("OPTIONS", "/v/info", {"Origin": "https://x", "Access-Control-Request-Method": "GET"}),
    ("GET", "/v/1_1_1/0-15_0-16_0-16", {}),  # off the chunk grid
    ("GET", "/v/9_9_9/0-16_0-16_0-16", {}),
    ("GET", "/raw/../sources.json", {}),
    ("GET", "/raw/%2e%2e/sources.json", {}),
    ("GET", "/nothing", {}),
    ("POST", "/v/info", {}),
]


def _answers(server: RunningServer) -> list[tuple[int, dict[str, str], bytes]]:
    out = []
    for method, path, headers in REQUESTS:
        status, got, body = server.get(path, method=method, headers=headers)
        out.append((status, {k: got[k] for k in COMPARED if k in got}, body))
    # a conditional request with the ETag just given
    status, got, _ = server.get("/v/1_1_1/0-16_0-16_0-16")
    again = server.get("/v/1_1_1/0-16_0-16_0-16", headers={"If-None-Match": got["etag"]})
    out.append((again[0], {}, again[2]))
    return out


def test_granian_answers_as_waitress_does(folders):
    volume, sources = folders
    with RunningServer("--config", str(sources), "--server", "waitress", log="WARNING") as waitress:
        expected = _answers(waitress)
    with RunningServer("--config", str(sources), "--server", "granian", log="WARNING") as granian:
        got = _answers(granian)
        stderr = granian.stop()
    for request, want, have in zip([*REQUESTS, ("GET", "If-None-Match", {})], expected, got):
        assert have == want, request
    assert [status for status, _, _ in got].count(200) >= 6 and expected[-1][0] == 304
    assert "Traceback" not in stderr


def test_granian_chunks_are_the_volume_s_voxels(folders):
    volume, _ = folders
    with RunningServer("-d", volume, "--server", "granian", log="WARNING") as server:
        status, headers, body = server.get("/1_1_1/16-32_0-16_16-24")
    assert status == 200 and headers["access-control-allow-origin"] == "*"
    # the chunk x 16-32, y 0-16, z 16-24 of the planes, x fastest
    assert body == np.ascontiguousarray(STACK[16:24, 0:16, 16:32]).astype("<u2").tobytes()


def test_granian_without_granian_installed_is_a_one_line_error(monkeypatch, folders, capsys):
    from precomputed_tif.cli import serve

    monkeypatch.setattr("precomputed_tif.serve.granian_server.granian_installed", lambda: False)
    volume, _ = folders
    assert serve.main(["-d", volume, "--server", "granian", "-p", "0"]) == 2
    assert capsys.readouterr().err.count("error:") == 1


def test_the_default_server_is_granian_where_installed(folders):
    volume, _ = folders
    import psutil

    with RunningServer("-d", volume, log="WARNING") as server:
        status = server.get("/info")[0]
        # granian answers from a worker process it starts; waitress from the process itself
        workers = [w.name() for w in psutil.Process(server.process.pid).children(recursive=True)]
        stderr = server.stop()
    assert status == 200 and any("python" in name.lower() for name in workers), workers
    assert "Traceback" not in stderr
