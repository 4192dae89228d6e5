"""Angular conditioning of the BIB-AE on GFlash showers (issue 8) and its Geant4 tables.

The shared Geant4 data are at normal incidence, so the angle condition is trained and tested
on GFlash showers at angles (the reference simulator follows the incident direction).

    python benchmarks/bibae_angles.py data --out /work/runs/gflash_angles_train.h5 -n 10000
    calogen train bibae --config benchmarks/bibae_angles_small.yaml \
        --data /work/runs/gflash_angles_train.h5 --out /work/runs/bibae_angles_small
    python benchmarks/bibae_angles.py axis --model /work/runs/bibae_angles_small -n 300 \
        --latent prior --out /work/runs/bibae_angles_prior.json
    python benchmarks/bibae_angles.py axis --model /work/runs/bibae_angles_small -n 300 \
        --latent flow --out /work/runs/bibae_angles_flow.json
    python benchmarks/bibae_angles.py plot /work/runs/bibae_angles_flow.json \
        /work/runs/bibae_angles_prior.json --out docs/figures/bibae_angles.png

``data`` draws E uniform in 10-90 GeV and the polar angle uniform in 0-30 degrees from the
normal, in the y-z plane (as 2303.18150 varies the angle in one plane), direction
``(0, sin t, cos t)``. ``axis`` generates showers at fixed angles with the model and with
GFlash and measures the shower axis: per shower, the energy-weighted mean y of each layer is
fitted linearly against the depth of the layer (mm); the fitted angle is ``atan(slope)``.
GFlash showers are also put through the model's voxel grid (cell centres) so that both sides
see the same quantisation. The JSON rows also keep the energy-weighted mean y of every layer
over all showers (``profile_y_mm``) for ``plot``.

``g4-table`` (issue 18): the per-condition numbers of a ``calogen evaluate`` report at angles
(benchmarks/bibae_g4angles.sh) as a Markdown table: mean ± standard deviation of the fitted
axis angle and of the visible energy of every sample, per (energy, requested angle) group::

    python benchmarks/bibae_angles.py g4-table /work/runs/bibae_g4angles/eval/report/metrics.json
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


def layer_sums(showers):  # type: ignore[no-untyped-def]
    """Per shower and layer: visible energy and energy-weighted sum of y, ``[N, 30]`` each."""
    packed = pack(showers)
    n = packed.n_showers
    pts = packed.points.astype(np.float64)
    layer = np.rint(pts[:, 2]).astype(np.int64)
    key = packed.shower * 30 + layer
    e = pts[:, 3]
    e_l = np.bincount(key, weights=e, minlength=n * 30).reshape(n, 30)
    ey_l = np.bincount(key, weights=e * pts[:, 1], minlength=n * 30).reshape(n, 30)
    return e_l, ey_l


def profile_y(showers) -> list[float]:  # type: ignore[no-untyped-def]
    """Energy-weighted mean y (mm) of each layer over all showers."""
    e_l, ey_l = layer_sums(showers)
    e, ey = e_l.sum(0), ey_l.sum(0)
    return [round(float(v), 3) for v in np.divide(ey, e, out=np.zeros_like(ey), where=e > 0)]


def axis_angles(showers) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Fitted axis angle (degrees) in the y-z plane of every shower."""
    e_l, y_l = layer_sums(showers)
    n = e_l.shape[0]
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
            r[f"{name}_profile_y_mm"] = profile_y(s)
        rows.append(r)
        print(json.dumps({k: v for k, v in r.items() if not k.endswith("profile_y_mm")}))
    if out:
        with open(out, "w") as f:
            json.dump(rows, f, indent=2)


def plot(files: list[str], out: str) -> None:
    """Fitted vs requested angle and the mean-y profiles, from ``axis`` JSON files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mplhep

    runs = []
    for path in files:
        with open(path) as f:
            runs.append(json.load(f))
    z = slab().layer_z_mm
    with plt.style.context([mplhep.style.ROOT, {"font.size": 12, "legend.fontsize": 10}]):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.3))
        ref = runs[0]
        req = np.array([r["angle_deg"] for r in ref])
        ax1.plot([0, req.max()], [0, req.max()], color="0.7", lw=1, label="requested")
        series = [
            ("gflash", "GFlash", "0.35", ref, 0.0),
            ("gflash_on_grid", "GFlash on grid", "0.6", ref, 0.3),
        ]
        colors = ("tab:blue", "tab:orange", "tab:green")
        for k, rows in enumerate(runs):
            series.append(
                ("model", f"BIB-AE ({rows[0]['latent']})", colors[k % 3], rows, 0.6 + 0.3 * k)
            )
        for key, label, col, rows, dx in series:
            m = np.array([r[key][0] for r in rows])
            s = np.array([r[key][1] for r in rows])
            ax1.errorbar(
                req + dx - 0.6, m, yerr=s, fmt="o", ms=4, capsize=2, color=col, label=label
            )
        ax1.set_xlabel("requested angle [deg]")
        ax1.set_ylabel("fitted axis angle [deg]")
        ax1.legend(loc="upper left")
        markers = ("o", "x", "+")
        shown = [i for i, r in enumerate(ref) if r["angle_deg"] % 10 == 0] or list(range(len(ref)))
        for k, i in enumerate(shown):
            r = ref[i]
            col = plt.get_cmap("viridis")(k / max(len(shown) - 1, 1))
            ax2.plot(
                z, r["gflash_profile_y_mm"], color=col, lw=1.5, label=f"{r['angle_deg']:g} deg"
            )
            for j, rows in enumerate(runs):
                ax2.plot(z, rows[i]["model_profile_y_mm"], markers[j % 3], ms=3, color=col)
        kinds = ("dots", "crosses", "pluses")
        names = ", ".join(
            f"{kinds[j % 3]} BIB-AE ({rows[0]['latent']})" for j, rows in enumerate(runs)
        )
        ax2.set_xlabel("layer depth [mm]")
        ax2.set_ylabel("mean y of the layer [mm]")
        ax2.set_title(f"lines GFlash, {names}; {ref[0]['energy_gev']:g} GeV", fontsize=10)
        ax2.legend(loc="upper left", ncol=2)
        fig.tight_layout()
        fig.savefig(out, dpi=90)
        plt.close(fig)
    print(f"wrote {out}")


def g4_table(metrics_path: str) -> None:
    """Print the condition groups of an evaluation's ``metrics.json`` as a Markdown table."""
    with open(metrics_path) as f:
        cond = json.load(f)["conditions"]
    labels = cond["labels"]
    print("| E | theta | quantity | " + " | ".join(labels) + " |")
    print("|---|---|---|" + "---|" * len(labels))
    for g in cond["groups"]:
        for key, name, digits in (
            ("axis_theta_deg", "fitted axis angle [deg]", 2),
            ("visible_energy_mev", "visible energy [MeV]", 1),
        ):
            cells = []
            for sample in g["samples"]:
                v = sample[key]
                cells.append(
                    f"{v['mean']:.{digits}f} ± {v['std']:.{digits}f}" if sample["n"] else "-"
                )
            print(f"| {g['energy']} | {g['theta']} | {name} | " + " | ".join(cells) + " |")


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
    a.add_argument(
        "--angles", type=float, nargs="+", default=[0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0]
    )
    a.add_argument("--out", default=None)
    a.add_argument(
        "--latent",
        choices=["prior", "flow"],
        default=None,
        help="latent sampling (default: the model's)",
    )
    t = sub.add_parser("g4-table")
    t.add_argument("metrics", help="metrics.json of a calogen evaluate report at angles")
    g = sub.add_parser("plot")
    g.add_argument("files", nargs="+", help="JSON files written by 'axis --out'")
    g.add_argument("--out", required=True, help="PNG to write")
    args = p.parse_args()
    if args.cmd == "data":
        make_data(args.out, args.n, args.seed, args.max_deg)
    elif args.cmd == "plot":
        plot(args.files, args.out)
    elif args.cmd == "g4-table":
        g4_table(args.metrics)
    else:
        axis(args.model, args.n, args.seed, args.angles, args.energy, args.out, args.latent)


if __name__ == "__main__":
    main()
