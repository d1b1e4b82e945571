"""Point annotations decoded by a reader written here from the spec; other tools as oracles."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from precomputed_tif.annotations import PointsError, narrowest_type, write_points
from precomputed_tif.sharding import compressed_morton_codes, murmurhash3_x86_128_low64

# --- a reader written from the spec (shared/spec/neuroglancer.md 1.2-1.4), independent of ours


def spec_morton(cell, grid):
    code, j = 0, 0
    for i in range(64):
        for dim in range(len(grid)):
            if (1 << i) < grid[dim]:
                code |= ((cell[dim] >> i) & 1) << j
                j += 1
    return code


def spec_unmorton(code, grid):
    cell, j = [0] * len(grid), 0
    for i in range(64):
        for dim in range(len(grid)):
            if (1 << i) < grid[dim]:
                cell[dim] |= ((code >> j) & 1) << i
                j += 1
    return tuple(cell)


def spec_sharded_keys(folder, sharding):
    """Every key stored in a sharded index, read from the shard files' minishard tables."""
    keys = []
    index_end = 16 << sharding["minishard_bits"]
    for name in sorted(os.listdir(folder)):
        content = Path(os.path.join(folder, name)).read_bytes()
        entries = np.frombuffer(content[:index_end], "<u8").reshape(-1, 2)
        for start, end in entries:
            if start == end:
                continue
            table = content[index_end + int(start) : index_end + int(end)]
            if sharding["minishard_index_encoding"] == "gzip":
                table = gzip.decompress(table)
            rows = np.frombuffer(table, "<u8").reshape(3, -1).astype(object)
            keys.extend(int(k) for k in np.cumsum(rows[0]))
    return keys


def spec_sharded_get(folder, sharding, key):
    import mmh3

    shifted = key >> sharding["preshift_bits"]
    if sharding["hash"] == "murmurhash3_x86_128":
        hashed = mmh3.hash128(shifted.to_bytes(8, "little"), 0, False) & (2**64 - 1)
    else:
        hashed = shifted
    mb, sb = sharding["minishard_bits"], sharding["shard_bits"]
    minishard = hashed & ((1 << mb) - 1)
    shard = (hashed >> mb) & ((1 << sb) - 1)
    name = format(shard, "x").zfill(-(-sb // 4)) if sb else "0"
    path = os.path.join(folder, name + ".shard")
    if not os.path.exists(path):
        return None
    content = Path(path).read_bytes()
    index_end = 16 << mb
    start, end = np.frombuffer(content[16 * minishard : 16 * minishard + 16], "<u8")
    table = content[index_end + int(start) : index_end + int(end)]
    if sharding["minishard_index_encoding"] == "gzip":
        table = gzip.decompress(table)
    rows = np.frombuffer(table, "<u8").reshape(3, -1).astype(object)
    chunk_id, position = 0, index_end
    for i in range(rows.shape[1]):
        chunk_id += rows[0, i]
        position += rows[1, i]
        if chunk_id == key:
            blob = content[position : position + rows[2, i]]
            return gzip.decompress(blob) if sharding["data_encoding"] == "gzip" else blob
        position += rows[2, i]
    return None


TYPE_SIZES = {"uint8": 1, "int8": 1, "uint16": 2, "int16": 2, "uint32": 4, "int32": 4, "float32": 4}


def record_layout(properties):
    """(offsets by property id, record size): 4-byte types first, then 2, then 1; pad to 4."""
    offset = 12
    offsets = {}
    for size in (4, 2, 1):
        for prop in properties:
            if TYPE_SIZES[prop["type"]] == size:
                offsets[prop["id"]] = offset
                offset += size
    return offsets, offset + (-offset % 4)


def decode_record(blob, properties):
    offsets, _ = record_layout(properties)
    xyz = np.frombuffer(blob[:12], "<f4")
    values = {
        p["id"]: np.frombuffer(blob[offsets[p["id"]] :], np.dtype(p["type"]).newbyteorder("<"), 1)[
            0
        ]
        for p in properties
    }
    return xyz, values


def read_source(path):
    """Every spatial cell and by_id entry, decoded from the files alone."""
    info = json.loads(Path(os.path.join(path, "info")).read_text())
    _, size = record_layout(info["properties"])
    levels = []
    for level in info["spatial"]:
        grid = level["grid_shape"]
        cells = {}
        folder = os.path.join(path, level["key"])
        if "sharding" in level:
            found = [
                (spec_unmorton(key, grid), spec_sharded_get(folder, level["sharding"], key))
                for key in spec_sharded_keys(folder, level["sharding"])
            ]
        else:
            found = [
                (tuple(int(c) for c in name.split("_")), Path(folder, name).read_bytes())
                for name in os.listdir(folder)
            ]
        for cell, blob in found:
            assert all(0 <= c < g for c, g in zip(cell, grid))
            count = int(np.frombuffer(blob[:8], "<u8")[0])
            assert len(blob) == 8 + count * size + 8 * count
            records = [blob[8 + i * size : 8 + (i + 1) * size] for i in range(count)]
            ids = np.frombuffer(blob[8 + count * size :], "<u8")
            cells[cell] = (records, ids)
        levels.append((level, cells))
    return info, levels


def by_id(path, info, annotation_id):
    entry = info["by_id"]
    if "sharding" in entry:
        return spec_sharded_get(os.path.join(path, entry["key"]), entry["sharding"], annotation_id)
    file = os.path.join(path, entry["key"], str(annotation_id))
    return Path(file).read_bytes() if os.path.exists(file) else None


def check_source(path, points, properties=None):
    info, levels = read_source(path)
    lower = np.array(info["lower_bound"])
    seen = []
    for level, cells in levels:
        chunk = np.array(level["chunk_size"])
        assert np.allclose(
            np.array(level["grid_shape"]) * chunk, np.array(info["upper_bound"]) - lower
        )
        biggest = max((len(ids) for _, ids in cells.values()), default=0)
        assert level["limit"] == max(1, biggest), "limit must be the true fullest cell"
        for cell, (records, ids) in cells.items():
            for record, annotation_id in zip(records, ids):
                xyz, values = decode_record(record, info["properties"])
                np.testing.assert_allclose(xyz, points[annotation_id].astype(np.float32))
                low = lower + np.array(cell) * chunk
                assert np.all(xyz >= low - 1e-3) and np.all(xyz <= low + chunk + 1e-3)
                for name, column in (properties or {}).items():
                    assert values[name] == column[annotation_id]
            seen.extend(ids.tolist())
    assert sorted(seen) == list(range(len(points))), "every point exactly once across levels"
    return info, levels


@pytest.mark.parametrize("sharded", [False, True])
def test_multilevel_index_decodes_to_every_point_once(tmp_path, sharded):
    rng = np.random.default_rng(0)
    points = rng.uniform(0, [300, 200, 100], (20000, 3))
    size = rng.integers(0, 250, 20000)
    score = rng.normal(0, 1, 20000)
    path = str(tmp_path / "points")
    write_points(
        points, path, limit=500, properties={"size": size, "score": score}, sharded=sharded
    )
    info, levels = check_source(
        path, points, {"size": size.astype(np.uint8), "score": score.astype(np.float32)}
    )
    assert len(levels) >= 3
    assert [p["type"] for p in info["properties"]] == ["float32", "uint8"]  # byte order
    assert levels[0][0]["grid_shape"] == [1, 1, 1]
    # each finer level's cells subdivide the coarser ones
    for (coarse, _), (fine, _) in zip(levels, levels[1:]):
        ratio = np.array(fine["grid_shape"]) / np.array(coarse["grid_shape"])
        assert set(ratio.tolist()) <= {1.0, 2.0}
    for i in [0, 17, 19999]:
        xyz, values = decode_record(by_id(path, info, i), info["properties"])
        np.testing.assert_allclose(xyz, points[i].astype(np.float32))
        assert values["size"] == size[i]


def test_density_is_uniform_and_lists_are_shuffled(tmp_path):
    points = np.random.default_rng(1).uniform(0, 1000, (40000, 3))
    path = str(tmp_path / "p")
    write_points(points, path, limit=1000, voxel_size_um=(1, 1, 1))
    _, levels = read_source(path)
    level, cells = levels[1]
    counts = np.array([len(ids) for _, ids in cells.values()])
    assert counts.min() > 0.7 * counts.mean()  # one probability per level: no cell starved
    ids = levels[0][1][(0, 0, 0)][1]
    assert not np.all(np.diff(ids.astype(np.int64)) > 0), "a cell's list must be in random order"


def test_sharded_and_unsharded_hold_the_same_content(tmp_path):
    points = np.random.default_rng(2).uniform(0, 64, (3000, 3))
    write_points(points, str(tmp_path / "a"), limit=100)
    write_points(points, str(tmp_path / "b"), limit=100, sharded=True)
    _, plain = read_source(str(tmp_path / "a"))
    _, sharded = read_source(str(tmp_path / "b"))
    for (_, cells_a), (_, cells_b) in zip(plain, sharded):
        assert cells_a.keys() == cells_b.keys()
        for cell in cells_a:
            assert (
                cells_a[cell][0] == cells_b[cell][0]
                and (cells_a[cell][1] == cells_b[cell][1]).all()
            )


def test_ten_thousand_by_id_entries_make_few_files(tmp_path):
    points = np.random.default_rng(3).uniform(0, 100, (10000, 3))
    write_points(points, str(tmp_path / "s"), sharded=True, limit=200)
    files = sum(len(f) for _, _, f in os.walk(tmp_path / "s"))
    assert files < 30


def test_tensorstore_reads_our_sharded_by_id(tmp_path):
    ts = pytest.importorskip("tensorstore")
    points = np.random.default_rng(4).uniform(0, 100, (5000, 3))
    path = str(tmp_path / "s")
    write_points(points, path, sharded=True)
    info = json.loads(Path(os.path.join(path, "info")).read_text())
    store = ts.KvStore.open(
        {
            "driver": "neuroglancer_uint64_sharded",
            "base": f"file://{path}/by_id/",
            "metadata": info["by_id"]["sharding"],
        }
    ).result()
    for i in [0, 1, 2500, 4999]:
        blob = store.read(int(i).to_bytes(8, "big")).result().value
        np.testing.assert_allclose(np.frombuffer(blob, "<f4"), points[i].astype(np.float32))


def test_same_points_as_the_neuroglancer_python_writer(tmp_path):
    neuroglancer = pytest.importorskip("neuroglancer")
    from neuroglancer.write_annotations import AnnotationWriter

    rng = np.random.default_rng(5)
    points = rng.uniform(0, 50, (300, 3)).astype(np.float32)
    size = rng.integers(0, 200, 300)
    weight = rng.normal(0, 1, 300).astype(np.float32)
    coords = neuroglancer.CoordinateSpace(names=["x", "y", "z"], units="um", scales=[1.8, 1.8, 2.0])
    writer = AnnotationWriter(
        coordinate_space=coords,
        annotation_type="point",
        properties=[
            neuroglancer.AnnotationPropertySpec(id="size", type="uint8"),
            neuroglancer.AnnotationPropertySpec(id="weight", type="float32"),
        ],
    )
    for point, s, w in zip(points, size, weight):
        writer.add_point(point, size=int(s), weight=float(w))
    writer.write(str(tmp_path / "theirs"))
    write_points(points, str(tmp_path / "ours"), properties={"size": size, "weight": weight})

    def decoded(path):
        info, levels = read_source(path)
        out = {}
        for _, cells in levels:
            for records, ids in cells.values():
                for record, i in zip(records, ids):
                    xyz, values = decode_record(record, info["properties"])
                    out[int(i)] = (tuple(xyz.tolist()), values["size"], values["weight"])
        return out

    assert decoded(str(tmp_path / "ours")) == decoded(str(tmp_path / "theirs"))


def test_narrowest_types():
    assert narrowest_type(np.array([0, 255])) == "uint8"
    assert narrowest_type(np.array([-3, 100])) == "int8"
    assert narrowest_type(np.array([0, 256])) == "uint16"
    assert narrowest_type(np.array([-200, 5])) == "int16"
    assert narrowest_type(np.array([0, 70000])) == "uint32"
    assert narrowest_type(np.array([-70000, 0])) == "int32"
    assert narrowest_type(np.array([0.5, 1])) == "float32"
    assert narrowest_type(np.array([0, 2**40])) == "float32"


def test_record_layout_orders_properties_by_alignment(tmp_path):
    points = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    props = {"small": np.array([1, 2]), "mid": np.array([-300, 300]), "big": np.array([0, 1e6])}
    write_points(points, str(tmp_path / "p"), properties=props)
    info = json.loads(Path(tmp_path / "p" / "info").read_text())
    # listed in byte order, as neuroglancer's writer lists them (CloudVolume relies on it)
    assert [p["id"] for p in info["properties"]] == ["big", "mid", "small"]
    blob = Path(tmp_path / "p" / "by_id" / "1").read_bytes()
    assert len(blob) == 20  # 12 + 4 (uint32) + 2 (int16) + 1 (uint8) + 1 padding
    assert np.frombuffer(blob[12:16], "<u4")[0] == 1000000
    assert np.frombuffer(blob[16:18], "<i2")[0] == 300 and blob[18] == 2


MIXED_TYPES = {
    "count": ("uint8", lambda rng, n: rng.integers(0, 250, n)),
    "weight": ("float32", lambda rng, n: rng.normal(0, 1, n).astype(np.float32)),
    "delta": ("int8", lambda rng, n: rng.integers(-100, 100, n)),
    "area": ("uint16", lambda rng, n: rng.integers(300, 60000, n)),
    "label": ("int32", lambda rng, n: rng.integers(-(2**20), 2**20, n)),
    "depth": ("int16", lambda rng, n: rng.integers(-3000, 3000, n)),
}


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("sharded", [False, True])
def test_cloudvolume_reads_mixed_type_properties(tmp_path, sharded):
    """Properties in input order unlike the byte order (1, 4, 1, 2, 4, 2 bytes)."""
    cloudvolume = pytest.importorskip("cloudvolume")
    rng = np.random.default_rng(11)
    n = 400
    points = rng.uniform(0, 60, (n, 3))
    props = {name: make(rng, n) for name, (_, make) in MIXED_TYPES.items()}
    write_points(points, str(tmp_path / "p"), properties=props, sharded=sharded)
    info = json.loads(Path(tmp_path / "p" / "info").read_text())
    assert {p["id"]: p["type"] for p in info["properties"]} == {
        name: kind for name, (kind, _) in MIXED_TYPES.items()
    }
    source = cloudvolume.from_cloudpath("precomputed://file://" + str(tmp_path / "p"))
    everything = source.get_all()  # through the spatial index
    ids = everything.ids.astype(np.int64)
    assert sorted(ids.tolist()) == list(range(n))
    np.testing.assert_allclose(everything.geometry, points[ids].astype(np.float32))
    for name, values in props.items():
        np.testing.assert_array_equal(everything.properties[name], values[ids], err_msg=name)
    for i, annotation in source.get_by_id([0, 7, n - 1]).items():  # through by_id
        assert {k: v.item() for k, v in annotation.properties.items()} == pytest.approx(
            {name: values[i].item() for name, values in props.items()}
        )


def test_property_order_is_neuroglancers(tmp_path):
    """The info lists properties as neuroglancer's own writer lists the same ones."""
    neuroglancer = pytest.importorskip("neuroglancer")
    from neuroglancer.write_annotations import AnnotationWriter

    coords = neuroglancer.CoordinateSpace(names=["x", "y", "z"], units="um", scales=[1, 1, 1])
    writer = AnnotationWriter(
        coordinate_space=coords,
        annotation_type="point",
        properties=[
            neuroglancer.AnnotationPropertySpec(id=name, type=kind)
            for name, (kind, _) in MIXED_TYPES.items()
        ],
    )
    rng = np.random.default_rng(2)
    props = {name: make(rng, 1) for name, (_, make) in MIXED_TYPES.items()}
    writer.add_point([1, 2, 3], **{name: values[0].item() for name, values in props.items()})
    writer.write(str(tmp_path / "theirs"))
    write_points(np.array([[1, 2, 3]]), str(tmp_path / "ours"), properties=props)
    theirs = json.loads(Path(tmp_path / "theirs" / "info").read_text())["properties"]
    ours = json.loads(Path(tmp_path / "ours" / "info").read_text())["properties"]
    assert [p["id"] for p in ours] == [p["id"] for p in theirs]
    by_id = "by_id/0"
    assert (
        Path(tmp_path / "ours" / by_id).read_bytes()
        == Path(tmp_path / "theirs" / by_id).read_bytes()
    )


def test_murmurhash_matches_mmh3():
    mmh3 = pytest.importorskip("mmh3")
    keys = np.random.default_rng(6).integers(0, 2**63, 2000, dtype=np.uint64)
    ours = murmurhash3_x86_128_low64(keys)
    for key, value in zip(keys, ours):
        assert int(value) == mmh3.hash128(int(key).to_bytes(8, "little"), 0, False) & (2**64 - 1)


@settings(max_examples=200, deadline=None)
@given(grid=st.lists(st.integers(1, 40), min_size=3, max_size=3), data=st.data())
def test_morton_codes_follow_the_spec(grid, data):
    cell = [data.draw(st.integers(0, g - 1)) for g in grid]
    assert int(compressed_morton_codes(np.array([cell]), grid)[0]) == spec_morton(cell, grid)


# --- bad input ------------------------------------------------------------------------------

CLI = [sys.executable, "-m", "precomputed_tif.cli.write_points"]


def run(*args):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)


def one_line_error(result, fragment):
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and fragment in lines[0], result.stderr


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("not json at all", "cannot read points"),
        ('{"x": 1}', "JSON list"),
        ("[[1, 2], [3, 4]]", "expected N x 3"),
        ('[[1, 2, "a"]]', "numbers"),
        ("[[1, 2, NaN]]", "NaN or infinite"),
        ("[[1, 2, Infinity]]", "NaN or infinite"),
    ],
)
def test_bad_json_input(tmp_path, content, fragment):
    (tmp_path / "p.json").write_text(content)
    one_line_error(
        run("--input", str(tmp_path / "p.json"), "--output-directory", str(tmp_path / "o")),
        fragment,
    )
    assert not (tmp_path / "o").exists()


def test_csv_with_properties_and_npy(tmp_path):
    (tmp_path / "cells.csv").write_text("x,y,z,Volume,intensity\n1,2,3,10,0.5\n4,5,6,300,1.5\n")
    result = run("--input", str(tmp_path / "cells.csv"), "--output-directory", str(tmp_path / "c"))
    assert result.returncode == 0, result.stderr
    info = json.loads(Path(tmp_path / "c" / "info").read_text())
    assert info["properties"] == [  # byte order: by alignment, then column order
        {"id": "intensity", "type": "float32"},
        {"id": "volume", "type": "uint16"},
    ]
    np.save(tmp_path / "p.npy", np.array([[1.0, 2, 3], [7, 8, 9]]))
    assert (
        run(
            "--input", str(tmp_path / "p.npy"), "--output-directory", str(tmp_path / "n")
        ).returncode
        == 0
    )
    np.save(tmp_path / "bad.npy", np.zeros((4, 2)))
    one_line_error(
        run("--input", str(tmp_path / "bad.npy"), "--output-directory", str(tmp_path / "b")),
        "N x 3",
    )


def test_points_outside_bounds_fail_or_are_clipped(tmp_path):
    (tmp_path / "p.json").write_text("[[1, 1, 1], [50, 50, 50], [5, 5, 5]]")
    args = ["--input", str(tmp_path / "p.json"), "--upper-bound", "10,10,10"]
    one_line_error(run(*args, "--output-directory", str(tmp_path / "o")), "outside the bounds")
    result = run(*args, "--output-directory", str(tmp_path / "o"), "--clip")
    assert result.returncode == 0 and "dropped 1 points" in result.stderr
    info, levels = read_source(str(tmp_path / "o"))
    assert sum(len(ids) for _, cells in levels for _, ids in cells.values()) == 2
    assert info["upper_bound"] == [10, 10, 10]


def test_empty_list_writes_a_valid_empty_source(tmp_path):
    (tmp_path / "p.json").write_text("[]")
    result = run("--input", str(tmp_path / "p.json"), "--output-directory", str(tmp_path / "o"))
    assert result.returncode == 0 and "no points" in result.stderr
    info, levels = read_source(str(tmp_path / "o"))
    assert info["spatial"][0]["limit"] == 1 and levels[0][1] == {}


def test_output_folder_holding_something_else(tmp_path):
    (tmp_path / "p.json").write_text("[[1, 1, 1]]")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("mine")
    one_line_error(
        run("--input", str(tmp_path / "p.json"), "--output-directory", str(tmp_path / "o")),
        "other files",
    )
    assert (tmp_path / "o" / "notes.txt").read_text() == "mine"
    assert (
        run(
            "--input", str(tmp_path / "p.json"), "--output-directory", str(tmp_path / "q")
        ).returncode
        == 0
    )
    one_line_error(
        run("--input", str(tmp_path / "p.json"), "--output-directory", str(tmp_path / "q")),
        "--overwrite",
    )
    assert (
        run(
            "--input",
            str(tmp_path / "p.json"),
            "--output-directory",
            str(tmp_path / "q"),
            "--overwrite",
        ).returncode
        == 0
    )


def test_api_errors_are_value_errors(tmp_path):
    with pytest.raises(ValueError):
        write_points(np.zeros((3, 2)), str(tmp_path / "x"))
    with pytest.raises(PointsError, match="lowercase"):
        write_points(np.zeros((1, 3)), str(tmp_path / "x"), properties={"Bad": np.zeros(1)})


def test_piled_up_and_tightly_clustered_points_terminate(tmp_path):
    rng = np.random.default_rng(9)
    piled = np.tile([[10.5, 20.5, 3.5]], (3000, 1))  # more points on one spot than any limit
    cluster = rng.normal([500, 500, 50], 0.01, (3000, 3))  # a cluster far below a voxel
    spread = rng.uniform(0, 1000, (3000, 3))
    points = np.concatenate([piled, cluster, spread])
    path = str(tmp_path / "p")
    write_points(points, path, limit=100, sharded=True)
    check_source(path, points)
