"""CaloClouds II and CaloClouds II (CM) (Buhmann et al., 2309.05704).

Compared with CaloClouds (:mod:`calogen.models.caloclouds`) there is no encoder and no Latent
Flow: the PointWise Net (:class:`~calogen.models.blocks.PointWiseNet`) is conditioned only on
``E/100·2−1``, ``N/6000·2−1`` and Fourier features of the EDM noise input
``c_noise = ln σ / 4``. Pieces:

* EDM diffusion (:mod:`calogen.models.edm`): preconditioning with ``σ_data = 0.5``,
  log-normal training noise (``P_mean = −1.2``, ``P_std = 1.2``) and the EDM loss weight,
  EMA of the weights, Heun sampler (13 steps = 25 evaluations, σ from 80 to 0.002, ρ = 7; the
  number of steps is a sampler argument);
* extended Shower Flow (:class:`~calogen.models.shower_flow.ShowerFlow`, feature set
  ``"caloclouds2"``): number of points, visible energy, centre of gravity (x, y, z), points
  per layer (30) and energy per layer (30), trained at the same time with its own optimiser;
* post-diffusion calibration (:func:`~calogen.calibration.calibrate`): negative energies to
  zero, depth-sorted layer assignment from the per-layer counts, each layer's energy rescaled
  to the Shower Flow's, centre of gravity (x, y) moved to the Shower Flow's prediction; an
  optional occupancy correction (``calogen fit-occupancy``);
* consistency distillation (:mod:`calogen.models.consistency`, :func:`distill`): student and
  target start from the EMA teacher, 18-step Karras grid, one Heun step of the teacher per
  update, target EMA 0.95, L2 loss; one evaluation at σ_max to sample, or multi-step
  consistency sampling (``cm_sigmas``).

Training works on packed points: a batch is ``batch_size`` random showers of which the loss
sees a random subset of at most ``points_per_shower`` points each (the points are i.i.d.
given the shower's conditions, so the subset loss is an unbiased estimate of the full one; see
``docs/caloclouds2.md``). Each point gets its own noise level: the network treats points
independently, so this is the same objective with less variance per step. All randomness of
iteration ``i`` comes from RNGs seeded with ``(seed, i)``; resumed runs repeat uninterrupted
ones exactly.
"""

from __future__ import annotations

import copy
import itertools
import math
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

from calogen.calibration import (
    CORE_AZIMUTH_RADIUS_MM,
    HALO_CLUMP_RADIUS_MM,
    HALO_CLUMP_SPEC,
    AxisShiftCorrection,
    AxisTilt,
    DepthStretch,
    OccupancyCorrection,
    RadialCorrection,
    ShowerClasses,
    calibrate,
    clump_halo_azimuth,
    depth_mm,
    depth_stretch_features,
    distribute_counts,
    equalise_core_azimuth,
    halo_clumps_on,
    map_log_radius,
    parse_halo_clump,
    radius_mm,
    scale_radius,
    shift_cog,
    shower_depth,
)
from calogen.data.normalisation import Normalisation
from calogen.data.packed import PackedPoints, unpack
from calogen.directions import angles_from_directions, incline_points, straighten_points
from calogen.errors import UsageError
from calogen.generator import check_directions, check_energies
from calogen.geometry import slab
from calogen.models import scaffold
from calogen.models.blocks import PointWiseNet, hidden_unit_importance, prune_point_network
from calogen.models.caloclouds import TrainingData, load_training_data, point_trainer
from calogen.models.configs import resolve_config
from calogen.models.consistency import (
    DISTANCES,
    ConsistencyDistiller,
    ConsistencyFunction,
    consistency_sample,
    consistency_sigmas,
)
from calogen.models.edm import (
    EMA,
    EDMDenoiser,
    edm_loss,
    ema_warmup_decay,
    fourier_features,
    heun_evaluations,
    heun_sample,
    per_noise_level,
    sample_training_sigma,
)
from calogen.models.shower_flow import (
    ANGLE_SCALE_DEG,
    CORE_COG_RADIUS_MM,
    ShowerFlow,
    ShowerFlowConfig,
)
from calogen.models.training import (
    MODEL_JSON,
    lr_schedule,
    read_model_info,
    save_model,
    set_lr,
)

MODEL_NAME = "caloclouds2"
CM_NAME = "caloclouds2-cm"
N_LAYERS = 30
#: depth of each layer's silicon mid-plane behind the front face, mm (the slab's)
LAYER_DEPTH_MM = slab().layer_z_mm
#: the depth condition of ``depth_condition`` models is ``depth / DEPTH_SCALE_LAYERS - 1``
#: (depth: energy-weighted mean layer index; [-1, 1] for layers 0-30)
DEPTH_SCALE_LAYERS = 15.0
#: the visible-energy condition of ``visible_condition`` models:
#: ``(E_vis / E / VISIBLE_SHARE_REF - 1) * VISIBLE_GAIN`` (photons in the slab: E_vis / E is
#: 0.028 +- 0.0025, so about -0.3 +- 0.4)
VISIBLE_SHARE_REF = 0.03
VISIBLE_GAIN = 5.0


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------


@dataclass
class _PointTraining(scaffold.ModelConfig):
    """Optimisation fields shared by the teacher's and the distillation's configs: batches of
    ``batch_size`` showers with at most ``points_per_shower`` points each, the optimiser and
    its learning-rate schedule (:func:`~calogen.models.training.lr_schedule`)."""

    iterations: int = 800_000
    batch_size: int = 128
    points_per_shower: int | None = None
    optimizer: str = "radam"
    lr_start: float = 1e-4
    lr_end: float = 1e-4
    lr_kind: str = "constant"
    lr_warmup: int = 0
    grad_clip: float = 10.0


@dataclass
class CaloClouds2Config(scaffold.ShowerFlowTraining, _PointTraining):
    """Hyperparameters of the CaloClouds II teacher (JSON-serialisable; see :data:`PRESETS`)."""

    LABEL: ClassVar[str] = "CaloClouds II"
    TUPLES: ClassVar[dict[str, type]] = {"widths": int}

    # network
    widths: tuple[int, ...] = (128, 256, 512, 256, 128)
    time_features: int = 16
    residual: bool = False
    shower_flow: dict[str, Any] = field(
        default_factory=lambda: ShowerFlowConfig(
            feature_set="caloclouds2", blocks=10, affine_per_block=6, spline_per_block=1
        ).to_dict()
    )
    # EDM
    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    sampler_steps: int = 13
    # conditioning scales: E / e_scale * 2 - 1, N / n_scale * 2 - 1
    e_scale_gev: float = 100.0
    n_scale: float = 6000.0
    max_points: int = 6000
    # optimisation (see _PointTraining)
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    checkpoint_every: int = 5000
    max_showers: int | None = None
    # generation
    chunk_points: int = 200_000
    #: normalised network outputs are clipped to [-output_clip, output_clip] before the
    #: inverse normalisation (the data fill [-1, 1]; guards the exponential energy map)
    output_clip: float = 1.2
    #: r0 (mm) of the asinh compression of the transverse radius in the normalisation
    #: (0: linear x, y as in the paper); see :class:`~calogen.data.normalisation.Normalisation`
    core_radius_mm: float = 0.0
    #: mirror each generated shower in x and in y with probability 1/2 each (after the
    #: calibration): the mirror symmetry of normal incidence, which removes any left-right
    #: bias of the network's tails from the centre of gravity
    mirror: bool = True
    #: mirror each generated *point* instead of each shower (x only at normal incidence, y
    #: always; in the axis frame, before the calibration): the points of a shower are drawn
    #: independently given its conditions, so this is the exact mirror-symmetrisation of the
    #: network's point distribution. A network that leans a little at normal incidence
    #: (trained mostly on inclined showers) then gives a symmetric core instead of showers
    #: mirrored as a whole, whose lean the x mirroring turns into a too-wide centre of
    #: gravity (docs/angles.md)
    mirror_points: bool = False
    #: with ``mirror_points``: at normal incidence rotate each point about the axis by the
    #: azimuth of its two mirror draws (``atan2(n_y, n_x)``: uniform) instead of mirroring
    #: it: the full rotational symmetry of normal incidence. A one-step network's x and y
    #: come out partly independent, which puts 10-15 % more energy near the x and y axes
    #: than on the diagonals at the same radius (a product of heavy-tailed marginals);
    #: rotated, the cells on the diagonals get their share (docs/default_model.md).
    #: Inclined showers keep the y mirror
    rotate_points: bool = False
    #: angle-aware variant: condition the Shower Flow (its config needs ``angle: true``) and
    #: the point network on the incident polar angle theta (``theta / 30 deg - 1``); showers
    #: are learnt in the axis frame (:func:`~calogen.directions.straighten_points`: each
    #: layer shifted by minus the axis offset, then rotated by -phi) and generated showers are
    #: inclined back (:func:`~calogen.directions.incline_points`)
    directions: bool = False
    #: condition the point network on the shower's depth too: its energy-weighted mean
    #: layer (from the Shower Flow's energies per layer when generating, ``depth / 15 - 1``).
    #: A shower that starts late is younger, so narrower, at a given layer. Measured on the
    #: default's recipe: the teacher gets that without it, and the distilled student with it
    #: was worse (docs/default_model.md, "The radial map by layers relative to the shower's
    #: depth"); kept as an option, off in every preset
    depth_condition: bool = False
    #: condition the point network on the shower's visible energy too, as a share of the
    #: incident energy (``(E_vis / E / 0.03 - 1) * 5``; E_vis from the Shower Flow's energies
    #: per layer when generating): in Geant4 a shower with more visible energy carries the
    #: extra in its halo, the core's share falls; scaled per layer, a model's core carries it
    visible_condition: bool = False

    def validate(self) -> None:
        self.check_positive(
            (
                "iterations",
                "batch_size",
                "sampler_steps",
                "checkpoint_every",
                "max_points",
                "time_features",
                "chunk_points",
            )
        )
        if self.time_features % 2:
            raise UsageError("config 'time_features' must be even")
        if not self.widths:
            raise UsageError("config 'widths' must not be empty")
        if not 0 < self.sigma_min < self.sigma_max:
            raise UsageError("config needs 0 < sigma_min < sigma_max")
        if not 0 <= self.ema_decay < 1:
            raise UsageError("config 'ema_decay' must be in [0, 1)")
        if self.optimizer not in _OPTIMIZERS:
            raise UsageError(f"config 'optimizer' must be one of {', '.join(_OPTIMIZERS)}")
        if self.points_per_shower is not None and self.points_per_shower <= 0:
            raise UsageError("config 'points_per_shower' must be > 0 (or null for all points)")
        if self.directions and not self.shower_flow.get("angle", False):
            raise UsageError("config 'directions: true' needs 'shower_flow: {angle: true}'")

    @property
    def n_conditions(self) -> int:
        """Shower conditions of the point network: E, N (theta with ``directions``, the
        depth with ``depth_condition``, the visible energy with ``visible_condition``)."""
        return 2 + int(self.directions) + int(self.depth_condition) + int(self.visible_condition)


@dataclass
class DistillConfig(_PointTraining):
    """Hyperparameters of consistency distillation (see :data:`DISTILL_PRESETS`)."""

    LABEL: ClassVar[str] = "distillation"
    TUPLES: ClassVar[dict[str, type]] = {
        "sample_sigmas": float,
        "feature_weights": float,
        "student_widths": int,
    }

    n_grid: int = 18
    target_decay: float = 0.95
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    sample_sigmas: tuple[float, ...] = (80.0,)
    checkpoint_every: int = 5000
    max_showers: int | None = None
    #: distance between student and target outputs per point: ``"l2"`` (squared error, the
    #: consistency-models paper's choice for CaloClouds II) or ``"pseudo_huber"``
    #: (``sqrt(|d|^2 + c^2) - c``, Song & Dhariwal 2023, with ``c = huber_c``)
    loss: str = "l2"
    huber_c: float = 0.001
    #: weight of each normalised point feature (x, y, layer, energy) in that distance
    #: (normalised to mean 1; ``None``: equal). A one-step student pulls its point energies
    #: towards the mean; weighting the energy feature up (1, 1, 1, 4) was measured not to
    #: cure that (docs/default_model.md, "Distilling four times as long")
    feature_weights: tuple[float, ...] | None = None
    #: hidden widths of the student's point network (``None``: the teacher's, and the student
    #: starts from the teacher's weights; narrower widths of the same depth start from the
    #: teacher's most important units, other shapes from a fresh initialisation).
    #: A narrower student is the width lever of the speed budget without a narrower teacher
    #: (a narrow teacher lost fidelity: docs/default_model.md, 2026-12-01)
    student_widths: tuple[int, ...] | None = None

    def validate(self) -> None:
        self.check_positive(("iterations", "batch_size", "checkpoint_every"), "distillation config")
        if self.student_widths is not None and (
            not self.student_widths or any(w <= 0 for w in self.student_widths)
        ):
            raise UsageError("distillation config 'student_widths' must be positive widths")
        if self.feature_weights is not None and (
            len(self.feature_weights) != 4
            or any(not (w >= 0 and math.isfinite(w)) for w in self.feature_weights)
            or sum(self.feature_weights) <= 0
        ):
            raise UsageError(
                "distillation config 'feature_weights' must be 4 finite weights >= 0 "
                "(x, y, layer, energy), not all zero"
            )
        if self.loss not in DISTANCES:
            raise UsageError(f"distillation config 'loss' must be one of {', '.join(DISTANCES)}")
        if self.huber_c <= 0:
            raise UsageError("distillation config 'huber_c' must be > 0")
        if self.n_grid < 2:
            raise UsageError("distillation config 'n_grid' must be >= 2")
        if not 0 <= self.target_decay <= 1 or not 0 <= self.ema_decay < 1:
            raise UsageError("distillation decays must lie in [0, 1]")
        if not self.sample_sigmas:
            raise UsageError("distillation config 'sample_sigmas' must not be empty")
        if self.optimizer not in _OPTIMIZERS:
            raise UsageError(f"config 'optimizer' must be one of {', '.join(_OPTIMIZERS)}")


_OPTIMIZERS = {"adam": torch.optim.Adam, "radam": torch.optim.RAdam}

#: ``paper``: published hyperparameters (RAdam, lr 1e-4, batch 128, widths 128-…-128);
#: ``small``: CaloClouds3-style widths, point subsets, trains on one CPU thread in < 1 h.
#: Both carry the recipe of the shipped default model (docs/default_model.md): asinh
#: compression of the core radius (``core_radius_mm`` 2), the core centre of gravity in the
#: Shower Flow (``caloclouds2_core``), mirroring; ``small`` trains its Shower Flow for 15,000
#: iterations. They differ in widths and lengths, not in the method.
PRESETS: dict[str, CaloClouds2Config] = {
    "paper": CaloClouds2Config(
        core_radius_mm=2.0,
        mirror_points=True,
        rotate_points=True,
        shower_flow=ShowerFlowConfig(
            feature_set="caloclouds2_core", blocks=10, affine_per_block=6, spline_per_block=1
        ).to_dict(),
    ),
    "small": CaloClouds2Config(
        widths=(32, 64, 128, 64, 32),
        time_features=16,
        core_radius_mm=2.0,
        mirror_points=True,
        rotate_points=True,
        shower_flow=ShowerFlowConfig(
            feature_set="caloclouds2_core",
            blocks=3,
            affine_per_block=2,
            spline_per_block=0,
            hidden=(128, 128),
        ).to_dict(),
        iterations=25_000,
        batch_size=32,
        points_per_shower=128,
        optimizer="radam",
        lr_start=3e-3,
        lr_end=1e-5,
        lr_kind="cosine",
        lr_warmup=200,
        ema_decay=0.999,
        shower_flow_lr_start=2e-3,
        shower_flow_lr_end=1e-5,
        shower_flow_iterations=15_000,
        shower_flow_batch=256,
        checkpoint_every=1000,
    ),
}


def rotate_by_draws(
    points: NDArray[np.float32], draws: NDArray[np.float32], select: NDArray[np.bool_]
) -> None:
    """Rotate the selected ``points [P, 4]`` (x, y in mm) about x = y = 0, in place, each by
    the azimuth of its two standard-normal ``draws [P, 2]`` (uniform in angle)."""
    idx = np.flatnonzero(select)
    d = draws[idx].astype(np.float64)
    norm = np.sqrt(d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1])
    safe = np.where(norm > 0, norm, 1.0)
    cos = np.where(norm > 0, d[:, 0] / safe, 1.0)
    sin = np.where(norm > 0, d[:, 1] / safe, 0.0)
    x, y = points[idx, 0].astype(np.float64), points[idx, 1].astype(np.float64)
    points[idx, 0] = (cos * x - sin * y).astype(points.dtype)
    points[idx, 1] = (sin * x + cos * y).astype(points.dtype)


def _angle_aware(config: CaloClouds2Config) -> CaloClouds2Config:
    """The angle-aware variant of a preset (same widths and lengths)."""
    flow = dict(config.shower_flow, feature_set="caloclouds2_core", angle=True)
    return replace(
        config,
        directions=True,
        mirror_points=True,
        rotate_points=True,
        shower_flow=flow,
        core_radius_mm=2.0,
        shower_flow_iterations=max(config.shower_flow_iterations, 15_000),
    )


#: ``small-angles``, ``paper-angles``: the angle-aware variant (``directions: true``) of the
#: presets, with the core centre of gravity in the Shower Flow and the asinh core radius of
#: the default model (docs/default_model.md, docs/angles.md)
PRESETS.update({f"{name}-angles": _angle_aware(PRESETS[name]) for name in ("small", "paper")})

#: Distillation: the teacher's ODE on a 40-point Karras grid (the paper's 18 leave each Heun
#: step too coarse for a small teacher, which needs ~40 Heun steps to converge,
#: docs/default_model.md); ``small``: RAdam, lr 1e-3 -> 1e-5 cosine, 40,000 iterations (20,000
#: until 2026-11-30: the students were under-distilled, and which energies suffered changed
#: from run to run; docs/default_model.md, "Distilling twice as long").
DISTILL_PRESETS: dict[str, DistillConfig] = {
    "paper": DistillConfig(n_grid=40),
    "small": DistillConfig(
        n_grid=40,
        iterations=40_000,
        batch_size=32,
        points_per_shower=128,
        lr_start=1e-3,
        lr_end=1e-5,
        lr_kind="cosine",
        lr_warmup=100,
        ema_decay=0.999,
        checkpoint_every=1000,
    ),
}


#: distillation of the angle-aware teachers (docs/angles.md): the same method and lengths
DISTILL_PRESETS.update({f"{name}-angles": DISTILL_PRESETS[name] for name in ("small", "paper")})


def get_config(spec: str | dict[str, Any] | CaloClouds2Config) -> CaloClouds2Config:
    """Teacher config from a preset name, a YAML/JSON path, a dict of overrides or a config."""
    return resolve_config(spec, PRESETS, CaloClouds2Config)


def get_distill_config(spec: str | dict[str, Any] | DistillConfig) -> DistillConfig:
    """Distillation config from a preset name, a YAML/JSON path, overrides or a config."""
    return resolve_config(spec, DISTILL_PRESETS, DistillConfig)


# ---------------------------------------------------------------------------------------------
# networks
# ---------------------------------------------------------------------------------------------


@dataclass
class Conditioning:
    """Shower conditions for :class:`CaloClouds2Net`.

    Attributes:
        values: ``[S, 2]`` normalised (E, N) per shower.
        index: ``[P]`` shower of every packed point (``None`` for padded ``[S, P, 4]`` input).
        counts: points of each shower when the packed points are stored shower after shower
            (generation): inference on the CPU then merges each shower's ConcatSquash gates
            into its weights (:meth:`PointWiseNet.forward_segments`).
    """

    values: Tensor
    index: Tensor | None = None
    counts: tuple[int, ...] | None = None


class CaloClouds2Net(nn.Module):
    """The raw network ``F(x_in, c_noise, cond)`` of the EDM preconditioning.

    A :class:`PointWiseNet` whose context is ``(E, N)`` and ``time_features`` Fourier features
    of ``c_noise``. ``c_noise`` may be a scalar (all points at one noise level, e.g. during
    sampling: the context is computed once per shower) or one value per point ``[P, 1]``
    (training; per-point context) or per shower ``[S, 1, 1]`` for padded input.
    """

    def __init__(
        self,
        widths: tuple[int, ...],
        time_features: int = 16,
        residual: bool = False,
        n_conditions: int = 2,
    ) -> None:
        super().__init__()
        self.time_features = int(time_features)
        self.pwn = PointWiseNet(4, n_conditions + self.time_features, widths, residual=residual)
        #: compute dtype of the hidden layers during CPU inference (``None``: the weights'
        #: float32; ``torch.bfloat16`` halves the time on CPUs with bf16 matmul units)
        self.compute_dtype: torch.dtype | None = None

    @classmethod
    def from_config(cls, config: CaloClouds2Config) -> CaloClouds2Net:
        """The network of ``config`` (widths, time features, residual, conditions)."""
        return cls(config.widths, config.time_features, config.residual, config.n_conditions)

    def _scalar_fourier_features(self, c_noise: Tensor) -> Tensor:
        """``fourier_features`` of a one-element noise level ``[1, time_features]``; without
        gradients cached per value (sampling uses a handful of fixed σ)."""
        if torch.is_grad_enabled() and c_noise.requires_grad:
            return fourier_features(c_noise.reshape(1), self.time_features)
        return per_noise_level(
            self,
            "_fourier_cache",
            c_noise,
            (self.time_features,),
            lambda: fourier_features(c_noise.detach().reshape(1), self.time_features),
        )

    def forward(self, x_in: Tensor, c_noise: Tensor, cond: Conditioning) -> Tensor:
        values, index = cond.values, cond.index
        nf = self.time_features
        if c_noise.numel() == 1:
            tf = self._scalar_fourier_features(c_noise).expand(values.shape[0], nf)
            context = torch.cat([values, tf.to(values.dtype)], -1)
            if (
                cond.counts is not None
                and x_in.device.type == "cpu"
                and x_in.dim() == 2
                and not torch.is_grad_enabled()
            ):
                return self.pwn.forward_segments(
                    x_in, context, cond.counts, dtype=self.compute_dtype
                )
            if x_in.dim() == 3 and index is None and not torch.is_grad_enabled():
                return self.pwn.forward_padded(x_in, context)  # padded inference (export)
            return self.pwn(x_in, context, index)
        if x_in.dim() == 2:  # packed, one noise level per point
            tf = fourier_features(c_noise.reshape(-1), nf)
            per_point = values if index is None else values.index_select(0, index)
            return self.pwn(x_in, torch.cat([per_point, tf], -1))
        # padded [S, P, 4]
        if c_noise.shape[1] == 1:  # per shower
            tf = fourier_features(c_noise.reshape(-1), nf)
            return self.pwn(x_in, torch.cat([values, tf], -1))
        tf = fourier_features(c_noise[..., 0], nf)
        per_point = values[:, None, :].expand(-1, x_in.shape[1], -1)
        return self.pwn(x_in, torch.cat([per_point, tf], -1))


class CaloClouds2(nn.Module):
    """PointWise Net + Shower Flow + what generation needs (normalisation, occupancy).

    Args:
        config: teacher hyperparameters (the student shares the architecture).
        normalisation: point normalisation (x, y, layer, e) ↔ [-1, 1]^4.
        occupancy: occupancy correction (identity if ``None``).
        radial: radial quantile correction (none if ``None``; ``calogen fit-occupancy``).
        consistency: ``True`` for the distilled student (consistency parameterisation).
        cm_sigmas: σ values of consistency sampling (default ``(σ_max,)``: one step).
    """

    def __init__(
        self,
        config: CaloClouds2Config,
        normalisation: Normalisation,
        occupancy: OccupancyCorrection | None = None,
        *,
        radial: RadialCorrection | None = None,
        axis_shift: AxisShiftCorrection | None = None,
        consistency: bool = False,
        cm_sigmas: tuple[float, ...] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.normalisation = normalisation
        self.occupancy = occupancy or OccupancyCorrection.identity()
        self.radial = radial
        self.axis_shift = axis_shift
        #: angle-aware models: (occupancy, radial map) of the polar-angle bins 1, 2, … of
        #: :attr:`theta_edges_deg` (bin 0, normal incidence, uses ``occupancy`` and
        #: ``radial``); empty: one set of corrections for all angles
        self.binned: list[tuple[OccupancyCorrection, RadialCorrection | None]] = []
        #: edges (deg) of the polar-angle bins of :attr:`binned` (stored in model.json)
        self.theta_edges_deg: tuple[float, ...] = THETA_CORRECTION_EDGES_DEG
        #: one polar angle (deg) per inclined bin (the mean of its fit showers): with two or
        #: more, an inclined shower's occupancy factor and radial map are interpolated
        #: linearly in theta between the two bins whose angles enclose its own (the nearest
        #: bin's alone outside them); ``None``: each shower takes its bin's corrections
        self.theta_nodes_deg: tuple[float, ...] | None = None
        #: beyond the last node the interpolation is extrapolated linearly up to this polar
        #: angle (deg; the largest of the fit showers), held constant further out
        self.theta_extrapolate_deg: float | None = None
        #: how the radial maps' incident-energy bins apply: ``"bins"``, each shower the map
        #: of its bin; ``"interpolate"``, linearly in E between the bins' centres (extrapolated
        #: to the outer edges, constant beyond: RadialCorrection.energy_weights)
        self.radial_energy: str = "bins"
        #: radius (mm) of the core whose azimuths are spread evenly in energy in each layer
        #: (calibration.equalise_core_azimuth; 0: off, as models fitted before it)
        self.core_azimuth_radius_mm: float = 0.0
        #: groups of this many halo points share an azimuth (calibration.clump_halo_azimuth;
        #: 0 or 1: off, as models fitted before it) beyond halo_clump_radius_mm: one number,
        #: or one per layer index (calibration.parse_halo_clump)
        self.halo_clump: float | tuple[float, ...] = 0
        self.halo_clump_radius_mm: float = HALO_CLUMP_RADIUS_MM
        #: random tilt of each shower's axis, correlated with its centre of gravity
        #: (calibration.AxisTilt; None: off, as models fitted before it); needs
        #: ``mirror_points`` (its normal draws are the mirror draws' unused columns)
        self.axis_tilt: AxisTilt | None = None
        #: the Shower Flow's depth spread widened about its mean (calibration.DepthStretch;
        #: None: off, as models fitted before it)
        self.depth_stretch: DepthStretch | None = None
        self.consistency = bool(consistency)
        self.cm_sigmas = tuple(cm_sigmas) if cm_sigmas else (float(config.sigma_max),)
        self.net = CaloClouds2Net.from_config(config)
        self.shower_flow = ShowerFlow(ShowerFlowConfig.from_dict(config.shower_flow))
        self.device = torch.device("cpu")

    # -- pieces ----------------------------------------------------------------------------------
    def conditions(
        self,
        energies: Tensor,
        n_points: Tensor,
        theta_deg: Tensor | None = None,
        e_per_layer: NDArray[np.floating] | Tensor | None = None,
    ) -> Tensor:
        """``[S, 2]``: ``E/e_scale·2−1`` and ``N/n_scale·2−1``; with ``directions`` then
        ``theta / 30 deg − 1`` (``theta_deg`` ``None``: normal incidence); with
        ``depth_condition`` then ``depth / 15 − 1`` (:func:`shower_depth` of ``e_per_layer``
        ``[S, n_layers]``, GeV); with ``visible_condition`` last ``(E_vis / E / 0.03 − 1) · 5``
        (``E_vis``: the sum of ``e_per_layer``)."""
        cfg = self.config
        e = energies.to(torch.float32) / cfg.e_scale_gev * 2.0 - 1.0
        n = n_points.to(torch.float32) / cfg.n_scale * 2.0 - 1.0
        columns = [e, n]
        if cfg.directions:
            t = torch.zeros_like(e) if theta_deg is None else theta_deg.to(torch.float32)
            columns.append(t / ANGLE_SCALE_DEG - 1.0)
        if cfg.depth_condition or cfg.visible_condition:
            if e_per_layer is None:
                raise ValueError(
                    "a depth- or visible-energy-conditioned model needs the showers'"
                    " energies per layer"
                )
            e_layer = np.asarray(e_per_layer, np.float64)
            if cfg.depth_condition:
                depth = torch.as_tensor(shower_depth(e_layer).astype(np.float32))
                columns.append(depth / DEPTH_SCALE_LAYERS - 1.0)
            if cfg.visible_condition:
                share = np.clip(e_layer, 0.0, None).sum(1) / energies.double().numpy()
                columns.append(torch.as_tensor(visible_condition_value(share)))
        return torch.stack(columns, -1)

    def denoiser(self) -> EDMDenoiser:
        """EDM denoiser ``D(x; σ)`` around :attr:`net` (teacher)."""
        return EDMDenoiser(self.net, self.config.sigma_data)

    def consistency_function(self) -> ConsistencyFunction:
        """Consistency function ``f(x, σ)`` around :attr:`net` (student); one instance per
        network and σ settings (building an ``nn.Module`` costs 0.1 ms, a fifth of the
        non-network time of a one-shower call)."""
        key = (id(self.net), self.config.sigma_min, self.config.sigma_data)
        cached = self.__dict__.get("_consistency_function")
        if cached is None or cached[0] != key:
            function = ConsistencyFunction(self.net, self.config.sigma_min, self.config.sigma_data)
            cached = (key, function)
            self.__dict__["_consistency_function"] = cached  # not a registered submodule
        return cached[1]

    def generation_modules(self) -> dict[str, nn.Module]:
        return {"net": self.net, "shower_flow": self.shower_flow}

    def model_info(self) -> dict[str, Any]:
        return {
            "normalisation": self.normalisation.to_dict(),
            "occupancy": self.occupancy.to_dict(),
            "cm_sigmas": list(self.cm_sigmas),
            **({"radial_correction": self.radial.to_dict()} if self.radial else {}),
            **({"axis_shift": self.axis_shift.to_dict()} if self.axis_shift else {}),
            **({"directional_corrections": self._binned_dict()} if self.binned else {}),
            **(
                {"radial_energy": self.radial_energy}
                if self.radial_energy != "bins" and (self.radial or self.binned)
                else {}
            ),
            **(
                {"core_azimuth_radius_mm": self.core_azimuth_radius_mm}
                if self.core_azimuth_radius_mm > 0
                else {}
            ),
            **(
                {
                    "halo_clump": list(self.halo_clump)
                    if isinstance(self.halo_clump, tuple)
                    else self.halo_clump,
                    "halo_clump_radius_mm": self.halo_clump_radius_mm,
                }
                if halo_clumps_on(self.halo_clump)
                else {}
            ),
            **({"axis_tilt": self.axis_tilt.to_dict()} if self.axis_tilt is not None else {}),
            **(
                {"depth_stretch": self.depth_stretch.to_dict()}
                if self.depth_stretch is not None
                else {}
            ),
        }

    def _binned_dict(self) -> dict[str, Any]:
        return {
            "theta_edges_deg": list(self.theta_edges_deg),
            **({"theta_nodes_deg": list(self.theta_nodes_deg)} if self.theta_nodes_deg else {}),
            **(
                {"theta_extrapolate_deg": self.theta_extrapolate_deg}
                if self.theta_nodes_deg and self.theta_extrapolate_deg
                else {}
            ),
            "bins": [
                {
                    "occupancy": occ.to_dict(),
                    **({"radial_correction": rad.to_dict()} if rad is not None else {}),
                }
                for occ, rad in self.binned
            ],
        }

    def correction_weights(
        self, theta_deg: NDArray[np.floating] | None, n_showers: int
    ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
        """``(bin k0, bin k1, weight w)`` per shower: its corrections are ``(1 - w)`` times
        those of bin ``k0`` plus ``w`` times those of ``k1`` (:attr:`theta_nodes_deg`);
        without nodes ``k0 = k1`` = the shower's bin and ``w = 0``."""
        k0 = correction_bins(theta_deg, n_showers, self.theta_edges_deg)
        k1, w = k0.copy(), np.zeros(n_showers)
        nodes = self.theta_nodes_deg
        if theta_deg is None or not self.binned or not nodes or len(nodes) < 2:
            return k0, k1, w
        theta = np.asarray(theta_deg, np.float64)
        node = np.asarray(nodes, np.float64)
        inclined = k0 > 0
        j = np.clip(np.searchsorted(node, theta, side="right") - 1, 0, len(node) - 2)
        t = np.clip((theta - node[j]) / (node[j + 1] - node[j]), 0.0, None)
        t = np.minimum(t, np.where(j == len(node) - 2, self._last_weight(), 1.0))
        k0 = np.where(inclined, j + 1, 0)
        k1 = np.where(inclined, j + 2, 0)
        w = np.where(inclined, t, 0.0)
        return k0, k1, w

    def _last_weight(self) -> float:
        """Largest weight of the last bin (above 1: extrapolated to theta_extrapolate_deg)."""
        nodes = self.theta_nodes_deg
        if not nodes or len(nodes) < 2 or not self.theta_extrapolate_deg:
            return 1.0
        top = max(float(self.theta_extrapolate_deg), nodes[-1])
        return (top - nodes[-2]) / (nodes[-1] - nodes[-2])

    def _radial_combo_table(
        self, b0: int, b1: int, e0: int, e1: int
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """The radial maps a shower blends: angle bins ``b0``, ``b1`` x energy bins ``e0``,
        ``e1``. Returns knots ``[G, K]`` (per layer group the union of the four maps' knots,
        padded above the last) and the four maps' values there ``[4, G, K]`` (order
        ``(b0, e0), (b0, e1), (b1, e0), (b1, e1)``; a bin without a map: the identity).
        Between and beyond these knots every map is linear, so any blend of them is the
        linear interpolation of the blended values: exact. Cached per combination."""
        maps = (self.corrections_for(b0)[1], self.corrections_for(b1)[1])
        key = (b0, b1, e0, e1, id(maps[0]), id(maps[1]))
        cache = self.__dict__.setdefault("_radial_combo_cache", {})
        if key in cache:
            return cache[key][1:]
        every = (self.corrections_for(b)[1] for b in range(len(self.binned) + 1))
        ref = next(m for m in (*maps, *every) if m is not None)  # all None: the identity
        groups = ref.n_groups

        def table(m: RadialCorrection | None, e: int) -> tuple[NDArray, NDArray]:
            gen = (m or ref).log_r_gen[e]  # [G, K]
            return gen, (m.log_r_data[e] if m is not None else gen)

        tables = [table(m, e) for m in maps for e in (e0, e1)]
        unions = [np.unique(np.concatenate([gen[g] for gen, _ in tables])) for g in range(groups)]
        width = max(u.size for u in unions)
        knots = np.empty((groups, width))
        for g, u in enumerate(unions):  # padded above the last knot (within 1 of it), where
            knots[g, : u.size] = u  # every map is a shift
            pad = width - u.size
            knots[g, u.size :] = u[-1] + np.arange(1, pad + 1) / (pad + 1)
        rows = np.repeat(np.arange(groups), width)
        values = np.stack(
            [
                map_log_radius(knots.ravel(), rows, gen, data).reshape(knots.shape)
                for gen, data in tables
            ]
        )
        cache[key] = (maps, knots, values)  # the maps kept: their ids stay valid
        return knots, values

    def _blend_radial(
        self,
        points: NDArray[np.floating],
        shower: NDArray[np.int64],
        energies: NDArray[np.float64],
        k0: NDArray[np.int64],
        k1: NDArray[np.int64],
        w: NDArray[np.float64],
        theta_deg: NDArray[np.floating] | None = None,
    ) -> None:
        """Radial maps of each shower (packed ``points``, layers assigned), in place: those
        of its angle bins ``k0``, ``k1`` blended in ln r with weights ``1 - w`` and ``w``,
        and with :attr:`radial_energy` ``"interpolate"`` those of its two energy bins too
        (:meth:`~calogen.calibration.RadialCorrection.energy_weights`). Each shower's
        blended map is a table of its own (:meth:`_radial_combo_table`), all read by one
        ``np.interp``."""
        maps = [self.corrections_for(b)[1] for b in range(len(self.binned) + 1)]
        ref = next(m for m in maps if m is not None)
        if any(m is not None and m.binning != ref.binning for m in maps):
            raise UsageError("the angle bins' radial maps differ in their binning")
        n_showers, n_groups = len(energies), ref.n_groups
        if self.radial_energy == "interpolate":
            e0, e1, we = ref.energy_weights(energies)
        else:
            e0 = ref.energy_bin(energies)
            e1, we = e0, np.zeros(n_showers)
        second_b = np.where(w != 0, k1, k0)
        second_e = np.where(we != 0, e1, e0)
        n_bins, n_e = len(maps), ref.n_energy_bins  # one integer per combination
        key = ((k0 * n_bins + second_b) * n_e + e0) * n_e + second_e
        unique, which = np.unique(key, return_inverse=True)
        combos = [
            (int(u) // (n_bins * n_e * n_e), int(u) // (n_e * n_e) % n_bins, int(u) // n_e % n_e,
             int(u) % n_e)
            for u in unique
        ]  # fmt: skip
        tables = [self._radial_combo_table(*c) for c in combos]
        width = max(t[0].shape[1] for t in tables)
        knots = np.empty((n_showers, n_groups, width + 2))
        values = np.empty((n_showers, n_groups, width + 2))
        weights = np.stack([(1 - w) * (1 - we), (1 - w) * we, w * (1 - we), w * we], 1)
        for c, (x, v) in enumerate(tables):
            sel = np.flatnonzero(which.reshape(-1) == c)
            pad = width - x.shape[1]  # above the last knot: every map a shift (slope 1)
            step = np.arange(1, pad + 1)
            x = np.concatenate([x, x[:, -1:] + step], 1)
            v = np.concatenate([v, v[:, :, -1:] + step], 2)
            knots[sel, :, 1:-1] = x
            values[sel, :, 1:-1] = np.einsum("sk,kgw->sgw", weights[sel], v)
        r = radius_mm(points)
        log_r = np.log(np.maximum(r, 1e-6))
        # end knots beyond every point, on the maps' constant shifts outside their knots
        low = min(float(knots[..., 1].min()), float(log_r.min(initial=0.0))) - 1.0
        high = max(float(knots[..., -2].max()), float(log_r.max(initial=0.0))) + 1.0
        knots[..., 0], knots[..., -1] = low, high
        values[..., 0] = values[..., 1] + (low - knots[..., 1])
        values[..., -1] = values[..., -2] + (high - knots[..., -2])
        span = high - low + 1.0  # tables moved apart so that all knots increase together
        offset = np.arange(n_showers * n_groups) * span
        cell = shower * n_groups + ref.point_groups(points, shower, energies, theta_deg)
        knots += offset.reshape(n_showers, n_groups, 1)
        values += offset.reshape(n_showers, n_groups, 1)
        new = np.interp(log_r + offset[cell], knots.ravel(), values.ravel()) - offset[cell]
        scale_radius(points, r, log_r, new)

    def corrections_for(
        self, bin_index: int
    ) -> tuple[OccupancyCorrection, RadialCorrection | None]:
        """Occupancy correction and radial map of correction bin ``bin_index``."""
        if bin_index == 0 or not self.binned:
            return self.occupancy, self.radial
        return self.binned[min(bin_index, len(self.binned)) - 1]

    def evaluations(self, n_steps: int | None = None) -> int:
        """Network evaluations per generated shower batch."""
        if self.consistency:
            return len(self.cm_sigmas)
        return heun_evaluations(int(n_steps or self.config.sampler_steps))

    # -- generation ------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_points(
        self,
        noise: Tensor,
        cond: Conditioning,
        *,
        n_steps: int | None = None,
        cm_sigmas: tuple[float, ...] | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Normalised points from standard normal ``noise`` (packed ``[P, 4]``)."""
        cfg = self.config
        if self.consistency:
            sigmas = tuple(cm_sigmas) if cm_sigmas else self.cm_sigmas
            extra = None
            if len(sigmas) > 1:
                extra = [
                    torch.randn(noise.shape, generator=generator).to(noise.device)
                    for _ in sigmas[1:]
                ]
            return consistency_sample(
                self.consistency_function(),
                noise,
                cond,
                sigmas=sigmas,
                sigma_min=cfg.sigma_min,
                extra_noise=extra,
            )
        steps = int(n_steps or cfg.sampler_steps)
        if steps <= 0:
            raise UsageError(f"number of sampler steps must be > 0, got {steps}")
        return heun_sample(
            self.denoiser(),
            noise,
            cond,
            n_steps=steps,
            sigma_min=cfg.sigma_min,
            sigma_max=cfg.sigma_max,
            rho=cfg.rho,
        )

    @torch.inference_mode()
    def generate(
        self,
        energies: NDArray[np.floating],
        generator: torch.Generator,
        *,
        n_steps: int | None = None,
        cm_sigmas: tuple[float, ...] | None = None,
        theta_deg: NDArray[np.floating] | None = None,
        phi_deg: NDArray[np.floating] | None = None,
    ) -> tuple[PackedPoints, dict[str, NDArray]]:
        """Calibrated packed showers (physical units) for incident energies (GeV).

        With ``directions`` the showers are generated around their axis for polar angles
        ``theta_deg [S]`` and inclined by them and the azimuths ``phi_deg [S]`` (deg; ``None``:
        normal incidence); a model without ``directions`` ignores both.
        """
        cfg = self.config
        energies = np.asarray(energies, np.float64).reshape(-1)
        n_showers = energies.shape[0]
        theta = phi = None
        if cfg.directions:
            theta = np.zeros(n_showers) if theta_deg is None else np.asarray(theta_deg, float)
            phi = np.zeros(n_showers) if phi_deg is None else np.asarray(phi_deg, float)
            flow_out = self.shower_flow.sample(energies, generator, theta)
        else:
            flow_out = self.shower_flow.sample(energies, generator)
        if self.depth_stretch is not None:  # each profile moved with its depth's spread
            flow_out["e_per_layer"], flow_out["n_per_layer"] = self.depth_stretch.apply(
                flow_out["e_per_layer"], flow_out["n_per_layer"], energies, theta
            )
        k0, k1, w = self.correction_weights(theta, n_showers)
        if self.binned:  # per polar-angle bin, interpolated in theta between two bins
            n_layer_flow = np.asarray(flow_out["n_per_layer"], np.int64)
            total_flow = n_layer_flow.sum(1)
            factor = np.zeros(n_showers)
            for k, weight in ((k0, 1.0 - w), (k1, w)):
                for b in np.unique(k[weight != 0]):
                    sel = (k == b) & (weight != 0)
                    occ = self.corrections_for(int(b))[0]
                    factor[sel] += weight[sel] * occ.factor(total_flow[sel])
            # the new totals clipped to [1, max_points] before the one rounding pass (the
            # exports do the same)
            wanted = np.clip(np.rint(total_flow * factor), 1, cfg.max_points)
            counts_layer = distribute_counts(n_layer_flow, wanted)
        else:
            counts_layer = self.occupancy.apply(flow_out["n_per_layer"])
        totals = counts_layer.sum(1)
        clipped = np.clip(totals, 1, cfg.max_points)
        if np.any(clipped != totals):
            counts_layer = distribute_counts(counts_layer, clipped)
        counts = counts_layer.sum(1).astype(np.int64)
        cond_all = self.conditions(
            torch.as_tensor(energies, dtype=torch.float32),
            torch.as_tensor(counts),
            None if theta is None else torch.as_tensor(theta),
            flow_out["e_per_layer"],
        )
        total = int(counts.sum())
        points_out = np.zeros((total, 4), np.float32)
        depth_out = np.zeros(total, np.float32)
        offsets = np.concatenate(([0], np.cumsum(counts)))
        first = 0
        while first < n_showers:  # chunks of showers with at most chunk_points points
            last = first + 1
            while last < n_showers and offsets[last + 1] - offsets[first] <= cfg.chunk_points:
                last += 1
            c_counts = torch.as_tensor(counts[first:last])
            index = torch.repeat_interleave(torch.arange(last - first), c_counts)
            noise = torch.randn((int(c_counts.sum()), 4), generator=generator)
            cond = Conditioning(
                cond_all[first:last].to(self.device),
                index.to(self.device),
                tuple(counts[first:last].tolist()),
            )
            x = self.sample_points(
                noise.to(self.device),
                cond,
                n_steps=n_steps,
                cm_sigmas=cm_sigmas,
                generator=generator,
            ).cpu()
            x = x.clamp(-cfg.output_clip, cfg.output_clip)
            p0, p1 = offsets[first], offsets[last]
            depth_out[p0:p1] = x[:, 2].numpy()
            points_out[p0:p1] = self.normalisation.inverse(x).numpy()
            first = last
        shower = np.repeat(np.arange(n_showers), counts)
        if cfg.mirror_points:  # signs of one more normal draw per point (4 values, as the
            # exported models take it: one more point-noise tensor), after the points' noise
            draws_all = torch.randn((total, 4), generator=generator).numpy()
            draws = draws_all[:, :2]
            # the axis tilt's two normals per shower: the unused columns of its first point
            tilt_normals = draws_all[offsets[:-1], 2:4]
            normal = np.ones(total, bool) if theta is None else theta[shower] <= 0
            bits = points_out.view(np.uint32)
            sign = draws.view(np.uint32) & np.uint32(1 << 31)  # x -> -x by the sign bit:
            # exact, and cheaper than a multiplication
            if cfg.rotate_points:  # normal incidence: rotated by a uniform azimuth instead;
                # inclined in the x-z plane: only y -> -y is a symmetry
                bits[:, 1] ^= sign[:, 1] * (~normal).astype(np.uint32)
            else:
                flip = draws < 0
                if theta is not None:  # inclined in the x-z plane: only y -> -y
                    flip[:, 0] &= normal
                bits[:, :2] ^= flip.astype(np.uint32) << np.uint32(31)
            if cfg.rotate_points and normal.any():
                rotate_by_draws(points_out, draws, normal)
        core = "core_cog_x" in flow_out  # feature set caloclouds2_core: shift the core
        prefix = "core_cog" if core else "cog"
        cog_xy = np.stack([flow_out[f"{prefix}_x"], flow_out[f"{prefix}_y"]], axis=1)
        calibrate(
            points_out,
            shower,
            n_showers=n_showers,
            energy_per_layer=flow_out["e_per_layer"],
            counts_per_layer=counts_layer,
            depth=depth_out,
        )
        blend = self.binned or self.radial_energy != "bins"
        if blend and any(self.corrections_for(b)[1] for b in range(len(self.binned) + 1)):
            # the radial maps of each shower's bins (two, blended in ln r, between the bins'
            # angles); needs the layers assigned, before the CoG shift
            self._blend_radial(points_out, shower, energies, k0, k1, w, theta)
        elif self.radial is not None:  # needs the layers assigned, before the CoG shift
            self.radial.apply(points_out, shower, energies, theta)
        # the core's energy evenly around the axis (radii final), before the CoG shift
        equalise_core_azimuth(points_out, shower, self.core_azimuth_radius_mm)
        if halo_clumps_on(self.halo_clump):
            clump_halo_azimuth(points_out, shower, self.halo_clump_radius_mm, self.halo_clump)
        shift_cog(
            points_out,
            shower,
            cog_xy,
            n_showers,
            core_radius_mm=CORE_COG_RADIUS_MM if core else 0.0,
        )
        if self.axis_tilt is not None:  # a random tilt correlated with the centre of gravity
            if not cfg.mirror_points:
                raise UsageError("an axis tilt needs a model with mirror_points (its noise)")
            self.axis_tilt.apply(
                points_out, shower, energies, tilt_normals, LAYER_DEPTH_MM, theta, counts
            )
        if theta is not None and self.axis_shift is not None:  # the lean of each layer
            self.axis_shift.apply(points_out, theta, shower)
        signs = np.ones((n_showers, 2), np.float32)
        if cfg.mirror and not cfg.mirror_points:  # one normal draw per shower and axis
            flips = torch.randn((n_showers, 2), generator=generator).numpy()
            if theta is not None:  # inclined in the x-z plane: only y -> -y is a symmetry
                flips[theta > 0, 0] = 1.0
            signs[flips < 0] = -1.0
            points_out[:, :2] *= signs[shower]
        if theta is not None and phi is not None and (np.any(theta > 0) or np.any(phi != 0)):
            points_out[:, 0], points_out[:, 1] = incline_points(
                points_out[:, 0],
                points_out[:, 1],
                points_out[:, 2],
                theta,
                phi,
                LAYER_DEPTH_MM,
                shower=shower,
            )
        # points left without energy (a layer whose predicted energy is zero) deposit nothing
        # and would read as padding: drop them
        keep = points_out[:, 3] > 0
        if not keep.all():
            points_out = np.compress(keep, points_out, axis=0)  # ~5x faster than [keep]
            shower = shower[keep]
            counts = np.bincount(shower, minlength=n_showers).astype(np.int64)
        packed = PackedPoints(points=points_out, shower=shower, counts=counts)
        return packed, {
            "e_vis": flow_out["e_per_layer"].sum(1),
            "n_per_layer": counts_layer,
            "cog_xy": cog_xy,
            "mirror_signs": signs,
        }


class CaloClouds2Generator(scaffold.GeneratorBase):
    """:class:`~calogen.generator.Generator` of a trained CaloClouds II teacher or student.

    Args:
        model: the model (teacher: Heun sampler; student: consistency sampling).
        energy_range_gev: incident energies of the training data.
        name: ``"caloclouds2"`` or ``"caloclouds2-cm"``.
        n_steps: Heun steps of the teacher (default: the config's 13 = 25 evaluations).
        cm_sigmas: σ values of the student's consistency sampling (default: the model's).
    """

    def __init__(
        self,
        model: CaloClouds2,
        energy_range_gev: tuple[float, float] = scaffold.DEFAULT_ENERGY_RANGE_GEV,
        name: str | None = None,
        *,
        n_steps: int | None = None,
        cm_sigmas: tuple[float, ...] | None = None,
        theta_range_deg: tuple[float, float] = (0.0, 0.0),
    ) -> None:
        super().__init__(
            model, energy_range_gev, name or (CM_NAME if model.consistency else MODEL_NAME)
        )
        #: angle-aware models take incident directions (polar angles of the training data:
        #: :attr:`theta_range_deg`)
        self.supports_direction = bool(model.config.directions)
        self.theta_range_deg = theta_range_deg
        self.n_steps = n_steps
        self.cm_sigmas = cm_sigmas

    @property
    def evaluations(self) -> int:
        """Network evaluations per shower (25 for the teacher's default, 1 for the student)."""
        if self.model.consistency:
            return len(self.cm_sigmas or self.model.cm_sigmas)
        return self.model.evaluations(self.n_steps)

    def set_sampler(
        self, n_steps: int | None = None, cm_sigmas: Sequence[float] | None = None
    ) -> None:
        """Override the sampler: Heun ``n_steps`` (teacher) or consistency ``cm_sigmas``
        (student: noise levels, strictly decreasing, each in (σ_min, σ_max])."""
        cfg = self.model.config
        if n_steps is not None:
            if self.model.consistency:
                raise UsageError(
                    f"--steps sets the Heun sampler of a teacher; '{self.name}' is a consistency "
                    "model (use --cm-sigmas)"
                )
            if int(n_steps) <= 0:
                raise UsageError(f"--steps must be > 0, got {n_steps}")
            self.n_steps = int(n_steps)
        if cm_sigmas is not None:
            if not self.model.consistency:
                raise UsageError(
                    f"--cm-sigmas sets consistency sampling; '{self.name}' is a teacher (use --steps)"
                )
            sigmas = tuple(float(v) for v in cm_sigmas)
            ok = len(sigmas) > 0 and all(
                math.isfinite(v) and cfg.sigma_min < v <= cfg.sigma_max for v in sigmas
            )
            if not ok or any(b >= a for a, b in itertools.pairwise(sigmas)):
                raise UsageError(
                    f"--cm-sigmas must be strictly decreasing noise levels in "
                    f"({cfg.sigma_min:g}, {cfg.sigma_max:g}], got {', '.join(map(str, sigmas))}"
                )
            self.cm_sigmas = sigmas

    def to(self, device: str | torch.device) -> CaloClouds2Generator:
        """Run the networks on ``device`` (the Shower Flow and calibration stay on the CPU)."""
        self.model.net.to(device)
        self.model.device = torch.device(device)
        return self

    def sample(
        self,
        energies: NDArray[np.floating],
        directions: NDArray[np.floating] | None = None,
        *,
        seed: int | np.random.Generator | None = None,
        n_steps: int | None = None,
        cm_sigmas: tuple[float, ...] | None = None,
    ) -> showerdata.Showers:
        """Showers ``(x mm, y mm, layer, e GeV)`` for incident ``energies [N]`` in GeV.

        ``n_steps`` (teacher) and ``cm_sigmas`` (student) override the sampler settings. An
        angle-aware model (``supports_direction``) takes incident ``directions [N, 3]`` (unit
        vectors; ``None``: normal incidence).
        """
        if not self.supports_direction:
            self.refuse_directions(directions)
        energies = check_energies(energies)
        dirs = check_directions(directions, energies.size)
        theta = phi = None
        if dirs is not None:
            theta, phi = angles_from_directions(dirs)
        packed, _ = self.model.generate(
            energies,
            self.torch_generator(seed),
            n_steps=n_steps or self.n_steps,
            cm_sigmas=cm_sigmas or self.cm_sigmas,
            theta_deg=theta,
            phi_deg=phi,
        )
        return unpack(packed, energies, dirs)


# ---------------------------------------------------------------------------------------------
# training batches
# ---------------------------------------------------------------------------------------------


def visible_condition_value(share: NDArray[np.floating]) -> NDArray[np.float32]:
    """The visible-energy condition ``(share / VISIBLE_SHARE_REF - 1) * VISIBLE_GAIN`` of
    ``visible_condition`` models, ``share = E_vis / E`` per shower ``[S]``."""
    value = (np.asarray(share, np.float64) / VISIBLE_SHARE_REF - 1.0) * VISIBLE_GAIN
    return value.astype(np.float32)


def subsample_points(
    offsets: NDArray[np.int64],
    showers: NDArray[np.int64],
    limit: int | None,
    rng: np.random.Generator,
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Indices into the packed points of a random subset of at most ``limit`` points of each
    shower (without replacement; all points if ``limit`` is ``None``) and the batch-local
    shower index of every chosen point."""
    lo = offsets[showers]
    n = offsets[showers + 1] - lo
    take = n if limit is None else np.minimum(n, int(limit))
    owner = np.repeat(np.arange(len(showers), dtype=np.int64), take)
    if limit is None or np.all(n <= limit):
        start = np.repeat(np.cumsum(take) - take, take)
        return np.repeat(lo, take) + (np.arange(int(take.sum())) - start), owner
    parts = [
        lo_i + (rng.choice(n_i, size=k, replace=False) if n_i > k else np.arange(n_i))
        for lo_i, n_i, k in zip(lo.tolist(), n.tolist(), take.tolist(), strict=True)
    ]
    return np.concatenate(parts).astype(np.int64), owner


def _batch(
    model: CaloClouds2,
    data: TrainingData,
    batch_size: int,
    points_per_shower: int | None,
    rng: np.random.Generator,
    device: torch.device | None = None,
) -> tuple[Tensor, Conditioning]:
    """Normalised packed points of a random batch of showers and their conditions (drawn on
    the CPU from ``rng``, then moved to ``device``)."""
    n_batch = min(batch_size, data.n_showers)
    showers = rng.choice(data.n_showers, size=n_batch, replace=False)
    idx, owner = subsample_points(data.offsets, showers, points_per_shower, rng)
    x0 = torch.from_numpy(model.normalisation.forward(data.points[idx], rng))
    theta = data.features["theta_deg"][showers] if model.config.directions else None
    values = model.conditions(
        torch.as_tensor(data.energies[showers], dtype=torch.float32),
        torch.as_tensor(data.counts[showers]),
        None if theta is None else torch.as_tensor(theta),
        data.features["e_per_layer"][showers],
    )
    owner_t = torch.from_numpy(owner)
    if device is not None and device.type != "cpu":
        x0, values, owner_t = x0.to(device), values.to(device), owner_t.to(device)
    return x0, Conditioning(values, owner_t)


def _prunable(teacher_widths: Sequence[int], student_widths: Sequence[int]) -> bool:
    """Whether a student of ``student_widths`` can start as a pruned teacher (same depth,
    no hidden layer wider than the teacher's)."""
    return len(teacher_widths) == len(student_widths) and all(
        s <= t for s, t in zip(student_widths, teacher_widths, strict=True)
    )


#: training batches on which :func:`_units_to_keep` measures the teacher's hidden units
PRUNE_BATCHES = 8


def _units_to_keep(
    teacher: CaloClouds2,
    data: TrainingData,
    config: DistillConfig,
    seed: int,
    widths: Sequence[int],
) -> list[Tensor]:
    """The hidden units a narrower student keeps of its teacher: per layer the ``widths[i]``
    most important (:func:`~calogen.models.blocks.hidden_unit_importance`), measured on
    :data:`PRUNE_BATCHES` distillation batches noised to σ drawn from the distillation grid
    (so that the units matter where the student is trained and sampled)."""
    tcfg = teacher.config
    rng = np.random.default_rng([seed, 0x5EED])
    gen = torch.Generator().manual_seed(seed + 0x5EED)
    grid = consistency_sigmas(config.n_grid, tcfg.sigma_min, tcfg.sigma_max, tcfg.rho)
    function = ConsistencyFunction(teacher.net, tcfg.sigma_min, tcfg.sigma_data)

    def run() -> None:
        for _ in range(PRUNE_BATCHES):
            x0, cond = _batch(teacher, data, config.batch_size, config.points_per_shower, rng)
            index = torch.randint(1, config.n_grid, (x0.shape[0], 1), generator=gen)
            sigma = grid[index].to(x0.dtype)
            function(x0 + sigma * torch.randn(x0.shape, generator=gen), sigma, cond)

    importance = hidden_unit_importance(teacher.net.pwn, run)
    return [
        torch.topk(imp, int(w)).indices.sort().values
        for imp, w in zip(importance, widths, strict=True)
    ]


def _optimizer(name: str, params: Any, lr: float) -> torch.optim.Optimizer:
    return _OPTIMIZERS[name](params, lr=lr)


# ---------------------------------------------------------------------------------------------
# teacher training
# ---------------------------------------------------------------------------------------------


class CaloClouds2Trainer(scaffold.TrainerBase):
    """EDM training of the PointWise Net (with EMA) and, at the same time, the Shower Flow."""

    name = MODEL_NAME
    #: the points are independent given (E, N, theta): a training cache's subset will do
    subsampled_data = True

    def __init__(self, model: CaloClouds2, data: TrainingData, seed: int, data_path: str) -> None:
        super().__init__(model, data, seed, data_path)
        self.device = torch.device("cpu")
        cfg = model.config
        self.ema = EMA(model.net, cfg.ema_decay)
        self.opt = _optimizer(cfg.optimizer, model.net.parameters(), cfg.lr_start)
        self.opt_shower = torch.optim.Adam(
            model.shower_flow.flow.parameters(), lr=cfg.shower_flow_lr_start
        )

    # Trainer protocol
    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.model.net, "ema": self.ema, "shower_flow": self.model.shower_flow}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"diffusion": self.opt, "shower_flow": self.opt_shower}

    def to(self, device: str | torch.device) -> None:
        """Train the point network (and its EMA) on ``device``; the Shower Flow, a small
        per-shower flow, stays on the CPU. Batches and noise are drawn on the CPU as before,
        so a GPU run draws the same data as a CPU run with the same seed."""
        self.device = torch.device(device)
        self.model.net.to(self.device)
        self.ema.to(self.device)

    def export(self, out: Path) -> None:
        info = self.model.model_info()
        info.update(
            scaffold.training_info(
                self.data_path, self.seed, self.data.n_showers, self.data.energies
            )
        )
        if self.model.config.directions:
            theta = self.data.features["theta_deg"]  # whole degrees: 0-60, not 0.01-59.98
            info["theta_range_deg"] = [float(np.floor(theta.min())), float(np.ceil(theta.max()))]
        save_model(
            out,
            model_type=MODEL_NAME,
            modules={"net": self.ema.shadow, "shower_flow": self.model.shower_flow},
            config=self.model.config.to_dict(),
            extra=info,
        )

    def step(self, iteration: int) -> dict[str, float]:
        model, cfg, data = self.model, self.model.config, self.data
        model.train()
        rng = np.random.default_rng([self.seed, iteration])
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + iteration)
        x0, cond = _batch(model, data, cfg.batch_size, cfg.points_per_shower, rng, self.device)
        sigma = sample_training_sigma(
            (x0.shape[0], 1), p_mean=cfg.p_mean, p_std=cfg.p_std, generator=gen
        ).to(self.device)
        noise = torch.randn(x0.shape, generator=gen).to(self.device)
        loss = edm_loss(model.denoiser(), x0, cond, sigma, noise=noise, sigma_data=cfg.sigma_data)
        set_lr(
            self.opt,
            lr_schedule(
                iteration, cfg.iterations, cfg.lr_start, cfg.lr_end, cfg.lr_kind, cfg.lr_warmup
            ),
        )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(model.net.parameters(), cfg.grad_clip)
        self.opt.step()
        self.ema.update(model.net, decay=ema_warmup_decay(iteration, cfg.ema_decay, cfg.ema_warmup))
        out = {"loss": float(loss.detach())}
        out.update(
            scaffold.shower_flow_step(model.shower_flow, self.opt_shower, data, cfg, iteration, rng)
        )
        return out


def build_model(
    config: CaloClouds2Config, data: TrainingData, normalisation: Normalisation, seed: int
) -> CaloClouds2:
    """A freshly initialised teacher (weights from ``seed``) with data-derived statistics."""
    torch.manual_seed(seed)
    model = CaloClouds2(config, normalisation)
    model.shower_flow.fit_preprocessing(data.features, data.energies)
    return model


def train(**kwargs: Any) -> dict[str, Any]:
    """Train the CaloClouds II teacher on a shower file into ``out``.

    The finished model has its corrections (:func:`fit_corrections`) unless
    ``corrections=False``. On ``resume`` the config, seed and normalisation stored in the checkpoint are used
    (``iterations`` may still extend the run).
    """
    return scaffold.train_model(
        MODEL_NAME, PRESETS, CaloClouds2Config, _trainer, fit_corrections=fit_corrections, **kwargs
    )


def fit_corrections(out: Path, data: Any, seed: int, n_showers: int) -> dict[str, Any]:
    """The end of training (teacher or student): the radial map and the occupancy correction
    (:func:`fit_occupancy`) on the first ``n_showers`` training showers, seeded by the run.

    An angle-aware model's radial map groups its layers relative to each shower's depth (as
    the shipped default's: on the angle-aware one-step models measured so far it lowers the
    classifier AUC at every test condition; on models trained at normal incidence only it
    made 90 GeV worse, so they keep the map by layer index), and its angle classes are up to
    four, equal in tan theta (:func:`auto_theta_edges`; docs/default_model.md)."""
    angled = bool(read_model_info(out).get("config", {}).get("directions", False))
    if not angled:
        return fit_occupancy(out, data, n_showers=n_showers, seed=seed)
    return fit_occupancy(
        out, data, n_showers=n_showers, seed=seed, radial_layers="relative", theta_edges_deg="auto"
    )


def _trainer(
    cfg: CaloClouds2Config, data: Any, seed: int, stored: dict[str, Any] | None
) -> CaloClouds2Trainer:
    return point_trainer(
        CaloClouds2Trainer,
        build_model,
        cfg,
        data,
        seed,
        stored,
        core_radius_mm=cfg.core_radius_mm,
        straighten=cfg.directions,
    )


def train_cm(**kwargs: Any) -> dict[str, Any]:
    """Registry hook: ``calogen train caloclouds2-cm`` runs the whole recipe (teacher,
    distillation, corrections; :func:`calogen.models.pipeline.train`)."""
    from calogen.models import pipeline

    return pipeline.train(**kwargs)


# ---------------------------------------------------------------------------------------------
# consistency distillation
# ---------------------------------------------------------------------------------------------


class CaloClouds2DistillTrainer(scaffold.TrainerBase):
    """Consistency distillation of a teacher into a student (the same architecture, or other
    hidden widths with ``student_widths``).

    Student and target start from the teacher's (EMA) weights (a narrower student of the same
    depth from the teacher's most important hidden units, other shapes from a fresh
    initialisation); the teacher is frozen. The
    exported student is an EMA (``ema_decay``) of the online student; the Shower Flow and
    normalisation are the teacher's, the corrections its own (fitted after the last iteration).
    """

    name = CM_NAME
    subsampled_data = True

    def __init__(
        self,
        teacher: CaloClouds2,
        config: DistillConfig,
        data: TrainingData,
        seed: int,
        *,
        teacher_dir: str,
        data_path: str,
        energy_range_gev: tuple[float, float],
        theta_range_deg: Sequence[float] | None = None,
    ) -> None:
        super().__init__(teacher.eval(), data, seed, data_path)
        self.device = torch.device("cpu")
        self.teacher_model = teacher
        self.config = config
        self.teacher_dir = teacher_dir
        self.energy_range_gev = energy_range_gev
        self.theta_range_deg = theta_range_deg
        tcfg = teacher.config
        #: the student's architecture: the teacher's config with the student's widths
        self.student_config = replace(tcfg, widths=tuple(config.student_widths or tcfg.widths))
        if self.student_config.widths == tuple(tcfg.widths):
            student = copy.deepcopy(teacher.net)
        else:  # another architecture: a fresh network (the trainer's seed sets its weights)
            student = CaloClouds2Net.from_config(self.student_config)
            if _prunable(tcfg.widths, self.student_config.widths):
                # narrower, same depth: start from the teacher's most important units
                keep = _units_to_keep(teacher, data, config, seed, self.student_config.widths)
                pruned = prune_point_network(teacher.net.pwn, keep)
                student.pwn.load_state_dict(pruned.state_dict())
        self.student_net = student.requires_grad_(True).train()
        self.target_net = copy.deepcopy(self.student_net).requires_grad_(False).eval()
        self.ema = EMA(self.student_net, config.ema_decay)
        self.opt = _optimizer(config.optimizer, self.student_net.parameters(), config.lr_start)
        self.distiller = ConsistencyDistiller(
            ConsistencyFunction(self.student_net, tcfg.sigma_min, tcfg.sigma_data),
            ConsistencyFunction(self.target_net, tcfg.sigma_min, tcfg.sigma_data),
            teacher.denoiser(),
            self.opt,
            n_grid=config.n_grid,
            sigma_min=tcfg.sigma_min,
            sigma_max=tcfg.sigma_max,
            rho=tcfg.rho,
            target_decay=config.target_decay,
            grad_clip=config.grad_clip,
            distance=config.loss,
            huber_c=config.huber_c,
            feature_weights=config.feature_weights,
        )

    # Trainer protocol
    def modules(self) -> dict[str, nn.Module]:
        return {"student": self.student_net, "target": self.target_net, "ema": self.ema}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"student": self.opt}

    def to(self, device: str | torch.device) -> None:
        """Distil on ``device``: teacher, student, target and EMA networks move there (the
        Shower Flow stays on the CPU); batches and noise are drawn on the CPU as before."""
        self.device = torch.device(device)
        for net in (self.teacher_model.net, self.student_net, self.target_net, self.ema):
            net.to(self.device)

    def checkpoint_json(self) -> dict[str, Any]:
        return {
            "model": CM_NAME,
            "distill_config": self.config.to_dict(),
            "seed": self.seed,
            "teacher": self.teacher_dir,
        }

    def export(self, out: Path) -> None:
        teacher = self.teacher_model
        info = teacher.model_info()
        # the student's corrections are its own, fitted when the distillation ends: none
        # inherited from the teacher (whose sampler spreads points differently)
        info["occupancy"] = OccupancyCorrection.identity().to_dict()
        for key in FITTED_CORRECTION_KEYS:
            info.pop(key, None)
        info.update(
            {
                "cm_sigmas": list(self.config.sample_sigmas),
                "distillation": {
                    "teacher": self.teacher_dir,
                    "data": self.data_path,
                    "seed": self.seed,
                    "n_showers": self.data.n_showers,
                    "config": self.config.to_dict(),
                },
                "energy_range_gev": list(self.energy_range_gev),
            }
        )
        if self.theta_range_deg is not None:
            info["theta_range_deg"] = list(self.theta_range_deg)
        save_model(
            out,
            model_type=CM_NAME,
            modules={"net": self.ema.shadow, "shower_flow": teacher.shower_flow},
            config=self.student_config.to_dict(),
            extra=info,
        )

    def step(self, iteration: int) -> dict[str, float]:
        cfg = self.config
        rng = np.random.default_rng([self.seed, iteration])
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + iteration)
        x0, cond = _batch(
            self.teacher_model, self.data, cfg.batch_size, cfg.points_per_shower, rng, self.device
        )
        # the grid index and the noise of every point, drawn on the CPU in the order the
        # loss would draw them (consistency_distillation_loss), then moved with the batch
        index = torch.randint(0, cfg.n_grid - 1, (x0.shape[0], 1), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        index, noise = index.to(self.device), noise.to(self.device)
        set_lr(
            self.opt,
            lr_schedule(
                iteration, cfg.iterations, cfg.lr_start, cfg.lr_end, cfg.lr_kind, cfg.lr_warmup
            ),
        )
        loss = self.distiller.step(x0, cond, index=index, noise=noise)
        self.ema.update(
            self.student_net, decay=ema_warmup_decay(iteration, cfg.ema_decay, cfg.ema_warmup)
        )
        return {"loss": loss}


def distill(
    *,
    teacher: str | os.PathLike[str],
    config: str | dict[str, Any] | DistillConfig = "small",
    **kwargs: Any,
) -> dict[str, Any]:
    """Distil a trained CaloClouds II teacher folder into a consistency model in ``out``
    (``data``, ``out``, ``resume``, ``seed``, ``iterations``, ``progress``, ``stop_after``,
    ``corrections`` as for :func:`train`: the finished student has its own corrections).

    On ``resume`` the distillation config, seed and teacher stored in the checkpoint are used.
    """
    teacher_dir = Path(teacher)

    def make_trainer(
        cfg: DistillConfig, data: Any, seed: int, stored: dict[str, Any] | None
    ) -> CaloClouds2DistillTrainer:
        if stored is not None and Path(stored["teacher"]).resolve() != teacher_dir.resolve():
            raise UsageError(
                f"{kwargs['out']}: was distilled from {stored['teacher']}, not {teacher_dir}"
            )
        info = read_model_info(teacher_dir)
        if info.get("calogen_model") != MODEL_NAME:
            raise UsageError(
                f"{teacher_dir}: the teacher must be a '{MODEL_NAME}' model, "
                f"got '{info.get('calogen_model')}'"
            )
        teacher_model = load_model(teacher_dir, info)
        for p in teacher_model.parameters():
            p.requires_grad_(False)
        train_data = load_training_data(
            data, cfg.max_showers, straighten=teacher_model.config.directions
        )
        torch.manual_seed(seed)
        return CaloClouds2DistillTrainer(
            teacher_model,
            cfg,
            train_data,
            seed,
            teacher_dir=str(teacher_dir),
            data_path=scaffold.data_label(data),
            energy_range_gev=scaffold.energy_range(info),
            theta_range_deg=info.get("theta_range_deg"),
        )

    return scaffold.train_model(
        CM_NAME,
        DISTILL_PRESETS,
        DistillConfig,
        make_trainer,
        config=config,
        key="distill_config",
        fit_corrections=fit_corrections,
        **kwargs,
    )


# ---------------------------------------------------------------------------------------------
# loading and occupancy
# ---------------------------------------------------------------------------------------------


def load_model(
    model_dir: str | os.PathLike[str], info: dict[str, Any] | None = None
) -> CaloClouds2:
    """Rebuild a teacher or student :class:`CaloClouds2` from a model folder."""
    return scaffold.load_folder(
        model_dir, info, (MODEL_NAME, CM_NAME), "a CaloClouds II model", _build
    )


RADIAL_ENERGY_MODES = ("bins", "interpolate")


#: how :func:`fit_occupancy` groups the layers of the radial maps: by layer index, or
#: relative to each shower's depth
RADIAL_LAYER_MODES = ("absolute", "relative")


def check_radial_energy(mode: str) -> str:
    """A valid :attr:`CaloClouds2.radial_energy` mode (one-line error otherwise)."""
    if mode not in RADIAL_ENERGY_MODES:
        raise UsageError(
            f"radial_energy must be one of {', '.join(RADIAL_ENERGY_MODES)}, got {mode!r}"
        )
    return mode


#: model.json entries of the corrections that a fit writes (besides the occupancy): removed
#: before a fit stores its own, and not inherited by a distilled student from its teacher
FITTED_CORRECTION_KEYS = (
    "radial_correction",
    "axis_shift",
    "directional_corrections",
    "radial_energy",
    "core_azimuth_radius_mm",
    "halo_clump",
    "halo_clump_radius_mm",
    "axis_tilt",
    "depth_stretch",
)


def check_core_azimuth(radius_mm: Any, what: str = "core azimuth radius") -> float:
    """A valid :attr:`CaloClouds2.core_azimuth_radius_mm` (or another radius ``what``) in mm:
    a number >= 0 (one-line error otherwise)."""
    try:
        value = float(radius_mm)
    except (TypeError, ValueError):
        value = float("nan")
    if not np.isfinite(value) or value < 0:
        raise UsageError(f"{what} must be a number of mm >= 0, got {radius_mm!r}")
    return value


def _build(info: dict[str, Any]) -> CaloClouds2:
    cfg = CaloClouds2Config.from_dict(info["config"])
    occupancy = info.get("occupancy")
    radial = info.get("radial_correction")
    model = CaloClouds2(
        cfg,
        Normalisation.from_dict(info["normalisation"]),
        OccupancyCorrection.from_dict(occupancy) if occupancy else None,
        radial=RadialCorrection.from_dict(radial) if radial else None,
        axis_shift=AxisShiftCorrection.from_dict(info["axis_shift"])
        if info.get("axis_shift")
        else None,
        consistency=info["calogen_model"] == CM_NAME,
        cm_sigmas=tuple(float(s) for s in info.get("cm_sigmas", (cfg.sigma_max,))),
    )
    model.radial_energy = check_radial_energy(info.get("radial_energy", "bins"))
    model.core_azimuth_radius_mm = check_core_azimuth(info.get("core_azimuth_radius_mm", 0.0))
    model.halo_clump = parse_halo_clump(info.get("halo_clump", 0))
    model.halo_clump_radius_mm = check_core_azimuth(
        info.get("halo_clump_radius_mm", HALO_CLUMP_RADIUS_MM), "halo clump radius"
    )
    if info.get("axis_tilt"):
        if not cfg.mirror_points:
            raise UsageError("an axis tilt needs a model with mirror_points (its noise)")
        model.axis_tilt = AxisTilt.from_dict(info["axis_tilt"])
    if info.get("depth_stretch"):
        model.depth_stretch = DepthStretch.from_dict(info["depth_stretch"])
    binned = info.get("directional_corrections")
    if binned:
        edges = check_theta_edges(binned.get("theta_edges_deg", ()))
        if len(binned.get("bins", ())) != len(edges):
            raise UsageError(
                f"directional corrections: {len(binned.get('bins', ()))} bins for theta "
                f"edges {list(edges)}"
            )
        model.theta_edges_deg = edges
        nodes = binned.get("theta_nodes_deg")
        if nodes is not None:
            nodes = check_theta_edges(nodes)
            if len(nodes) != len(edges):
                raise UsageError(
                    f"directional corrections: {len(nodes)} theta nodes for {len(edges)} "
                    "inclined bins"
                )
            model.theta_nodes_deg = nodes
            top = binned.get("theta_extrapolate_deg")
            if top is not None:
                model.theta_extrapolate_deg = check_theta_edges([top])[0]
        model.binned = [
            (
                OccupancyCorrection.from_dict(b["occupancy"]),
                RadialCorrection.from_dict(b["radial_correction"])
                if b.get("radial_correction")
                else None,
            )
            for b in binned["bins"]
        ]
    return model


def load_generator(
    model_dir: str | os.PathLike[str], info: dict[str, Any] | None = None
) -> CaloClouds2Generator:
    """Registry hook: the generator of a CaloClouds II (or CM) model folder."""
    info = read_model_info(model_dir) if info is None else info
    lo, hi = info.get("theta_range_deg", (0.0, 0.0))
    return CaloClouds2Generator(
        load_model(model_dir, info),
        energy_range_gev=scaffold.energy_range(info),
        theta_range_deg=(float(lo), float(hi)),
    )


def fit_occupancy(
    model_dir: str | os.PathLike[str],
    data: str | os.PathLike[str],
    *,
    n_showers: int = 1000,
    seed: int = 0,
    geometry: str = "slab",
    refine_iterations: int = 2,
    radial: bool = True,
    axis: bool = True,
    by_angle: bool = True,
    min_bin_showers: int = 50,
    theta_edges_deg: Sequence[float] | str | None = None,
    interpolate: bool = True,
    radial_energy: str | None = "interpolate",
    radial_layers: str = "absolute",
    radial_classes: Sequence[str] = (),
    core_azimuth_mm: float | None = CORE_AZIMUTH_RADIUS_MM,
    halo_clump: float | str | Sequence[float] | None = HALO_CLUMP_SPEC,
    axis_tilt: bool = True,
    depth_stretch: bool = True,
) -> dict[str, Any]:
    """Fit ``c_N`` from data and generated showers, then refine it in closed loop.

    First, if ``depth_stretch``: the spread of the Shower Flow's shower depth
    (:class:`~calogen.calibration.DepthStretch`, :func:`fit_depth_stretch`) from the data
    showers and flow samples at their energies and angles; every step below sees it.

    0. if ``radial``: the radial quantile correction
       (:class:`~calogen.calibration.RadialCorrection`) from the same Geant4 showers and
       showers generated without corrections; the occupancy fit below includes it (a
       narrower core lights fewer cells); after step 2 it is refitted on showers generated
       with the occupancy correction, and the refinement of step 2 runs again;
    1. open loop (CaloClouds section 3.3): ``p_data`` from the Geant4 showers, ``p_gen``
       from showers generated without correction at the same incident energies;
    2. ``refine_iterations`` times: generate with the current correction (same seed, so the
       Shower Flow asks for the same numbers of points), compare the hits with the target
       ``p_data(N)`` and fold the remaining ratio into the correction
       (:meth:`~calogen.calibration.OccupancyCorrection.refine`);
    3. if ``axis`` and the model is angle-aware and the data hold inclined showers: the
       per-layer axis shift (:class:`~calogen.calibration.AxisShiftCorrection`) from the
       Geant4 showers and showers generated with all the corrections above;
    4. if ``axis_tilt`` and the model mirrors points: the random axis tilt
       (:class:`~calogen.calibration.AxisTilt`, :func:`fit_tilt`) from the normal-incidence
       showers among the data and the finished showers generated at their energies.

    An angle-aware model with inclined showers in ``data`` (and ``by_angle``) gets steps 0-2
    for each polar-angle bin of ``theta_edges_deg`` (default
    :data:`THETA_CORRECTION_EDGES_DEG`: normal incidence and inclined showers) on the data
    showers of that bin (hits per point and the radial profile change with theta; one correction for
    all angles misfits normal incidence, docs/angles.md); a bin with fewer than
    ``min_bin_showers`` showers takes the corrections of the nearest bin that has enough.
    With two or more inclined bins and ``interpolate``, each bin's polar angle is the mean
    of its fit showers and generation interpolates between bins
    (:attr:`CaloClouds2.theta_nodes_deg`). ``radial_layers`` ``"relative"`` groups the
    radial maps' layers relative to each shower's depth
    (:attr:`~calogen.calibration.RadialCorrection.depth_relative`); ``radial_classes``
    (``"depth"``, ``"visible"``) gives classes of showers maps of their own
    (:class:`~calogen.calibration.ShowerClasses`). ``core_azimuth_mm`` (``None``: as the model
    has it) sets :attr:`CaloClouds2.core_azimuth_radius_mm` before the fits, which see it;
    ``halo_clump`` (``None``: as the model has it) likewise :attr:`CaloClouds2.halo_clump`.
    """
    if radial_layers not in RADIAL_LAYER_MODES:
        raise UsageError(
            f"radial_layers must be one of {', '.join(RADIAL_LAYER_MODES)}, got {radial_layers!r}"
        )
    if refine_iterations < 0:
        raise UsageError(f"refine_iterations must be >= 0, got {refine_iterations}")
    ref = scaffold.occupancy_reference(data, n_showers, geometry)
    model_dir = Path(model_dir)
    info = read_model_info(model_dir)
    model = load_model(model_dir, info)
    torch_seed = int(np.random.default_rng(seed).integers(0, 2**62))
    # an angle-aware model generates at the data's directions; its radial map works in the
    # axis frame, so both sides are straightened for it
    dirs = ref.directions if model.config.directions else None
    theta = angles_from_directions(dirs)[0] if dirs is not None else None
    model.binned = []  # each fit below uses the plain corrections
    if core_azimuth_mm is not None:  # applied while fitting: the occupancy fit sees it
        model.core_azimuth_radius_mm = check_core_azimuth(core_azimuth_mm)
    if halo_clump is not None:  # applied while fitting: the occupancy fit sees it
        model.halo_clump = parse_halo_clump(halo_clump)
        model.halo_clump_radius_mm = HALO_CLUMP_RADIUS_MM
    if radial_energy is not None:  # applied while fitting: the occupancy fit sees it
        # (None: as the model has it; "interpolate" by default: docs/default_model.md, the
        # radial map interpolated in the incident energy)
        model.radial_energy = check_radial_energy(radial_energy)
    if isinstance(theta_edges_deg, str):
        if theta_edges_deg != "auto":
            raise UsageError(f"theta edges: a list of angles or 'auto', got {theta_edges_deg!r}")
        theta_edges_deg = auto_theta_edges(theta)
    edges = check_theta_edges(
        THETA_CORRECTION_EDGES_DEG if theta_edges_deg is None else theta_edges_deg
    )
    model.theta_edges_deg = edges
    model.axis_shift = None
    model.axis_tilt = None
    model.depth_stretch = None
    n_all = len(ref.energies)
    stretch_summary: dict[str, Any] | str = "off"
    if depth_stretch:
        try:
            model.depth_stretch, stretch_summary = fit_depth_stretch(
                model, ref.packed, ref.energies, theta, ref.calorimeter.layer_z_mm, seed,
                theta_edges_deg=edges,
            )  # fmt: skip
        except UsageError as exc:  # too few showers in every class: no stretch
            stretch_summary = f"not fitted: {exc}"
    if by_angle and theta is not None and np.any(theta >= edges[0]):
        bins = correction_bins(theta, n_all, edges)
        groups = [np.flatnonzero(bins == b) for b in range(len(edges) + 1)]
    else:
        groups = [np.arange(n_all)]
    classes = None
    if radial and radial_classes:  # one set of classes for every angle bin (blended maps)
        classes = ShowerClasses.fit(
            straighten_points(ref.packed.points, ref.packed.counts, dirs),
            ref.packed.shower,
            ref.energies,
            kinds=tuple(radial_classes),
            theta_deg=theta,
        )
    fits: list[_GroupFit | None] = [
        _fit_group(
            model,
            ref.subset(g),
            torch_seed,
            radial,
            refine_iterations,
            depth_relative=radial_layers == "relative",
            shower_classes=classes,
        )
        if g.size >= min_bin_showers or (len(groups) == 1 and g.size > 0)
        else None
        for g in groups
    ]
    have = [b for b, f in enumerate(fits) if f is not None]
    if not have:
        raise UsageError(
            f"the occupancy fit needs at least {min_bin_showers} showers per angle "
            f"bin, got {[int(g.size) for g in groups]}"
        )
    chosen = [fits[min(have, key=lambda h: (abs(h - b), h))] for b in range(len(fits))]
    model.occupancy, model.radial = chosen[0].correction, chosen[0].radial  # type: ignore[union-attr]
    model.binned = [(f.correction, f.radial) for f in chosen[1:]]  # type: ignore[union-attr]
    model.theta_nodes_deg = None
    model.theta_extrapolate_deg = None
    if interpolate and len(groups) > 2 and theta is not None:
        nodes = []
        for b, g in enumerate(groups[1:], start=1):
            lo = edges[b - 1]
            hi = edges[b] if b < len(edges) else max(float(theta.max()), lo + 1.0)
            mean = float(theta[g].mean()) if g.size else 0.5 * (lo + hi)
            nodes.append(max(mean, nodes[-1] + 1e-3) if nodes else mean)
        model.theta_nodes_deg = tuple(nodes)
        model.theta_extrapolate_deg = float(theta.max())
    gen = torch.Generator()

    def run() -> PackedPoints:
        gen.manual_seed(torch_seed)
        phi = angles_from_directions(dirs)[1] if dirs is not None else None
        return model.generate(ref.energies, gen, theta_deg=theta, phi_deg=phi)[0]

    if axis and theta is not None and np.any(theta > 0):
        # last: the lean of each layer, on showers generated with all other corrections and
        # without mirroring (which hides the lean at normal incidence)
        mirror, model.config.mirror = model.config.mirror, False
        try:
            packed = run()
        finally:
            model.config.mirror = mirror
        model.axis_shift = AxisShiftCorrection.fit(
            (
                straighten_points(ref.packed.points, ref.packed.counts, dirs),
                ref.packed.shower,
                theta,
            ),
            (straighten_points(packed.points, packed.counts, dirs), packed.shower, theta),
        )
    from calogen.geometry import project

    final = run()
    hits_final = project(unpack(final, ref.energies), ref.calorimeter).hits_per_shower()
    tilt_summary: dict[str, Any] | str = "off"
    normal = np.flatnonzero(normal_incidence(dirs, n_all))
    if axis_tilt and model.config.mirror_points and normal.size:
        inclined = np.flatnonzero(~normal_incidence(dirs, n_all))
        offsets = None
        if inclined.size and dirs is not None and theta is not None:
            offsets = tilt_cog_offsets(
                final.select(inclined), theta[inclined], dirs[inclined], model.axis_shift
            )
        try:
            model.axis_tilt, tilt_summary = fit_tilt(
                ref.packed.select(normal),
                final.select(normal),
                ref.energies[normal],
                ref.calorimeter,
                seed,
                offsets=offsets,
            )
        except UsageError as exc:  # too few normal-incidence showers: no tilt
            tilt_summary = f"not fitted: {exc}"
    done = [f for f in fits if f is not None]
    n_gen = np.concatenate([f.n_gen for f in done])
    occ_gen = np.concatenate([f.occ_gen for f in done])
    for key in FITTED_CORRECTION_KEYS:
        info.pop(key, None)
    info.update(model.model_info())
    info.pop("occupancy")  # save_occupancy writes it
    summary = scaffold.save_occupancy(
        model_dir,
        info,
        model.occupancy,
        ref,
        n_gen,
        occ_gen,
        mean_hits_target=float(np.mean(np.concatenate([f.target for f in done]))),
        mean_hits_generated_corrected=float(np.mean(np.maximum(hits_final, 1))),
        refinement=[f.history for f in done] if len(groups) > 1 else done[0].history,
        radial_correction=model.radial is not None,
        axis_shift=model.axis_shift is not None,
        axis_tilt=tilt_summary,
    )
    summary["depth_stretch"] = stretch_summary
    if len(groups) > 1:
        summary["angle_bins"] = {
            "theta_edges_deg": list(edges),
            "theta_nodes_deg": None
            if model.theta_nodes_deg is None
            else list(model.theta_nodes_deg),
            "showers": [int(g.size) for g in groups],
            "fitted": [f is not None for f in fits],
            "factor_at_mean_points": [
                None if f is None else float(f.correction.factor(np.array([f.n_gen.mean()]))[0])
                for f in fits
            ],
        }
    return summary


#: flow draws per data shower in :func:`fit_depth_stretch`, and its rounds of matching the
#: stretched spread to Geant4's (the resampled profile moves a little more or less than dz)
DEPTH_STRETCH_DRAWS = 3
DEPTH_STRETCH_ROUNDS = 3


def _depth_residual_std(depth: NDArray, energies: NDArray, theta: NDArray) -> float:
    """Standard deviation of ``depth`` about its linear fit in (1, ln E, theta)."""
    x = np.stack([np.ones_like(energies), np.log(energies), theta], 1)
    coef = np.linalg.lstsq(x, depth, rcond=None)[0]
    return float(np.std(depth - x @ coef))


def fit_depth_stretch(
    model: CaloClouds2,
    data: PackedPoints,
    energies: NDArray[np.floating],
    theta_deg: NDArray[np.floating] | None,
    layer_z_mm: NDArray[np.floating],
    seed: int,
    *,
    theta_edges_deg: Sequence[float] = (),
    min_showers: int = 50,
) -> tuple[DepthStretch, dict[str, Any]]:
    """The :class:`~calogen.calibration.DepthStretch` that gives the Shower Flow's depth the
    spread of the Geant4 showers ``data`` (packed, layers in column 2, energies in column 3)
    at incident ``energies [S]`` (GeV) and ``theta_deg [S]`` (``None``: normal incidence).

    Depth is the energy-weighted mean of the layers' depths ``layer_z_mm``. The flow is
    sampled :data:`DEPTH_STRETCH_DRAWS` times at the data's conditions; its mean depth
    ``mu(E, theta)`` is fitted on those samples (:func:`~calogen.calibration.
    depth_stretch_features`). In each polar-angle class (normal incidence, then the bins of
    ``theta_edges_deg``; classes with fewer than ``min_showers`` showers are left out) the
    factor is chosen so that the standard deviation of the stretched flow's depth about
    its linear trend in (ln E, theta) matches Geant4's, in :data:`DEPTH_STRETCH_ROUNDS`
    rounds; the class's node is its mean polar angle (0 for normal incidence).
    """
    e = np.asarray(energies, np.float64).reshape(-1)
    n = e.size
    theta = np.zeros(n) if theta_deg is None else np.asarray(theta_deg, np.float64).reshape(-1)
    z = np.asarray(layer_z_mm, np.float64).reshape(-1)
    n_layers = z.size
    layer = np.clip(data.points[:, 2].astype(np.int64), 0, n_layers - 1)
    e_data = np.bincount(
        data.shower * n_layers + layer,
        weights=np.maximum(data.points[:, 3], 0.0).astype(np.float64),
        minlength=n * n_layers,
    ).reshape(n, n_layers)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(DEPTH_STRETCH_DRAWS):
        gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
        flow = (
            model.shower_flow.sample(e, gen, theta)
            if model.config.directions
            else model.shower_flow.sample(e, gen)
        )
        draws.append(np.asarray(flow["e_per_layer"], np.float64))
    e_flow = np.concatenate(draws)
    e_rep, t_rep = np.tile(e, DEPTH_STRETCH_DRAWS), np.tile(theta, DEPTH_STRETCH_DRAWS)
    d_flow, d_data = depth_mm(e_flow, z), depth_mm(e_data, z)
    trend = np.linalg.lstsq(depth_stretch_features(e_rep, t_rep), d_flow, rcond=None)[0]
    classes = (
        correction_bins(theta, n, theta_edges_deg) if theta_edges_deg else np.where(theta > 0, 1, 0)
    )
    nodes, factors, rows = [], [], []
    for c in np.unique(classes):
        sel = np.flatnonzero(classes == c)
        if sel.size < min_showers:
            continue
        node = 0.0 if c == 0 else float(theta[sel].mean())
        rep = np.concatenate([sel + k * n for k in range(DEPTH_STRETCH_DRAWS)])
        target = _depth_residual_std(d_data[sel], e[sel], theta[sel])
        before = _depth_residual_std(d_flow[rep], e_rep[rep], t_rep[rep])
        wanted = target / before if before > 0 else 1.0
        factor, reached = wanted, 1.0
        for _ in range(DEPTH_STRETCH_ROUNDS):
            one = DepthStretch(z, np.array([node]), np.array([factor]), trend)
            shift = one.shifts(e_flow[rep], e_rep[rep], t_rep[rep])
            moved = one.depth(one.sample(e_flow[rep], shift))
            reached = _depth_residual_std(moved, e_rep[rep], t_rep[rep]) / before
            if abs(reached - 1.0) < 1e-6:
                break
            factor = float(
                np.clip(1.0 + (factor - 1.0) * (wanted - 1.0) / (reached - 1.0), 0.5, 2.0)
            )
        nodes.append(node)
        factors.append(factor)
        rows.append(
            {
                "theta_deg": round(node, 3),
                "showers": int(sel.size),
                "depth_std_mm_geant4": round(target, 4),
                "depth_std_mm_flow": round(before, 4),
                "stretch": round(factor, 5),
                # of the factor before the last update (the rounds converge well before)
                "depth_std_ratio_reached": round(reached, 4),
            }
        )
    if not nodes:
        raise UsageError(f"the depth stretch needs at least {min_showers} showers in a class")
    order = np.argsort(nodes)
    node_array = np.asarray(nodes)[order]
    if np.any(np.diff(node_array) <= 0):  # two classes at one mean angle: keep the first
        keep = np.concatenate(([True], np.diff(node_array) > 0))
        order = order[keep]
    stretch = DepthStretch(z, np.asarray(nodes)[order], np.asarray(factors)[order], trend)
    return stretch, {"classes": rows, "stretch": stretch.to_dict()}


#: rounds of :func:`fit_tilt` (each: tilt, project, measure, update; on the default the
#: cell-level k came within 0.1e-3 per mm of Geant4's in every energy bin after 5)
AXIS_TILT_ROUNDS = 5


#: polar-angle bins (deg) of the axis tilt's centre-of-gravity offsets (AxisTilt.cog_offset_mm)
AXIS_TILT_THETA_EDGES_DEG = (0.5, 10.0, 20.0, 30.0, 40.0, 50.0, 90.0)


def tilt_cog_offsets(
    generated: PackedPoints,
    theta_deg: NDArray[np.floating],
    directions: NDArray[np.floating],
    axis_shift: AxisShiftCorrection | None,
    min_showers: int = 20,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``(theta nodes [T], offsets [T])``: the mean x (mm) of the centre of gravity of
    inclined ``generated`` showers (made without an axis tilt) in the axis frame where the
    tilt applies (straightened, the axis shift taken off), per bin of
    :data:`AXIS_TILT_THETA_EDGES_DEG` with at least ``min_showers`` showers; nodes at the
    bins' mean angles."""
    from calogen.calibration import axis_tilt_cogs

    theta = np.asarray(theta_deg, np.float64).reshape(-1)
    points = straighten_points(generated.points, generated.counts, directions)
    if axis_shift is not None:
        points[:, 0] -= axis_shift.shift(theta[generated.shower], points[:, 2]).astype(points.dtype)
    cog = axis_tilt_cogs(points, generated.shower, generated.n_showers)[:, 0]
    nodes, offsets = [], []
    edges = AXIS_TILT_THETA_EDGES_DEG
    for lo, hi in itertools.pairwise(edges):
        sel = (theta >= lo) & (theta < hi)
        if sel.sum() >= min_showers:
            nodes.append(float(theta[sel].mean()))
            offsets.append(float(cog[sel].mean()))
    return np.asarray(nodes), np.asarray(offsets)


def fit_tilt(
    data_points: PackedPoints,
    generated: PackedPoints,
    energies: NDArray[np.floating],
    calorimeter: Any,
    seed: int = 0,
    rounds: int = AXIS_TILT_ROUNDS,
    offsets: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None,
) -> tuple[AxisTilt, dict[str, Any]]:
    """The :class:`~calogen.calibration.AxisTilt` that gives ``generated`` (showers made
    without it, normal incidence) the cell-level relation of ``data_points`` (Geant4, the
    same incident ``energies [S]`` in GeV): per incident-energy bin of
    :data:`~calogen.calibration.AXIS_TILT_ENERGY_EDGES_GEV` the regression slope of the
    fitted-axis slope on the centre of gravity and the residual variance
    (:func:`~calogen.calibration.hit_axis_relation`).

    The tilt is applied to the finished generated showers (at normal incidence the same as
    within generation, up to the axis shift's small normal-incidence row), projected and
    measured; ``k`` moves by the remaining difference and ``sigma`` scales with the ratio of
    the missing to the added variance, ``rounds`` times, with fixed normal draws
    (``seed``). ``offsets``: the centre-of-gravity offsets of inclined showers
    (:func:`tilt_cog_offsets`; none: the tilt centres no inclined shower)."""
    from calogen.calibration import AXIS_TILT_ENERGY_EDGES_GEV, hit_axis_relation
    from calogen.evaluation.observables import shower_features
    from calogen.geometry import project

    energies = np.asarray(energies, np.float64).reshape(-1)
    edges = AXIS_TILT_ENERGY_EDGES_GEV
    nodes = 0.5 * (np.asarray(edges[:-1]) + np.asarray(edges[1:]))

    def relation(packed: PackedPoints) -> tuple[NDArray, NDArray]:
        # the centre of gravity and the fitted axis as `calogen evaluate` measures them
        f = shower_features(project(unpack(packed, energies), calorimeter), calorimeter)
        cog = np.stack([f.cog_x_mm, f.cog_y_mm], 1)
        slope = np.stack([f.axis_slope_x, f.axis_slope_y], 1)
        return hit_axis_relation(cog, slope, energies, edges)

    k_data, v_data = relation(data_points)
    k_gen, v_gen = relation(generated)
    usable = np.isfinite(k_data) & np.isfinite(k_gen)
    if not usable.any():
        raise UsageError(
            "axis tilt: too few normal-incidence showers per energy bin "
            f"({', '.join(f'{a:g}' for a in edges)} GeV) to fit it"
        )
    normals = np.random.default_rng(seed).standard_normal((energies.size, 2))
    k = np.where(usable, k_data - k_gen, 0.0)
    missing = np.where(usable, np.maximum(v_data - v_gen, 0.0), 0.0)
    sigma = np.sqrt(missing) / 2.0  # a first guess: cell-level slopes answer more (1.47x)
    history = []
    for _ in range(rounds):
        tilt = AxisTilt(nodes, _fill(k, usable), _fill(sigma, usable))
        points = generated.points.copy()
        tilt.apply(points, generated.shower, energies, normals, LAYER_DEPTH_MM)
        k_now, v_now = relation(PackedPoints(points, generated.shower, generated.counts))
        history.append({"k_per_mm": k_now.tolist(), "residual_variance": v_now.tolist()})
        ok = usable & np.isfinite(k_now)
        k = np.where(ok, k + (k_data - k_now), k)
        added = v_now - v_gen
        scale = np.where(ok & (added > 1e-12), missing / np.maximum(added, 1e-12), 1.0)
        sigma = np.where(ok, sigma * np.sqrt(np.clip(scale, 0.25, 4.0)), sigma)
    # each bin's estimate scatters by about 2e-3 / mm in k with 750 showers (x and y pooled):
    # the final k and sigma follow a straight line in ln E through the bins' values
    tilt = AxisTilt(
        nodes,
        _smooth_in_log_energy(nodes, k, usable),
        _smooth_in_log_energy(nodes, sigma, usable, floor=0.0),
    )
    if offsets is not None and len(offsets[0]):
        tilt.theta_nodes_deg, tilt.cog_offset_mm = offsets
    return tilt, {
        "energy_nodes_gev": nodes.tolist(),
        "data": {"k_per_mm": k_data.tolist(), "residual_variance": v_data.tolist()},
        "generated_without": {"k_per_mm": k_gen.tolist(), "residual_variance": v_gen.tolist()},
        "rounds": history,
        "axis_tilt": tilt.to_dict(),
    }


def _smooth_in_log_energy(
    nodes: NDArray[np.float64],
    values: NDArray[np.float64],
    usable: NDArray[np.bool_],
    floor: float | None = None,
) -> NDArray[np.float64]:
    """``values`` at ``nodes`` (GeV) replaced by the least-squares line in ln E through the
    usable bins (their mean with fewer than three; at least ``floor``)."""
    x, y = np.log(nodes[usable]), np.asarray(values, np.float64)[usable]
    if x.size >= 3:
        slope, intercept = np.polyfit(x, y, 1)
        out = intercept + slope * np.log(nodes)
    else:
        out = np.full(nodes.shape, y.mean())
    return out if floor is None else np.maximum(out, floor)


def _fill(values: NDArray[np.float64], usable: NDArray[np.bool_]) -> NDArray[np.float64]:
    """``values`` with the unusable bins' entries taken from the nearest usable bin."""
    good = np.flatnonzero(usable)
    nearest = good[np.abs(np.arange(values.size)[:, None] - good[None, :]).argmin(1)]
    return np.asarray(values, np.float64)[nearest]


def normal_incidence(directions: NDArray[np.floating] | None, n: int) -> NDArray[np.bool_]:
    """``[n]`` mask of the showers at normal incidence (polar angle below 0.5 deg; all of
    them without ``directions``)."""
    if directions is None:
        return np.ones(n, bool)
    return angles_from_directions(directions)[0] < 0.5


def fit_axis_tilt(
    model_dir: str | os.PathLike[str],
    data: Any,
    *,
    n_showers: int = 3000,
    seed: int = 0,
    geometry: str = "slab",
) -> dict[str, Any]:
    """Fit the model's :class:`~calogen.calibration.AxisTilt` alone (:func:`fit_tilt`) on the
    normal-incidence showers among the first ``n_showers`` of each file of ``data`` and
    showers generated with the model's other corrections at their energies; stored in
    ``model.json`` (the other corrections are kept). Returns the fit's summary."""
    from calogen.models.training import write_json

    model_dir = Path(model_dir)
    info = read_model_info(model_dir)
    model = load_model(model_dir, info)
    if not model.config.mirror_points:
        raise UsageError(f"{model_dir}: an axis tilt needs a model with mirror_points")
    ref = scaffold.occupancy_reference(data, n_showers, geometry)
    normal = np.flatnonzero(normal_incidence(ref.directions, len(ref.energies)))
    ref = ref.subset(normal)
    model.axis_tilt = None
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
    generated = model.generate(ref.energies, gen)[0]
    offsets = None
    if model.config.directions:  # inclined showers over the model's angles, phi = 0
        top = float(info.get("theta_range_deg", [0.0, 60.0])[1])
        theta = rng.uniform(AXIS_TILT_THETA_EDGES_DEG[0], max(top, 1.0), ref.energies.size)
        phi = np.zeros_like(theta)
        inclined = model.generate(ref.energies, gen, theta_deg=theta, phi_deg=phi)[0]
        t = np.radians(theta)
        dirs = np.stack([np.sin(t), np.zeros_like(t), np.cos(t)], 1)
        offsets = tilt_cog_offsets(inclined, theta, dirs, model.axis_shift)
    tilt, summary = fit_tilt(
        ref.packed, generated, ref.energies, ref.calorimeter, seed, offsets=offsets
    )
    info["axis_tilt"] = tilt.to_dict()
    write_json(model_dir / MODEL_JSON, info)
    return {"model": str(model_dir), "showers": int(normal.size), **summary}


#: polar-angle bin edges (deg) of an angle-aware model's occupancy and radial corrections:
#: normal incidence (below the first edge), then inclined showers. (Three inclined bins,
#: 0.5-20, 20-40 and 40-60 deg, fitted on 330 showers each, were worse at 60 deg than one:
#: occupancy W1 246 against 43, radial 213 against 146 at 50 GeV; docs/angles.md.)
THETA_CORRECTION_EDGES_DEG = (0.5,)


#: inclined fit showers per angle class that ``theta_edges_deg="auto"`` asks for
AUTO_CLASS_SHOWERS = 500


def auto_theta_edges(theta_deg: NDArray[np.floating] | None) -> tuple[float, ...]:
    """Angle classes for fit showers at ``theta_deg``: up to four inclined classes of equal
    steps in tan theta (:func:`tan_equal_theta_edges`), as many as have
    :data:`AUTO_CLASS_SHOWERS` inclined showers each (fewer showers per class made the
    corrections at 30 deg worse: docs/default_model.md); one inclined class otherwise."""
    if theta_deg is None:
        return THETA_CORRECTION_EDGES_DEG
    theta = np.asarray(theta_deg, np.float64)
    inclined = theta >= THETA_CORRECTION_EDGES_DEG[0]
    n_classes = min(4, int(inclined.sum()) // AUTO_CLASS_SHOWERS)
    if n_classes < 2:
        return THETA_CORRECTION_EDGES_DEG
    return tan_equal_theta_edges(float(theta.max()), n_classes)


def tan_equal_theta_edges(theta_max_deg: float, n_inclined: int = 4) -> tuple[float, ...]:
    """Angle-class edges (deg): normal incidence below 0.5 deg, then ``n_inclined`` classes
    of equal steps in tan theta up to ``theta_max_deg`` (the shipped default's 0.5, 23.4,
    40.9, 52.4 for 60 deg: the axis offset grows with tan theta)."""
    if not 0.5 < theta_max_deg < 90.0 or n_inclined < 1:
        raise UsageError(
            f"tan-equal angle classes need 0.5 < theta_max < 90 deg, got {theta_max_deg}"
        )
    step = math.tan(math.radians(theta_max_deg)) / n_inclined
    inner = [math.degrees(math.atan(k * step)) for k in range(1, n_inclined)]
    return (0.5, *(round(v, 1) for v in inner if v > 0.5))


def check_theta_edges(edges: Sequence[float]) -> tuple[float, ...]:
    """Polar-angle bin edges (deg) of directional corrections: increasing, in (0, 90)."""
    try:
        out = tuple(float(v) for v in edges)
    except (TypeError, ValueError):
        raise UsageError(f"theta edges must be numbers (deg), got {edges!r}") from None
    if not out or any(not 0 < v < 90 for v in out) or np.any(np.diff(out) <= 0):
        raise UsageError(f"theta edges must be increasing angles in (0, 90) deg, got {list(out)}")
    return out


def correction_bins(
    theta_deg: NDArray[np.floating] | None,
    n_showers: int,
    edges_deg: Sequence[float] = THETA_CORRECTION_EDGES_DEG,
) -> NDArray[np.int64]:
    """Correction bin (of ``edges_deg``) of each shower; 0 without angles."""
    if theta_deg is None:
        return np.zeros(n_showers, np.int64)
    edges = np.asarray(edges_deg, np.float64)
    return np.searchsorted(edges, np.asarray(theta_deg, np.float64), side="right").astype(np.int64)


@dataclass
class _GroupFit:
    correction: OccupancyCorrection
    radial: RadialCorrection | None
    n_gen: NDArray[np.float64]
    occ_gen: NDArray[np.float64]
    target: NDArray[np.float64]
    history: list[dict[str, float]]


def _fit_group(
    model: CaloClouds2,
    ref: Any,
    torch_seed: int,
    radial: bool,
    refine_iterations: int,
    depth_relative: bool = False,
    shower_classes: ShowerClasses | None = None,
) -> _GroupFit:
    """Steps 0-2 of :func:`fit_occupancy` on the showers of ``ref``; ``model`` must have no
    binned corrections (its ``occupancy`` and ``radial`` are set while fitting)."""
    from calogen.geometry import project

    calorimeter, n_data, occ_data, energies = ref.calorimeter, ref.n_points, ref.hits, ref.energies
    dirs = ref.directions if model.config.directions else None
    theta, phi = angles_from_directions(dirs) if dirs is not None else (None, None)

    def run(correction: OccupancyCorrection) -> PackedPoints:
        model.occupancy = correction
        gen = torch.Generator().manual_seed(torch_seed)
        return model.generate(energies, gen, theta_deg=theta, phi_deg=phi)[0]

    def generate(correction: OccupancyCorrection) -> tuple[NDArray, NDArray]:
        packed = run(correction)
        hits = project(unpack(packed, energies), calorimeter).hits_per_shower()
        return packed.counts.astype(np.float64), np.maximum(hits, 1).astype(np.float64)

    real_points = straighten_points(ref.packed.points, ref.packed.counts, dirs)

    def fit_radial(correction: OccupancyCorrection) -> None:
        model.radial = None
        packed = run(correction)
        model.radial = RadialCorrection.fit(
            (real_points, ref.packed.shower, energies),
            (straighten_points(packed.points, packed.counts, dirs), packed.shower, energies),
            depth_relative=depth_relative,
            shower_classes=shower_classes or (),
            theta_deg=theta,
        )

    model.radial = None
    if radial:
        fit_radial(OccupancyCorrection.identity())
    n_gen, occ_gen = generate(OccupancyCorrection.identity())  # the Shower Flow's own N
    corr = OccupancyCorrection.fit(
        n_data, occ_data, n_gen, occ_gen, log_space=True, n_cap=model.config.max_points
    )
    target = corr.target_hits(n_gen)
    history = [{"mean_hits": float(occ_gen.mean()), "mean_points": float(n_gen.mean())}]

    def refine(corr: OccupancyCorrection, iterations: int) -> OccupancyCorrection:
        for _ in range(iterations):
            n_k, occ_k = generate(corr)
            history.append({"mean_hits": float(occ_k.mean()), "mean_points": float(n_k.mean())})
            # elasticity d ln(hits) / d ln(points) between the uncorrected and this run
            moved = np.abs(np.log(n_k / n_gen)) > 0.05
            ratio = np.log(occ_k[moved] / occ_gen[moved]) / np.log(n_k[moved] / n_gen[moved])
            elasticity = float(np.median(ratio)) if ratio.size >= 10 else 1.0
            corr = corr.refine(n_gen, occ_k, elasticity)
        return corr

    corr = refine(corr, refine_iterations)
    if radial:
        # the occupancy correction changes N, and the network spreads fewer points
        # differently: refit the radial map on showers generated with it, then refine the
        # occupancy again with the new map
        fit_radial(corr)
        corr = refine(corr, max(refine_iterations, 1))
    n_k, occ_k = generate(corr)
    history.append({"mean_hits": float(occ_k.mean()), "mean_points": float(n_k.mean())})
    return _GroupFit(corr, model.radial, n_gen, occ_gen, target, history)


__all__ = [
    "CM_NAME",
    "DISTILL_PRESETS",
    "MODEL_NAME",
    "PRESETS",
    "CaloClouds2",
    "CaloClouds2Config",
    "CaloClouds2DistillTrainer",
    "CaloClouds2Generator",
    "CaloClouds2Net",
    "CaloClouds2Trainer",
    "Conditioning",
    "DistillConfig",
    "build_model",
    "distill",
    "fit_occupancy",
    "get_config",
    "get_distill_config",
    "load_generator",
    "load_model",
    "subsample_points",
    "train",
]
