"""Experiment of issue 16 (docs/default_model.md, "Splitting hot points near the axis"):
split every generated point within RADIUS mm of the axis and above THRESHOLD MeV into
ceil(e / THRESHOLD) pieces (at most MAX) of equal energy at the same radius, spread evenly
in azimuth (or at random azimuths with --random), and print the hottest-cell share of each
layer before and after, beside any Geant4 files given with --reference.

    python scripts/default_model/split_core_points.py GEN.h5 OUT.h5 --reference G4.h5

Post-processing of a generated file at normal incidence (the axis at x = y = 0); not part
of the package (see the docs for why).
"""

from __future__ import annotations

import argparse

import numpy as np

from calogen.data.io import read_showers, write_showers
from calogen.data.packed import PackedPoints, pack, unpack
from calogen.geometry import project, slab


def split(path: str, threshold_mev: float, radius_mm: float, most: int, rng) -> tuple:
    showers = read_showers(path)
    packed = pack(showers)
    pts = packed.points.astype(np.float64)
    e_mev = pts[:, 3] * 1e3
    r = np.hypot(pts[:, 0], pts[:, 1])
    hot = (e_mev > threshold_mev) & (r < radius_mm)
    k = np.where(hot, np.minimum(np.ceil(e_mev / threshold_mev), most), 1).astype(np.int64)
    source = np.repeat(np.arange(len(pts)), k)
    out = pts[source].copy()
    out[:, 3] /= k[source]
    piece = np.arange(len(source)) - np.repeat(np.cumsum(k) - k, k)
    if rng is None:  # evenly spaced in azimuth, the first piece where the point was
        angle = 2 * np.pi * piece / k[source]
    else:
        angle = np.where(piece > 0, rng.uniform(0, 2 * np.pi, len(source)), 0.0)
    c, s = np.cos(angle), np.sin(angle)
    x, y = out[:, 0].copy(), out[:, 1].copy()
    out[:, 0], out[:, 1] = c * x - s * y, s * x + c * y
    shower = packed.shower[source]
    counts = np.bincount(shower, minlength=len(showers))
    new = PackedPoints(points=out.astype(np.float32), shower=shower, counts=counts)
    return showers, unpack(new, showers.energies.reshape(-1), None)


def hottest_share(showers) -> float:
    """Mean share of a layer's energy in its hottest cell (cells above 0.1 MeV, layers with
    more than 5 MeV), on the slab geometry."""
    hits = project(showers, slab(), threshold_mev=0.1)
    key = hits.shower.astype(np.int64) * hits.n_layers + hits.layer.astype(np.int64)
    total = np.bincount(key, weights=hits.energy_mev)
    most = np.zeros_like(total)
    np.maximum.at(most, key, hits.energy_mev)
    ok = total > 5
    return float(np.mean(most[ok] / total[ok]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("generated")
    parser.add_argument("output")
    parser.add_argument("--threshold-mev", type=float, default=1.5)
    parser.add_argument("--radius-mm", type=float, default=5.0)
    parser.add_argument("--max-pieces", type=int, default=8)
    parser.add_argument("--random", action="store_true", help="random azimuths (seed 5)")
    parser.add_argument("--reference", nargs="*", default=[], help="Geant4 files to compare")
    args = parser.parse_args()
    rng = np.random.default_rng(5) if args.random else None
    before, after = split(args.generated, args.threshold_mev, args.radius_mm, args.max_pieces, rng)
    write_showers(args.output, after, overwrite=True)
    n_before, n_after = len(pack(before).points), len(pack(after).points)
    print(f"points per shower {n_before / len(before):.0f} -> {n_after / len(after):.0f}")
    print(
        f"hottest-cell share: generated {hottest_share(before):.3f}, split {hottest_share(after):.3f}"
    )
    for ref in args.reference:
        print(f"hottest-cell share: {ref} {hottest_share(read_showers(ref)):.3f}")


if __name__ == "__main__":
    main()
