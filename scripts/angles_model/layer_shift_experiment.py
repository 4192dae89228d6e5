"""Experiment behind docs/angles.md "What is left", item 2 (not part of calogen): would a
per-layer x shift in the axis frame, fitted on training showers, correct the fitted axis?

For theta = 30 and 60 deg: the mean energy-weighted x centroid of each layer in the axis frame
(:func:`calogen.directions.straighten_points`) of 400 training showers of
g4_photons_angles_train.h5 within 5 deg of theta (all energies) minus that of the model's
showers at the same energies and directions gives a shift per layer; it is added to the
model's 50 GeV test sample (axis frame, then inclined back) and the fitted axis angle is
compared with Geant4's test set. Usage:
python scripts/angles_model/layer_shift_experiment.py MODEL_DIR EVAL_DIR [G4DATA] [TRAIN_FILE]
(EVAL_DIR: the folder of scripts/angles_model/evaluate.sh with SET.model.h5 files).
"""

from __future__ import annotations

import sys

import numpy as np
from numpy.typing import NDArray

from calogen.data.io import read_showers
from calogen.data.packed import PackedPoints, pack
from calogen.directions import angles_from_directions, fit_axis, incline_points, straighten_points
from calogen.geometry import slab
from calogen.models.registry import load_generator

DEPTH = slab().layer_z_mm
N_LAYERS = 30


def layer_sums(pk: PackedPoints, x: NDArray) -> tuple[NDArray, NDArray]:
    """Per shower and layer: energy ``[S, L]`` and energy-weighted mean of ``x``."""
    layer = np.rint(pk.points[:, 2]).astype(int)
    e = pk.points[:, 3].astype(float)
    key = pk.shower * N_LAYERS + layer
    n = pk.n_showers * N_LAYERS
    w = np.bincount(key, e, n).reshape(-1, N_LAYERS)
    return w, np.bincount(key, e * x, n).reshape(-1, N_LAYERS) / np.maximum(w, 1e-12)


def axis_frame_means(pk: PackedPoints, dirs: NDArray) -> NDArray:
    """Mean over showers of each layer's axis-frame x centroid ``[L]`` (mm)."""
    w, cx = layer_sums(pk, straighten_points(pk.points, pk.counts, dirs)[:, 0])
    return np.array([cx[w[:, i] > 0, i].mean() if (w[:, i] > 0).any() else 0.0 for i in range(30)])


def fitted_theta(pk: PackedPoints) -> float:
    w, cx = layer_sums(pk, pk.points[:, 0].astype(float))
    _, cy = layer_sums(pk, pk.points[:, 1].astype(float))
    return float(np.nanmean(fit_axis(cx, cy, w, DEPTH)["theta_deg"]))


def main(model: str, evals: str, g4: str = "/work/g4data", train_file: str = "") -> None:
    train_file = train_file or "/work/shared/data/g4_photons_angles_train.h5"
    train = read_showers(train_file)
    theta, _ = angles_from_directions(train.directions)
    packed = pack(train)
    generator = load_generator(model)
    for t0, name in ((30, "g4_50GeV_t30_p0"), (60, "g4_50GeV_t60_p0")):
        sel = np.flatnonzero(np.abs(theta - t0) < 5)[:400]
        keep = np.isin(packed.shower, sel)
        counts = packed.counts[sel]
        ref = PackedPoints(packed.points[keep], np.repeat(np.arange(sel.size), counts), counts)
        generated = generator.sample(train.energies.reshape(-1)[sel], train.directions[sel], seed=5)
        delta = axis_frame_means(ref, train.directions[sel]) - axis_frame_means(
            pack(generated), train.directions[sel]
        )
        sample = read_showers(f"{evals}/{name}.model.h5")
        pk = pack(sample)
        a = straighten_points(pk.points, pk.counts, sample.directions)
        a[:, 0] += delta[np.rint(a[:, 2]).astype(int)]
        t, p = angles_from_directions(sample.directions)
        x, y = incline_points(a[:, 0], a[:, 1], a[:, 2], t[pk.shower], p[pk.shower], DEPTH)
        shifted = PackedPoints(np.c_[x, y, a[:, 2:]].astype(np.float32), pk.shower, pk.counts)
        reference = pack(read_showers(f"{g4}/{name}.h5"))
        print(
            f"{name}: fitted axis Geant4 {fitted_theta(reference):.2f} deg, model "
            f"{fitted_theta(pk):.2f}, model + layer shift {fitted_theta(shifted):.2f}; shift at "
            f"layers 2/8/14/20/26: {np.round(delta[[2, 8, 14, 20, 26]], 2).tolist()} mm"
        )


if __name__ == "__main__":
    main(*sys.argv[1:])
