"""Denoising diffusion probabilistic model (Ho et al. 2006.11239) as used by CaloClouds.

Forward process ``q(x_t | x_0) = N(sqrt(ᾱ_t) x_0, (1 - ᾱ_t) I)`` with ``α_t = 1 - β_t`` and
``ᾱ_t = ∏_{s ≤ t} α_s``, time steps ``t = 1 … T``. The network predicts the noise ε
(ε-prediction, MSE loss). Sampling walks through all ``T`` steps:

``x_{t-1} = (x_t - β_t / sqrt(1 - ᾱ_t) · ε_θ(x_t, t)) / sqrt(α_t) + sqrt(β_t) · z``
(no noise at ``t = 1``), i.e. the reverse variance ``σ_t² = β_t`` of the paper (eq. 3.2).

Variance schedules (``beta_1`` → ``beta_T``):

* ``"quadratic"``: ``β_t = (sqrt(β_1) + (t - 1)/(T - 1) · (sqrt(β_T) - sqrt(β_1)))²``
  (linear in ``sqrt β``) — CaloClouds: ``T = 100``, ``β_1 = 1e-4``, ``β_T = 0.02``;
* ``"linear"``: ``β_t = β_1 + (t - 1)/(T - 1) · (β_T - β_1)``.

Time features for the network context (:meth:`DDPM.time_features`):

* ``"beta"``: ``(β_t, sin β_t, cos β_t)`` (Luo & Hu, used by CaloClouds) — 3 features;
* ``"sinusoidal"``: ``(t/T, sin(2^k π t/T), cos(2^k π t/T))`` for k < ``(dim - 1) // 2``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from calogen.errors import UsageError


def beta_schedule(
    steps: int, beta_1: float = 1e-4, beta_T: float = 0.02, kind: str = "quadratic"
) -> Tensor:
    """``β_1 … β_T`` as a float64 tensor ``[T]`` (index ``t - 1``)."""
    if steps < 1:
        raise UsageError(f"diffusion steps must be >= 1, got {steps}")
    frac = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    if kind == "quadratic":
        lo, hi = math.sqrt(beta_1), math.sqrt(beta_T)
        return (lo + frac * (hi - lo)) ** 2
    if kind == "linear":
        return beta_1 + frac * (beta_T - beta_1)
    raise UsageError(f"unknown variance schedule '{kind}' (quadratic or linear)")


class DDPM:
    """Schedule, noising, loss targets and the ancestral sampler.

    Args:
        steps: T.
        beta_1, beta_T: first and last variance.
        schedule: ``"quadratic"`` or ``"linear"``.
        time_embedding: ``"beta"`` or ``"sinusoidal"``.
        time_dim: number of time features for ``"sinusoidal"`` (odd: t/T + sin/cos pairs).
    """

    def __init__(
        self,
        steps: int = 100,
        beta_1: float = 1e-4,
        beta_T: float = 0.02,
        schedule: str = "quadratic",
        time_embedding: str = "beta",
        time_dim: int = 3,
    ) -> None:
        self.steps = int(steps)
        self.betas = beta_schedule(self.steps, beta_1, beta_T, schedule)
        self.alphas = 1.0 - self.betas
        self.alpha_bars = torch.cumprod(self.alphas, 0)
        if time_embedding not in ("beta", "sinusoidal"):
            raise UsageError(f"unknown time embedding '{time_embedding}' (beta or sinusoidal)")
        self.time_embedding = time_embedding
        self.time_dim = 3 if time_embedding == "beta" else int(time_dim)
        # float32 copies for the hot loop
        self._betas32 = self.betas.float()
        self._sqrt_ab = self.alpha_bars.sqrt().float()
        self._sqrt_1mab = (1.0 - self.alpha_bars).sqrt().float()

    # -- training ---------------------------------------------------------------------------
    def sample_t(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Uniform time steps in ``1 … T``, ``[n]`` long."""
        return torch.randint(1, self.steps + 1, (n,), generator=generator)

    def add_noise(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """``x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε``; ``t`` broadcastable to ``x0[..., 0]``."""
        a = self._sqrt_ab.to(x0.device)[t - 1].unsqueeze(-1)
        b = self._sqrt_1mab.to(x0.device)[t - 1].unsqueeze(-1)
        return a * x0 + b * noise

    def time_features(self, t: Tensor) -> Tensor:
        """Features ``[..., time_dim]`` of integer time steps ``t`` (1 … T)."""
        if self.time_embedding == "beta":
            beta = self._betas32.to(t.device)[t - 1]
            return torch.stack([beta, torch.sin(beta), torch.cos(beta)], -1)
        frac = t.to(torch.float32) / self.steps
        n_freq = (self.time_dim - 1) // 2
        feats = [frac.unsqueeze(-1)]
        if n_freq:
            freqs = (2.0 ** torch.arange(n_freq, dtype=torch.float32, device=t.device)) * math.pi
            angle = frac.unsqueeze(-1) * freqs
            feats += [torch.sin(angle), torch.cos(angle)]
        out = torch.cat(feats, -1)
        if out.shape[-1] < self.time_dim:  # even time_dim: pad with zeros
            pad = self.time_dim - out.shape[-1]
            out = torch.cat([out, out.new_zeros((*out.shape[:-1], pad))], -1)
        return out

    # -- sampling ---------------------------------------------------------------------------
    def step(self, x_t: Tensor, eps: Tensor, t: int, noise: Tensor | None) -> Tensor:
        """One reverse step ``x_t → x_{t-1}`` for a scalar time step ``t``."""
        beta = float(self.betas[t - 1])
        alpha = 1.0 - beta
        coef = beta / math.sqrt(1.0 - float(self.alpha_bars[t - 1]))
        mean = (x_t - coef * eps) / math.sqrt(alpha)
        if t > 1 and noise is not None:
            return mean + math.sqrt(beta) * noise
        return mean

    @torch.no_grad()
    def sample(
        self,
        eps_fn: Callable[[Tensor, int], Tensor],
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Ancestral sampling through all ``T`` steps.

        Args:
            eps_fn: ``(x_t, t) -> ε̂`` with ``t`` an int in ``1 … T``.
            shape: shape of ``x_T`` (e.g. packed ``(P, 4)``).
            generator: torch RNG for the initial and per-step noise.
        """
        x = torch.randn(shape, generator=generator, dtype=dtype)
        for t in range(self.steps, 0, -1):
            eps = eps_fn(x, t)
            noise = torch.randn(shape, generator=generator, dtype=dtype) if t > 1 else None
            x = self.step(x, eps, t, noise)
        return x


__all__ = ["DDPM", "beta_schedule"]
