"""BIB-AE (Buhmann et al. 2005.05334; Diefenbacher et al. 2303.18150) on a voxel grid.

The Bounded-Information-Bottleneck autoencoder on ``30 x 30 x 30`` voxels around the impact
point (:data:`calogen.data.voxels.BIBAE_GRID`; the grid centre can be moved along the
incident plane for inclined showers). Networks:

* **encoder**: 3-D convolutions (kernel 4, stride 2, layer norm, LeakyReLU) and two dense
  layers → mean and log-variance of a ``latent_dim`` latent, conditioned on the condition
  vector (appended before the dense layers);
* **decoder**: dense layer from (latent, condition) to the coarsest feature map, then 3-D
  transposed convolutions (kernel 4, stride 2) back to the grid, with a per-channel bias from
  the condition at every stage and a ReLU output (exact zeros are allowed);
* **image critic** (WGAN-GP): the encoder's convolution stack on the image plus the
  condition and the 30 layer energies (``ln(1 + E_l / MeV)``) into a dense head;
* **latent critic** (WGAN-GP): dense network telling encoded latents from N(0, 1) samples;
* **post-processor**: 1 x 1 x 1 convolutions on (decoder output, condition), residual with
  ReLU output, trained to sharpen the per-voxel energy spectrum with a sorted-energy MMD
  (the voxel energies of each shower sorted, the ``sorted_top_k`` largest compared between
  real and generated showers with a multi-scale Gaussian-kernel MMD) plus a weak
  reconstruction term;
* **visible-energy flow**: a small spline flow for ``ln(E_vis / E)`` given (E, angle), used
  to draw the visible-energy condition at generation time;
* **latent flow** (optional sampling mode ``latent="flow"``): a conditional spline-coupling
  flow (:class:`calogen.models.flows.LatentFlow`) fitted on the encoded latents; the default
  ``latent="prior"`` draws the latent from N(0, 1) as the paper does.

Generation: latent from N(0, 1) (or the latent flow), visible energy from its flow, decoder,
post-processor; with ``rescale_evis`` (the ``small`` default, not in the papers) each
shower is then scaled so that its energy equals the drawn visible energy, the way the
CaloClouds calibration rescales to the Shower Flow's energy.

Coordinate channels (:meth:`BIBAE.coordinates`; our addition): the depth of each voxel and
its x, y relative to the requested shower axis (``slope * depth``) enter the encoder, the
critic and the post-processor as three extra input channels and every decoder stage through a
1 x 1 x 1 convolution. Translation-equivariant convolutions cannot otherwise move a shower
along an inclined axis from a condition that only adds per-channel biases (a first run without
them followed the angle only loosely, see docs/bibae_l2lflows.md).

Condition vector (4 numbers): standardised ``ln E``, the direction slopes ``dx/dz`` and
``dy/dz`` divided by ``slope_scale`` (zero at normal incidence; 2303.18150 varies the angle in
the y-z plane only) and the standardised ``ln(E_vis / E)``, where ``E_vis`` is the energy
inside the grid.

Axis frame (``axis_frame: true``; our addition, as for the angle-aware CaloClouds II): each
training shower is first straightened (:func:`calogen.directions.straighten_points`: every
layer shifted by minus the axis offset ``depth * tan(theta)``, then rotated by ``-phi``), so
the grid stays centred on the axis at any angle (at 60 deg the axis is 171 mm off the impact
point in the last layer, far beyond the +-76 mm grid). The condition then holds the slope in the
inclination plane only, ``(tan(theta), 0) / slope_scale``, and the coordinate channels are
relative to the grid centre (the axis); generated voxels are turned into points and inclined
back by ``(theta, phi)`` (:func:`calogen.directions.incline_points`).
:meth:`BIBAEGenerator.sample_voxels` returns axis-frame voxels for such a model.

Voxel energies enter the networks as ``y = ln(1 + e / energy_unit_mev)`` (0.1 MeV, the cell
threshold): the papers feed MeV directly; the compressed scale lets a small network trained
for minutes on a CPU see the low-energy voxels that decide the number of hits (documented in
docs/bibae_l2lflows.md).

Generator loss (per shower; weights in the config)::

    w_rec * sum_voxels (y_rec - y)^2 + w_kld * KLD + w_critic * (-D_x(y_rec, c))
    + w_latent_critic * (-D_z(z)) + w_mmd_latent * MMD(z, N(0, 1))

Critics: WGAN-GP with gradient penalty ``gp_weight``, ``n_critic`` critic updates per
generator update; the post-processor starts at ``pp_start`` (fraction of the iterations).
All randomness of training iteration ``i`` comes from RNGs seeded with ``(seed, i)``.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import showerdata
import torch
import zuko
from numpy.typing import NDArray
from torch import Tensor, nn

from calogen.data.voxels import (
    SparseVoxels,
    VoxelGrid,
    mirror_flips,
    mirror_voxels,
    voxels_to_points,
)
from calogen.directions import axis_slopes
from calogen.errors import UsageError
from calogen.generator import as_rng, check_directions, check_energies
from calogen.geometry import ABSORBER_MM, CELL_SIZE_MM, N_LAYERS, SILICON_MM, slab
from calogen.models import scaffold
from calogen.models.configs import resolve_config
from calogen.models.flows import LatentFlow
from calogen.models.training import (
    gaussian_kl,
    lr_schedule,
    read_model_info,
    set_lr,
)

MODEL_NAME = "bibae"
COND_DIM = 4
#: Coordinate channels: depth, and x, y relative to the requested shower axis.
N_COORDS = 3
#: Length scale of the transverse coordinate channels, mm.
COORD_SCALE_MM = 50.0
#: Decoder upsampling stages (:class:`BIBAEConfig` ``decoder``).
DECODERS = ("transposed", "upsample")


@dataclass
class BIBAEConfig(scaffold.ValidationTraining):
    """Hyperparameters of the BIB-AE (JSON-serialisable; see :data:`PRESETS`).

    ``validation_showers`` / ``validate_every`` (:class:`~calogen.models.scaffold.
    ValidationTraining`): N held-out showers of each training file (those right after its
    ``max_showers`` training showers, or its last N without ``max_showers``) whose
    :func:`validation_losses` (``val_loss``: ``w_rec`` x reconstruction + ``w_kld`` x KLD,
    the training's ``vae_loss``) is logged every ``validate_every`` iterations; 0 (default)
    is off.
    """

    LABEL: ClassVar[str] = "BIB-AE"

    # grid
    n_layers: int = 30
    nx: int = 30
    ny: int = 30
    cell_size_mm: float = CELL_SIZE_MM
    grid_centre_mm: tuple[float, float] = (0.0, 0.0)
    #: Learn inclined showers in their axis frame (see the module docstring).
    axis_frame: bool = False
    #: Mirror each generated shower at random in x and y at normal incidence (in y only for
    #: inclined showers in the axis frame): the symmetry of the physics, which the decoder
    #: only approximates (its showers' centre of gravity in x is offset by +0.23 mm,
    #: docs/bibae_l2lflows.md). Generation only; the grid must be centred on the axis.
    mirror: bool = False
    #: Training: mirror each training shower at random in x and y where the symmetry holds
    #: (the rules of ``mirror``, :func:`calogen.data.voxels.mirror_flips`), so that the
    #: decoder sees both sides of the axis equally often (four showers' worth of each at
    #: normal incidence). The grid must be centred on the axis.
    augment_mirror: bool = False
    energy_unit_mev: float = 0.1
    slope_scale: float = 0.5
    # networks
    latent_dim: int = 24
    channels: tuple[int, ...] = (32, 64, 128)
    hidden: int = 512
    critic_channels: tuple[int, ...] = (32, 64, 128)
    critic_hidden: int = 256
    latent_critic_hidden: tuple[int, ...] = (256, 256)
    pp_channels: tuple[int, ...] = (128, 128, 128)
    evis_flow_transforms: int = 4
    evis_flow_hidden: tuple[int, ...] = (64, 64)
    latent_flow_transforms: int = 6
    latent_flow_hidden: tuple[int, ...] = (128, 128)
    #: Decoder upsampling: ``"transposed"`` (stride-2 transposed convolutions, kernel 4, as
    #: in the paper) or ``"upsample"`` (trilinear resize to the stage's shape, then a 3 x 3 x
    #: 3 convolution: no checkerboard and no one-sided padding at odd sizes,
    #: docs/bibae_l2lflows.md).
    decoder: str = "transposed"
    # losses
    w_rec: float = 0.05
    w_kld: float = 1.0
    w_critic: float = 10.0
    w_latent_critic: float = 1.0
    w_mmd_latent: float = 100.0
    w_pp_rec: float = 0.005
    w_pp_mmd: float = 100.0
    w_pp_critic: float = 1.0
    #: Weight of the profile loss (:meth:`BIBAE.profile_loss`, our addition, not in the
    #: papers): the squared difference of ``ln(1 + E / unit)`` between reconstruction and
    #: input in every layer and every ring one cell pitch wide around the requested axis, for
    #: the decoder and the post-processor. The voxel-wise loss barely sees the sparse halo
    #: beyond 30 mm, which the small model drops (docs/bibae_l2lflows.md); 0 = off.
    w_profile: float = 0.0
    gp_weight: float = 10.0
    n_critic: int = 5
    sorted_top_k: int = 2000
    mmd_bandwidths: tuple[float, ...] = (0.05, 0.2, 1.0, 5.0)
    # optimisation
    iterations: int = 100_000
    batch_size: int = 64
    lr_start: float = 5e-4
    lr_end: float = 5e-6
    lr_critic: float = 1e-4
    lr_kind: str = "cosine"
    pp_start: float = 0.5
    grad_clip: float = 100.0
    checkpoint_every: int = 2000
    max_showers: int | None = None
    # generation
    latent: str = "prior"
    rescale_evis: bool = True
    min_energy_gev: float = 1e-5
    jitter: bool = False
    generation_batch: int = 256

    TUPLES: ClassVar[dict[str, type]] = {
        "grid_centre_mm": float,
        "channels": int,
        "critic_channels": int,
        "latent_critic_hidden": int,
        "pp_channels": int,
        "evis_flow_hidden": int,
        "latent_flow_hidden": int,
        "mmd_bandwidths": float,
    }

    def validate(self) -> None:
        positive = (
            "n_layers",
            "nx",
            "ny",
            "latent_dim",
            "hidden",
            "critic_hidden",
            "iterations",
            "batch_size",
            "checkpoint_every",
            "n_critic",
            "sorted_top_k",
            "generation_batch",
        )
        self.check_positive(positive, "BIB-AE config")
        self.check_validation("BIB-AE config")
        if not self.channels or len(self.channels) != len(self.critic_channels):
            raise UsageError("BIB-AE config: 'channels' and 'critic_channels' need equal length")
        if self.decoder not in DECODERS:
            raise UsageError(f"BIB-AE config 'decoder' must be one of {', '.join(DECODERS)}")
        if self.latent not in ("prior", "flow"):
            raise UsageError("BIB-AE config 'latent' must be 'prior' or 'flow'")
        if self.w_profile < 0:
            raise UsageError("BIB-AE config: 'w_profile' must be >= 0")
        if self.energy_unit_mev <= 0 or self.slope_scale <= 0:
            raise UsageError("BIB-AE config: 'energy_unit_mev' and 'slope_scale' must be > 0")
        shape = (self.n_layers, self.nx, self.ny)
        if (self.mirror or self.augment_mirror) and any(
            float(c) != 0.0 for c in self.grid_centre_mm
        ):
            raise UsageError(
                "BIB-AE config: mirror and augment_mirror need a grid centred on the axis"
            )
        if min(_stage_shapes(shape, len(self.channels))[-1]) < 1:
            raise UsageError(
                f"BIB-AE config: grid {shape} too small for {len(self.channels)} stages"
            )

    @property
    def grid(self) -> VoxelGrid:
        return VoxelGrid(self.n_layers, self.nx, self.ny, self.cell_size_mm, self.grid_centre_mm)


#: ``paper``: widths and weights as far as known from the BIB-AE papers (see
#: docs/bibae_l2lflows.md); ``small``: same code, 1,600 iterations, about 12 min of CPU time
#: on one thread (0.38 s per iteration, 0.53 s with the post-processor; 12 min 17 s wall with
#: the other core of the shared 2-core machine busy, docs/bibae_l2lflows.md section 4).
PRESETS: dict[str, BIBAEConfig] = {
    "paper": BIBAEConfig(rescale_evis=False),
    "small": BIBAEConfig(
        latent_dim=24,
        w_kld=0.05,
        channels=(8, 16, 32),
        hidden=128,
        critic_channels=(8, 16, 32),
        critic_hidden=64,
        latent_critic_hidden=(64, 64),
        pp_channels=(16, 16),
        evis_flow_transforms=3,
        evis_flow_hidden=(32, 32),
        latent_flow_transforms=4,
        latent_flow_hidden=(64, 64),
        n_critic=1,
        sorted_top_k=1000,
        iterations=1600,
        batch_size=16,
        lr_start=1e-3,
        lr_end=1e-5,
        lr_critic=5e-4,
        checkpoint_every=200,
    ),
}


def get_config(spec: str | dict[str, Any] | BIBAEConfig) -> BIBAEConfig:
    """Config from a preset name, a YAML/JSON path, a dict of overrides or a config."""
    return resolve_config(spec, PRESETS, BIBAEConfig)


# ---------------------------------------------------------------------------------------------
# networks
# ---------------------------------------------------------------------------------------------


def _stage_shapes(shape: Sequence[int], stages: int) -> list[tuple[int, ...]]:
    """Spatial shapes after each stride-2 convolution (kernel 4, padding 1): ``n → n // 2``."""
    out = [tuple(int(s) for s in shape)]
    for _ in range(stages):
        out.append(tuple(s // 2 for s in out[-1]))
    return out


class ConvStack(nn.Module):
    """Stride-2 3-D convolutions (kernel 4, padding 1), layer norm, LeakyReLU."""

    def __init__(self, in_channels: int, channels: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for c in channels:
            layers += [
                nn.Conv3d(c_in, c, 4, stride=2, padding=1),
                nn.GroupNorm(1, c),
                nn.LeakyReLU(0.2),
            ]
            c_in = c
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Encoder(nn.Module):
    def __init__(self, shape: Sequence[int], channels: Sequence[int], hidden: int, latent: int):
        super().__init__()
        self.convs = ConvStack(1 + N_COORDS, channels)
        flat = channels[-1] * math.prod(_stage_shapes(shape, len(channels))[-1])
        self.head = nn.Sequential(
            nn.Linear(flat + COND_DIM, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 2 * latent)
        )

    def forward(self, y: Tensor, cond: Tensor, coords: list[Tensor]) -> tuple[Tensor, Tensor]:
        h = self.convs(torch.cat([y, coords[0]], 1)).flatten(1)
        mu, logvar = self.head(torch.cat([h, cond], 1)).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)


class Resize3d(nn.Module):
    """Trilinear resize to the ``output_size`` of each call, then a 3 x 3 x 3 convolution
    (padding 1): the upsample-and-convolve alternative to a transposed convolution, symmetric
    under mirroring of every axis."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: Tensor, output_size: Sequence[int]) -> Tensor:
        up = nn.functional.interpolate(
            x, size=tuple(output_size), mode="trilinear", align_corners=False
        )
        return self.conv(up)


def _upsampler(kind: str, c_in: int, c_out: int) -> nn.Module:
    if kind == "upsample":
        return Resize3d(c_in, c_out)
    return nn.ConvTranspose3d(c_in, c_out, 4, 2, 1)


class Decoder(nn.Module):
    def __init__(
        self,
        shape: Sequence[int],
        channels: Sequence[int],
        hidden: int,
        latent: int,
        kind: str = "transposed",
    ):
        super().__init__()
        self.shapes = _stage_shapes(shape, len(channels))
        self.channels = tuple(channels)
        coarse = self.shapes[-1]
        self.fc = nn.Sequential(
            nn.Linear(latent + COND_DIM, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, channels[-1] * math.prod(coarse)),
        )
        self.ups = nn.ModuleList()
        self.norms = nn.ModuleList()
        self.cond_bias = nn.ModuleList()
        self.coord_proj = nn.ModuleList()
        for i in range(len(channels) - 1, 0, -1):
            self.ups.append(_upsampler(kind, channels[i], channels[i - 1]))
            self.norms.append(nn.GroupNorm(1, channels[i - 1]))
            self.cond_bias.append(nn.Linear(COND_DIM, channels[i - 1]))
            self.coord_proj.append(nn.Conv3d(N_COORDS, channels[i - 1], 1))
        self.out = _upsampler(kind, channels[0], 1)
        self.out_coord = nn.Conv3d(N_COORDS, 1, 1)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, z: Tensor, cond: Tensor, coords: list[Tensor]) -> Tensor:
        b = z.shape[0]
        h = self.act(self.fc(torch.cat([z, cond], 1)))
        h = h.view(b, self.channels[-1], *self.shapes[-1])
        n = len(self.channels)
        for k, (up, norm, bias, proj) in enumerate(
            zip(self.ups, self.norms, self.cond_bias, self.coord_proj, strict=True)
        ):
            stage = n - 1 - k
            h = up(h, output_size=self.shapes[stage])
            h = self.act(norm(h) + bias(cond)[:, :, None, None, None] + proj(coords[stage]))
        return torch.relu(self.out(h, output_size=self.shapes[0]) + self.out_coord(coords[0]))


class ImageCritic(nn.Module):
    """WGAN critic on (image, condition, layer energies)."""

    def __init__(
        self, shape: Sequence[int], channels: Sequence[int], hidden: int, energy_unit_mev: float
    ):
        super().__init__()
        self.unit = float(energy_unit_mev)
        self.convs = ConvStack(1 + N_COORDS, channels)
        flat = channels[-1] * math.prod(_stage_shapes(shape, len(channels))[-1])
        n_layers = int(shape[0])
        self.head = nn.Sequential(
            nn.Linear(flat + COND_DIM + n_layers, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, 1),
        )

    def forward(self, y: Tensor, cond: Tensor, coords: list[Tensor]) -> Tensor:
        layer_mev = (self.unit * torch.expm1(y)).sum((1, 3, 4))
        feats = torch.log1p(layer_mev)
        h = self.convs(torch.cat([y, coords[0]], 1)).flatten(1)
        return self.head(torch.cat([h, cond, feats], 1)).squeeze(1)


class LatentCritic(nn.Module):
    def __init__(self, latent: int, hidden: Sequence[int]):
        super().__init__()
        sizes = [latent, *hidden]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(sizes):
            layers += [nn.Linear(a, b), nn.LeakyReLU(0.2)]
        layers.append(nn.Linear(sizes[-1], 1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).squeeze(1)


class PostProcessor(nn.Module):
    """Per-voxel network of 1 x 1 x 1 convolutions on (decoder output, condition).

    A 1 x 1 x 1 convolution is a linear map of the channels of every voxel; it is computed
    as :class:`torch.nn.Linear` on channels-last voxels, which is several times faster on a
    CPU than ``Conv3d`` with a unit kernel and has the same weights.
    """

    def __init__(self, channels: Sequence[int]):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1 + COND_DIM + N_COORDS
        for c in channels:
            layers += [nn.Linear(c_in, c), nn.LeakyReLU(0.2)]
            c_in = c
        last = nn.Linear(c_in, 1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        layers.append(last)
        self.net = nn.Sequential(*layers)

    def forward(self, y: Tensor, cond: Tensor, coords: list[Tensor]) -> Tensor:
        b = y.shape[0]
        v = y.reshape(b, -1, 1)
        c = cond[:, None, :].expand(-1, v.shape[1], -1)
        xyz = coords[0].flatten(2).transpose(1, 2)
        delta = self.net(torch.cat([v, c, xyz], 2)).reshape(y.shape)
        return torch.relu(y + delta)


# ---------------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------------


def mmd(a: Tensor, b: Tensor, bandwidths: Sequence[float]) -> Tensor:
    """Squared MMD between samples ``a [n, d]`` and ``b [m, d]`` with a sum of Gaussian kernels.

    Distances are divided by ``d`` so that the bandwidths do not depend on the dimension.
    """
    x = torch.cat([a, b], 0)
    d2 = torch.cdist(x, x).pow(2) / a.shape[1]
    k = sum(torch.exp(-d2 / (2.0 * h * h)) for h in bandwidths)
    n = a.shape[0]
    return k[:n, :n].mean() + k[n:, n:].mean() - 2.0 * k[:n, n:].mean()


def sorted_energies(y: Tensor, k: int) -> Tensor:
    """The ``k`` largest voxel values of each shower, in descending order ``[B, k]``."""
    flat = y.flatten(1)
    k = min(int(k), flat.shape[1])
    return torch.topk(flat, k, dim=1, sorted=True).values


def gradient_penalty(
    critic: Any, real: Tensor, fake: Tensor, gen: torch.Generator, *args: Any
) -> Tensor:
    """WGAN-GP penalty ``(||grad D(x_hat)|| - 1)^2`` on random interpolates."""
    shape = (real.shape[0],) + (1,) * (real.dim() - 1)
    eps = torch.rand(shape, generator=gen)
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    out = critic(x_hat, *args)
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1.0).pow(2).mean()


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------


class BIBAE(nn.Module):
    """All networks of the BIB-AE plus the condition and energy scaling."""

    def __init__(self, config: BIBAEConfig) -> None:
        super().__init__()
        self.config = cfg = config
        shape = (cfg.n_layers, cfg.nx, cfg.ny)
        self.encoder = Encoder(shape, cfg.channels, cfg.hidden, cfg.latent_dim)
        self.decoder = Decoder(shape, cfg.channels, cfg.hidden, cfg.latent_dim, cfg.decoder)
        self.critic = ImageCritic(
            shape, cfg.critic_channels, cfg.critic_hidden, cfg.energy_unit_mev
        )
        self.latent_critic = LatentCritic(cfg.latent_dim, cfg.latent_critic_hidden)
        self.post = PostProcessor(cfg.pp_channels)
        self.evis_flow = zuko.flows.NSF(
            1, 3, transforms=cfg.evis_flow_transforms, hidden_features=cfg.evis_flow_hidden
        )
        self.latent_flow = LatentFlow(
            cfg.latent_dim, COND_DIM, cfg.latent_flow_transforms, cfg.latent_flow_hidden
        )
        # ln E mean/std, ln(E_vis/E) mean/std
        self.register_buffer("cond_stats", torch.tensor([0.0, 1.0, 0.0, 1.0]))
        self.n_stages = len(cfg.channels)
        grid = cfg.grid
        if cfg.n_layers == N_LAYERS:
            depth = slab().layer_z_mm
        else:  # a grid of another depth: evenly spaced layers of the mean pitch
            depth = (np.arange(cfg.n_layers) + 0.5) * float(np.mean(ABSORBER_MM) + SILICON_MM)
        self._depth_mm = torch.as_tensor(depth, dtype=torch.float32)
        self._x_mm = torch.as_tensor(grid.x_centres(), dtype=torch.float32)
        self._y_mm = torch.as_tensor(grid.y_centres(), dtype=torch.float32)

    def coordinates(self, cond: Tensor) -> list[Tensor]:
        """Coordinate channels ``[B, 3, ...]`` at the grid and at every coarser stage.

        Channel 0: depth of the layer (standardised over the grid); channels 1, 2: x and y of
        the voxel centre minus the position of the requested shower axis at that depth
        (``slope * depth``), in units of 50 mm. They let the convolutions place the shower
        along any incident direction; at normal incidence (and in the axis frame,
        ``axis_frame``) they are fixed position maps.
        """
        slopes = cond[:, 1:3] * self.config.slope_scale
        if self.config.axis_frame:  # the grid is centred on the axis in every layer
            slopes = torch.zeros_like(slopes)
        d = self._depth_mm
        depth = ((d - d.mean()) / d.std())[None, :, None, None]
        b = cond.shape[0]
        x = (
            self._x_mm[None, None, :, None]
            - slopes[:, 0, None, None, None] * d[None, :, None, None]
        )
        y = (
            self._y_mm[None, None, None, :]
            - slopes[:, 1, None, None, None] * d[None, :, None, None]
        )
        shape = (b, self.config.n_layers, self.config.nx, self.config.ny)
        full = torch.stack(
            [
                depth.expand(shape),
                x.expand(shape) / COORD_SCALE_MM,
                y.expand(shape) / COORD_SCALE_MM,
            ],
            1,
        )
        maps = [full]
        for _ in range(self.n_stages):
            maps.append(nn.functional.avg_pool3d(maps[-1], 2, 2))
        return maps

    # -- scaling -------------------------------------------------------------------------------
    def to_network(self, voxels_gev: NDArray | Tensor) -> Tensor:
        """``[B, 1, L, X, Y]`` network images ``ln(1 + e / unit)`` from voxels in GeV."""
        v = torch.as_tensor(np.asarray(voxels_gev), dtype=torch.float32).clamp_min(0.0)
        v = v.reshape(v.shape[0], 1, self.config.n_layers, self.config.nx, self.config.ny)
        return torch.log1p(v * (1000.0 / self.config.energy_unit_mev))

    def to_gev(self, y: Tensor) -> Tensor:
        return torch.expm1(y.clamp_min(0.0)) * (self.config.energy_unit_mev / 1000.0)

    def profiles(self, y: Tensor, coords: Tensor) -> Tensor:
        """``ln(1 + E / unit)`` of each layer and each ring ``[B, L + R]`` of images ``y``.

        Rings are one cell pitch wide around the requested axis (``coords``: the full-grid
        coordinate map of :meth:`coordinates`); the last ring takes everything beyond.
        """
        e = torch.expm1(y.clamp_min(0.0))[:, 0]  # [B, L, X, Y] in units of energy_unit_mev
        r_mm = torch.hypot(coords[:, 1], coords[:, 2]) * COORD_SCALE_MM
        n_rings = self.n_rings
        ring = (r_mm / self.config.cell_size_mm).long().clamp_max(n_rings - 1)
        rings = e.new_zeros((e.shape[0], n_rings)).scatter_add_(1, ring.flatten(1), e.flatten(1))
        return torch.log1p(torch.cat([e.sum((2, 3)), rings], 1))

    @property
    def n_rings(self) -> int:
        """Rings of :meth:`profiles`: one cell pitch wide out to the grid's corner."""
        cfg = self.config
        return math.ceil(math.hypot(cfg.nx, cfg.ny) / 2) + 1

    def profile_loss(self, y_out: Tensor, target: Tensor, coords: Tensor) -> Tensor:
        """Mean over showers of the summed squared differences between the :meth:`profiles`
        of ``y_out`` and ``target`` (the input's profiles, computed once per step)."""
        return (self.profiles(y_out, coords) - target).pow(2).sum(1).mean()

    def fit_preprocessing(self, incident: NDArray, evis_gev: NDArray) -> None:
        ln_e = np.log(np.asarray(incident, np.float64))
        ratio = np.log(np.maximum(np.asarray(evis_gev, np.float64), 1e-9) / np.exp(ln_e))
        self.cond_stats.copy_(
            torch.tensor([ln_e.mean(), max(ln_e.std(), 1e-3), ratio.mean(), max(ratio.std(), 1e-3)])
        )

    def condition_slopes(self, directions: NDArray | None, n: int) -> NDArray[np.float64]:
        """Slopes ``[N, 2]`` of the condition: ``(dx/dz, dy/dz)`` of ``directions``
        (``None``: normal incidence), or ``(tan(theta), 0)`` in the axis frame."""
        slopes = axis_slopes(directions, n)
        if self.config.axis_frame:
            slopes = np.stack([np.hypot(slopes[:, 0], slopes[:, 1]), np.zeros(n)], 1)
        return slopes

    def base_condition(self, incident: NDArray, slopes: NDArray) -> Tensor:
        """``[B, 3]``: standardised ``ln E`` and the scaled direction slopes."""
        ln_e = torch.as_tensor(np.log(np.asarray(incident, np.float64)), dtype=torch.float32)
        s = torch.as_tensor(np.asarray(slopes, np.float64), dtype=torch.float32)
        return torch.cat(
            [
                ((ln_e - self.cond_stats[0]) / self.cond_stats[1])[:, None],
                s / self.config.slope_scale,
            ],
            1,
        )

    def evis_code(self, incident: NDArray, evis_gev: NDArray | Tensor) -> Tensor:
        """``[B, 1]`` standardised ``ln(E_vis / E)``."""
        ratio = torch.as_tensor(
            np.log(
                np.maximum(np.asarray(evis_gev, np.float64), 1e-9)
                / np.asarray(incident, np.float64)
            ),
            dtype=torch.float32,
        )
        return ((ratio - self.cond_stats[2]) / self.cond_stats[3])[:, None]

    # -- generation ----------------------------------------------------------------------------
    @torch.no_grad()
    def sample_voxels(
        self,
        incident: NDArray,
        slopes: NDArray,
        generator: torch.Generator,
        latent: str | None = None,
        post_process: bool = True,
        rescale: bool | None = None,
    ) -> NDArray[np.float32]:
        """Voxels ``[N, L, X, Y]`` (GeV) for incident energies (GeV) and direction slopes.

        ``latent``: ``"prior"`` or ``"flow"`` (default: the config's); ``rescale``: scale each
        shower to the visible energy drawn from the visible-energy flow (default: the
        config's ``rescale_evis``).
        """
        cfg = self.config
        latent = cfg.latent if latent is None else latent
        rescale = cfg.rescale_evis if rescale is None else bool(rescale)
        if latent not in ("prior", "flow"):
            raise UsageError(f"latent must be 'prior' or 'flow', got '{latent}'")
        n = incident.shape[0]
        out = np.zeros((n, cfg.n_layers, cfg.nx, cfg.ny), np.float32)
        for start in range(0, n, cfg.generation_batch):
            sl = slice(start, min(start + cfg.generation_batch, n))
            base = self.base_condition(incident[sl], slopes[sl])
            z0 = torch.randn((base.shape[0], 1), generator=generator)
            evis = self.evis_flow(base).transform.inv(z0)
            cond = torch.cat([base, evis], 1)
            if latent == "flow":
                z = self.latent_flow.sample(cond, generator)
            else:
                z = torch.randn((base.shape[0], cfg.latent_dim), generator=generator)
            xyz = self.coordinates(cond)
            y = self.decoder(z, cond, xyz)
            if post_process:
                y = self.post(y, cond, xyz)
            e = self.to_gev(y)[:, 0].double()
            if rescale:
                target = self.evis_gev(incident[sl], evis)
                total = e.flatten(1).sum(1).clamp_min(1e-12)
                e = e * (target / total)[:, None, None, None]
            out[sl] = e.float().numpy()
            if cfg.mirror:  # one uniform draw per shower and axis, after the shower's own
                draws = torch.rand((base.shape[0], 2), generator=generator).numpy()
                mirror_voxels(out[sl], mirror_flips(draws, slopes[sl], cfg.axis_frame))
        return out

    def evis_gev(self, incident: NDArray, code: Tensor) -> Tensor:
        """Visible energy (GeV, float64) from its standardised code ``[B, 1]``."""
        ratio = code[:, 0].double() * self.cond_stats[3] + self.cond_stats[2]
        return torch.as_tensor(np.asarray(incident, np.float64)) * torch.exp(ratio)

    def generation_modules(self) -> dict[str, nn.Module]:
        return {"bibae": self}


class BIBAEGenerator(scaffold.GeneratorBase):
    """:class:`~calogen.generator.Generator` of a trained BIB-AE.

    ``supports_direction`` is true when the model was trained on showers at several angles
    (``slope_range`` holds the range of ``dx/dz``, ``dy/dz`` seen in training).
    """

    def __init__(
        self,
        model: BIBAE,
        energy_range_gev: tuple[float, float] = scaffold.DEFAULT_ENERGY_RANGE_GEV,
        slope_range: Sequence[Sequence[float]] = ((0.0, 0.0), (0.0, 0.0)),
        name: str = MODEL_NAME,
    ) -> None:
        super().__init__(model, energy_range_gev, name)
        self.slope_range = tuple(tuple(float(v) for v in r) for r in slope_range)
        self.supports_direction = any(hi - lo > 1e-6 for lo, hi in self.slope_range)
        self.latent = model.config.latent
        self.rescale = model.config.rescale_evis

    def sample_voxels(
        self,
        energies: NDArray[np.floating],
        directions: NDArray[np.floating] | None = None,
        *,
        seed: int | np.random.Generator | None = None,
        post_process: bool = True,
    ) -> NDArray[np.float32]:
        """Voxels ``[N, L, X, Y]`` in GeV (``post_process=False`` skips the post-processor)."""
        energies = check_energies(energies)
        dirs = check_directions(directions, energies.size)
        return self.model.sample_voxels(
            energies,
            self.model.condition_slopes(dirs, energies.size),
            self.torch_generator(seed),
            self.latent,
            post_process,
            self.rescale,
        )

    def sample(
        self,
        energies: NDArray[np.floating],
        directions: NDArray[np.floating] | None = None,
        *,
        seed: int | np.random.Generator | None = None,
    ) -> showerdata.Showers:
        """Showers ``(x mm, y mm, layer, e GeV)``: one point per voxel above the cut."""
        energies = check_energies(energies)
        dirs = check_directions(directions, energies.size)
        if dirs is not None and not self.supports_direction:
            raise UsageError(
                "this bibae model was trained at normal incidence only (no directions)"
            )
        rng = as_rng(seed)
        vox = self.sample_voxels(energies, dirs, seed=rng)
        cfg = self.model.config
        return voxels_to_points(
            vox,
            self.grid,
            energies,
            dirs,
            min_energy_gev=cfg.min_energy_gev,
            jitter=cfg.jitter,
            rng=rng,
            incline=cfg.axis_frame,
        )


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------


class BIBAETrainer(scaffold.TrainerBase):
    """Alternating WGAN-GP critic / autoencoder / post-processor / flow updates."""

    name = MODEL_NAME

    def __init__(self, model: BIBAE, data: SparseVoxels, seed: int, data_path: str) -> None:
        super().__init__(model, data, seed, data_path)
        cfg = model.config
        ae = list(model.encoder.parameters()) + list(model.decoder.parameters())
        betas = (0.5, 0.9)
        self.opt_ae = torch.optim.Adam(ae, lr=cfg.lr_start, betas=betas)
        self.opt_critic = torch.optim.Adam(
            list(model.critic.parameters()) + list(model.latent_critic.parameters()),
            lr=cfg.lr_critic,
            betas=betas,
        )
        self.opt_pp = torch.optim.Adam(model.post.parameters(), lr=cfg.lr_start, betas=betas)
        self.opt_flows = torch.optim.Adam(
            list(model.evis_flow.parameters()) + list(model.latent_flow.parameters()),
            lr=cfg.lr_start,
        )
        self.evis = _grid_sums(data)
        self.slopes = model.condition_slopes(data.directions, len(data))

    def modules(self) -> dict[str, nn.Module]:
        return self.model.generation_modules()

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {
            "ae": self.opt_ae,
            "critic": self.opt_critic,
            "pp": self.opt_pp,
            "flows": self.opt_flows,
        }

    def export(self, out: Path) -> None:
        export_model(self.model, out, extra=_training_info(self.data, self.data_path, self.seed))

    def _batch(self, rng: np.random.Generator) -> tuple[Tensor, Tensor, Tensor]:
        cfg, data, model = self.model.config, self.data, self.model
        rows = rng.choice(len(data), size=min(cfg.batch_size, len(data)), replace=False)
        y = model.to_network(data.dense(rows))
        if cfg.augment_mirror:  # [B, 1, L, X, Y]
            draws = rng.random((len(rows), 2))
            mirror_voxels(y, mirror_flips(draws, self.slopes[rows], cfg.axis_frame))
        base = model.base_condition(data.incident[rows], self.slopes[rows])
        evis = model.evis_code(data.incident[rows], self.evis[rows])
        return y, base, torch.cat([base, evis], 1)

    def step(self, iteration: int) -> dict[str, float]:
        model, cfg = self.model, self.model.config
        model.train()
        rng = np.random.default_rng([self.seed, iteration])
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + iteration)
        lr_frac = lr_schedule(
            iteration, cfg.iterations, 1.0, cfg.lr_end / cfg.lr_start, cfg.lr_kind
        )
        set_lr(self.opt_ae, cfg.lr_start * lr_frac)
        set_lr(self.opt_pp, cfg.lr_start * lr_frac)
        set_lr(self.opt_flows, cfg.lr_start * lr_frac)
        set_lr(self.opt_critic, cfg.lr_critic * lr_frac)
        out: dict[str, float] = {}

        # -- critics ------------------------------------------------------------------------
        for _ in range(cfg.n_critic):
            y, _, cond = self._batch(rng)
            with torch.no_grad():
                xyz = model.coordinates(cond)
                mu, logvar = model.encoder(y, cond, xyz)
                z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen)
                y_rec = model.decoder(z, cond, xyz)
            loss_x = model.critic(y_rec, cond, xyz).mean() - model.critic(y, cond, xyz).mean()
            gp_x = gradient_penalty(model.critic, y, y_rec, gen, cond, xyz)
            prior = torch.randn(z.shape, generator=gen)
            loss_z = model.latent_critic(z).mean() - model.latent_critic(prior).mean()
            gp_z = gradient_penalty(model.latent_critic, prior, z, gen)
            loss_c = loss_x + loss_z + cfg.gp_weight * (gp_x + gp_z)
            self.opt_critic.zero_grad(set_to_none=True)
            loss_c.backward()
            self.opt_critic.step()
        out["w_critic"] = -float(loss_x.detach())
        out["w_latent"] = -float(loss_z.detach())

        # -- autoencoder ------------------------------------------------------------------------
        y, base, cond = self._batch(rng)
        xyz = model.coordinates(cond)
        mu, logvar = model.encoder(y, cond, xyz)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen)
        y_rec = model.decoder(z, cond, xyz)
        rec = (y_rec - y).pow(2).flatten(1).sum(1).mean()
        kld = gaussian_kl(mu, logvar).sum(1).mean()
        target = model.profiles(y, xyz[0]) if cfg.w_profile else None
        profile = rec.new_zeros(()) if target is None else model.profile_loss(y_rec, target, xyz[0])
        adv_x = -model.critic(y_rec, cond, xyz).mean()
        adv_z = -model.latent_critic(z).mean()
        mmd_z = mmd(z, torch.randn(z.shape, generator=gen), cfg.mmd_bandwidths)
        loss = (
            cfg.w_rec * rec
            + cfg.w_kld * kld
            + cfg.w_critic * adv_x
            + cfg.w_latent_critic * adv_z
            + cfg.w_mmd_latent * mmd_z
            + cfg.w_profile * profile
        )
        self.opt_ae.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(
                list(model.encoder.parameters()) + list(model.decoder.parameters()), cfg.grad_clip
            )
        self.opt_ae.step()
        out.update(
            loss=float(rec.detach()),
            kld=float(kld.detach()),
            mmd_z=float(mmd_z.detach()),
            vae_loss=float((cfg.w_rec * rec + cfg.w_kld * kld).detach()),
        )
        if target is not None:
            out["profile"] = float(profile.detach())

        # -- post-processor ---------------------------------------------------------------------
        if iteration >= int(cfg.pp_start * cfg.iterations):
            y_pp = model.post(y_rec.detach(), cond, xyz)
            pp_rec = (y_pp - y).pow(2).flatten(1).sum(1).mean()
            pp_mmd = mmd(
                sorted_energies(y_pp, cfg.sorted_top_k),
                sorted_energies(y, cfg.sorted_top_k),
                cfg.mmd_bandwidths,
            )
            pp_adv = -model.critic(y_pp, cond, xyz).mean()
            loss_pp = cfg.w_pp_rec * pp_rec + cfg.w_pp_mmd * pp_mmd + cfg.w_pp_critic * pp_adv
            if target is not None:
                loss_pp = loss_pp + cfg.w_profile * model.profile_loss(y_pp, target, xyz[0])
            self.opt_pp.zero_grad(set_to_none=True)
            loss_pp.backward()
            self.opt_pp.step()
            out.update(pp_rec=float(pp_rec.detach()), pp_mmd=float(pp_mmd.detach()))

        # -- visible-energy flow and latent flow -----------------------------------------------
        nll_evis = -model.evis_flow(base).log_prob(cond[:, 3:4]).mean()
        nll_latent = model.latent_flow.nll(z.detach(), cond)
        self.opt_flows.zero_grad(set_to_none=True)
        (nll_evis + nll_latent).backward()
        nn.utils.clip_grad_norm_(
            list(model.evis_flow.parameters()) + list(model.latent_flow.parameters()), 10.0
        )
        self.opt_flows.step()
        out.update(nll_evis=float(nll_evis.detach()), nll_latent=float(nll_latent.detach()))
        return out

    def validation_losses(self) -> dict[str, float]:
        return validation_losses(self.model, self.validation)


@torch.no_grad()
def validation_losses(
    model: BIBAE,
    voxels: SparseVoxels,
    *,
    seed: int = scaffold.VALIDATION_SEED,
    batch_size: int = scaffold.VALIDATION_BATCH,
) -> dict[str, float]:
    """The deterministic (critic-free) part of the generator loss on held-out showers.

    In eval mode, each shower is encoded and decoded (latent drawn from the encoder's
    posterior with a generator seeded by ``seed``; showers in order, ``batch_size`` at a
    time), as in the autoencoder step of training. Means over the showers of ``voxels``:
    ``val_rec`` (sum over voxels of ``(y_rec - y)^2``, the training's ``loss``), ``val_kld``
    (the training's ``kld``) and ``val_loss = w_rec * val_rec + w_kld * val_kld`` (the
    training's ``vae_loss``). The critic, latent-MMD and post-processor terms are left out:
    they compare with the critics or with batch statistics, not with each shower.
    """
    was_training = model.training
    model.eval()
    cfg = model.config
    gen = torch.Generator().manual_seed(int(seed))
    slopes = model.condition_slopes(voxels.directions, len(voxels))
    evis = _grid_sums(voxels)
    n = len(voxels)
    sum_rec = sum_kld = 0.0
    try:
        for first in range(0, n, int(batch_size)):
            rows = np.arange(first, min(first + int(batch_size), n))
            y = model.to_network(voxels.dense(rows))
            base = model.base_condition(voxels.incident[rows], slopes[rows])
            cond = torch.cat([base, model.evis_code(voxels.incident[rows], evis[rows])], 1)
            xyz = model.coordinates(cond)
            mu, logvar = model.encoder(y, cond, xyz)
            z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen)
            y_rec = model.decoder(z, cond, xyz)
            sum_rec += float((y_rec - y).pow(2).flatten(1).sum(1).double().sum())
            kld = gaussian_kl(mu, logvar).sum(1)
            sum_kld += float(kld.double().sum())
    finally:
        model.train(was_training)
    rec, kld_mean = sum_rec / n, sum_kld / n
    return {
        "val_loss": cfg.w_rec * rec + cfg.w_kld * kld_mean,
        "val_rec": rec,
        "val_kld": kld_mean,
    }


def _grid_sums(data: SparseVoxels) -> NDArray[np.float64]:
    owner = np.repeat(np.arange(len(data)), np.diff(data.offsets))
    return np.bincount(owner, weights=data.energy.astype(np.float64), minlength=len(data))


def _training_info(data: SparseVoxels, path: str, seed: int) -> dict[str, Any]:
    slopes = axis_slopes(data.directions, len(data))
    return {
        **scaffold.training_info(
            path, seed, len(data), data.incident, mean_containment=float(np.mean(data.containment))
        ),
        "slope_range": [[float(slopes[:, i].min()), float(slopes[:, i].max())] for i in range(2)],
    }


def export_model(
    model: BIBAE, out: str | os.PathLike[str], extra: dict[str, Any] | None = None
) -> Path:
    """Write the model folder (``model.json`` + ``model.safetensors``)."""
    return scaffold.export_voxel_model(model, out, MODEL_NAME, extra)


def build_model(config: BIBAEConfig, data: SparseVoxels, seed: int) -> BIBAE:
    """A freshly initialised model (weights from ``seed``) with data-derived condition scaling."""
    torch.manual_seed(seed)
    model = BIBAE(config)
    model.fit_preprocessing(data.incident, _grid_sums(data))
    return model


def train(**kwargs: Any) -> dict[str, Any]:
    """Train the BIB-AE on a shower file into ``out`` (see :func:`calogen.models.registry.train_model`).

    Showers are voxelised on the configured grid; their incident directions (if the file
    stores them) become the angle condition.
    """
    return scaffold.train_model(MODEL_NAME, PRESETS, BIBAEConfig, _trainer, **kwargs)


_trainer = scaffold.voxel_trainer(BIBAETrainer, build_model)


def load_model(model_dir: str | os.PathLike[str], info: dict[str, Any] | None = None) -> BIBAE:
    """Rebuild :class:`BIBAE` from a model folder."""
    return scaffold.load_config_model(model_dir, info, MODEL_NAME, BIBAE, BIBAEConfig)


def load_generator(
    model_dir: str | os.PathLike[str], info: dict[str, Any] | None = None
) -> BIBAEGenerator:
    """Registry hook: the generator of a BIB-AE model folder."""
    info = read_model_info(model_dir) if info is None else info
    return BIBAEGenerator(
        load_model(model_dir, info),
        energy_range_gev=scaffold.energy_range(info),
        slope_range=info.get("slope_range", ((0.0, 0.0), (0.0, 0.0))),
    )


__all__ = [
    "BIBAE",
    "PRESETS",
    "BIBAEConfig",
    "BIBAEGenerator",
    "BIBAETrainer",
    "build_model",
    "export_model",
    "get_config",
    "gradient_penalty",
    "load_generator",
    "load_model",
    "mmd",
    "sorted_energies",
    "train",
    "validation_losses",
]
