"""Angular conditioning of the BIB-AE on GFlash showers (issue 8).

The shared Geant4 data are at normal incidence, so the angle condition is trained and tested
on GFlash showers at angles (the reference simulator follows the incident direction).

    python benchmarks/bibae_angles.py data --out /work/runs/gflash_angles_train.h5 -n 10000
    calogen train bibae --config benchmarks/bibae_angles_small.yaml \
        --data /work/runs/gflash_angles_train.h5 --out /work/runs/bibae_angles_small
    python benchmarks/bibae_angles.py axis --model /work/runs/bibae_angles_small -n 300 \
        --latent flow

``data`` draws E uniform in 10-90 GeV and the polar angle uniform in 0-30 degrees from the
normal, in the y-z plane (as 2303.18150 varies the angle in one plane), direction
``(0, sin t, cos t)``. ``axis`` generates showers at fixed angles with the model and with
GFlash and measures the shower axis: per shower, the energy-weighted mean y of each layer is
fitted linearly against the depth of the layer (mm); the fitted angle is ``atan(slope)``.
GFlash showers are also put through the model's voxel grid (cell centres) so that both sides
see the same quantisation.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from calogen.data.io import write_showers
from calogen.data.packed import pack
from calogen.data.voxels import voxelise, voxels_to_points
from calogen.geometry import slab
from calogen.reference.gflash import GFlash


def directions(theta_deg: np.ndarray) -> np.ndarray:
    t = np.deg2rad(theta_deg)
    return np.stack([np.zeros_like(t), np.sin(t), np.cos(t)], 1)


def make_data(out: str, n: int, seed: int, max_deg: float) -> None:
    rng = np.random.default_rng(seed)
    energies = rng.uniform(10.0, 90.0, n)
    theta = rng.uniform(0.0, max_deg, n)
    t0 = time.perf_counter()
    showers = GFlash().sample(energies, directions(theta), seed=rng)
    write_showers(
        out,
        showers,
        overwrite=True,
        attrs={
            "generator": "gflash",
            "content": f"E uniform 10-90 GeV, polar angle uniform "
            f"0-{max_deg:g} deg in the y-z plane, direction (0, sin t, cos t)",
            "seed": seed,
        },
    )
    print(f"wrote {n} GFlash showers to {out} in {time.perf_counter() - t0:.1f} s")


def axis_angles(showers) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Fitted axis angle (degrees) in the y-z plane of every shower."""
    packed = pack(showers)
    n = packed.n_showers
    pts = packed.points.astype(np.float64)
    layer = np.rint(pts[:, 2]).astype(np.int64)
    key = packed.shower * 30 + layer
    e = pts[:, 3]
    e_l = np.bincount(key, weights=e, minlength=n * 30).reshape(n, 30)
    y_l = np.bincount(key, weights=e * pts[:, 1], minlength=n * 30).reshape(n, 30)
    y_l = np.divide(y_l, e_l, out=np.zeros_like(y_l), where=e_l > 0)
    z = slab().layer_z_mm
    out = np.zeros(n)
    for i in range(n):
        w = e_l[i]
        m = w > 0
        zm, ym, wm = z[m], y_l[i, m], w[m]
        zbar = np.average(zm, weights=wm)
        ybar = np.average(ym, weights=wm)
        slope = np.sum(wm * (zm - zbar) * (ym - ybar)) / np.sum(wm * (zm - zbar) ** 2)
        out[i] = np.degrees(np.arctan(slope))
    return out


def axis(
    model: str,
    n: int,
    seed: int,
    angles: list[float],
    energy: float,
    out: str | None,
    latent: str | None = None,
) -> None:
    from calogen.models.registry import load_generator

    gen = load_generator(model)
    if latent:
        gen.latent = latent
    rows = []
    for a in angles:
        e = np.full(n, energy)
        d = directions(np.full(n, a))
        t0 = time.perf_counter()
        fake = gen.sample(e, d, seed=seed)
        dt = (time.perf_counter() - t0) / n * 1000
        ref = GFlash().sample(e, d, seed=seed + 1)
        ref_vox = voxels_to_points(voxelise(ref, gen.grid), gen.grid, e, d)
        r = {
            "angle_deg": a,
            "energy_gev": energy,
            "n": n,
            "latent": gen.latent,
            "ms_per_shower": round(dt, 1),
        }
        for name, s in (("model", fake), ("gflash", ref), ("gflash_on_grid", ref_vox)):
            fit = axis_angles(s)
            r[name] = [round(float(fit.mean()), 2), round(float(fit.std()), 2)]
        rows.append(r)
        print(json.dumps(r))
    if out:
        with open(out, "w") as f:
            json.dump(rows, f, indent=2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data")
    d.add_argument("--out", required=True)
    d.add_argument("-n", type=int, default=10000)
    d.add_argument("--seed", type=int, default=8)
    d.add_argument("--max-deg", type=float, default=30.0)
    a = sub.add_parser("axis")
    a.add_argument("--model", required=True)
    a.add_argument("-n", type=int, default=500)
    a.add_argument("--seed", type=int, default=1)
    a.add_argument("--energy", type=float, default=50.0)
    a.add_argument("--angles", type=float, nargs="+", default=[0.0, 10.0, 20.0, 30.0])
    a.add_argument("--out", default=None)
    a.add_argument(
        "--latent",
        choices=["prior", "flow"],
        default=None,
        help="latent sampling (default: the model's)",
    )
    args = p.parse_args()
    if args.cmd == "data":
        make_data(args.out, args.n, args.seed, args.max_deg)
    else:
        axis(args.model, args.n, args.seed, args.angles, args.energy, args.out, args.latent)


if __name__ == "__main__":
    main()
