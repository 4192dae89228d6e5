"""EDM diffusion (Karras et al., 2206.00364) as used by CaloClouds II.

Everything here is written against a generic network callable ``net(x_in, c_noise, cond)``
that returns a tensor shaped like ``x_in``; ``cond`` is passed through untouched. Shapes are
free: ``x`` may be padded ``[B, P, D]`` or packed ``[P, D]``; ``sigma`` is any tensor that
broadcasts against ``x`` (a scalar, ``[B, 1, 1]`` per shower or ``[P, 1]`` per point). Because
the PointWise Net treats points independently, a per-point ``sigma`` during training is as
valid as a per-shower one and gives a lower-variance loss estimate.

Pieces:

* :func:`edm_scalings` / :class:`EDMDenoiser` — the preconditioning
  ``D(x; σ) = c_skip(σ) x + c_out(σ) F(c_in(σ) x, c_noise(σ))`` with
  ``c_skip = σ_d² / (σ² + σ_d²)``, ``c_out = σ σ_d / sqrt(σ² + σ_d²)``,
  ``c_in = 1 / sqrt(σ² + σ_d²)``, ``c_noise = ln(σ) / 4`` and ``σ_d = 0.5``;
* :func:`sample_training_sigma` — log-normal training noise levels
  (``ln σ ~ N(P_mean = -1.2, P_std = 1.2)``);
* :func:`edm_loss_weight` / :func:`edm_loss` — the loss weighting
  ``λ(σ) = (σ² + σ_d²) / (σ σ_d)²`` (effective weight of ``F`` is one);
* :func:`karras_sigmas` — the σ grid ``(σ_max^{1/ρ} + i/(N-1) (σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ``
  with ``σ_N = 0`` appended;
* :func:`heun_sample` — the deterministic 2nd-order Heun sampler (algorithm 1 of the paper):
  ``N`` steps cost ``2N - 1`` network evaluations (13 steps = 25 evaluations);
* :func:`ema_warmup_decay` — the decay schedule of the EMA of the weights (the EMA itself is
  :class:`calogen.models.training.EMA`, re-exported here).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from calogen.models.training import EMA

T = TypeVar("T")

#: Network callable ``net(x_in, c_noise, cond) -> tensor shaped like x_in``.
Net = Callable[[Tensor, Tensor, object], Tensor]


@dataclass(frozen=True)
class EDMConfig:
    """Hyperparameters of EDM training and sampling (CaloClouds II values by default)."""

    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    n_steps: int = 13

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EDMConfig:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def _as_tensor(sigma: Tensor | float, like: Tensor) -> Tensor:
    if isinstance(sigma, Tensor):
        return sigma.to(dtype=like.dtype, device=like.device)
    return torch.as_tensor(sigma, dtype=like.dtype, device=like.device)


def edm_scalings(sigma: Tensor, sigma_data: float = 0.5) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EDM preconditioning ``(c_skip, c_out, c_in, c_noise)`` for noise levels ``sigma``."""
    s2 = sigma * sigma
    d2 = sigma_data * sigma_data
    c_skip = d2 / (s2 + d2)
    c_out = sigma * sigma_data / torch.sqrt(s2 + d2)
    c_in = 1.0 / torch.sqrt(s2 + d2)
    c_noise = torch.log(sigma) / 4.0
    return c_skip, c_out, c_in, c_noise


class EDMDenoiser(nn.Module):
    """Preconditioned denoiser ``D(x; σ) = c_skip x + c_out F(c_in x, c_noise, cond)``.

    Args:
        net: the raw network ``F``; an ``nn.Module`` is registered as a sub-module so that
            ``state_dict`` and EMA see its weights.
        sigma_data: standard deviation of the (normalised) data.
    """

    def __init__(self, net: nn.Module, sigma_data: float = 0.5) -> None:
        super().__init__()
        self.net = net
        self.sigma_data = float(sigma_data)

    def forward(self, x: Tensor, sigma: Tensor | float, cond: object = None) -> Tensor:
        sigma = _as_tensor(sigma, x)
        c_skip, c_out, c_in, c_noise = edm_scalings(sigma, self.sigma_data)
        f = self.net(c_in * x, c_noise, cond)
        return c_skip * x + c_out * f


def sample_training_sigma(
    shape: tuple[int, ...] | torch.Size,
    *,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Training noise levels: ``ln σ ~ N(p_mean, p_std²)``."""
    z = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    return torch.exp(p_mean + p_std * z)


def edm_loss_weight(sigma: Tensor, sigma_data: float = 0.5) -> Tensor:
    """EDM loss weighting ``λ(σ) = (σ² + σ_d²) / (σ σ_d)²`` (equals ``1 / c_out²``)."""
    return (sigma * sigma + sigma_data * sigma_data) / (sigma * sigma_data) ** 2


def edm_loss(
    denoiser: Callable[[Tensor, Tensor, object], Tensor],
    x0: Tensor,
    cond: object,
    sigma: Tensor,
    *,
    noise: Tensor | None = None,
    weight: Tensor | None = None,
    sigma_data: float = 0.5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Weighted denoising loss ``E[λ(σ) |D(x0 + σ n; σ) - x0|²]``.

    Args:
        denoiser: ``D(x, sigma, cond)``, e.g. an :class:`EDMDenoiser`.
        x0: clean data, ``[..., D]``.
        cond: conditioning passed to the denoiser.
        sigma: noise levels broadcasting against ``x0`` (e.g. ``[P, 1]``).
        noise: standard normal noise shaped like ``x0`` (drawn if ``None``).
        weight: optional per-element mask or weight broadcasting against ``x0[..., :1]``
            (e.g. the padding mask ``[B, P, 1]``); the loss is averaged over weighted entries.
        sigma_data: σ_d of the loss weighting.
    Returns:
        scalar loss (mean over the feature dimension and all weighted points).
    """
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    denoised = denoiser(x0 + sigma * noise, sigma, cond)
    per_point = edm_loss_weight(sigma, sigma_data) * (denoised - x0).pow(2)
    per_point = per_point.mean(dim=-1, keepdim=True)
    if weight is None:
        return per_point.mean()
    weight = weight.to(per_point.dtype)
    weight = torch.broadcast_to(weight, per_point.shape)
    return (per_point * weight).sum() / weight.sum().clamp_min(1e-12)


def karras_sigmas(
    n_steps: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    *,
    append_zero: bool = True,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Karras σ grid from ``sigma_max`` down to ``sigma_min`` (``n_steps`` values).

    ``σ_i = (σ_max^{1/ρ} + i/(N-1) (σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ`` for ``i = 0 … N-1``;
    with ``append_zero`` a final ``σ_N = 0`` is appended (``N + 1`` values).
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
    if n_steps == 1:
        sigmas = torch.tensor([sigma_max], dtype=dtype)
    else:
        i = torch.arange(n_steps, dtype=dtype)
        lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
        sigmas = (hi + i / (n_steps - 1) * (lo - hi)) ** rho
    if append_zero:
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    return sigmas


def heun_evaluations(n_steps: int) -> int:
    """Network evaluations of :func:`heun_sample` with ``n_steps`` steps (``2N - 1``)."""
    return 2 * n_steps - 1


@torch.no_grad()
def heun_sample(
    denoiser: Callable[[Tensor, Tensor, object], Tensor],
    noise: Tensor,
    cond: object = None,
    *,
    n_steps: int = 13,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    callback: Callable[[int, Tensor], None] | None = None,
) -> Tensor:
    """Deterministic Heun sampler of the probability-flow ODE (EDM algorithm 1).

    Args:
        denoiser: ``D(x, sigma, cond)``.
        noise: standard normal noise ``[..., D]``; it is scaled by ``σ_max`` here.
        cond: conditioning passed to the denoiser.
        n_steps: number of σ steps ``N``; costs ``2N - 1`` evaluations (the last step to
            ``σ = 0`` is an Euler step).
    Returns:
        the sample at ``σ = 0``, shaped like ``noise``.
    """
    sigmas = karras_sigmas(n_steps, sigma_min, sigma_max, rho).tolist()
    x = noise * sigmas[0]
    for i in range(n_steps):
        s_cur, s_next = sigmas[i], sigmas[i + 1]
        d_cur = (x - denoiser(x, _as_tensor(s_cur, x), cond)) / s_cur
        x_next = x + (s_next - s_cur) * d_cur
        if s_next > 0:
            d_next = (x_next - denoiser(x_next, _as_tensor(s_next, x), cond)) / s_next
            x_next = x + (s_next - s_cur) * 0.5 * (d_cur + d_next)
        x = x_next
        if callback is not None:
            callback(i, x)
    return x


def ema_warmup_decay(num_updates: int, decay: float, warmup: bool = True) -> float:
    """EMA decay for update number ``num_updates`` (0-based): ``min(decay, (1+n)/(10+n))``.

    The warm-up lets the average follow the fast early training instead of remembering the
    random initialisation; it is a pure function of the iteration, so resumed runs match.
    Use with :class:`calogen.models.training.EMA` (``ema.update(model, decay=...)``).
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
    if not warmup:
        return float(decay)
    n = max(int(num_updates), 0)
    return min(float(decay), (1.0 + n) / (10.0 + n))


@torch.no_grad()
def ema_update_(target: nn.Module, source: nn.Module, decay: float) -> None:
    """In place ``target ← decay·target + (1 − decay)·source`` (parameters; buffers copied)."""
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        t.lerp_(s.detach(), 1.0 - decay)
    for t, s in zip(target.buffers(), source.buffers(), strict=True):
        t.copy_(s)


def per_noise_level(
    owner: object, name: str, level: Tensor, extra: tuple[Any, ...], make: Callable[[], T]
) -> T:
    """``make()`` for one noise level ``level`` (a one-element tensor), cached on ``owner``
    under ``name`` per value, dtype, device, ``extra`` and inference mode (inference
    tensors must not enter autograd): sampling calls with a handful of fixed sigma, and
    the few tensor operations per call cost more than the network at batch 1."""
    key = (float(level), level.dtype, level.device, tuple(level.shape), *extra,
           torch.is_inference_mode_enabled())  # fmt: skip
    cache = owner.__dict__.setdefault(name, {})
    found = cache.get(key)
    if found is None:
        if len(cache) > 64:
            cache.clear()
        found = cache[key] = make()
    return found


def fourier_features(c_noise: Tensor, n_features: int, scale: float = 1.0) -> Tensor:
    """Deterministic Fourier features of the noise level for the network's time input.

    ``c_noise`` of any shape ``[...]`` (or ``[..., 1]``) gives ``[..., n_features]``:
    ``cos`` and ``sin`` of ``c_noise·ω_k`` with ``ω_k = scale·2^k·π/4`` (``k = 0 … n/2 − 1``)
    — ``c_noise = ln σ / 4`` lies in about ``[-1.6, 1.1]`` over ``σ ∈ [0.002, 80]``, so the
    lowest frequency does not wrap over that range. ``n_features`` must be even.
    """
    if n_features % 2:
        raise ValueError(f"n_features must be even, got {n_features}")
    if c_noise.dim() and c_noise.shape[-1] == 1:
        c_noise = c_noise.squeeze(-1)
    k = torch.arange(n_features // 2, dtype=c_noise.dtype, device=c_noise.device)
    omega = scale * (2.0**k) * (math.pi / 4.0)
    angles = c_noise.unsqueeze(-1) * omega
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


__all__ = [
    "EMA",
    "EDMConfig",
    "EDMDenoiser",
    "Net",
    "edm_loss",
    "edm_loss_weight",
    "edm_scalings",
    "ema_update_",
    "ema_warmup_decay",
    "fourier_features",
    "heun_evaluations",
    "heun_sample",
    "karras_sigmas",
    "per_noise_level",
    "sample_training_sigma",
]
