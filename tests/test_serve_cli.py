"""The servers as users run them: the CLI on a random port, real HTTP, and a real browser."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import imagecodecs
import numpy as np
import pytest
import tifffile

from browserkit import CHROMIUM, chromium_args, screenshots
from conftest import DATA, random_stack
from precomputed_tif import open_volume
from precomputed_tif.geometry import chunks_in, full_box
from servekit import RunningServer, make_volume, need_nginx, plain_nginx, readable_folder


@pytest.fixture(scope="module")
def volume_dir(tmp_path_factory):
    stack = random_stack((20, 40, 48), "uint16", seed=33)
    return make_volume(str(tmp_path_factory.mktemp("cli")), stack, "blockfs")


def test_cli_server_serves_every_chunk_over_keep_alive(volume_dir):
    server = RunningServer("-d", volume_dir)
    try:
        volume = open_volume(volume_dir)
        conn = server.connection()
        for level in range(1, len(volume) + 1):
            scale = volume.pyramid.scale(level)
            for _, box in chunks_in(full_box(scale.size), scale.chunk_size, scale.size):
                conn.request("GET", f"/{scale.key}/{box.chunk_name}")
                response = conn.getresponse()
                body = response.read()
                assert response.status == 200
                assert response.getheader("Access-Control-Allow-Origin") == "*"
                got = np.frombuffer(body, "<u2").reshape(box.numpy_shape)
                np.testing.assert_array_equal(got, volume[level][box.numpy_slices()])
        conn.close()
        status, headers, body = server.get("/info")
        assert status == 200 and headers["content-type"] == "application/json"
        status, headers, body = server.get("/1_1_1/0-16_0-16_0-16", headers={"Range": "bytes=0-9"})
        assert status == 206 and len(body) == 10 and headers["content-range"] == "bytes 0-9/8192"
        assert server.get("/info", method="HEAD")[2] == b""
        assert server.get("/info", method="OPTIONS")[0] == 204
        assert server.get("/info", method="DELETE")[0] == 405
        assert server.get("/../../etc/passwd")[0] in (400, 404)
    finally:
        log = server.stop()
    assert "GET /1_1_1/0-16_0-16_0-16 206" in log  # one line per request at INFO
    assert "Traceback" not in log


def test_cli_server_under_concurrency_answers_everything(volume_dir):
    server = RunningServer("-d", volume_dir, log="WARNING")
    volume = open_volume(volume_dir)
    scale = volume.pyramid.scale(1)
    names = [b.chunk_name for _, b in chunks_in(full_box(scale.size), scale.chunk_size, scale.size)]
    try:
        with ThreadPoolExecutor(32) as pool:
            results = list(pool.map(lambda n: server.get(f"/1_1_1/{n}")[0], names * 8))
        assert results == [200] * len(results)
    finally:
        log = server.stop()
    assert log == ""  # nothing per request at WARNING


def test_cli_server_with_sources_json(tmp_path, volume_dir):
    config = tmp_path / "sources.json"
    original = str(DATA / "original" / "stardist_tiff")
    config.write_text(
        json.dumps(
            [
                {"name": "ours", "directory": volume_dir, "format": "blockfs"},
                {"name": "theirs", "directory": original, "format": "tiff"},
            ]
        )
    )
    server = RunningServer("--config", str(config), log="WARNING")
    try:
        assert b"theirs" in server.get("/")[2]
        status, _, body = server.get("/theirs/1_1_1/16-32_16-32_0-16")
        assert status == 200
        expected = open_volume(original)[1][0:16, 16:32, 16:32]
        np.testing.assert_array_equal(np.frombuffer(body, "<u2").reshape(16, 16, 16), expected)
        assert server.get("/theirs/mesh/info")[0] == 404
    finally:
        server.stop()


def test_bad_config_is_a_one_line_error_at_start_up(tmp_path):
    config = tmp_path / "sources.json"
    config.write_text('[{"name": "x", "directory": "/no/such/folder"}]')
    result = subprocess.run(
        [sys.executable, "-m", "precomputed_tif.cli.serve", "--config", str(config), "-p", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


def _start_error(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "precomputed_tif.cli.serve", "-p", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )


def test_a_folder_without_a_volume_is_refused_unless_raw_is_asked(tmp_path):
    (tmp_path / "notes.txt").write_text("private")
    for args, cwd in [(("-d", str(tmp_path)), None), ((), str(tmp_path))]:
        result = _start_error(*args, cwd=cwd)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr
        assert f"{tmp_path} holds no volume" in lines[0] and "--format raw" in lines[0]
    with RunningServer("-d", str(tmp_path), "--format", "raw") as server:
        assert server.get("/notes.txt")[2] == b"private"


def test_sources_file_options_reach_the_cli_server(tmp_path, volume_dir):
    config = tmp_path / "sources.json"
    entries = [{"name": "v", "directory": volume_dir}]
    options = {"gzip": True, "cors_origin": "https://viewer.lab"}
    config.write_text(json.dumps({"sources": entries, "options": options}))
    chunk = "/v/1_1_1/0-16_0-16_0-16"
    with RunningServer("--config", str(config)) as server:
        status, headers, body = server.get(chunk, headers={"Accept-Encoding": "gzip"})
        assert status == 200 and headers["content-encoding"] == "gzip"
        assert headers["access-control-allow-origin"] == "https://viewer.lab"
        expected = open_volume(volume_dir)[1][0:16, 0:16, 0:16]
        assert imagecodecs.gzip_decode(body) == expected.astype("<u2").tobytes()
    with RunningServer("--config", str(config), "--cors-origin", "*") as server:
        assert server.get(chunk)[1]["access-control-allow-origin"] == "*"


@pytest.mark.parametrize("server_name", ["waitress", "granian"])
def test_slow_clients_time_out_and_normal_requests_are_served(volume_dir, server_name):
    """Slow-loris: 300 clients each sending a header byte every 0.3 s, reconnecting when cut
    off, against a limit of 100 connections; plain requests must all be answered meanwhile."""
    import selectors
    import socket
    import threading

    if server_name == "granian":
        pytest.importorskip("granian")
    with RunningServer(
        "-d", volume_dir, "--timeout", "2", "--connection-limit", "100", "--server", server_name,
        log="WARNING",
    ) as server:  # fmt: skip
        stop = threading.Event()
        cut_off = [0]

        def slow_clients() -> None:
            selector = selectors.DefaultSelector()

            def connect() -> None:
                conn = socket.socket()
                conn.setblocking(False)
                conn.connect_ex(("127.0.0.1", server.port))
                selector.register(conn, selectors.EVENT_READ, [b"GET /info HTTP/1.1\r\n", 0])

            for _ in range(300):
                connect()
            while not stop.is_set():
                for key, _ in selector.select(timeout=0.3):
                    try:
                        gone = key.fileobj.recv(4096) == b""
                    except OSError:
                        gone = True
                    if gone:
                        selector.unregister(key.fileobj)
                        key.fileobj.close()
                        cut_off[0] += 1
                        connect()
                for key in list(selector.get_map().values()):
                    with contextlib.suppress(OSError):
                        key.fileobj.send(b"X")  # an endless header line, a byte at a time
                time.sleep(0.3)
            for key in list(selector.get_map().values()):
                key.fileobj.close()

        attacker = threading.Thread(target=slow_clients, daemon=True)
        attacker.start()
        try:
            time.sleep(1)
            answered = []
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:
                status, _, body = server.get("/info")
                answered.append(status)
            assert answered and all(s == 200 for s in answered), answered
        finally:
            stop.set()
            attacker.join(timeout=30)
        assert cut_off[0] >= 100, "the server never closed the slow connections"
        assert server.get("/info")[0] == 200


# --- the viewer, in a real browser ------------------------------------------------------------


def _volume_in_screenshot(image: np.ndarray, shape_yx: tuple[int, int]) -> np.ndarray | None:
    """The grey value at the centre of each voxel inside the yellow outline of the volume."""
    box = _outline(image)
    if box is None:
        return None
    top, bottom, left, right = box
    ny, nx = shape_yx
    ys = top + (np.arange(ny) + 0.5) * (bottom - top) / ny
    xs = left + (np.arange(nx) + 0.5) * (right - left) / nx
    return image[ys.astype(int)[:, None], xs.astype(int)[None, :], 1].astype(float)


def _best_correlation(link: str, stack: np.ndarray, window, z: int, folder) -> float:
    low, high = window
    expected = np.clip((stack[z].astype(float) - low) / (high - low), 0, 1) * 255
    best = 0.0
    # screenshots until the panel matches the plane: a grey panel only means not drawn yet
    for image in screenshots(_xy_view(link, z), folder):
        seen = _volume_in_screenshot(image, stack.shape[1:])
        if seen is None or seen.std() < 5:
            continue  # no outline, or a uniform (black or grey) panel
        best = max(best, float(np.corrcoef(seen.ravel(), expected.ravel())[0, 1]))
        if best > 0.9:
            break
    return best


def _need_browser() -> None:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium (see .ci/run)")
        pytest.skip("chromium is not installed")
    pytest.importorskip("neuroglancer")


def _stardist_volume(tmp_path, *options: str) -> tuple[np.ndarray, str]:
    planes = sorted((DATA / "stacks" / "stardist_img3d" / "planes").glob("*.tif"))
    stack = np.stack([tifffile.imread(p) for p in planes])
    dest = str(tmp_path / "vol")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "precomputed_tif.cli.convert",
            "--source",
            str(planes[0].parent),
            "--dest",
            dest,
            "--chunk-size",
            "16,16,16",
            "--voxel-size",
            "1,1,1",
            "--log",
            "WARNING",
            *options,
        ],
        check=True,
        timeout=120,
    )
    return stack, dest


def _xy_view(link: str, z: int, **changes) -> str:
    state = json.loads(urllib.parse.unquote(link.split("#!", 1)[1]))
    state.update(
        layout="xy",
        position=[28.5, 30.5, z + 0.5],
        crossSectionScale=0.11,
        showAxisLines=False,
        showScaleBar=False,
        **changes,
    )
    return link.split("#!", 1)[0] + "#!" + urllib.parse.quote(json.dumps(state))


def _outline(image: np.ndarray) -> tuple[int, int, int, int] | None:
    r, g, b = (image[..., i].astype(int) for i in range(3))
    rows, cols = np.nonzero((r > 200) & (g > 200) & (b < 80))
    if len(rows) < 100:
        return None
    return rows.min(), rows.max(), cols.min(), cols.max()


def _magenta_at(image: np.ndarray, box, shape_yx, x: float, y: float) -> bool:
    """Whether annotation magenta is drawn near voxel (x, y) of the outlined volume."""
    top, bottom, left, right = box
    ny, nx = shape_yx
    row = int(top + (y + 0.5) * (bottom - top) / ny)
    col = int(left + (x + 0.5) * (right - left) / nx)
    patch = image[row - 3 : row + 4, col - 3 : col + 4].astype(int)
    return bool(np.any((patch[..., 0] > 180) & (patch[..., 1] < 90) & (patch[..., 2] > 180)))


@pytest.mark.slow
def test_viewer_shows_points_over_the_image(tmp_path):
    _need_browser()
    stack, dest = _stardist_volume(tmp_path)
    inside = [[10, 10], [40, 20], [25, 45], [50, 55], [5, 50]]
    elsewhere = [[30, 30], [15, 35], [45, 8]]
    points = [[x + 0.5, y + 0.5, 15.5] for x, y in inside]
    (tmp_path / "cells.json").write_text(json.dumps(points))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "precomputed_tif.cli.write_points",
            "--input",
            str(tmp_path / "cells.json"),
            "--output-directory",
            str(tmp_path / "cells"),
            "--voxel-size",
            "1,1,1",
            "--log",
            "WARNING",
        ],
        check=True,
        timeout=60,
    )
    server = RunningServer(
        "-d", dest, "--points", str(tmp_path / "cells"), "--viewer", log="WARNING"
    )
    found = None
    try:
        link = server.viewer_line.split("Viewer: ", 1)[1].strip()
        assert "annotation" in urllib.parse.unquote(link)
        url = _xy_view(link, 15)
        for image in screenshots(url, tmp_path / "points"):
            box = _outline(image)
            if box is None:
                continue
            shape = stack.shape[1:]
            found = (
                [_magenta_at(image, box, shape, x, y) for x, y in inside],
                [_magenta_at(image, box, shape, x, y) for x, y in elsewhere],
            )
            if all(found[0]):
                break
    finally:
        server.stop()
    assert found is not None, "no screenshot showed the volume"
    assert all(found[0]), f"points not drawn where they are: {found[0]}"
    assert not any(found[1]), "annotation pixels where there is no point"


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [(), ("--format", "precomputed", "--sharded", "--task-memory", "1M")],
    ids=["tiff", "sharded"],
)
def test_viewer_in_headless_chromium_shows_the_volume(tmp_path, options):
    """Our tiff volume, and a sharded one (served as files, read by Range requests)."""
    _need_browser()
    stack, dest = _stardist_volume(tmp_path, *options)
    if options:
        assert any(name.endswith(".shard") for name in os.listdir(os.path.join(dest, "1_1_1")))
    server = RunningServer("-d", dest, "--viewer", log="WARNING")
    z = 15
    try:
        link = server.viewer_line.split("Viewer: ", 1)[1].strip()
        state = json.loads(urllib.parse.unquote(link.split("#!", 1)[1]))
        low, high = state["layers"][0]["shaderControls"]["normalized"]["range"]
        best = _best_correlation(link, stack, (low, high), z, tmp_path / "volume")
    finally:
        server.stop()
    print(f"viewer panel vs plane {z}: correlation {best:.3f}")
    assert best > 0.9, f"the panel does not show plane {z}: correlation {best:.2f}"


@pytest.mark.slow
def test_viewer_shows_a_sharded_volume_served_by_nginx(tmp_path):
    """Our sharded output needs no special server: plain nginx (byte ranges) serves it."""
    _need_browser()
    need_nginx()
    with readable_folder("viewer-nginx-") as folder:
        stack, dest = _stardist_volume(
            folder, "--format", "precomputed", "--sharded", "--task-memory", "1M"
        )
        with (
            plain_nginx(dest, tmp_path / "nginx") as port,
            RunningServer("-d", dest, "--viewer", log="WARNING") as server,
        ):
            link = server.viewer_line.split("Viewer: ", 1)[1].strip()
            state = json.loads(urllib.parse.unquote(link.split("#!", 1)[1]))
            state["layers"][0]["source"] = f"precomputed://http://127.0.0.1:{port}"
            low, high = state["layers"][0]["shaderControls"]["normalized"]["range"]
            link = link.split("#!", 1)[0] + "#!" + urllib.parse.quote(json.dumps(state))
            z = 15
            best = _best_correlation(link, stack, (low, high), z, tmp_path / "nginx-shots")
    assert best > 0.9, f"the sharded volume served by nginx does not show: {best:.2f}"


def _dump_dom(url: str, profile: str) -> str:
    result = subprocess.run(
        [
            *chromium_args(profile),
            "--virtual-time-budget=10000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.stdout


@pytest.mark.slow
def test_viewer_status_bar_is_clean_and_the_server_is_not_polled(tmp_path):
    """The bundled client asks for /events/<token> (its Python server's state stream): it must
    not show "Disconnected from Python server" nor ask the server every two seconds."""
    _need_browser()
    _, dest = _stardist_volume(tmp_path)
    server = RunningServer("-d", dest, "--viewer", log="INFO")
    try:
        link = server.viewer_line.split("Viewer: ", 1)[1].strip()
        dom = _dump_dom(link, str(tmp_path / "profile"))
    finally:
        log = server.stop()
    assert 'id="neuroglancer-container"' in dom or "neuroglancer" in dom, dom[:500]
    status = re.search(r'<ul id="neuroglancer-status-container">(.*?)</ul>', dom)
    assert status is not None, "no status bar in the page"
    shown = [
        text
        for style, text in re.findall(r'<li(?: style="([^"]*)")?>(.*?)</li>', status.group(1))
        if "display: none" not in style
    ]
    assert not any("Python server" in text or "Disconnected" in text for text in shown), shown
    assert "/v/ng/" in log  # the page was served (and logged) ...
    assert "/events/" not in log  # ... and nobody polled the Python server's stream
