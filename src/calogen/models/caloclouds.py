"""CaloClouds (Buhmann et al., 2305.04847): point-cloud diffusion for calorimeter showers.

Pieces (paper section 3):

* PointWise Net (:class:`~calogen.models.blocks.PointWiseNet`) trained as a DDPM
  (:class:`~calogen.models.ddpm.DDPM`, T = 100, quadratic β from 1e-4 to 0.02,
  ε-prediction); context = latent z, E/100·2−1, N/6000·2−1 and the time features;
* EPiC encoder (:class:`~calogen.models.blocks.EPiCEncoder`) giving μ, log σ² of z, trained
  jointly with the diffusion: ``L = w_KLD · max(KLD, m_KLD) + L_diffusion`` (eq. 3.7) with
  the KLD summed over latent dimensions and averaged over showers;
* Latent Flow (:class:`~calogen.models.flows.LatentFlow`) on the detached latents given
  (E, N), with its own Adam optimiser, trained at the same time;
* Shower Flow (:class:`~calogen.models.shower_flow.ShowerFlow`, feature set
  ``"caloclouds"``): visible energy and points per layer given E, trained at the same time
  with its own optimiser;
* occupancy correction (:class:`~calogen.calibration.OccupancyCorrection`), fitted at the
  end of training on the training showers (or again by ``calogen fit-occupancy``);
* post-diffusion calibration (:func:`~calogen.calibration.calibrate`): negative energies to
  zero, total energy to the Shower Flow's, depth-sorted layer assignment from the per-layer
  counts, centre of gravity (x, y) shifted to the training-data mean.

Training works on packed points (no padding): a batch is ``batch_size`` random showers,
of which the diffusion loss sees a random subset of at most ``points_per_shower`` points
(the points are i.i.d. given the shower's context, so this is an unbiased estimate of the
loss) and the encoder at most ``encoder_points`` points. All randomness of iteration ``i``
comes from RNGs seeded with ``(seed, i)``, so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import showerdata
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from calogen.calibration import OccupancyCorrection, calibrate, distribute_counts
from calogen.data.io import ShowerFile
from calogen.data.normalisation import Normalisation
from calogen.data.packed import PackedPoints, pack, unpack
from calogen.directions import angles_from_directions, straighten_points
from calogen.errors import UsageError
from calogen.generator import check_energies
from calogen.models import scaffold
from calogen.models.blocks import EPiCEncoder, PointWiseNet
from calogen.models.configs import resolve_config
from calogen.models.ddpm import DDPM
from calogen.models.flows import LatentFlow
from calogen.models.shower_flow import ShowerFlow, ShowerFlowConfig, shower_features
from calogen.models.training import (
    gaussian_kl,
    lr_schedule,
    read_model_info,
    save_model,
    set_lr,
)

MODEL_NAME = "caloclouds"
N_LAYERS = 30


@dataclass
class CaloCloudsConfig(scaffold.ShowerFlowTraining):
    """Hyperparameters of CaloClouds (JSON-serialisable; see :data:`PRESETS`)."""

    LABEL: ClassVar[str] = "CaloClouds"
    TUPLES: ClassVar[dict[str, type]] = {"widths": int, "latent_flow_hidden": int}

    # networks
    widths: tuple[int, ...] = (128, 256, 512, 256, 128)
    latent_dim: int = 256
    encoder_hidden: int = 128
    encoder_global: int = 16
    encoder_layers: int = 3
    latent_flow_transforms: int = 10
    latent_flow_hidden: tuple[int, ...] = (128, 128)
    latent_flow_bins: int = 8
    shower_flow: dict[str, Any] = field(
        default_factory=lambda: ShowerFlowConfig(
            feature_set="caloclouds", blocks=10, affine_per_block=6, spline_per_block=1
        ).to_dict()
    )
    # diffusion
    diffusion_steps: int = 100
    beta_1: float = 1e-4
    beta_T: float = 0.02
    schedule: str = "quadratic"
    time_embedding: str = "beta"
    time_dim: int = 3
    # conditioning scales: E / e_scale * 2 - 1, N / n_scale * 2 - 1
    e_scale_gev: float = 100.0
    n_scale: float = 6000.0
    max_points: int = 6000
    # loss
    kld_weight: float = 1e-3
    kld_min: float = 1.0
    # optimisation
    iterations: int = 800_000
    batch_size: int = 128
    points_per_shower: int | None = None
    encoder_points: int | None = None
    lr_start: float = 1e-3
    lr_end: float = 1e-4
    lr_kind: str = "exponential"
    grad_clip: float = 10.0
    flow_lr_start: float = 1e-3
    flow_lr_end: float = 1e-4
    checkpoint_every: int = 5000
    max_showers: int | None = None
    # generation
    chunk_points: int = 200_000

    def validate(self) -> None:
        self.check_positive(
            (
                "latent_dim",
                "encoder_hidden",
                "iterations",
                "batch_size",
                "diffusion_steps",
                "checkpoint_every",
                "max_points",
            )
        )
        if not self.widths:
            raise UsageError("config 'widths' must not be empty")


#: ``paper``: the published hyperparameters; ``small``: same code, trains on a CPU in < 1 h.
PRESETS: dict[str, CaloCloudsConfig] = {
    "paper": CaloCloudsConfig(),
    "small": CaloCloudsConfig(
        widths=(64, 128, 256, 128, 64),
        latent_dim=32,
        encoder_hidden=64,
        encoder_global=16,
        encoder_layers=3,
        latent_flow_transforms=4,
        latent_flow_hidden=(64, 64),
        shower_flow=ShowerFlowConfig(
            feature_set="caloclouds",
            blocks=4,
            affine_per_block=1,
            spline_per_block=1,
            hidden=(128, 128),
        ).to_dict(),
        time_embedding="sinusoidal",
        time_dim=9,
        iterations=6000,
        batch_size=16,
        points_per_shower=256,
        encoder_points=512,
        lr_start=2e-3,
        lr_end=1e-4,
        lr_kind="cosine",
        flow_lr_start=2e-3,
        flow_lr_end=1e-4,
        shower_flow_lr_start=2e-3,
        shower_flow_lr_end=1e-5,
        shower_flow_iterations=4000,
        shower_flow_batch=256,
        checkpoint_every=500,
    ),
}


def get_config(spec: str | dict[str, Any] | CaloCloudsConfig) -> CaloCloudsConfig:
    """Config from a preset name, a YAML/JSON path, a dict of overrides or a config."""
    return resolve_config(spec, PRESETS, CaloCloudsConfig)


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------


class CaloClouds(nn.Module):
    """All networks of CaloClouds plus what generation needs (normalisation, CoG target).

    Args:
        config: hyperparameters.
        normalisation: point normalisation (x, y, layer, e) ↔ [-1, 1]^4.
        cog_xy: mean centre of gravity (x, y) of the training showers, mm.
        occupancy: occupancy correction (identity if ``None``).
    """

    def __init__(
        self,
        config: CaloCloudsConfig,
        normalisation: Normalisation,
        cog_xy: tuple[float, float] = (0.0, 0.0),
        occupancy: OccupancyCorrection | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.normalisation = normalisation
        self.cog_xy = (float(cog_xy[0]), float(cog_xy[1]))
        self.occupancy = occupancy or OccupancyCorrection.identity()
        self.ddpm = DDPM(
            config.diffusion_steps,
            config.beta_1,
            config.beta_T,
            config.schedule,
            config.time_embedding,
            config.time_dim,
        )
        context_dim = config.latent_dim + 2 + self.ddpm.time_dim
        self.net = PointWiseNet(4, context_dim, config.widths, residual=True)
        self.encoder = EPiCEncoder(
            point_dim=4,
            cond_dim=2,
            latent_dim=config.latent_dim,
            hidden=config.encoder_hidden,
            global_dim=config.encoder_global,
            n_layers=config.encoder_layers,
        )
        self.latent_flow = LatentFlow(
            config.latent_dim,
            2,
            config.latent_flow_transforms,
            config.latent_flow_hidden,
            config.latent_flow_bins,
        )
        self.shower_flow = ShowerFlow(ShowerFlowConfig.from_dict(config.shower_flow))

    def conditions(self, energies: Tensor, n_points: Tensor) -> Tensor:
        """``[S, 2]``: ``E/e_scale·2−1`` and ``N/n_scale·2−1``."""
        e = energies.to(torch.float32) / self.config.e_scale_gev * 2.0 - 1.0
        n = n_points.to(torch.float32) / self.config.n_scale * 2.0 - 1.0
        return torch.stack([e, n], -1)

    def context(self, z: Tensor, cond: Tensor, t: Tensor) -> Tensor:
        """Per-shower context ``[S, latent + 2 + time]`` for time steps ``t [S]``."""
        return torch.cat([z, cond, self.ddpm.time_features(t)], -1)

    # -- generation -----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self, energies: NDArray[np.floating], generator: torch.Generator
    ) -> tuple[PackedPoints, dict[str, NDArray]]:
        """Generate calibrated packed showers (physical units) for incident energies (GeV)."""
        cfg = self.config
        energies = np.asarray(energies, np.float64).reshape(-1)
        n_showers = energies.shape[0]
        flow_out = self.shower_flow.sample(energies, generator)
        counts_layer = self.occupancy.apply(flow_out["n_per_layer"])
        totals = counts_layer.sum(1)
        clipped = np.clip(totals, 1, cfg.max_points)
        if np.any(clipped != totals):
            counts_layer = distribute_counts(counts_layer, clipped)
        counts = counts_layer.sum(1).astype(np.int64)
        e_t = torch.as_tensor(energies, dtype=torch.float32)
        cond = self.conditions(e_t, torch.as_tensor(counts))
        z = self.latent_flow.sample(cond, generator)

        points_out = np.zeros((int(counts.sum()), 4), np.float32)
        depth_out = np.zeros(int(counts.sum()), np.float32)
        offsets = np.concatenate(([0], np.cumsum(counts)))
        first = 0
        while first < n_showers:  # chunks of showers with at most chunk_points points
            last = first + 1
            while last < n_showers and offsets[last + 1] - offsets[first] <= cfg.chunk_points:
                last += 1
            sl = slice(first, last)
            c_counts = torch.as_tensor(counts[sl])
            index = torch.repeat_interleave(torch.arange(last - first), c_counts)
            z_c, cond_c = z[sl], cond[sl]
            steps = torch.empty(last - first, dtype=torch.long)

            def eps_fn(
                x: Tensor, t: int, z_c=z_c, cond_c=cond_c, index=index, steps=steps
            ) -> Tensor:
                ctx = self.context(z_c, cond_c, steps.fill_(t))
                return self.net(x, ctx, index)

            x = self.ddpm.sample(eps_fn, (int(c_counts.sum()), 4), generator)
            p0, p1 = offsets[first], offsets[last]
            depth_out[p0:p1] = x[:, 2].numpy()
            points_out[p0:p1] = self.normalisation.inverse(x).numpy()
            first = last

        shower = np.repeat(np.arange(n_showers), counts)
        calibrate(
            points_out,
            shower,
            n_showers=n_showers,
            energy_total=flow_out["e_vis"],
            counts_per_layer=counts_layer,
            depth=depth_out,
            cog_xy=np.asarray(self.cog_xy),
        )
        packed = PackedPoints(points=points_out, shower=shower, counts=counts)
        return packed, {"e_vis": flow_out["e_vis"], "n_per_layer": counts_layer}

    def model_info(self) -> dict[str, Any]:
        return {
            "normalisation": self.normalisation.to_dict(),
            "cog_xy_mm": list(self.cog_xy),
            "occupancy": self.occupancy.to_dict(),
        }

    def generation_modules(self) -> dict[str, nn.Module]:
        return {
            "net": self.net,
            "encoder": self.encoder,
            "latent_flow": self.latent_flow,
            "shower_flow": self.shower_flow,
        }


class CaloCloudsGenerator(scaffold.GeneratorBase):
    """:class:`~calogen.generator.Generator` of a trained CaloClouds model."""

    default_name = MODEL_NAME

    def sample(
        self,
        energies: NDArray[np.floating],
        directions: NDArray[np.floating] | None = None,
        *,
        seed: int | np.random.Generator | None = None,
    ) -> showerdata.Showers:
        """Showers ``(x mm, y mm, layer, e GeV)`` for incident ``energies [N]`` in GeV."""
        self.refuse_directions(directions)
        energies = check_energies(energies)
        packed, _ = self.model.generate(energies, self.torch_generator(seed))
        return unpack(packed, energies)


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainingData:
    """Packed training showers in physical units plus per-shower features."""

    points: NDArray[np.float32]  # [P, 4]
    offsets: NDArray[np.int64]  # [S + 1]
    energies: NDArray[np.float64]  # [S]
    features: dict[str, NDArray]
    #: points of each shower as simulated, when ``points`` hold only a random subset of
    #: them (a training cache, :mod:`calogen.models.training_cache`); ``None``: all stored
    n_points: NDArray[np.int64] | None = None

    @property
    def n_showers(self) -> int:
        return int(self.energies.shape[0])

    @property
    def counts(self) -> NDArray[np.int64]:
        """Points per shower (the condition N), as simulated."""
        return np.diff(self.offsets) if self.n_points is None else self.n_points

    @property
    def subsampled(self) -> bool:
        """True when ``points`` hold only a subset of each shower's points."""
        return self.n_points is not None

    def shard(self, rank: int, world_size: int) -> TrainingData:
        """Every ``world_size``-th shower from ``rank`` on (a copy): a rank's part of the data
        in distributed training (see :func:`~calogen.models.training.run_training`)."""
        if world_size < 1 or not 0 <= rank < world_size:
            raise UsageError(f"invalid shard: rank {rank} of world size {world_size}")
        keep = np.arange(rank, self.n_showers, world_size)
        if keep.size == 0:
            raise UsageError(
                f"{self.n_showers} training showers cannot feed {world_size} ranks "
                "(each rank needs at least one)"
            )
        counts = np.diff(self.offsets)[keep]
        first = np.cumsum(counts) - counts
        idx = np.repeat(self.offsets[keep] - first, counts) + np.arange(int(counts.sum()))
        return TrainingData(
            points=self.points[idx],
            offsets=np.concatenate(([0], np.cumsum(counts))).astype(np.int64),
            energies=self.energies[keep],
            features={k: v[keep] for k, v in self.features.items()},
            n_points=None if self.n_points is None else self.n_points[keep],
        )


def load_training_data(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    max_showers: int | None = None,
    *,
    straighten: bool = False,
) -> TrainingData:
    """Read one or several shower files (concatenated; at most the first ``max_showers`` of
    each) chunk by chunk into packed arrays.

    The features hold ``theta_deg``, the polar angle of each shower's direction (0 for files
    without directions: normal incidence). With ``straighten`` the points of inclined
    showers are moved into the axis frame (:func:`calogen.directions.straighten_points`)
    before the features are computed.

    A training cache (``.npz``, :mod:`calogen.models.training_cache`) is read as it was
    made: its showers (``max_showers`` was applied when it was written) and its frame, which
    must match ``straighten``.
    """
    if scaffold.is_training_cache(path):
        from calogen.models.training_cache import read_training_cache

        data, meta = read_training_cache(path)  # type: ignore[arg-type]
        if bool(meta["straightened"]) != bool(straighten):
            frame = "axis" if meta["straightened"] else "detector"
            raise UsageError(
                f"{path}: the cache holds showers in the {frame} frame; this model needs "
                f"{'the axis' if straighten else 'the detector'} frame (remake the cache)"
            )
        return data
    chunks, counts, energies = [], [], []
    feats: dict[str, list[NDArray]] = {}
    for one in scaffold.data_paths(path):
        with ShowerFile(one) as f:
            stop = len(f) if max_showers is None else min(len(f), int(max_showers))
            for chunk in f.iter_chunks(500, 0, stop):
                packed = pack(chunk)
                if straighten and chunk.directions is not None:
                    packed.points = straighten_points(
                        packed.points, packed.counts, chunk.directions
                    )
                    chunk = unpack(packed, chunk.energies, chunk.directions)
                chunks.append(packed.points)
                counts.append(packed.counts)
                energies.append(chunk.energies.reshape(-1).astype(np.float64))
                for key, value in shower_features(chunk).items():
                    feats.setdefault(key, []).append(value)
                theta = np.zeros(len(packed.counts))
                if chunk.directions is not None:
                    theta = angles_from_directions(chunk.directions)[0]
                feats.setdefault("theta_deg", []).append(theta)
    label = scaffold.data_label(path)
    if not chunks:
        raise UsageError(f"{label}: no showers to train on")
    counts_all = np.concatenate(counts)
    if np.any(counts_all == 0):
        keep_note = int((counts_all == 0).sum())
        raise UsageError(f"{label}: {keep_note} showers without points")
    return TrainingData(
        points=np.concatenate(chunks).astype(np.float32),
        offsets=np.concatenate(([0], np.cumsum(counts_all))).astype(np.int64),
        energies=np.concatenate(energies),
        features={k: np.concatenate(v) for k, v in feats.items()},
    )


def fit_normalisation(data: Any, core_radius_mm: float = 0.0) -> Normalisation:
    """The point normalisation of one file, or of several (their widest energy range), or
    of a training cache (the range it stored from its files)."""
    if scaffold.is_training_cache(data):
        from calogen.models.training_cache import training_cache_meta

        meta = training_cache_meta(data)
        return Normalisation(
            e_min_gev=float(meta["e_min_gev"]),
            e_max_gev=float(meta["e_max_gev"]),
            core_radius_mm=core_radius_mm,
        )
    fits = [Normalisation.fit(p, core_radius_mm=core_radius_mm) for p in scaffold.data_paths(data)]
    return replace(
        fits[0],
        e_min_gev=min(f.e_min_gev for f in fits),
        e_max_gev=max(f.e_max_gev for f in fits),
    )


def _subsample(
    offsets: NDArray[np.int64],
    showers: NDArray[np.int64],
    limit: int | None,
    rng: np.random.Generator,
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Point indices (into the packed array) and batch-local shower index."""
    idx, owner = [], []
    for local, s in enumerate(showers):
        lo, hi = int(offsets[s]), int(offsets[s + 1])
        n = hi - lo
        if limit is not None and n > limit:
            pick = lo + np.sort(rng.choice(n, size=limit, replace=False))
        else:
            pick = np.arange(lo, hi)
        idx.append(pick)
        owner.append(np.full(pick.shape[0], local, np.int64))
    return np.concatenate(idx), np.concatenate(owner)


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------


class CaloCloudsTrainer(scaffold.TrainerBase):
    """Joint training of diffusion + encoder, Latent Flow and Shower Flow (see module doc)."""

    name = MODEL_NAME

    def __init__(self, model: CaloClouds, data: TrainingData, seed: int, data_path: str) -> None:
        super().__init__(model, data, seed, data_path)
        cfg = model.config
        self.opt = torch.optim.Adam(
            list(model.net.parameters()) + list(model.encoder.parameters()), lr=cfg.lr_start
        )
        self.opt_flow = torch.optim.Adam(model.latent_flow.parameters(), lr=cfg.flow_lr_start)
        self.opt_shower = torch.optim.Adam(
            model.shower_flow.flow.parameters(), lr=cfg.shower_flow_lr_start
        )

    # Trainer protocol
    def modules(self) -> dict[str, nn.Module]:
        return self.model.generation_modules()

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"diffusion": self.opt, "latent_flow": self.opt_flow, "shower_flow": self.opt_shower}

    def export(self, out: Path) -> None:
        export_model(
            self.model,
            out,
            extra=scaffold.training_info(
                self.data_path, self.seed, self.data.n_showers, self.data.energies
            ),
        )

    def diffusion_losses(self, iteration: int) -> dict[str, Tensor]:
        """Diffusion + KLD losses of the batch of ``iteration`` (randomness from (seed, it)).

        Returns tensors ``loss`` (total, eq. 3.7), ``diffusion``, ``kld``, and the latents
        ``z`` and conditions ``cond`` (for the Latent Flow).
        """
        model, cfg, data = self.model, self.model.config, self.data
        rng = np.random.default_rng([self.seed, iteration])
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + iteration)
        n_batch = min(cfg.batch_size, data.n_showers)
        showers = rng.choice(data.n_showers, size=n_batch, replace=False)
        counts = torch.as_tensor(data.counts[showers])
        energies = torch.as_tensor(data.energies[showers], dtype=torch.float32)
        cond = model.conditions(energies, counts)

        # encoder on (a subset of) the full showers
        enc_idx, enc_owner = _subsample(data.offsets, showers, cfg.encoder_points, rng)
        x_enc = torch.from_numpy(model.normalisation.forward(data.points[enc_idx], rng))
        mu, logvar = model.encoder(x_enc, cond, torch.from_numpy(enc_owner))
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen)
        kld = gaussian_kl(mu, logvar).sum(-1).mean()

        # diffusion on a random subset of points
        idx, owner = _subsample(data.offsets, showers, cfg.points_per_shower, rng)
        x0 = torch.from_numpy(model.normalisation.forward(data.points[idx], rng))
        owner_t = torch.from_numpy(owner)
        t = model.ddpm.sample_t(n_batch, gen)
        noise = torch.randn(x0.shape, generator=gen)
        x_t = model.ddpm.add_noise(x0, t[owner_t], noise)
        eps = model.net(x_t, model.context(z, cond, t), owner_t)
        loss_diff = torch.nn.functional.mse_loss(eps, noise)
        loss = loss_diff + cfg.kld_weight * torch.clamp(kld, min=cfg.kld_min)
        return {"loss": loss, "diffusion": loss_diff, "kld": kld, "z": z, "cond": cond}

    def step(self, iteration: int) -> dict[str, float]:
        model, cfg, data = self.model, self.model.config, self.data
        model.train()
        losses = self.diffusion_losses(iteration)
        loss, loss_diff, kld = losses["loss"], losses["diffusion"], losses["kld"]
        z, cond = losses["z"], losses["cond"]
        rng = np.random.default_rng([self.seed, iteration, 1])

        set_lr(
            self.opt, lr_schedule(iteration, cfg.iterations, cfg.lr_start, cfg.lr_end, cfg.lr_kind)
        )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(
                list(model.net.parameters()) + list(model.encoder.parameters()), cfg.grad_clip
            )
        self.opt.step()

        # latent flow on the detached latents
        set_lr(
            self.opt_flow,
            lr_schedule(iteration, cfg.iterations, cfg.flow_lr_start, cfg.flow_lr_end, cfg.lr_kind),
        )
        loss_flow = model.latent_flow.nll(z.detach(), cond)
        self.opt_flow.zero_grad(set_to_none=True)
        loss_flow.backward()
        nn.utils.clip_grad_norm_(model.latent_flow.parameters(), 10.0)
        self.opt_flow.step()

        out = {
            "loss": float(loss_diff.detach()),
            "kld": float(kld.detach()),
            "latent_nll": float(loss_flow.detach()),
        }

        out.update(
            scaffold.shower_flow_step(model.shower_flow, self.opt_shower, data, cfg, iteration, rng)
        )
        return out


def export_model(
    model: CaloClouds, out: str | os.PathLike[str], extra: dict[str, Any] | None = None
) -> Path:
    """Write the model folder (``model.json`` + ``model.safetensors``)."""
    info = model.model_info()
    info.update(extra or {})
    return save_model(
        out,
        model_type=MODEL_NAME,
        modules=model.generation_modules(),
        config=model.config.to_dict(),
        extra=info,
    )


def build_model(
    config: CaloCloudsConfig, data: TrainingData, normalisation: Normalisation, seed: int
) -> CaloClouds:
    """A freshly initialised model (weights from ``seed``) with data-derived statistics."""
    torch.manual_seed(seed)
    cog = (float(np.mean(data.features["cog_x"])), float(np.mean(data.features["cog_y"])))
    model = CaloClouds(config, normalisation, cog_xy=cog)
    model.shower_flow.fit_preprocessing(data.features, data.energies)
    return model


def train(**kwargs: Any) -> dict[str, Any]:
    """Train CaloClouds on a shower file into ``out`` (see :func:`calogen.models.registry.train_model`).

    The finished model has its occupancy correction fitted on (up to 1,000 of) its training
    showers (``corrections=False`` skips it; ``calogen fit-occupancy`` refits it). On ``resume`` the config, seed and normalisation stored in the checkpoint are used
    (``iterations`` may still extend the run).
    """
    return scaffold.train_model(
        MODEL_NAME, PRESETS, CaloCloudsConfig, _trainer, fit_corrections=_fit_corrections, **kwargs
    )


def _fit_corrections(out: Path, data: Any, seed: int, n_showers: int) -> dict[str, Any]:
    """The end of training: the occupancy correction on the first training showers."""
    return fit_occupancy(out, data, n_showers=n_showers, seed=seed)


def point_trainer(
    trainer_cls: Any,
    build: Any,
    cfg: Any,
    data: Any,
    seed: int,
    stored: dict[str, Any] | None,
    *,
    core_radius_mm: float = 0.0,
    straighten: bool = False,
) -> Any:
    """``make_trainer`` of :func:`~calogen.models.scaffold.train_model` for the point-cloud
    models: the normalisation (the checkpoint's on resume), the training showers
    (:func:`load_training_data`), ``build(cfg, showers, normalisation, seed)`` and its
    ``trainer_cls``."""
    if stored is not None:
        normalisation = Normalisation.from_dict(stored["normalisation"])
    else:
        normalisation = fit_normalisation(data, core_radius_mm)
    train_data = load_training_data(data, cfg.max_showers, straighten=straighten)
    if train_data.subsampled and not getattr(trainer_cls, "subsampled_data", False):
        raise UsageError(
            f"{scaffold.data_label(data)}: a training cache holds a subset of each shower's "
            f"points; '{trainer_cls.name}' needs whole showers (its encoder reads the cloud)"
        )
    model = build(cfg, train_data, normalisation, seed)
    return trainer_cls(model, train_data, seed, scaffold.data_label(data))


def _trainer(
    cfg: CaloCloudsConfig, data: Any, seed: int, stored: dict[str, Any] | None
) -> CaloCloudsTrainer:
    return point_trainer(CaloCloudsTrainer, build_model, cfg, data, seed, stored)


# ---------------------------------------------------------------------------------------------
# loading and occupancy
# ---------------------------------------------------------------------------------------------


def load_model(model_dir: str | os.PathLike[str], info: dict[str, Any] | None = None) -> CaloClouds:
    """Rebuild a :class:`CaloClouds` from a model folder."""
    return scaffold.load_folder(model_dir, info, (MODEL_NAME,), "a caloclouds model", _build)


def _build(info: dict[str, Any]) -> CaloClouds:
    occupancy = info.get("occupancy")
    return CaloClouds(
        CaloCloudsConfig.from_dict(info["config"]),
        Normalisation.from_dict(info["normalisation"]),
        cog_xy=tuple(info.get("cog_xy_mm", (0.0, 0.0))),  # type: ignore[arg-type]
        occupancy=OccupancyCorrection.from_dict(occupancy) if occupancy else None,
    )


def load_generator(
    model_dir: str | os.PathLike[str], info: dict[str, Any] | None = None
) -> CaloCloudsGenerator:
    """Registry hook: the generator of a CaloClouds model folder."""
    info = read_model_info(model_dir) if info is None else info
    return CaloCloudsGenerator(
        load_model(model_dir, info), energy_range_gev=scaffold.energy_range(info)
    )


def fit_occupancy(
    model_dir: str | os.PathLike[str],
    data: str | os.PathLike[str],
    *,
    n_showers: int = 1000,
    seed: int = 0,
    geometry: str = "slab",
) -> dict[str, Any]:
    """Fit ``c_N`` from data and generated showers (identity correction while generating)."""
    from calogen.geometry import project

    ref = scaffold.occupancy_reference(data, n_showers, geometry)
    calorimeter, n_data, occ_data, energies = ref.calorimeter, ref.n_points, ref.hits, ref.energies

    model_dir = Path(model_dir)
    info = read_model_info(model_dir)
    model = load_model(model_dir, info)
    model.occupancy = OccupancyCorrection.identity()
    gen = CaloCloudsGenerator(model)
    fake = gen.sample(energies, seed=seed)
    n_gen = np.asarray(fake._num_points, np.float64)
    occ_gen = project(fake, calorimeter).hits_per_shower().astype(np.float64)
    corr = OccupancyCorrection.fit(n_data, occ_data, n_gen, occ_gen)
    return scaffold.save_occupancy(model_dir, info, corr, ref, n_gen, occ_gen)


__all__ = [
    "PRESETS",
    "CaloClouds",
    "CaloCloudsConfig",
    "CaloCloudsGenerator",
    "CaloCloudsTrainer",
    "build_model",
    "export_model",
    "fit_occupancy",
    "get_config",
    "load_generator",
    "load_model",
    "load_training_data",
    "train",
]
