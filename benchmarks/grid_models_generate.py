"""Generate the candidate files for the BIB-AE / L2LFlows evaluation (docs/bibae_l2lflows.md).

Writes, into ``--out``, one showerdata file per candidate with incident energies uniform in
10-90 GeV (the same energies for every candidate, from ``--seed``):

* ``l2lflows.h5`` — the L2LFlows model (``--l2lflows DIR``);
* ``bibae.h5`` — the BIB-AE with the latent drawn from the prior (``--bibae DIR``);
* ``bibae_flow.h5`` — the same BIB-AE with the latent drawn from its latent flow;
* ``bibae_nopp.h5`` — the same BIB-AE without the post-processor (to see what it does);
* ``bibae_norescale.h5`` — the same BIB-AE without the rescaling to the visible energy;
* ``gflash.h5`` — GFlash.

Then ``calogen evaluate --reference <Geant4 file> --candidate ...`` compares them::

    python benchmarks/grid_models_generate.py --l2lflows /work/runs/l2lflows_small \
        --bibae /work/runs/bibae_small --out /work/runs/eval_grid -n 3000
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from calogen.generation import generate_to_file
from calogen.models.registry import load_generator
from calogen.reference.gflash import GFlash


class _NoPostProcessor:
    """Wraps a BIB-AE generator so that it skips the post-processor."""

    def __init__(self, gen) -> None:  # type: ignore[no-untyped-def]
        self.gen = gen
        self.name = gen.name + "-nopp"
        self.supports_direction = gen.supports_direction
        self.energy_range_gev = gen.energy_range_gev
        self.max_points = gen.max_points

    def sample(self, energies, directions=None, *, seed=None):  # type: ignore[no-untyped-def]
        from calogen.data.voxels import voxels_to_points
        from calogen.generator import as_rng

        rng = as_rng(seed)
        vox = self.gen.sample_voxels(energies, directions, seed=rng, post_process=False)
        cfg = self.gen.model.config
        return voxels_to_points(vox, self.gen.grid, energies, min_energy_gev=cfg.min_energy_gev)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--l2lflows", default=None)
    p.add_argument("--bibae", default=None)
    p.add_argument("--gflash", action="store_true", help="also make gflash.h5")
    p.add_argument("--out", required=True)
    p.add_argument("-n", type=int, default=3000)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    energies = np.random.default_rng([args.seed, 0]).uniform(10.0, 90.0, args.n)
    jobs = []
    if args.l2lflows:
        jobs.append(("l2lflows", load_generator(args.l2lflows)))
    if args.bibae:
        gen = load_generator(args.bibae)
        gen.latent = "prior"
        jobs.append(("bibae", gen))
        flow = load_generator(args.bibae)
        flow.latent = "flow"
        jobs.append(("bibae_flow", flow))
        jobs.append(("bibae_nopp", _NoPostProcessor(load_generator(args.bibae))))
        raw = load_generator(args.bibae)
        raw.rescale = False
        jobs.append(("bibae_norescale", raw))
    if args.gflash:
        jobs.append(("gflash", GFlash()))
    for name, gen in jobs:
        t0 = time.perf_counter()
        generate_to_file(
            gen,
            energies,
            out / f"{name}.h5",
            seed=args.seed,
            chunk_size=500,
            overwrite=True,
            progress=False,
        )
        dt = time.perf_counter() - t0
        print(f"{name}: {args.n} showers in {dt:.1f} s ({1000 * dt / args.n:.1f} ms/shower)")


if __name__ == "__main__":
    main()
