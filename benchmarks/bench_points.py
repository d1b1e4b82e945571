#!/usr/bin/env python3
"""Points benchmark: precomputed-write-points against the neuroglancer package's writer.

usage: bench_points.py [--sizes 1e6,1e7,3e7] [--distributions uniform,clustered]
                       [--workdir DIR] [--timeout 600] [--ng-max-points 1e7] [--keep]

For every size and distribution, makes N points (N x 3 float64 .npy, x y z in voxels, seeded and
cached in the workdir), then runs each writer as its own subprocess, measuring wall time and the
peak RSS of its whole process tree (see _measure.py), the files and bytes it wrote. Our outputs
are checked: the counts at the start of every spatial cell (and the by_id entries) add up to N.
Prints a table, the target, then one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

# isort: split
from _measure import RunResult, last_json, run_measured, tree_size

HERE = Path(__file__).resolve().parent
BOX = (20000.0, 20000.0, 5000.0)  # x, y, z in voxels
DISTRIBUTIONS = ("uniform", "clustered")
TARGET_POINTS = 10_000_000
TARGET_WALL_S = 60.0
TARGET_RSS_MIB = 2048.0


# ---------------------------------------------------------------------------------------------
# the points


def make_points(distribution: str, n: int, seed: int) -> np.ndarray:
    """N x 3 float64 points in the BOX (x, y, z)."""
    rng = np.random.default_rng([seed, n, DISTRIBUTIONS.index(distribution)])
    box = np.array(BOX)
    if distribution == "uniform":
        return rng.uniform(0.0, box, (n, 3))
    # cell detections: gaussian clusters of varied size and density inside an ellipsoidal
    # "tissue" that fills most of the box, plus a sparse background inside the same tissue
    centre = box / 2
    semi = box * np.array([0.45, 0.42, 0.40])
    n_clusters = 3000

    def in_tissue(count: int) -> np.ndarray:
        # uniform in the unit ball (direction times radius ** (1/3)), scaled to the ellipsoid
        d = rng.normal(size=(count, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        return centre + semi * d * rng.random((count, 1)) ** (1 / 3)

    centres = in_tissue(n_clusters)
    sigma = rng.lognormal(np.log(60.0), 0.7, n_clusters)  # voxels; ~15 to ~250
    sigma = np.stack([sigma, sigma, sigma * 0.5], axis=1)  # flatter in z (thicker planes)
    weight = rng.lognormal(0.0, 1.0, n_clusters)
    n_background = n // 10
    counts = rng.multinomial(n - n_background, weight / weight.sum())
    which = np.repeat(np.arange(n_clusters), counts)
    points = np.empty((n, 3))
    clustered = n - n_background
    step = 1 << 22
    for s in range(0, clustered, step):
        w = which[s : s + step]
        points[s : s + len(w)] = centres[w] + rng.normal(size=(len(w), 3)) * sigma[w]
    points[clustered:] = in_tissue(n_background)
    np.clip(points, 0.0, np.nextafter(box, 0), out=points)
    return points[rng.permutation(n)]


def ensure_points(workdir: Path, distribution: str, n: int, seed: int) -> Path:
    path = workdir / f"points_{distribution}_{n}_seed{seed}.npy"
    if not path.exists():
        t0 = time.perf_counter()
        print(f"making {n} {distribution} points in {path} ...", end=" ", flush=True)
        points = make_points(distribution, n, seed)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, points)
        os.replace(tmp, path)
        print(f"{time.perf_counter() - t0:.1f} s", flush=True)
    return path


def warm(path: Path) -> None:
    buf = bytearray(1 << 22)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


# ---------------------------------------------------------------------------------------------
# the check: do the spatial cells hold N points in all?


def _gunzip_head(blob: bytes, size: int) -> bytes:
    return zlib.decompressobj(wbits=31).decompress(blob, size)


def _shard_tables(path: Path, minishard_bits: int, encoding: str) -> list[np.ndarray]:
    """Each non-empty minishard's (3, n) table of a shard file: keys, starts, sizes (absolute)."""
    index_bytes = 16 << minishard_bits
    with open(path, "rb") as f:
        data = f.read()
    index = np.frombuffer(data[:index_bytes], "<u8").reshape(-1, 2)
    out = []
    for start, end in index:
        if end <= start:
            continue
        raw = data[index_bytes + int(start) : index_bytes + int(end)]
        if encoding == "gzip":
            raw = zlib.decompress(raw, wbits=31)
        rows = np.frombuffer(raw, "<u8").reshape(3, -1)
        keys = np.cumsum(rows[0])
        ends_before = np.concatenate([[0], np.cumsum(rows[2])[:-1]]).astype(np.uint64)
        starts = np.cumsum(rows[1]) + ends_before + np.uint64(index_bytes)
        out.append(np.stack([keys, starts, rows[2]]))
    return out


def count_sharded(folder: Path, spec_json: dict[str, Any], grid: list[int]) -> tuple[int, int]:
    """(points, cells) of one sharded spatial level, by parsing every shard file directly.

    Also checks that every key is a Morton code inside the grid and sits in the shard and
    minishard the spec assigns it, and reads a few cells back through our ShardReader.
    """
    from precomputed_tif.locations import LocalLocation
    from precomputed_tif.sharding import ShardingSpec
    from precomputed_tif.stores.precomputed import ShardReader

    spec = ShardingSpec.from_json(spec_json)
    key_bits = sum(max(0, int(g - 1).bit_length()) for g in grid)
    points = 0
    cells = 0
    sample: list[tuple[int, int]] = []
    for path in sorted(folder.glob("*.shard")):
        shard = int(path.stem, 16)
        with open(path, "rb") as f:
            data = f.read()
        for keys, starts, sizes in _shard_tables(
            path, spec.minishard_bits, spec.minishard_index_encoding
        ):
            if key_bits < 64 and np.any(keys >> np.uint64(key_bits)):
                raise AssertionError(f"{path}: a key lies outside the grid {grid}")
            got_shard, _ = spec.locate(keys)
            if np.any(got_shard != shard):
                raise AssertionError(f"{path}: holds keys of another shard")
            for key, start, size in zip(keys, starts, sizes):
                blob = data[int(start) : int(start + size)]
                head = _gunzip_head(blob, 8) if spec.data_encoding == "gzip" else blob[:8]
                count = int(np.frombuffer(head, "<u8")[0])
                points += count
                cells += 1
                if len(sample) < 8 or cells % 997 == 0:
                    sample.append((int(key), count))
    reader = ShardReader(LocalLocation(str(folder)), spec)
    for key, count in sample[:40]:
        blob = reader.get(key)
        if blob is None or int(np.frombuffer(blob[:8], "<u8")[0]) != count:
            raise AssertionError(f"{folder}: ShardReader disagrees on key {key}")
    return points, cells


def count_unsharded(folder: Path) -> tuple[int, int]:
    points = 0
    cells = 0
    for entry in os.scandir(folder):
        with open(entry.path, "rb") as f:
            points += int(np.frombuffer(f.read(8), "<u8")[0])
        cells += 1
    return points, cells


def count_by_id(folder: Path, spec_json: dict[str, Any] | None) -> int:
    if spec_json is None:
        return sum(1 for _ in os.scandir(folder))
    from precomputed_tif.sharding import ShardingSpec

    spec = ShardingSpec.from_json(spec_json)
    total = 0
    for path in folder.glob("*.shard"):
        for table in _shard_tables(path, spec.minishard_bits, spec.minishard_index_encoding):
            total += table.shape[1]
    return total


def check_output(out: Path, n: int) -> tuple[bool, str]:
    """Sum the counts of every spatial cell of every level; it must be N (and by_id N)."""
    try:
        info = json.loads((out / "info").read_text())
        total = 0
        cells = 0
        for level in info["spatial"]:
            folder = out / level["key"]
            if "sharding" in level:
                p, c = count_sharded(folder, level["sharding"], level["grid_shape"])
            else:
                p, c = count_unsharded(folder)
            total += p
            cells += c
        notes = [f"{len(info['spatial'])} levels, {cells} cells, {total} points"]
        ok = total == n
        by_id = out / info["by_id"]["key"]
        if by_id.is_dir():
            ids = count_by_id(by_id, info["by_id"].get("sharding"))
            notes.append(f"by_id {ids}")
            ok = ok and ids == n
        return ok, ("ok: " if ok else "MISMATCH: ") + ", ".join(notes)
    except Exception as exc:  # noqa: BLE001 - any failure to read is a failed check
        return False, f"MISMATCH: cannot read: {type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------------------------
# running


@dataclass
class Row:
    distribution: str
    n: int
    name: str
    input_bytes: int
    status: str = "ok"
    result: RunResult | None = None
    files: int = 0
    out_bytes: int = 0
    check: str = ""
    detail: dict[str, Any] | None = None
    flush_s: float | None = None

    def json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "distribution": self.distribution,
            "points": self.n,
            "row": self.name,
            "status": self.status,
        }
        r = self.result
        if r is not None:
            d.update(
                wall_s=round(r.wall_s, 3),
                peak_rss_mib=round(r.peak_rss_mib, 1),
                rss_per_input=round(r.peak_rss_bytes / self.input_bytes, 2),
                files=self.files,
                output_mib=round(self.out_bytes / 2**20, 2),
                flush_s=round(self.flush_s, 2) if self.flush_s is not None else None,
                check=self.check or None,
                detail=self.detail or None,
            )
        return d


def remove(path: Path) -> None:
    """Delete an output; `rm -rf` is much faster than shutil.rmtree on a million files."""
    if path.exists():
        subprocess.run(["rm", "-rf", "--", str(path)], check=False)
    staging = path.with_name(path.name + ".writing")
    if staging.exists():
        subprocess.run(["rm", "-rf", "--", str(staging)], check=False)


def run_row(row: Row, argv: list[str], out: Path, timeout_s: float, keep: bool) -> None:
    remove(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.sync()
    print(f"  {row.distribution} {row.n:.0e} {row.name} ...", end=" ", flush=True)
    result = run_measured(argv, timeout_s=timeout_s)
    t0 = time.perf_counter()
    os.sync()  # what the writer left for the kernel to write back (not in its wall time)
    row.flush_s = time.perf_counter() - t0
    row.result = result
    row.detail = last_json(result.stdout)
    timed_out = result.wall_s > timeout_s and not result.ok
    if timed_out:
        row.status = f"did not finish (killed after {timeout_s:.0f} s)"
        print(f"did not finish in {timeout_s:.0f} s ({result.peak_rss_mib:.0f} MiB)", flush=True)
    elif not result.ok:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        row.status = f"failed (exit {result.returncode})"
        print(row.status, flush=True)
        for line in tail:
            print(f"    | {line}", flush=True)
    else:
        print(f"{result.wall_s:.2f} s, {result.peak_rss_mib:.0f} MiB", end="", flush=True)
    row.files, row.out_bytes = tree_size(out) if out.exists() else (0, 0)
    if result.ok:
        ok, row.check = check_output(out, row.n)
        print(f"; {row.check}", flush=True)
        if not ok:
            print(f"\n!!!!! {row.name} {row.distribution} {row.n}: {row.check} !!!!!\n")
    if not keep:
        remove(out)


def parse_sizes(text: str) -> list[int]:
    return [int(float(s)) for s in text.split(",") if s.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1e6,1e7", help="numbers of points, e.g. 1e6,1e7,3e7")
    ap.add_argument("--distributions", default=",".join(DISTRIBUTIONS))
    ap.add_argument("--workdir", type=Path, default=None, help="default: a new temporary folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=600.0, help="per run, seconds")
    ap.add_argument(
        "--ng-max-points",
        type=float,
        default=1e7,
        help="largest N given to the neuroglancer writer (it holds every point as a Python "
        "object and writes a file per point); above it: did not finish",
    )
    ap.add_argument(
        "--ng-all-distributions-max",
        type=float,
        default=1e6,
        help="above this N the neuroglancer writer runs on the first distribution only (its "
        "work does not depend on where the points are: one cell, one file per point)",
    )
    ap.add_argument(
        "--by-id-max-points",
        type=float,
        default=1e6,
        help="largest N for our unsharded row with by_id (one file per point)",
    )
    ap.add_argument(
        "--rows",
        default=None,
        help="run only these rows, comma-separated (ours-sharded, ours-unsharded, "
        "ours-unsharded-by-id, neuroglancer)",
    )
    ap.add_argument("--ours", default=None, help="our precomputed-write-points executable")
    ap.add_argument("--keep", action="store_true", help="keep the outputs")
    a = ap.parse_args()

    sizes = parse_sizes(a.sizes)
    dists = [d.strip() for d in a.distributions.split(",") if d.strip()]
    unknown = set(dists) - set(DISTRIBUTIONS)
    if unknown:
        raise SystemExit(f"unknown distributions: {sorted(unknown)}")
    workdir = (a.workdir or Path(tempfile.mkdtemp(prefix="bench_points_"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    ours = a.ours or str(Path(sys.executable).parent / "precomputed-write-points")
    if not Path(ours).exists():
        ours = shutil.which("precomputed-write-points") or ""
    if not ours:
        raise SystemExit("precomputed-write-points not found; pass --ours")
    have_ng = True
    try:
        ng_version = version("neuroglancer")
    except PackageNotFoundError:
        have_ng, ng_version = False, None
    print(f"{os.cpu_count()} CPUs; ours: {ours}; neuroglancer {ng_version}; workdir {workdir}")

    rows: list[Row] = []
    out = workdir / "out"
    for n in sizes:
        for d_i, dist in enumerate(dists):
            npy = ensure_points(workdir, dist, n, a.seed)
            warm(npy)
            input_bytes = n * 3 * 8
            base = [ours, "--input", str(npy), "--output-directory", str(out), "--log", "WARNING"]

            plan: list[tuple[str, list[str] | str]] = [
                ("ours-sharded", [*base, "--sharded"]),
                ("ours-unsharded", [*base, "--no-by-id"]),
            ]
            if n <= a.by_id_max_points:
                plan.append(("ours-unsharded-by-id", base))
            recipe = [sys.executable, str(HERE / "recipe_ng_points.py"), str(npy), str(out)]
            if not have_ng:
                plan.append(("neuroglancer", "skipped: not installed"))
            elif n > a.ng_max_points:
                status = f"did not finish (skipped: N > --ng-max-points {a.ng_max_points:.0e})"
                plan.append(("neuroglancer", status))
            elif d_i > 0 and n > a.ng_all_distributions_max:
                plan.append(("neuroglancer", f"not run (same work as for {dists[0]})"))
            else:
                plan.append(("neuroglancer", recipe))
            if a.rows:
                keep = {r.strip() for r in a.rows.split(",")}
                plan = [(name, what) for name, what in plan if name in keep]
            for name, what in plan:
                row = Row(dist, n, name, input_bytes)
                rows.append(row)
                if isinstance(what, str):
                    row.status = what
                else:
                    run_row(row, what, out, a.timeout, a.keep)
    report(rows, sizes, dists, a, workdir, ng_version)


def report(
    rows: list[Row],
    sizes: list[int],
    dists: list[str],
    a: argparse.Namespace,
    workdir: Path,
    ng_version: str | None,
) -> None:
    def find(dist: str, n: int, name: str) -> Row | None:
        for r in rows:
            if (r.distribution, r.n, r.name) == (dist, n, name):
                return r
        return None

    def ng_wall(dist: str, n: int) -> float | None:
        for r in (find(dist, n, "neuroglancer"), find(dists[0], n, "neuroglancer")):
            if r is not None and r.result is not None and r.result.ok:
                return r.result.wall_s
        return None

    header = (
        f"{'distribution':<11}{'points':>7} {'row':<21}{'wall s':>8}{'peak MiB':>10}"
        f"{'RSS/in':>8}{'files':>9}{'out MiB':>9}{'flush s':>8}{'vs NG':>8}  check / notes"
    )
    print()
    print(header)
    print("-" * len(header))
    for r in rows:
        label = f"{r.distribution:<11}{r.n:>7.0e} {r.name:<21}"
        res = r.result
        if res is None or (not res.ok and r.status.startswith("failed")):
            print(f"{label}{'-':>8}{'-':>10}{'-':>8}{'-':>9}{'-':>9}{'-':>8}{'-':>8}  {r.status}")
            continue
        if not res.ok:  # timed out: what it reached
            reached = "" if not r.detail else f"; added {r.detail.get('points')} points"
            print(
                f"{label}{'>' + format(res.wall_s, '.0f'):>8}{res.peak_rss_mib:>10.0f}"
                f"{res.peak_rss_bytes / r.input_bytes:>8.2f}{r.files:>9}"
                f"{r.out_bytes / 2**20:>9.1f}{r.flush_s or 0:>8.1f}{'-':>8}  {r.status}{reached}"
            )
            continue
        ng = ng_wall(r.distribution, r.n) if r.name != "neuroglancer" else None
        vs = f"{res.wall_s / ng:.3f}x" if ng else "-"
        notes = r.check
        if r.name == "neuroglancer" and r.detail:
            notes += f"; add {r.detail.get('add_s')} s + write {r.detail.get('write_s')} s"
        print(
            f"{label}{res.wall_s:>8.2f}{res.peak_rss_mib:>10.0f}"
            f"{res.peak_rss_bytes / r.input_bytes:>8.2f}{r.files:>9}"
            f"{r.out_bytes / 2**20:>9.1f}{r.flush_s or 0:>8.1f}{vs:>8}  {notes}"
        )
    print()
    print("RSS/in = peak RSS of the process tree / size of the N x 3 float64 input array")
    print("vs NG = wall / wall of the neuroglancer writer on the same points (below 1 is faster)")
    print("flush s = os.sync() right after the run: write-back the writer left to the kernel")

    targets = []
    print()
    print(
        f"target: {TARGET_POINTS:.0e} points, --sharded, under {TARGET_WALL_S:.0f} s and "
        f"{TARGET_RSS_MIB / 1024:.0f} GiB"
    )
    for dist in dists:
        r = find(dist, TARGET_POINTS, "ours-sharded")
        if r is None:
            continue
        res = r.result
        met = bool(
            res is not None
            and res.ok
            and r.check.startswith("ok")
            and res.wall_s < TARGET_WALL_S
            and res.peak_rss_mib < TARGET_RSS_MIB
        )
        what = f"{res.wall_s:.1f} s, {res.peak_rss_mib:.0f} MiB" if res else r.status
        print(f"  [{'MET ' if met else 'MISS'}] {dist}: {what}")
        targets.append({"distribution": dist, "met": met})

    mismatches = [
        f"{r.name} {r.distribution} {r.n}: {r.check}" for r in rows if "MISMATCH" in r.check
    ]
    if mismatches:
        print("!!!!! OUTPUT MISMATCHES:")
        for m in mismatches:
            print(f"!!!!!   {m}")
    summary = {
        "benchmark": "points",
        "sizes": sizes,
        "distributions": dists,
        "box_xyz": list(BOX),
        "seed": a.seed,
        "timeout_s": a.timeout,
        "ng_max_points": a.ng_max_points,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "versions": {"neuroglancer": ng_version, "numpy": np.__version__},
        "workdir": str(workdir),
        "target": {
            "points": TARGET_POINTS,
            "wall_s": TARGET_WALL_S,
            "peak_rss_mib": TARGET_RSS_MIB,
            "results": targets,
        },
        "mismatches": mismatches,
        "runs": [r.json() for r in rows],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
