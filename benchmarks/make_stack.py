#!/usr/bin/env python3
# Copied verbatim from shared/bench/make_stack.py (the project may not read ../shared at
# run time); keep the two in sync if either changes.
"""Write a synthetic light-sheet-like z-stack as individual uint16 TIFF planes.

img_0000.tif, img_0001.tif, ... (one 2D plane per file, uncompressed, like a
camera would write them).

Content, built slab by slab so memory stays ~ (slab + margin) * plane size:
  * camera offset (100) everywhere,
  * a "tissue" ellipsoid with a smooth, slowly varying autofluorescence
    background (a few low-frequency sinusoids, 150..450 counts above offset),
  * N gaussian blobs ("cells") inside the tissue, sigma_xy 1.5..3.5 px,
    sigma_z 0.8x that, lognormal amplitudes (median ~900 counts),
  * Poisson shot noise on the signal plus gaussian read noise (sigma 2).

Deterministic for a given --seed.

usage: make_stack.py OUTDIR --x 1024 --y 1024 --z 256 [--cells-per-mvox 150]
"""

import argparse
import os
import time

import numpy as np
import tifffile


def stamp(sxy, sz):
    r_xy = int(np.ceil(3 * sxy))
    r_z = int(np.ceil(3 * sz))
    zz, yy, xx = np.mgrid[-r_z : r_z + 1, -r_xy : r_xy + 1, -r_xy : r_xy + 1]
    g = np.exp(-0.5 * ((xx / sxy) ** 2 + (yy / sxy) ** 2 + (zz / sz) ** 2))
    return g.astype(np.float32), r_z, r_xy


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("outdir")
    ap.add_argument("--x", type=int, default=1024)
    ap.add_argument("--y", type=int, default=1024)
    ap.add_argument("--z", type=int, default=256)
    ap.add_argument(
        "--cells-per-mvox", type=float, default=400.0, help="cells per 1e6 voxels of tissue"
    )
    ap.add_argument("--slab", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1234)
    a = ap.parse_args()
    os.makedirs(a.outdir, exist_ok=True)
    X, Y, Z = a.x, a.y, a.z
    rng = np.random.default_rng(a.seed)

    # tissue ellipsoid (centre, semi-axes) in voxel units
    cz, cy, cx = Z / 2, Y / 2, X / 2
    az, ay, ax = Z * 0.47, Y * 0.42, X * 0.46
    tissue_vox = 4 / 3 * np.pi * az * ay * ax
    n_cells = int(tissue_vox / 1e6 * a.cells_per_mvox)

    # cell centres uniformly inside the ellipsoid (rejection sampling)
    pts = []
    need = n_cells
    while need > 0:
        p = rng.uniform(-1, 1, size=(need * 2, 3))
        p = p[(p**2).sum(1) < 0.95]
        pts.append(p[:need])
        need -= len(p[:need])
    p = np.concatenate(pts)
    zc = (cz + p[:, 0] * az).astype(np.int64)
    yc = (cy + p[:, 1] * ay).astype(np.int64)
    xc = (cx + p[:, 2] * ax).astype(np.int64)
    amp = rng.lognormal(np.log(900), 0.6, n_cells).astype(np.float32)
    sidx = rng.integers(0, 5, n_cells)
    sigmas = [1.5, 2.0, 2.5, 3.0, 3.5]
    stamps = [stamp(s, 0.8 * s) for s in sigmas]
    order = np.argsort(zc)
    zc, yc, xc, amp, sidx = zc[order], yc[order], xc[order], amp[order], sidx[order]
    margin = max(s[1] for s in stamps)

    # smooth background in-plane terms (computed once), z terms per plane
    yy = (np.arange(Y, dtype=np.float32)[:, None] - cy) / ay
    xx = (np.arange(X, dtype=np.float32)[None, :] - cx) / ax
    r2_yx = yy**2 + xx**2
    bg_yx = (
        np.sin(2.1 * xx + 0.3) * np.cos(1.7 * yy - 0.5) * 0.5 + 0.5 + 0.25 * np.sin(5.3 * (xx + yy))
    )

    t0 = time.time()
    total_bytes = 0
    for z0 in range(0, Z, a.slab):
        z1 = min(Z, z0 + a.slab)
        sig = np.zeros((z1 - z0, Y, X), np.float32)
        lo = np.searchsorted(zc, z0 - margin)
        hi = np.searchsorted(zc, z1 + margin)
        for i in range(lo, hi):
            st, rz, rxy = stamps[sidx[i]]
            gz0, gz1 = zc[i] - rz, zc[i] + rz + 1
            gy0, gy1 = yc[i] - rxy, yc[i] + rxy + 1
            gx0, gx1 = xc[i] - rxy, xc[i] + rxy + 1
            sz0, sz1 = max(gz0, z0), min(gz1, z1)
            sy0, sy1 = max(gy0, 0), min(gy1, Y)
            sx0, sx1 = max(gx0, 0), min(gx1, X)
            if sz0 >= sz1 or sy0 >= sy1 or sx0 >= sx1:
                continue
            sig[sz0 - z0 : sz1 - z0, sy0:sy1, sx0:sx1] += (
                amp[i] * st[sz0 - gz0 : sz1 - gz0, sy0 - gy0 : sy1 - gy0, sx0 - gx0 : sx1 - gx0]
            )
        for z in range(z0, z1):
            zn = (z - cz) / az
            r2 = r2_yx + zn * zn
            inside = np.clip((1.0 - r2) * 8.0, 0.0, 1.0)  # soft tissue edge
            bg = inside * (150.0 + 300.0 * bg_yx * (0.8 + 0.2 * np.cos(3.0 * zn)))
            s = sig[z - z0] + bg
            noisy = (
                rng.poisson(s).astype(np.float32)
                + 100.0
                + rng.normal(0, 2.0, size=s.shape).astype(np.float32)
            )
            plane = np.clip(noisy, 0, 65535).astype(np.uint16)
            path = os.path.join(a.outdir, "img_%04d.tif" % z)  # noqa: UP031
            tifffile.imwrite(path, plane)
            total_bytes += os.path.getsize(path)
    dt = time.time() - t0
    print(
        f"wrote {Z} planes {Y}x{X} uint16, {n_cells} cells, "
        f"{total_bytes / 2**20:.1f} MiB in {dt:.1f}s -> {a.outdir}"
    )


if __name__ == "__main__":
    main()
