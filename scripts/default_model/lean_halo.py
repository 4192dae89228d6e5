"""Experiment of issue 16 (docs/default_model.md, "Splitting hot points near the axis"):
lean the halo of each generated shower (normal incidence, axis at x = y = 0). Every point
beyond RADIUS mm of the axis moves by (sx, sy) times its depth from the shower's
energy-weighted mean depth; (sx, sy) are normal draws per shower with a spread chosen so that
the spread of the fitted axis slopes (cell level, slab geometry, 0.1 MeV) equals that of the
Geant4 training showers with incident energies in [EMIN, EMAX] GeV (interpolated in the
slopes' variance over a scan of spreads).

    python scripts/default_model/lean_halo.py GEN.h5 OUT.h5 --energy 45 55

Post-processing, not part of the package (see the docs for why).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from calogen.data.io import read_showers, write_showers
from calogen.data.packed import PackedPoints, pack, unpack
from calogen.evaluation.observables import shower_features
from calogen.geometry import project, slab

SHARED = os.environ.get("CALOGEN_SHARED_DATA", "../shared/data")
CAL = slab()
DEPTH_MM = np.asarray(CAL.layer_z_mm, np.float64)


def slope_std(showers) -> float:
    f = shower_features(project(showers, CAL, threshold_mev=0.1), CAL)
    return float(np.nanstd(np.concatenate([f.axis_slope_x, f.axis_slope_y])))


def subset(path: str, first: int, last: int, emin: float, emax: float):
    showers = read_showers(path, first, last)
    e = showers.energies.reshape(-1)
    idx = np.flatnonzero((e >= emin) & (e <= emax))
    packed = pack(showers)
    keep = np.isin(packed.shower, idx)
    shower = np.searchsorted(idx, packed.shower[keep])
    counts = np.bincount(shower, minlength=len(idx))
    return unpack(PackedPoints(packed.points[keep], shower, counts), e[idx], None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("generated")
    ap.add_argument("output")
    ap.add_argument("--energy", nargs=2, type=float, required=True, metavar=("EMIN", "EMAX"))
    ap.add_argument("--radius-mm", type=float, default=5.0)
    ap.add_argument("--train", default=f"{SHARED}/g4_photons_10-90GeV_train.h5")
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    target = slope_std(subset(args.train, 0, 9000, *args.energy))  # 9000+: the test split
    gen = read_showers(args.generated)
    packed = pack(gen)
    n = len(gen)
    pts = packed.points.astype(np.float64)
    layer = np.clip(np.rint(pts[:, 2]).astype(np.int64), 0, len(DEPTH_MM) - 1)
    e = pts[:, 3]
    mean_depth = np.bincount(packed.shower, e * DEPTH_MM[layer], n) / np.bincount(
        packed.shower, e, n
    )
    lever = np.where(
        np.hypot(pts[:, 0], pts[:, 1]) > args.radius_mm,
        DEPTH_MM[layer] - mean_depth[packed.shower],
        0.0,
    )
    draws = np.random.default_rng(args.seed).normal(size=(n, 2))

    def leaned(sigma: float):
        out = packed.points.copy()
        for axis in (0, 1):
            out[:, axis] += (sigma * draws[packed.shower, axis] * lever).astype(np.float32)
        return unpack(PackedPoints(out, packed.shower, packed.counts), gen.energies, None)

    scan = np.array([0.0, 0.01, 0.02, 0.03, 0.04, 0.05])
    var = np.array([slope_std(leaned(s)) ** 2 for s in scan])
    sigma = float(np.interp(target**2, var, scan))
    write_showers(args.output, leaned(sigma), overwrite=True)
    print(
        f"axis slope spread: Geant4 training {target:.5f}, generated {var[0] ** 0.5:.5f}; "
        f"halo lean spread {sigma:.4f} mm/mm"
    )


if __name__ == "__main__":
    main()
