"""Whole-file writes into a folder: the nameless-file way (Linux) and the portable way agree."""

from __future__ import annotations

import os
import stat
import threading

import numpy as np
import pytest

from precomputed_tif import locations


@pytest.fixture(params=["nameless", "renamed"])
def way(request, monkeypatch):
    if request.param == "renamed":
        monkeypatch.setattr(locations, "_TMPFILE", 0)
    elif not locations._TMPFILE:
        pytest.skip("no O_TMPFILE on this system")
    return request.param


def _names(folder) -> list[str]:
    return sorted(os.listdir(folder))


def test_a_new_file_gets_its_bytes_and_the_umask_modes_and_nothing_else(tmp_path, way):
    old = os.umask(0o027)
    try:
        locations.write_atomically(str(tmp_path / "a"), [b"head", np.arange(4, dtype="<u2")])
    finally:
        os.umask(old)
    assert (tmp_path / "a").read_bytes() == b"head" + np.arange(4, dtype="<u2").tobytes()
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o640
    assert _names(tmp_path) == ["a"]


def test_a_rewrite_replaces_the_file_whole(tmp_path, way):
    path = tmp_path / "chunk"
    path.write_bytes(b"old bytes that are longer")
    inode = path.stat().st_ino
    locations.write_atomically(str(path), b"new")
    assert path.read_bytes() == b"new"
    assert path.stat().st_ino != inode  # a new file, not the old one cut and rewritten
    assert _names(tmp_path) == ["chunk"]


def test_temporary_files_of_the_portable_way_go_to_the_folder_given(tmp_path, monkeypatch):
    monkeypatch.setattr(locations, "_TMPFILE", 0)
    made = []
    real = locations.create_temporary

    def spy(folder: str, name: str) -> tuple[int, str]:
        made.append(folder)
        return real(folder, name)

    monkeypatch.setattr(locations, "create_temporary", spy)
    (tmp_path / "out").mkdir()
    locations.write_atomically(str(tmp_path / "out" / "x"), b"1", str(tmp_path / "tmp"))
    assert set(made) == {str(tmp_path / "tmp")} and _names(tmp_path / "tmp") == []
    assert (tmp_path / "out" / "x").read_bytes() == b"1"


def test_a_missing_folder_is_reported_as_before(tmp_path, way):
    with pytest.raises(FileNotFoundError):
        locations.write_atomically(str(tmp_path / "no" / "such"), b"1")


def test_a_failed_write_leaves_no_file_and_no_debris(tmp_path, way, monkeypatch):
    class Boom(Exception):
        pass

    def pieces():
        yield b"first"
        raise Boom

    class Exploding(list):
        def __iter__(self):
            return pieces()

    monkeypatch.setattr(locations, "_buffers", lambda data: data)
    (tmp_path / "keep").write_bytes(b"old")
    with pytest.raises(Boom):
        locations.write_atomically(str(tmp_path / "keep"), Exploding())
    with pytest.raises(Boom):
        locations.write_atomically(str(tmp_path / "new"), Exploding())
    assert (tmp_path / "keep").read_bytes() == b"old"
    assert _names(tmp_path) == ["keep"]


def test_readers_see_the_old_file_or_the_whole_new_one(tmp_path, way):
    path = tmp_path / "c"
    sizes = (1 << 20, 3 << 20)
    locations.write_atomically(str(path), bytes(sizes[0]))
    seen: set[int] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.add(len(path.read_bytes()))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(40):
            locations.write_atomically(str(path), bytes(sizes[(i + 1) % 2]))
    finally:
        stop.set()
        reader.join()
    assert seen <= set(sizes), seen


def test_where_the_link_is_refused_files_are_written_the_portable_way(tmp_path, monkeypatch):
    if not locations._TMPFILE:
        pytest.skip("no O_TMPFILE on this system")
    monkeypatch.setattr(locations, "_TMPFILE", locations._TMPFILE)  # restored afterwards
    real_link, links = os.link, []

    def refused(*args, **kwargs):
        links.append(args)
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", refused)
    for name in ("a", "b"):
        locations.write_atomically(str(tmp_path / name), name.encode())
    monkeypatch.setattr(os, "link", real_link)
    assert (tmp_path / "a").read_bytes() == b"a" and (tmp_path / "b").read_bytes() == b"b"
    assert len(links) == 1  # tried once, then this process wrote the portable way
    assert _names(tmp_path) == ["a", "b"]
