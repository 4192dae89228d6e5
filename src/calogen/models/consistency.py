"""Consistency distillation (Song et al., 2303.01469) of an EDM teacher, as in CaloClouds II (CM).

The consistency function uses the boundary-condition scalings

    c_skip(σ) = σ_d² / ((σ − σ_min)² + σ_d²),
    c_out(σ)  = σ_d (σ − σ_min) / sqrt(σ_d² + σ²),

together with the teacher's ``c_in = 1 / sqrt(σ² + σ_d²)`` and ``c_noise = ln σ / 4``, so
``f(x, σ_min) = x`` exactly, whatever the network returns.

Distillation (algorithm 2 of the paper) with the Karras discretisation
``σ_min = t_1 < … < t_N = σ_max`` (``N = 18``, ``ρ = 7``): draw ``n ∈ {1, …, N−1}``, noise
the data to ``x_{n+1} = x + t_{n+1} z``, take ONE Heun step of the teacher's probability-flow
ODE to ``x̂_n``, and minimise ``|f_θ(x_{n+1}, t_{n+1}) − f_θ⁻(x̂_n, t_n)|²`` where the target
``θ⁻`` is an EMA (0.95) of the student. Student and target start from the EMA teacher's
weights. Sampling is one evaluation at ``σ_max``; multi-step consistency sampling re-noises to
each further ``τ`` and evaluates again.

As in :mod:`calogen.models.edm`, networks are generic callables ``net(x_in, c_noise, cond)``
and shapes are free: ``sigma`` broadcasts against ``x`` (per point, per shower or scalar).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from calogen.models.edm import _as_tensor, ema_update_, karras_sigmas, per_noise_level

Denoiser = Callable[[Tensor, Tensor, object], Tensor]


def consistency_scalings(
    sigma: Tensor, sigma_min: float = 0.002, sigma_data: float = 0.5
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(c_skip, c_out, c_in, c_noise)`` of the consistency parameterisation."""
    d2 = sigma_data * sigma_data
    shifted = sigma - sigma_min
    c_skip = d2 / (shifted * shifted + d2)
    c_out = sigma_data * shifted / torch.sqrt(d2 + sigma * sigma)
    c_in = 1.0 / torch.sqrt(sigma * sigma + d2)
    c_noise = torch.log(sigma) / 4.0
    return c_skip, c_out, c_in, c_noise


class ConsistencyFunction(nn.Module):
    """``f(x, σ) = c_skip(σ) x + c_out(σ) F(c_in(σ) x, c_noise(σ), cond)``.

    At ``σ = σ_min`` the network is not evaluated and ``x`` is returned unchanged (the
    scalings already give ``c_skip = 1, c_out = 0``; skipping the call makes the identity
    exact even for a network that returns inf or NaN there).
    """

    def __init__(self, net: nn.Module, sigma_min: float = 0.002, sigma_data: float = 0.5) -> None:
        super().__init__()
        self.net = net
        self.sigma_min = float(sigma_min)
        self.sigma_data = float(sigma_data)

    def forward(self, x: Tensor, sigma: Tensor | float, cond: object = None) -> Tensor:
        sigma = _as_tensor(sigma, x)
        if sigma.numel() == 1 and float(sigma) <= self.sigma_min:
            return x
        c_skip, c_out, c_in, c_noise = self._scalings(sigma)
        out = c_skip * x + c_out * self.net(c_in * x, c_noise, cond)
        at_min = sigma <= self.sigma_min
        if bool(at_min.any()):
            out = torch.where(at_min, x, out)
        return out

    def _scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """:func:`consistency_scalings` of ``sigma``; for one σ without gradients cached per
        value (the same tensors, computed once: sampling uses a handful of fixed σ)."""
        if sigma.numel() != 1 or sigma.requires_grad:
            return consistency_scalings(sigma, self.sigma_min, self.sigma_data)
        return per_noise_level(
            self,
            "_scalings_cache",
            sigma,
            (self.sigma_min, self.sigma_data),
            lambda: consistency_scalings(sigma, self.sigma_min, self.sigma_data),
        )


def consistency_sigmas(
    n: int = 18, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0
) -> Tensor:
    """Ascending Karras discretisation ``t_1 = σ_min < … < t_N = σ_max`` (float64)."""
    return karras_sigmas(n, sigma_min, sigma_max, rho, append_zero=False).flip(0)


@torch.no_grad()
def heun_step(
    denoiser: Denoiser, x: Tensor, sigma_from: Tensor, sigma_to: Tensor, cond: object = None
) -> Tensor:
    """One Heun step of the probability-flow ODE ``dx/dσ = (x − D(x; σ)) / σ``.

    Both σ must be > 0 (the distillation grid never reaches zero).
    """
    d_from = (x - denoiser(x, sigma_from, cond)) / sigma_from
    x_euler = x + (sigma_to - sigma_from) * d_from
    d_to = (x_euler - denoiser(x_euler, sigma_to, cond)) / sigma_to
    return x + (sigma_to - sigma_from) * 0.5 * (d_from + d_to)


def _draw_index(
    shape: tuple[int, ...], n: int, generator: torch.Generator | None, device: torch.device
) -> Tensor:
    return torch.randint(0, n - 1, shape, generator=generator, device=device)


#: Per-point distances of :func:`consistency_distillation_loss`.
DISTANCES = ("l2", "pseudo_huber")


def consistency_distillation_loss(
    student: Denoiser,
    target: Denoiser,
    teacher: Denoiser,
    x0: Tensor,
    cond: object = None,
    *,
    sigmas: Tensor,
    index: Tensor | None = None,
    noise: Tensor | None = None,
    weight: Tensor | None = None,
    generator: torch.Generator | None = None,
    distance: str = "l2",
    huber_c: float = 0.001,
    feature_weights: Sequence[float] | None = None,
) -> Tensor:
    """Consistency-distillation loss (``λ = 1``) for one batch.

    Args:
        student, target: consistency functions ``f(x, σ, cond)`` (θ and θ⁻).
        teacher: the EDM denoiser ``D(x, σ, cond)`` whose ODE is distilled.
        x0: clean data ``[..., D]``.
        cond: conditioning for all three networks.
        sigmas: ascending grid from :func:`consistency_sigmas`.
        index: ``n`` (0-based, in ``[0, N − 2]``) shaped like ``x0[..., :1]`` or a prefix of it
            that broadcasts (e.g. ``[P, 1]`` per point or ``[B, 1, 1]`` per shower); drawn
            per point if ``None``.
        noise: standard normal noise like ``x0`` (drawn if ``None``).
        weight: optional mask broadcasting against ``x0[..., :1]`` (padding).
        distance: per point, ``"l2"``: mean squared difference per feature;
            ``"pseudo_huber"``: ``sqrt(|d|^2 + c^2) - c`` with ``c = huber_c`` (Song &
            Dhariwal 2023, improved consistency training), which weighs large differences
            linearly instead of quadratically.
        feature_weights: optional weight of each feature in the per-point distance (``[D]``,
            rescaled to mean 1, so equal weights give the plain distance; L2: weighted mean
            over the features; pseudo-Huber: ``|d|^2`` becomes ``sum_k w_k d_k^2``).
    Returns:
        scalar loss (mean over weighted points).
    """
    n_grid = sigmas.shape[0]
    if index is None:
        index = _draw_index((*x0.shape[:-1], 1), n_grid, generator, x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    grid = sigmas.to(dtype=x0.dtype, device=x0.device)
    t_next = grid[index + 1]
    t_cur = grid[index]
    x_next = x0 + t_next * noise
    with torch.no_grad():
        x_hat = heun_step(teacher, x_next, t_next, t_cur, cond)
        target_out = target(x_hat, t_cur, cond)
    student_out = student(x_next, t_next, cond)
    squared = (student_out - target_out).pow(2)
    if feature_weights is not None:
        w = torch.as_tensor(feature_weights, dtype=squared.dtype, device=squared.device)
        if w.shape != squared.shape[-1:]:
            raise ValueError(f"feature_weights needs {squared.shape[-1]} values, got {w.numel()}")
        squared = squared * (w * (w.numel() / w.sum()))
    if distance == "pseudo_huber":
        per_point = (squared.sum(dim=-1, keepdim=True) + huber_c**2).sqrt() - huber_c
    elif distance == "l2":
        per_point = squared.mean(dim=-1, keepdim=True)
    else:
        raise ValueError(f"unknown distance {distance!r}; one of {', '.join(DISTANCES)}")
    if weight is None:
        return per_point.mean()
    weight = torch.broadcast_to(weight.to(per_point.dtype), per_point.shape)
    return (per_point * weight).sum() / weight.sum().clamp_min(1e-12)


class ConsistencyDistiller:
    """Holds student, target and teacher and performs distillation updates.

    Args:
        student: the trainable consistency function (initialised from the EMA teacher).
        target: a copy of the student updated only as an EMA (``target_decay``).
        teacher: the frozen EDM denoiser.
        optimizer: optimiser over ``student.parameters()``.
        n_grid: size ``N`` of the Karras discretisation (18).
        target_decay: EMA decay ``μ`` of the target network (0.95).
    """

    def __init__(
        self,
        student: nn.Module,
        target: nn.Module,
        teacher: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        n_grid: int = 18,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        rho: float = 7.0,
        target_decay: float = 0.95,
        grad_clip: float | None = None,
        distance: str = "l2",
        huber_c: float = 0.001,
        feature_weights: Sequence[float] | None = None,
    ) -> None:
        self.student = student
        self.target = target
        self.teacher = teacher
        self.optimizer = optimizer
        self.sigmas = consistency_sigmas(n_grid, sigma_min, sigma_max, rho)
        self.target_decay = float(target_decay)
        self.grad_clip = grad_clip
        self.distance = distance
        self.huber_c = float(huber_c)
        self.feature_weights = None if feature_weights is None else tuple(feature_weights)
        for p in list(target.parameters()) + list(teacher.parameters()):
            p.requires_grad_(False)
        target.eval()
        teacher.eval()

    def loss(self, x0: Tensor, cond: object = None, **kwargs: object) -> Tensor:
        return consistency_distillation_loss(
            self.student,
            self.target,
            self.teacher,
            x0,
            cond,
            sigmas=self.sigmas,
            distance=self.distance,
            huber_c=self.huber_c,
            feature_weights=self.feature_weights,
            **kwargs,
        )

    def step(self, x0: Tensor, cond: object = None, **kwargs: object) -> float:
        """One optimiser update of the student followed by the target EMA update."""
        self.student.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(x0, cond, **kwargs)
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), self.grad_clip)
        self.optimizer.step()
        ema_update_(self.target, self.student, self.target_decay)
        return float(loss.detach())


@torch.no_grad()
def consistency_sample(
    f: Denoiser,
    noise: Tensor,
    cond: object = None,
    *,
    sigmas: Sequence[float] = (80.0,),
    sigma_min: float = 0.002,
    generator: torch.Generator | None = None,
    extra_noise: Sequence[Tensor] | None = None,
) -> Tensor:
    """Consistency sampling: ``x = f(σ_0 z, σ_0)``, then for each further ``τ``:
    ``x = f(x + sqrt(τ² − σ_min²) z', τ)`` (algorithm 1 of Song et al.).

    ``sigmas`` starts with ``σ_max`` and must decrease; one entry = one network evaluation.
    ``extra_noise`` optionally supplies the ``z'`` of the later steps (else drawn).
    """
    sigmas = [float(s) for s in sigmas]
    if not sigmas:
        raise ValueError("need at least one sigma")
    if any(b >= a for a, b in itertools.pairwise(sigmas)):
        raise ValueError(f"sigmas must decrease, got {sigmas}")
    x = f(noise * sigmas[0], _as_tensor(sigmas[0], noise), cond)
    for k, tau in enumerate(sigmas[1:]):
        if extra_noise is not None:
            z = extra_noise[k]
        else:
            z = torch.randn(
                noise.shape, generator=generator, dtype=noise.dtype, device=noise.device
            )
        scale = max(tau * tau - sigma_min * sigma_min, 0.0) ** 0.5
        x = f(x + scale * z, _as_tensor(tau, noise), cond)
    return x


__all__ = [
    "DISTANCES",
    "ConsistencyDistiller",
    "ConsistencyFunction",
    "consistency_distillation_loss",
    "consistency_sample",
    "consistency_scalings",
    "consistency_sigmas",
    "heun_step",
]
