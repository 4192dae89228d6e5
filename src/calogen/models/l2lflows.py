"""L2LFlows (Diefenbacher et al., 2302.11594): layer-to-layer normalizing flows on voxels.

Showers live on a ``30 x 10 x 10`` voxel grid around the impact point
(:data:`calogen.data.voxels.L2LFLOWS_GRID`; 98 % of the visible energy of the Geant4 photons).
Generation has two steps:

1. **Energy flow**: a masked autoregressive flow (MAF) with rational-quadratic spline (RQS)
   transforms for the 30 layer energies given the incident energy E.
2. **Layer flows**: 30 MAFs with RQS transforms, one per layer, for the 100 voxel energies
   of layer ``l`` given E, the energy of layer ``l`` and the voxels and energies of the five
   previous layers. The previous layers pass through an embedding network (an MLP per
   layer, trained with its flow) that reduces the ``5 x (100 + 1)`` numbers to a few
   features. Layers are generated one after another, each conditioned on the ones already
   generated.

Preprocessing (stored as buffers in the weights file):

* condition ``c = (ln E - mean) / std``;
* layer energies: ``ln(E_l + n_l)`` with ``n_l = noise_layer_gev (1 + u)``, ``u ~ U[0, 1)``
  (so empty layers are finite), standardised per layer; sampling inverts with
  ``E_l = max(exp(.) - 1.5 noise_layer_gev, 0)``;
* voxels: uniform noise ``u noise_gev`` is added to every voxel, the voxels of a layer are
  divided by their (noisy) sum, the fractions ``f`` are mapped with
  ``logit(alpha + (1 - 2 alpha) f)`` and standardised per voxel. Sampling inverts the logit,
  clips to ``[0, 1]``, renormalises the fractions to one and multiplies by the layer energy
  of step 1. Voxels below ``min_energy_gev`` make no point.

The flows are zuko MAFs (:class:`zuko.flows.MAF` with
:class:`zuko.transforms.MonotonicRQSTransform`); consecutive transforms alternate the
autoregressive order. ``layer_passes`` groups the 100 voxels into blocks for the
autoregressive masks: ``None`` is fully autoregressive (100 sequential network passes per
transform when sampling, as in the paper); 10 makes sampling 10x faster (the ``small``
preset). All randomness of training iteration ``i`` comes from RNGs seeded with
``(seed, i)`` so that a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import showerdata
import torch
import zuko
from numpy.typing import NDArray
from torch import Tensor, nn
from zuko.transforms import MonotonicRQSTransform

from calogen.data.voxels import (
    SparseVoxels,
    VoxelGrid,
    mirror_flips,
    mirror_voxels,
    voxels_to_points,
)
from calogen.errors import UsageError
from calogen.generator import as_rng, check_energies
from calogen.geometry import CELL_SIZE_MM
from calogen.models import scaffold
from calogen.models.configs import resolve_config
from calogen.models.training import (
    lr_schedule,
    read_model_info,
    set_lr,
)

MODEL_NAME = "l2lflows"


@dataclass
class L2LFlowsConfig(scaffold.ValidationTraining):
    """Hyperparameters of L2LFlows (JSON-serialisable; see :data:`PRESETS`).

    ``validation_showers`` / ``validate_every`` (:class:`~calogen.models.scaffold.
    ValidationTraining`): N held-out showers (those right after the ``max_showers`` training
    showers of the file, or its last N without ``max_showers``) whose
    :func:`validation_losses` (``val_loss``: the NLL of both flows, the training loss) is
    logged every ``validate_every`` iterations; 0 (default) is off.
    """

    LABEL: ClassVar[str] = "L2LFlows"
    TUPLES: ClassVar[dict[str, type]] = {
        "energy_hidden": int,
        "layer_hidden": int,
        "embedding_hidden": int,
    }

    # grid
    n_layers: int = 30
    nx: int = 10
    ny: int = 10
    cell_size_mm: float = CELL_SIZE_MM
    # energy flow
    energy_transforms: int = 6
    energy_hidden: tuple[int, ...] = (64, 64)
    energy_bins: int = 8
    # layer flows
    layer_transforms: int = 8
    layer_hidden: tuple[int, ...] = (256, 256)
    layer_bins: int = 8
    layer_passes: int | None = None
    context_layers: int = 5
    embedding_hidden: tuple[int, ...] = (256,)
    embedding_dim: int = 64
    spline_bound: float = 6.0
    # preprocessing
    noise_gev: float = 1e-7
    noise_layer_gev: float = 1e-6
    alpha: float = 1e-6
    # optimisation
    iterations: int = 100_000
    batch_size: int = 256
    lr_start: float = 1e-4
    lr_end: float = 1e-6
    lr_kind: str = "cosine"
    grad_clip: float = 10.0
    checkpoint_every: int = 2000
    max_showers: int | None = None
    stats_showers: int = 10_000
    #: Mirror each training shower at random in x and in y (the grid is centred on the axis
    #: and the showers are at normal incidence: both are symmetries of the physics), four
    #: showers' worth of each (:func:`calogen.data.voxels.mirror_flips`).
    augment_mirror: bool = False
    # generation
    min_energy_gev: float = 1e-5
    jitter: bool = False
    generation_batch: int = 1000

    def validate(self) -> None:
        positive = (
            "n_layers",
            "nx",
            "ny",
            "energy_transforms",
            "energy_bins",
            "layer_transforms",
            "layer_bins",
            "embedding_dim",
            "iterations",
            "batch_size",
            "checkpoint_every",
            "generation_batch",
            "stats_showers",
        )
        self.check_positive(positive, "L2LFlows config")
        self.check_validation("L2LFlows config")
        if self.context_layers < 0:
            raise UsageError("L2LFlows config 'context_layers' must be >= 0")
        if not 0 < self.alpha < 0.5:
            raise UsageError("L2LFlows config 'alpha' must be in (0, 0.5)")
        if self.noise_gev <= 0 or self.noise_layer_gev <= 0:
            raise UsageError("L2LFlows config noise levels must be > 0")
        if self.layer_passes is not None and self.layer_passes <= 0:
            raise UsageError("L2LFlows config 'layer_passes' must be > 0 or null")

    @property
    def grid(self) -> VoxelGrid:
        return VoxelGrid(self.n_layers, self.nx, self.ny, self.cell_size_mm)


#: ``paper``: the published setup as far as known (see docs/bibae_l2lflows.md);
#: ``small``: same code, about 13 min of CPU time on one thread (0.55 s per iteration;
#: 13 min wall with the other core of the shared 2-core machine busy), see
#: docs/bibae_l2lflows.md section 4.
PRESETS: dict[str, L2LFlowsConfig] = {
    "paper": L2LFlowsConfig(),
    "small": L2LFlowsConfig(
        energy_transforms=4,
        energy_hidden=(64, 64),
        layer_transforms=2,
        layer_hidden=(48, 48),
        layer_bins=6,
        layer_passes=10,
        embedding_hidden=(64,),
        embedding_dim=16,
        iterations=1400,
        batch_size=64,
        lr_start=1e-3,
        lr_end=1e-5,
        checkpoint_every=200,
        stats_showers=5000,
    ),
}


def get_config(spec: str | dict[str, Any] | L2LFlowsConfig) -> L2LFlowsConfig:
    """Config from a preset name, a YAML/JSON path, a dict of overrides or a config."""
    return resolve_config(spec, PRESETS, L2LFlowsConfig)


# ---------------------------------------------------------------------------------------------
# networks
# ---------------------------------------------------------------------------------------------


def make_maf(
    features: int,
    context: int,
    transforms: int,
    hidden: Sequence[int],
    bins: int,
    passes: int | None = None,
    bound: float = 6.0,
) -> zuko.flows.Flow:
    """A conditional MAF with monotonic rational-quadratic spline transforms (zuko)."""
    return zuko.flows.MAF(
        features,
        context,
        transforms=int(transforms),
        univariate=partial(MonotonicRQSTransform, bound=float(bound)),
        shapes=[(bins,), (bins,), (bins - 1,)],
        hidden_features=tuple(int(h) for h in hidden),
        passes=passes,
    )


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.LeakyReLU(0.1))
    return nn.Sequential(*layers)


class L2LFlows(nn.Module):
    """Energy flow, 30 layer flows with their embedding networks, and the preprocessing."""

    def __init__(self, config: L2LFlowsConfig) -> None:
        super().__init__()
        self.config = cfg = config
        n_layers, n_vox = cfg.n_layers, cfg.nx * cfg.ny
        self.n_layers, self.n_vox = n_layers, n_vox
        self.energy_flow = make_maf(
            n_layers,
            1,
            cfg.energy_transforms,
            cfg.energy_hidden,
            cfg.energy_bins,
            bound=cfg.spline_bound,
        )
        k = cfg.context_layers
        ctx = 2 + (cfg.embedding_dim if k else 0)
        self.layer_flows = nn.ModuleList(
            make_maf(
                n_vox,
                ctx,
                cfg.layer_transforms,
                cfg.layer_hidden,
                cfg.layer_bins,
                cfg.layer_passes,
                cfg.spline_bound,
            )
            for _ in range(n_layers)
        )
        self.embeddings = nn.ModuleList(
            _mlp([k * (n_vox + 1), *cfg.embedding_hidden, cfg.embedding_dim])
            if k
            else nn.Identity()
            for _ in range(n_layers)
        )
        self.register_buffer("cond_stats", torch.tensor([0.0, 1.0]))
        self.register_buffer("e_mean", torch.zeros(n_layers))
        self.register_buffer("e_std", torch.ones(n_layers))
        self.register_buffer("v_mean", torch.zeros(n_layers, n_vox))
        self.register_buffer("v_std", torch.ones(n_layers, n_vox))

    # -- preprocessing -------------------------------------------------------------------------
    def _raw(
        self, voxels: NDArray, rng: np.random.Generator
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Unstandardised ``ln(E_l + noise)`` ``[B, L]`` and logit fractions ``[B, L, V]``."""
        cfg = self.config
        vox = np.asarray(voxels, np.float64).reshape(-1, self.n_layers, self.n_vox)
        vox = np.maximum(vox, 0.0)
        layer_e = vox.sum(-1)
        log_e = np.log(layer_e + cfg.noise_layer_gev * (1.0 + rng.random(layer_e.shape)))
        noisy = vox + cfg.noise_gev * rng.random(vox.shape)
        frac = noisy / noisy.sum(-1, keepdims=True)
        p = cfg.alpha + (1.0 - 2.0 * cfg.alpha) * frac
        return log_e, np.log(p) - np.log1p(-p)

    def fit_preprocessing(
        self, voxels: NDArray, incident: NDArray, rng: np.random.Generator
    ) -> None:
        """Standardisation of condition, layer energies and voxel logits from data."""
        log_e, logit = self._raw(voxels, rng)
        self.e_mean.copy_(torch.as_tensor(log_e.mean(0)))
        self.e_std.copy_(torch.as_tensor(np.maximum(log_e.std(0), 1e-3)))
        self.v_mean.copy_(torch.as_tensor(logit.mean(0)))
        self.v_std.copy_(torch.as_tensor(np.maximum(logit.std(0), 1e-3)))
        ln_inc = np.log(np.asarray(incident, np.float64).reshape(-1))
        self.cond_stats.copy_(torch.tensor([ln_inc.mean(), max(ln_inc.std(), 1e-3)]))

    def condition(self, incident: NDArray | Tensor) -> Tensor:
        """``[B, 1]`` standardised ``ln E``."""
        e = torch.as_tensor(np.asarray(incident, np.float64).reshape(-1, 1), dtype=torch.float32)
        return (e.log() - self.cond_stats[0]) / self.cond_stats[1]

    def preprocess(
        self, voxels: NDArray, incident: NDArray, rng: np.random.Generator
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Network inputs: condition ``[B, 1]``, layer energies ``[B, L]``, voxels ``[B, L, V]``."""
        log_e, logit = self._raw(voxels, rng)
        x_e = (torch.as_tensor(log_e, dtype=torch.float32) - self.e_mean) / self.e_std
        y = (torch.as_tensor(logit, dtype=torch.float32) - self.v_mean) / self.v_std
        return self.condition(incident), x_e, y

    def layer_context(self, layer: int, c: Tensor, x_e: Tensor, y: Tensor) -> Tensor:
        """Context of layer flow ``layer``: ``c``, its energy and the embedded previous layers.

        ``x_e [B, L]`` and ``y [B, L, V]`` must hold (at least) layers ``< layer`` and the
        energy of ``layer``.
        """
        k = self.config.context_layers
        parts = [c, x_e[:, layer : layer + 1]]
        if k:
            b = c.shape[0]
            prev_y = torch.zeros(b, k, self.n_vox, dtype=y.dtype)
            prev_e = torch.zeros(b, k, dtype=x_e.dtype)
            for j in range(1, k + 1):
                if layer - j >= 0:
                    prev_y[:, j - 1] = y[:, layer - j]
                    prev_e[:, j - 1] = x_e[:, layer - j]
            parts.append(self.embeddings[layer](torch.cat([prev_y.flatten(1), prev_e], 1)))
        return torch.cat(parts, 1)

    # -- likelihood -----------------------------------------------------------------------------
    def nll(self, c: Tensor, x_e: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Energy-flow NLL per layer and the sum over layers of the per-voxel layer NLLs."""
        nll_e = -self.energy_flow(c).log_prob(x_e).mean() / self.n_layers
        nll_v = x_e.new_zeros(())
        for layer in range(self.n_layers):
            ctx = self.layer_context(layer, c, x_e, y)
            nll_v = nll_v - self.layer_flows[layer](ctx).log_prob(y[:, layer]).mean() / self.n_vox
        return nll_e, nll_v

    # -- sampling --------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_voxels(self, incident: NDArray, generator: torch.Generator) -> NDArray[np.float32]:
        """Voxel energies ``[N, L, nx, ny]`` (GeV) for incident energies (GeV)."""
        cfg = self.config
        incident = np.asarray(incident, np.float64).reshape(-1)
        out = np.zeros((incident.shape[0], self.n_layers, self.n_vox), np.float32)
        for start in range(0, incident.shape[0], cfg.generation_batch):
            sl = slice(start, min(start + cfg.generation_batch, incident.shape[0]))
            out[sl] = self._sample_chunk(incident[sl], generator)
        return out.reshape(-1, self.n_layers, cfg.nx, cfg.ny)

    def _sample_chunk(self, incident: NDArray, generator: torch.Generator) -> NDArray:
        c = self.condition(incident)
        b = c.shape[0]
        z = torch.randn((b, self.n_layers), generator=generator)
        x_e = self.energy_flow(c).transform.inv(z)
        y = torch.zeros(b, self.n_layers, self.n_vox)
        for layer in range(self.n_layers):
            ctx = self.layer_context(layer, c, x_e, y)
            z = torch.randn((b, self.n_vox), generator=generator)
            y[:, layer] = self.layer_flows[layer](ctx).transform.inv(z)
        return self.decode(x_e, y).numpy()

    def decode(self, x_e: Tensor, y: Tensor) -> Tensor:
        """Inverse preprocessing: voxel energies ``[B, L, V]`` (GeV) from network variables."""
        cfg = self.config
        layer_e = torch.exp(x_e.double() * self.e_std + self.e_mean) - 1.5 * cfg.noise_layer_gev
        layer_e = layer_e.clamp_min(0.0)
        logit = y.double() * self.v_std + self.v_mean
        frac = ((torch.sigmoid(logit) - cfg.alpha) / (1.0 - 2.0 * cfg.alpha)).clamp(0, 1)
        frac = frac / frac.sum(-1, keepdim=True).clamp_min(1e-12)
        return (frac * layer_e.unsqueeze(-1)).float()

    def generation_modules(self) -> dict[str, nn.Module]:
        return {"l2lflows": self}


class L2LFlowsGenerator(scaffold.GeneratorBase):
    """:class:`~calogen.generator.Generator` of a trained L2LFlows model (normal incidence)."""

    default_name = MODEL_NAME

    def sample_voxels(
        self, energies: NDArray[np.floating], *, seed: int | np.random.Generator | None = None
    ) -> NDArray[np.float32]:
        """Voxels ``[N, 30, 10, 10]`` in GeV."""
        return self.model.sample_voxels(check_energies(energies), self.torch_generator(seed))

    def sample(
        self,
        energies: NDArray[np.floating],
        directions: NDArray[np.floating] | None = None,
        *,
        seed: int | np.random.Generator | None = None,
    ) -> showerdata.Showers:
        """Showers ``(x mm, y mm, layer, e GeV)``: one point per voxel above the cut."""
        self.refuse_directions(directions)
        energies = check_energies(energies)
        rng = as_rng(seed)
        vox = self.model.sample_voxels(energies, self.torch_generator(rng))
        cfg = self.model.config
        return voxels_to_points(
            vox,
            self.grid,
            energies,
            min_energy_gev=cfg.min_energy_gev,
            jitter=cfg.jitter,
            rng=rng,
        )


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------


class L2LFlowsTrainer(scaffold.TrainerBase):
    """Joint maximum-likelihood training of the energy flow and all layer flows.

    The flows share no parameters, so one optimiser over all of them is the same as training
    them separately (Adam is per parameter); one iteration updates every flow on the same
    batch of showers.
    """

    name = MODEL_NAME

    def __init__(self, model: L2LFlows, data: SparseVoxels, seed: int, data_path: str) -> None:
        super().__init__(model, data, seed, data_path)
        self.opt = torch.optim.Adam(model.parameters(), lr=model.config.lr_start)

    def modules(self) -> dict[str, nn.Module]:
        return self.model.generation_modules()

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"flows": self.opt}

    def export(self, out: Path) -> None:
        export_model(self.model, out, extra=_training_info(self.data, self.data_path, self.seed))

    def step(self, iteration: int) -> dict[str, float]:
        model, cfg, data = self.model, self.model.config, self.data
        model.train()
        rng = np.random.default_rng([self.seed, iteration])
        rows = rng.choice(len(data), size=min(cfg.batch_size, len(data)), replace=False)
        voxels = data.dense(rows)
        if cfg.augment_mirror:
            mirror_voxels(voxels, mirror_flips(rng.random((len(rows), 2)), None, False))
        c, x_e, y = model.preprocess(voxels, data.incident[rows], rng)
        nll_e, nll_v = model.nll(c, x_e, y)
        loss = nll_e + nll_v
        set_lr(
            self.opt, lr_schedule(iteration, cfg.iterations, cfg.lr_start, cfg.lr_end, cfg.lr_kind)
        )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        self.opt.step()
        return {
            "loss": float(loss.detach()),
            "nll_energy": float(nll_e.detach()),
            "nll_voxels": float(nll_v.detach()) / model.n_layers,
        }

    def validation_losses(self) -> dict[str, float]:
        return validation_losses(self.model, self.validation)


@torch.no_grad()
def validation_losses(
    model: L2LFlows,
    voxels: SparseVoxels,
    *,
    seed: int = scaffold.VALIDATION_SEED,
    batch_size: int = scaffold.VALIDATION_BATCH,
) -> dict[str, float]:
    """The training loss on held-out showers, in eval mode with fixed noise.

    ``val_loss``: energy-flow NLL per layer plus the sum over layers of the per-voxel
    layer-flow NLLs (nats), averaged over the showers of ``voxels``, as the training's
    ``loss``; ``val_nll_energy`` and ``val_nll_voxels`` (per layer) as ``nll_energy`` and
    ``nll_voxels``. The dequantisation noise comes from ``seed`` and the showers are taken in
    order, ``batch_size`` at a time, so the result is a function of the weights alone.
    """
    was_training = model.training
    model.eval()
    rng = np.random.default_rng([int(seed), 2**32 - 1])
    n = len(voxels)
    sum_e = sum_v = 0.0
    try:
        for first in range(0, n, int(batch_size)):
            rows = np.arange(first, min(first + int(batch_size), n))
            c, x_e, y = model.preprocess(voxels.dense(rows), voxels.incident[rows], rng)
            nll_e, nll_v = model.nll(c, x_e, y)
            sum_e += float(nll_e) * len(rows)
            sum_v += float(nll_v) * len(rows)
    finally:
        model.train(was_training)
    return {
        "val_loss": (sum_e + sum_v) / n,
        "val_nll_energy": sum_e / n,
        "val_nll_voxels": sum_v / n / model.n_layers,
    }


def _training_info(data: SparseVoxels, path: str, seed: int) -> dict[str, Any]:
    return scaffold.training_info(
        path, seed, len(data), data.incident, mean_containment=float(np.mean(data.containment))
    )


def export_model(
    model: L2LFlows, out: str | os.PathLike[str], extra: dict[str, Any] | None = None
) -> Path:
    """Write the model folder (``model.json`` + ``model.safetensors``)."""
    return scaffold.export_voxel_model(model, out, MODEL_NAME, extra)


def build_model(config: L2LFlowsConfig, data: SparseVoxels, seed: int) -> L2LFlows:
    """A freshly initialised model (weights from ``seed``) with data-derived preprocessing."""
    torch.manual_seed(seed)
    model = L2LFlows(config)
    rng = np.random.default_rng([seed, 2**31])
    n = min(len(data), config.stats_showers)
    rows = rng.choice(len(data), size=n, replace=False)
    model.fit_preprocessing(data.dense(rows), data.incident[rows], rng)
    return model


def train(**kwargs: Any) -> dict[str, Any]:
    """Train L2LFlows on a shower file into ``out`` (see :func:`calogen.models.registry.train_model`).

    The showers are voxelised on the configured grid first. On ``resume`` the config and seed
    stored in the checkpoint are used (``iterations`` may still extend the run); the
    preprocessing statistics are recomputed from the same data and seed, then overwritten by
    the checkpoint's buffers.
    """
    return scaffold.train_model(MODEL_NAME, PRESETS, L2LFlowsConfig, _trainer, **kwargs)


_trainer = scaffold.voxel_trainer(L2LFlowsTrainer, build_model)


def load_model(model_dir: str | os.PathLike[str], info: dict[str, Any] | None = None) -> L2LFlows:
    """Rebuild :class:`L2LFlows` from a model folder."""
    return scaffold.load_config_model(model_dir, info, MODEL_NAME, L2LFlows, L2LFlowsConfig)


def load_generator(
    model_dir: str | os.PathLike[str], info: dict[str, Any] | None = None
) -> L2LFlowsGenerator:
    """Registry hook: the generator of an L2LFlows model folder."""
    info = read_model_info(model_dir) if info is None else info
    return L2LFlowsGenerator(
        load_model(model_dir, info), energy_range_gev=scaffold.energy_range(info)
    )


__all__ = [
    "PRESETS",
    "L2LFlows",
    "L2LFlowsConfig",
    "L2LFlowsGenerator",
    "L2LFlowsTrainer",
    "build_model",
    "export_model",
    "get_config",
    "load_generator",
    "load_model",
    "make_maf",
    "train",
    "validation_losses",
]
