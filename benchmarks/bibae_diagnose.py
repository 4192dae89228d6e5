"""Where a trained BIB-AE loses its showers: halo, shower-to-shower spread, latent use.

    python benchmarks/bibae_diagnose.py MODEL_DIR REFERENCE.h5 [--energy 42 58] [--max 1000]

For the reference showers (normal incidence, e.g. the held-out Geant4 test split) put on the
model's grid, their BIB-AE reconstructions (encoder mean -> decoder, with and without the
post-processor) and showers generated at the same incident energies (with and without the
post-processor), prints for showers with incident energy in ``--energy`` (GeV):

* the mean energy fraction beyond 23.4, 33.6 and 48.5 mm of the axis (the halo);
* mean +- standard deviation over showers of the energy fraction beyond 23.4 mm, of the
  fraction in layers 0-7 and of the energy-weighted centre of gravity in x (mm): a model
  whose spread is far below Geant4's makes the same shower every time;
* the KL divergence of the encoder per latent dimension (nats, mean over showers): near zero
  in every dimension means the decoder ignores the latent (posterior collapse).

The reconstructions use the reference's own visible energy on the grid as condition, as in
training. Used for docs/bibae_l2lflows.md ("Why BIB-AE small makes one shower").
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from calogen.data.voxels import SparseVoxels
from calogen.models.bibae import BIBAEGenerator, _grid_sums
from calogen.models.registry import load_generator
from calogen.models.training import gaussian_kl

HALO_RADII_MM = (23.4, 33.6, 48.5)


def summary(vox: np.ndarray, r_mm: np.ndarray, x_mm: np.ndarray) -> str:
    """Halo fractions and spreads of voxels ``[N, L, X, Y]`` (GeV)."""
    total = vox.sum((1, 2, 3))
    halo = [vox[:, :, r_mm > r].sum((1, 2)) / total for r in HALO_RADII_MM]
    front = vox[:, :8].sum((1, 2, 3)) / total
    cog_x = (vox.sum((1, 3)) * x_mm).sum(1) / total
    fractions = " / ".join(f"{h.mean():.4f}" for h in halo)
    return (
        f"halo {fractions}   beyond 23.4 mm {halo[0].mean():.4f} +- {halo[0].std():.4f}   "
        f"layers 0-7 {front.mean():.3f} +- {front.std():.3f}   "
        f"CoG x {cog_x.mean():+.3f} +- {cog_x.std():.3f} mm"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("reference")
    parser.add_argument("--energy", nargs=2, type=float, default=(42.0, 58.0), metavar="GEV")
    parser.add_argument("--max", type=int, default=1000, help="reference showers read")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    generator = load_generator(args.model)
    if not isinstance(generator, BIBAEGenerator):
        raise SystemExit(f"{args.model} is not a BIB-AE model")
    model, cfg = generator.model, generator.model.config
    data = SparseVoxels.from_file(args.reference, cfg.grid, max_showers=args.max)
    rows = np.flatnonzero((data.incident >= args.energy[0]) & (data.incident <= args.energy[1]))
    x_mm, y_mm = cfg.grid.x_centres(), cfg.grid.y_centres()
    r_mm = np.hypot(x_mm[:, None], y_mm[None, :])
    vox = data.dense(rows)
    print(f"{len(rows)} showers, {args.energy[0]:g}-{args.energy[1]:g} GeV")
    print(f"{'reference on the grid':28s}", summary(vox, r_mm, x_mm))
    with torch.no_grad():
        incident = data.incident[rows]
        base = model.base_condition(incident, model.condition_slopes(None, len(rows)))
        cond = torch.cat([base, model.evis_code(incident, _grid_sums(data)[rows])], 1)
        xyz = model.coordinates(cond)
        mu, logvar = model.encoder(model.to_network(vox), cond, xyz)
        kld = gaussian_kl(mu, logvar).mean(0)
        rec = model.decoder(mu, cond, xyz)
        for label, y in (
            ("reconstruction", rec),
            ("reconstruction + pp", model.post(rec, cond, xyz)),
        ):
            out = model.to_gev(y)[:, 0].double().numpy()
            print(f"{label:28s}", summary(out, r_mm, x_mm))
    for pp in (False, True):
        out = generator.sample_voxels(incident, seed=args.seed, post_process=pp)
        label = f"generated{' + pp' if pp else ''} ({generator.latent})"
        print(f"{label:28s}", summary(out.astype(np.float64), r_mm, x_mm))
    print("KLD per latent dimension:", " ".join(f"{v:.2f}" for v in kld.tolist()))
    print(f"KLD total: {float(kld.sum()):.2f} nats")


if __name__ == "__main__":
    main()
