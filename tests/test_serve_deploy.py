"""Deploying as a sysadmin would: file modes from the umask, plain nginx, Apache with mod_wsgi.

Volumes are converted by the real CLI in a subprocess with a set umask, into a folder other users
can enter, and served by web servers whose workers run unprivileged (www-data when started by
root), so a file they cannot read shows up as a 403 or 500 here exactly as it would for a user.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import precomputed_tif
from conftest import random_stack, write_planes
from precomputed_tif import open_volume
from servekit import (
    free_port,
    http_get,
    plain_nginx,
    readable_folder,
    unprivileged_user,
    wait_for_http,
)

CONVERT = [sys.executable, "-m", "precomputed_tif.cli.convert"]
POINTS = [sys.executable, "-m", "precomputed_tif.cli.write_points"]
QUIET = ["--chunk-size", "16,16,16", "--n-cores", "1", "--log", "WARNING"]
VOLUMES = {
    "tiff": ["--format", "tiff"],
    "zarr": ["--format", "zarr"],
    "blockfs": ["--format", "blockfs"],
    "precomputed": ["--format", "precomputed"],
    "sharded": ["--format", "precomputed", "--sharded", "--task-memory", "1M"],
    "gzip": ["--format", "precomputed", "--gzip"],
}
NEUROGLANCER_FORMATS = ("precomputed", "sharded")


def _convert(planes: str, dest: Path, args: list[str], umask: int, *more: str) -> None:
    result = subprocess.run(
        [*CONVERT, "--source", planes, "--dest", str(dest), *QUIET, *args, *more],
        capture_output=True,
        text=True,
        umask=umask,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr


def _write_points(folder: Path, umask: int) -> Path:
    cells = folder / "cells.json"
    cells.write_text(json.dumps([[1, 2, 3], [30, 20, 10], [47, 39, 19]]))
    dest = folder / "points"
    result = subprocess.run(
        [*POINTS, "--input", str(cells), "--output-directory", str(dest), "--sharded"],
        capture_output=True,
        text=True,
        umask=umask,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return dest


def _modes(root: Path) -> dict[str, int]:
    """Permission bits of `root` and of everything under it, by path relative to `root`."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def _assert_umask_modes(root: Path, umask: int) -> None:
    files, folders = 0o666 & ~umask, 0o777 & ~umask
    wrong = {
        name: oct(mode)
        for name, mode in _modes(root).items()
        if mode != (folders if (root / name).is_dir() else files)
    }
    assert not wrong, f"modes other than {oct(files)}/{oct(folders)} under {root}: {wrong}"


@pytest.fixture(scope="module")
def stack():
    return random_stack((20, 40, 48), "uint16", seed=17)


@pytest.fixture(scope="module")
def deployed(stack):
    """Every format converted under Debian's default umask into a folder others can enter."""
    with readable_folder("deploy-") as folder:
        planes = write_planes(folder / "planes", stack)
        for name, args in VOLUMES.items():
            _convert(planes, folder / name, args, 0o022)
        _write_points(folder, 0o022)
        yield folder


def test_every_file_and_folder_gets_the_modes_the_umask_gives(tmp_path, stack, deployed):
    for name in [*VOLUMES, "points"]:
        _assert_umask_modes(deployed / name, 0o022)
    umask = 0o027
    planes = write_planes(tmp_path / "planes", stack)
    for name, args in VOLUMES.items():
        _convert(planes, tmp_path / name, args, umask)
        _assert_umask_modes(tmp_path / name, umask)
    _assert_umask_modes(_write_points(tmp_path, umask), umask)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["blockfs", "sharded"])
def test_a_resumed_run_gets_the_modes_the_umask_gives(tmp_path, fmt):
    """Part files moved into place and files written after --resume: the umask's modes too."""
    stack = random_stack((64, 128, 128), "uint16", seed=3)
    planes = write_planes(tmp_path / "planes", stack)
    dest = tmp_path / "vol"
    args = [*VOLUMES[fmt], "--chunk-size", "32,32,32", "--task-memory", "1M"]
    process = subprocess.Popen(
        [*CONVERT, "--source", planes, "--dest", str(dest), *QUIET, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        umask=0o027,
        start_new_session=True,
    )
    done_log = dest / ".precomputed-tif" / "done-1"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if done_log.exists() and len(done_log.read_text().split()) >= 2:
            break
        time.sleep(0.002)
    assert process.poll() is None, "the run finished before it could be interrupted"
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    assert not (dest / "info").exists()
    _convert(planes, dest, args, 0o027, "--resume")
    _assert_umask_modes(dest, 0o027)
    np.testing.assert_array_equal(open_volume(str(dest))[1][:, :, :], stack)


def test_plain_nginx_serves_every_fresh_volume_without_chmod(deployed, stack, tmp_path):
    """nginx's unprivileged workers read every file; Neuroglancer's formats read back whole."""
    with plain_nginx(str(deployed), tmp_path / "nginx") as port:
        for name in [*VOLUMES, "points"]:
            for path in sorted((deployed / name).rglob("*")):
                relative = path.relative_to(deployed)
                if path.is_dir() or any(p.startswith(".") for p in relative.parts):
                    continue
                reply = http_get(port, "/" + relative.as_posix())
                assert reply.status == 200, f"nginx answers {reply.status} for {relative}"
                assert reply.body == path.read_bytes(), relative
        for name in NEUROGLANCER_FORMATS:
            volume = open_volume(f"precomputed://http://127.0.0.1:{port}/{name}")
            np.testing.assert_array_equal(volume[1][:, :, :], stack, err_msg=name)
            np.testing.assert_array_equal(
                volume[2][:, :, :], open_volume(str(deployed / name))[2][:, :, :], err_msg=name
            )


# --- Apache with mod_wsgi, configured as the README says ----------------------------------------

APACHE = "/usr/sbin/apache2"
MODULES = "/usr/lib/apache2/modules"
DEBIAN_PYTHON = "/usr/bin/python3"
README = Path(__file__).resolve().parent.parent / "README.md"
HTTPD_CONF = """
ServerRoot "{root}"
ServerName 127.0.0.1
PidFile {root}/run/httpd.pid
DefaultRuntimeDir {root}/run
Mutex file:{root}/run default
ErrorLog {root}/error.log
LogLevel warn
{user}
LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule authz_core_module {modules}/mod_authz_core.so
LoadModule wsgi_module {modules}/mod_wsgi.so
WSGISocketPrefix {root}/run/wsgi
Include {root}/site.conf
"""


def _need_apache() -> None:
    missing = [
        p for p in (APACHE, f"{MODULES}/mod_wsgi.so", DEBIAN_PYTHON) if not os.path.exists(p)
    ]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must install apache2 and libapache2-mod-wsgi-py3 (.ci/run): {missing}")
        pytest.skip(f"Debian's apache2 with mod_wsgi is not installed: {missing}")


def _readme_block(marker: str) -> str:
    """The README code block holding `marker`: the test runs the configuration users copy."""
    for block in re.findall(r"```[a-z]*\n(.*?)```", README.read_text(), re.S):
        if marker in block:
            return block
    raise AssertionError(f"README.md has no code block with {marker!r}")


def _debian_venv(folder: Path, run_as: str | None) -> Path:
    """A venv of Debian's Python (mod_wsgi's), holding this checkout and its dependencies.

    Instead of a pip install from the network, it points at the running environment's packages
    (same Python minor version), or, where the daemon's user cannot read those, copies the
    packages the server imports.
    """
    venv = folder / "venv"
    subprocess.run([DEBIAN_PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python3"
    version = subprocess.run(
        [str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if version != f"{sys.version_info[0]}.{sys.version_info[1]}":
        pytest.skip(f"Debian's Python is {version}; these tests run on another Python")
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    src = Path(precomputed_tif.__file__).resolve().parent.parent
    ours = [str(src), *(p for p in sys.path if p.endswith("site-packages"))]
    (site / "checkout.pth").write_text("\n".join(ours) + "\n")
    probe = [str(python), "-c", "import precomputed_tif.wsgi_webserver, numpy, tifffile, zarr"]
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # as Apache runs it
    if subprocess.run(probe, user=run_as, env=clean, capture_output=True).returncode == 0:
        return venv
    (site / "checkout.pth").unlink()
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, precomputed_tif.wsgi_webserver, precomputed_tif.stores,"
            " tifffile, zarr, numcodecs, imagecodecs; print('\\n'.join(m.__file__ or '' for m in"
            " list(sys.modules.values()) if getattr(m, '__file__', None)))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    wanted = set()
    for path in {Path(p) for p in loaded}:
        top = next((Path(t) for t in ours if path.is_relative_to(t) and path != Path(t)), None)
        if top is not None:
            first = top / path.relative_to(top).parts[0]
            wanted.add(first)
            wanted.update(top.glob(f"{first.name.split('.')[0]}*.libs"))  # vendored libraries
    for first in wanted:
        if first.is_dir():
            shutil.copytree(first, site / first.name, dirs_exist_ok=True)
        else:
            shutil.copy2(first, site / first.name)
    subprocess.run(probe, user=run_as, env=clean, check=True)
    return venv


@contextlib.contextmanager
def _apache(folder: Path, sources: Path) -> Iterator[int]:
    """Apache with mod_wsgi configured from README.md's blocks, on a free 127.0.0.1 port."""
    who = unprivileged_user()
    venv = _debian_venv(folder, who[0] if who else None)
    port = free_port()
    www = folder / "www"
    www.mkdir()
    (folder / "run").mkdir()
    script = _readme_block("serve_precomputed(environ").replace(
        "/etc/precomputed/sources.json", str(sources)
    )
    (www / "precomputed.wsgi").write_text(script)
    site = (
        _readme_block("WSGIDaemonProcess")
        .replace("Listen 8080", f"Listen 127.0.0.1:{port}")
        .replace("*:8080", f"127.0.0.1:{port}")
        .replace("/opt/precomputed-tif", str(venv))
        .replace("/var/www/precomputed", str(www))
    )
    (folder / "site.conf").write_text(site)
    user = f"User {who[0]}\nGroup {who[1]}" if who else ""
    conf = folder / "httpd.conf"
    conf.write_text(HTTPD_CONF.format(root=folder, user=user, modules=MODULES))
    process = subprocess.Popen(
        [APACHE, "-f", str(conf), "-DFOREGROUND"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        wait_for_http(port, "/")
        yield port
    finally:
        process.terminate()
        process.communicate(timeout=30)


@pytest.mark.slow
def test_apache_mod_wsgi_as_the_readme_configures_it(deployed, stack):
    _need_apache()
    sources = deployed / "sources.json"
    names = ["tiff", "zarr", "blockfs", "precomputed", "sharded", "points"]
    sources.write_text(json.dumps([{"name": n, "directory": str(deployed / n)} for n in names]))
    apache_root = deployed / "apache"
    apache_root.mkdir()
    with _apache(apache_root, sources) as port:
        # the sub-interpreter fault showed as 500 for a second Host: ask with several
        for host in ["127.0.0.1", f"127.0.0.1:{port}", "localhost", "precomputed.lab"]:
            for name in names:
                reply = http_get(port, f"/{name}/info", headers={"Host": host})
                assert reply.status == 200, (host, name, reply.status, reply.body[:300])
                assert json.loads(reply.body) == json.loads((deployed / name / "info").read_bytes())
        expected = np.ascontiguousarray(stack[0:16, 16:32, 32:48]).astype("<u2").tobytes()
        for name in ["tiff", "zarr", "blockfs", "precomputed"]:
            reply = http_get(port, f"/{name}/1_1_1/32-48_16-32_0-16", headers={"Host": "x"})
            assert reply.status == 200 and reply.body == expected, (name, reply.status)
            assert reply.headers["access-control-allow-origin"] == "*"
        shard = next((deployed / "sharded").rglob("*.shard"))
        url = "/sharded/" + shard.relative_to(deployed / "sharded").as_posix()
        reply = http_get(port, url, headers={"Range": "bytes=100-1099"})
        assert reply.status == 206 and reply.body == shard.read_bytes()[100:1100]
        assert reply.headers["content-range"] == f"bytes 100-1099/{shard.stat().st_size}"
        volume = open_volume(f"precomputed://http://127.0.0.1:{port}/sharded")
        np.testing.assert_array_equal(volume[1][:, :, :], stack)
        preflight = http_get(
            port,
            "/blockfs/1_1_1/0-16_0-16_0-16",
            method="OPTIONS",
            headers={
                "Origin": "https://viewer.lab",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "range",
            },
        )
        assert preflight.status == 204
        assert preflight.headers["access-control-allow-origin"] == "*"
        assert "GET" in preflight.headers["access-control-allow-methods"]
        assert "range" in preflight.headers["access-control-allow-headers"]
    log = (apache_root / "error.log").read_text()
    assert "sub-interpreter" not in log and "Traceback" not in log, log[-3000:]
