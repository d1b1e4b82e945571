"""A ``--gzip`` volume served by a plain nginx with the README's lines, read back by us and
TensorStore over HTTP; without them nginx answers 404 for every chunk (a black panel).

Uses the nginx binary of the machine (Debian's package); skipped where there is none.
"""

from __future__ import annotations

import gzip
import http.client
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import random_stack, reference_pyramid, write_planes
from precomputed_tif import open_volume
from precomputed_tif.geometry import chunks_in, full_box

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")

# the README's lines, as a user pastes them into a server block
README_LINES = """
        gzip_static always;
        gunzip on;
        add_header Access-Control-Allow-Origin * always;
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    """nginx in the foreground on 127.0.0.1, serving `root`: /gz/ with the README's lines,
    /plain/ as a plain static server."""

    def __init__(self, workdir, root: str) -> None:
        self.port = _free_port()
        os.makedirs(workdir / "logs", exist_ok=True)
        # as root, workers would run as nobody; the files belong to whoever converted them
        user = "user root root;" if os.geteuid() == 0 else ""
        temp = " ".join(
            f"{kind}_temp_path {workdir}/tmp;"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (workdir / "nginx.conf").write_text(
            f"""
{user}
worker_processes 1;
error_log {workdir}/logs/error.log;
pid {workdir}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    {temp}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{self.port};
        location /gz/ {{
            alias {root}/;
{README_LINES}
        }}
        location /plain/ {{
            alias {root}/;
        }}
    }}
}}
"""
        )
        self.process = subprocess.Popen(
            [NGINX, "-p", str(workdir), "-c", str(workdir / "nginx.conf"), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # it logs to logs/error.log
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    log_file = workdir / "logs" / "error.log"
                    log = log_file.read_text() if log_file.exists() else ""
                    pytest.fail(f"nginx did not start: {log}")
                time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def get(self, path: str, headers: dict[str, str]) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        response.body = response.read()  # type: ignore[attr-defined]
        conn.close()
        return response

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture
def gzip_volume(tmp_path):
    """A --gzip volume freshly converted by the command line, and its reference pyramid."""
    stack = random_stack((20, 36, 44), "uint16", seed=41)
    planes = write_planes(tmp_path / "planes", stack)
    dest = tmp_path / "site" / "brain"
    done = subprocess.run(
        [sys.executable, "-m", "precomputed_tif.cli.convert", "--source", planes]
        + ["--dest", str(dest), "--format", "precomputed", "--gzip", "--chunk-size", "16,16,16"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "gzip_static always; gunzip on;" in done.stderr  # said at the end of the run
    levels = len(open_volume(str(dest)))
    return dest, reference_pyramid(stack, levels)


def test_nginx_serves_a_gzip_volume_with_the_readme_lines(tmp_path, gzip_volume):
    dest, expected = gzip_volume
    assert all(n.endswith(".gz") for n in os.listdir(dest / "1_1_1"))  # only name.gz files
    server = Nginx(tmp_path / "nginx", str(dest.parent))
    try:
        volume = open_volume(f"{server.url}/gz/brain")
        for level, want in enumerate(expected, start=1):
            scale = volume.pyramid.scale(level)
            for _, box in chunks_in(full_box(scale.size), scale.chunk_size, scale.size):
                path = f"/gz/brain/{scale.key}/{box.chunk_name}"
                # a browser: the stored gzip bytes, marked so that it unpacks them
                packed = server.get(path, {"Accept-Encoding": "gzip, deflate"})
                assert packed.status == 200, path
                assert packed.getheader("Content-Encoding") == "gzip"
                assert packed.getheader("Access-Control-Allow-Origin") == "*"
                raw = np.frombuffer(gzip.decompress(packed.body), "<u2")
                np.testing.assert_array_equal(
                    raw.reshape(box.numpy_shape), want[box.numpy_slices()], err_msg=path
                )
                # a client that does not take gzip: nginx unpacks it (gunzip on)
                plain = server.get(path, {})
                assert plain.status == 200 and plain.getheader("Content-Encoding") is None
                assert plain.body == raw.tobytes()
            np.testing.assert_array_equal(volume[level][:, :, :], want)  # our reader
        ts = pytest.importorskip("tensorstore")
        for level, want in enumerate(expected):
            array = ts.open(
                {
                    "driver": "neuroglancer_precomputed",
                    "kvstore": {"driver": "http", "base_url": f"{server.url}/gz/brain/"},
                    "scale_index": level,
                }
            ).result()
            got = np.asarray(array.read().result())[..., 0].transpose(2, 1, 0)
            np.testing.assert_array_equal(got, want, err_msg=f"TensorStore, level {level + 1}")
        # the same folder from a static server without the lines: every chunk is missing
        plain = server.get("/plain/brain/1_1_1/0-16_0-16_0-16", {"Accept-Encoding": "gzip"})
        assert plain.status == 404
        assert server.get("/plain/brain/info", {}).status == 200
    finally:
        server.stop()


@pytest.mark.slow
def test_viewer_shows_a_gzip_volume_served_by_nginx(tmp_path):
    """Neuroglancer in headless Chromium, reading the name.gz chunks through nginx."""
    import json
    import urllib.parse

    from test_serve_cli import RunningServer, _best_correlation, _need_browser, _stardist_volume

    _need_browser()
    stack, dest = _stardist_volume(tmp_path, "--format", "precomputed", "--gzip")
    assert all(n.endswith(".gz") for n in os.listdir(os.path.join(dest, "1_1_1")))
    nginx = Nginx(tmp_path / "nginx", os.path.dirname(dest))
    viewer = RunningServer("-d", dest, "--viewer", log="WARNING")  # hands out the client
    try:
        link = viewer.viewer_line.split("Viewer: ", 1)[1].strip()
        state = json.loads(urllib.parse.unquote(link.split("#!", 1)[1]))
        state["layers"][0]["source"] = f"precomputed://{nginx.url}/gz/{os.path.basename(dest)}"
        low, high = state["layers"][0]["shaderControls"]["normalized"]["range"]
        link = link.split("#!", 1)[0] + "#!" + urllib.parse.quote(json.dumps(state))
        z = 15
        best = _best_correlation(link, stack, (low, high), z, tmp_path / "shots")
    finally:
        viewer.stop()
        nginx.stop()
    assert best > 0.9, f"the --gzip volume served by nginx does not show: {best:.2f}"
