"""The real Neuroglancer client, in headless Chromium, draws our OME-Zarr output.

Plain nginx serves both the client (the neuroglancer wheel's build) and the OME-Zarr folder: no
server of ours takes part, as when a lab puts the folder in a bucket. The panel's pixels are
compared with the plane the volume holds. A second test opens our own server's ``--viewer``.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import time
import urllib.parse

import pytest

from servekit import NGINX, RunningServer
from test_serve_cli import (
    _best_correlation,
    _need_browser,
    _stardist_volume,
)

NGINX_CONF = """
worker_processes 1;
{user}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    include /etc/nginx/mime.types;
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location /v/ng/ {{ alias {client}/; }}
        location /data/ {{
            alias {data}/;
            add_header Access-Control-Allow-Origin "*" always;
            add_header Access-Control-Expose-Headers "Content-Range, Content-Length" always;
        }}
    }}
}}
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for(port: int, path: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            try:
                conn.request("GET", path)
                if conn.getresponse().status == 200:
                    return
            finally:
                conn.close()
        except OSError:
            time.sleep(0.1)


def _state(source: str, size_xyz, window) -> dict:
    return {
        "dimensions": {axis: [1e-6, "m"] for axis in "xyz"},
        "position": [s / 2 for s in size_xyz],
        "crossSectionScale": 0.11,
        "layers": [
            {
                "type": "image",
                "source": source,
                "name": "vol",
                "shaderControls": {"normalized": {"range": list(window)}},
            }
        ],
        "layout": "xy",
    }


@pytest.mark.slow
@pytest.mark.parametrize("options", [(), ("--sharded", "--task-memory", "1M")], ids=["0.4", "0.5"])
def test_neuroglancer_draws_ome_zarr_served_by_plain_nginx(tmp_path, options):
    _need_browser()
    if NGINX is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's nginx (see .ci/run)")
        pytest.skip("nginx is not installed")
    from precomputed_tif.serve.viewer import client_folder

    stack, dest = _stardist_volume(tmp_path, "--format", "ngff", *options)
    with open(os.path.join(dest, "zarr.json" if options else ".zattrs")) as f:
        attributes = json.load(f)
    omero = attributes["attributes"]["ome"]["omero"] if options else attributes["omero"]
    window = omero["channels"][0]["window"]["start"], omero["channels"][0]["window"]["end"]
    port = _free_port()
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    user = "user root;" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""
    conf = NGINX_CONF.format(user=user, prefix=prefix, port=port, data=dest, client=client_folder())
    (prefix / "nginx.conf").write_text(conf)
    nginx = subprocess.Popen(
        [NGINX, "-p", str(prefix) + "/", "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(port, "/v/ng/index.html")
        base = f"http://127.0.0.1:{port}"
        size = stack.shape[::-1]
        state = _state(f"zarr://{base}/data/", size, window)
        link = f"{base}/v/ng/#!" + urllib.parse.quote(json.dumps(state))
        best = _best_correlation(link, stack, window, 15, tmp_path / "shots")
    finally:
        nginx.terminate()
        nginx.communicate(timeout=20)
    log = (prefix / "access.log").read_text()
    print(f"nginx-served OME-Zarr vs plane 15: correlation {best:.3f}")
    chunk = "/data/0/c/0/0/" if options else "/data/0/0/0/"  # a shard, or a v2 chunk
    assert chunk in log, "the viewer never fetched data of level 0"
    assert best > 0.9, f"the OME-Zarr volume served by nginx does not show: {best:.2f}"


@pytest.mark.slow
def test_our_viewer_opens_an_ome_zarr_folder_as_zarr(tmp_path):
    _need_browser()
    stack, dest = _stardist_volume(tmp_path, "--format", "ngff")
    server = RunningServer("-d", dest, "--viewer", log="WARNING")
    try:
        link = server.viewer_line.split("Viewer: ", 1)[1].strip()
        zarr_line = server.process.stdout.readline()
        assert zarr_line.startswith(f"OME-Zarr: zarr://{server.url}/"), zarr_line
        state = json.loads(urllib.parse.unquote(link.split("#!", 1)[1]))
        layer = state["layers"][0]
        assert layer["source"] == f"zarr://{server.url}/"
        window = layer["shaderControls"]["normalized"]["range"]
        best = _best_correlation(link, stack, window, 15, tmp_path / "shots")
    finally:
        server.stop()
    assert best > 0.9, f"our viewer does not show the OME-Zarr volume: {best:.2f}"
