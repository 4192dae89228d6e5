"""Consistency model: boundary scalings, identity at σ_min, distillation and sampling."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from calogen.models.consistency import (
    ConsistencyDistiller,
    ConsistencyFunction,
    consistency_distillation_loss,
    consistency_sample,
    consistency_scalings,
    consistency_sigmas,
    heun_step,
)
from calogen.models.edm import EDMDenoiser, heun_sample, karras_sigmas

torch.set_num_threads(1)

SMIN, SMAX, SD = 0.002, 80.0, 0.5


class GaussianDenoiser(nn.Module):
    """Ideal EDM denoiser for data ~ N(mu, s²)."""

    def __init__(self, mu: float, s: float) -> None:
        super().__init__()
        self.mu, self.s = mu, s
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x, sigma, cond=None):
        s2 = self.s**2
        return self.mu + s2 / (s2 + sigma**2) * (x - self.mu)


class GaussianConsistency(nn.Module):
    """Exact consistency function of that Gaussian: maps x(σ) to x(σ_min) along the ODE."""

    def __init__(self, mu: float, s: float) -> None:
        super().__init__()
        self.mu, self.s = mu, s

    def forward(self, x, sigma, cond=None):
        s2 = self.s**2
        return self.mu + (x - self.mu) * math.sqrt(s2 + SMIN**2) / torch.sqrt(s2 + sigma**2)


class TinyNet(nn.Module):
    """A small point-wise network ``net(x_in, c_noise, cond)`` with a scalar condition."""

    def __init__(self, dim: int = 2, hidden: int = 32) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim + 2, hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x_in, c_noise, cond):
        c_noise = torch.broadcast_to(c_noise, (*x_in.shape[:-1], 1))
        return self.mlp(torch.cat([x_in, c_noise, cond], dim=-1))


def test_consistency_scalings_match_formulas() -> None:
    sigma = torch.tensor([SMIN, 0.01, 0.5, 2.0, SMAX], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = consistency_scalings(sigma, SMIN, SD)
    for i, s in enumerate(sigma.tolist()):
        assert c_skip[i].item() == pytest.approx(SD**2 / ((s - SMIN) ** 2 + SD**2), rel=1e-12)
        assert c_out[i].item() == pytest.approx(
            SD * (s - SMIN) / math.sqrt(SD**2 + s**2), abs=1e-15
        )
        assert c_in[i].item() == pytest.approx(1 / math.sqrt(s**2 + SD**2), rel=1e-12)
        assert c_noise[i].item() == pytest.approx(math.log(s) / 4, rel=1e-12)
    assert c_skip[0].item() == 1.0 and c_out[0].item() == 0.0
    c32 = consistency_scalings(torch.tensor([SMIN]), SMIN, SD)
    assert c32[0].item() == 1.0 and c32[1].item() == 0.0  # also exact in float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_consistency_function_is_identity_at_sigma_min(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    f = ConsistencyFunction(TinyNet(), sigma_min=SMIN, sigma_data=SD).to(dtype)
    x = torch.randn(64, 2, dtype=dtype) * 3
    cond = torch.rand(64, 1, dtype=dtype)
    assert torch.equal(f(x, SMIN, cond), x)
    # per-point σ: the points at σ_min come back unchanged, the others do not
    sigma = torch.full((64, 1), 1.0, dtype=dtype)
    sigma[::2] = SMIN
    out = f(x, sigma, cond)
    assert torch.equal(out[::2], x[::2])
    assert not torch.equal(out[1::2], x[1::2])

    # even a network that returns huge values cannot break the boundary condition
    class Huge(nn.Module):
        def forward(self, x_in, c_noise, cond):
            return torch.full_like(x_in, 1e30)

    g = ConsistencyFunction(Huge(), sigma_min=SMIN).to(dtype)
    assert torch.equal(g(x, torch.full((64, 1), SMIN, dtype=dtype), cond), x)


def test_consistency_grid() -> None:
    t = consistency_sigmas(18, SMIN, SMAX, 7.0)
    assert t.shape == (18,)
    assert t[0].item() == pytest.approx(SMIN) and t[-1].item() == pytest.approx(SMAX)
    assert torch.all(t[1:] > t[:-1])
    assert torch.allclose(t, karras_sigmas(18, SMIN, SMAX, 7.0, append_zero=False).flip(0))


def test_heun_step_follows_exact_ode() -> None:
    mu, s = 0.2, 0.5
    den = GaussianDenoiser(mu, s)
    x = torch.randn(100, 2, dtype=torch.float64) * 2.0
    t_from = torch.tensor(2.0, dtype=torch.float64)
    t_to = torch.tensor(1.5, dtype=torch.float64)
    stepped = heun_step(den, x, t_from, t_to)
    exact = mu + (x - mu) * math.sqrt(s**2 + 1.5**2) / math.sqrt(s**2 + 2.0**2)
    assert torch.allclose(stepped, exact, atol=5e-3)


def test_exact_consistency_function_has_zero_loss() -> None:
    mu, s = 0.1, 0.3
    teacher = GaussianDenoiser(mu, s).double()
    exact = GaussianConsistency(mu, s)
    x0 = mu + s * torch.randn(5000, 1, dtype=torch.float64)
    loss_exact = consistency_distillation_loss(
        exact, exact, teacher, x0, sigmas=consistency_sigmas(18)
    )
    ident = ConsistencyFunction(lambda x, c, cond: torch.zeros_like(x), SMIN, SD)
    loss_ident = consistency_distillation_loss(
        ident, ident, teacher, x0, sigmas=consistency_sigmas(18)
    )
    assert loss_exact.item() < 1e-2 * loss_ident.item()


def _tiny_problem():
    """A trained-enough teacher is not needed: the ideal Gaussian denoiser is the teacher."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    cond = torch.rand(256, 1, generator=g)
    x0 = 0.3 * torch.randn(256, 2, generator=g) + (cond - 0.5)
    teacher = GaussianDenoiser(0.0, 0.45)
    student = ConsistencyFunction(TinyNet(), SMIN, SD)
    target = copy.deepcopy(student)
    return g, cond, x0, teacher, student, target


def test_single_distillation_step_reduces_loss() -> None:
    g, cond, x0, teacher, student, target = _tiny_problem()
    opt = torch.optim.SGD(student.parameters(), lr=1e-3)
    dist = ConsistencyDistiller(student, target, teacher, opt, n_grid=18, target_decay=0.95)
    index = torch.randint(0, 17, (256, 1), generator=g)
    noise = torch.randn(256, 2, generator=g)
    with torch.no_grad():
        before = dist.loss(x0, cond, index=index, noise=noise).item()
    target_before = copy.deepcopy(target.state_dict())
    dist.step(x0, cond, index=index, noise=noise)
    # the target moved 5 % of the way to the (updated) student
    for name, value in target.state_dict().items():
        expected = 0.95 * target_before[name] + 0.05 * student.state_dict()[name]
        assert torch.allclose(value, expected, atol=1e-7)
    with torch.no_grad():
        after = dist.loss(x0, cond, index=index, noise=noise).item()
    assert after < before


def test_distillation_reduces_loss_on_tiny_dataset() -> None:
    g, cond, x0, teacher, student, target = _tiny_problem()
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    dist = ConsistencyDistiller(student, target, teacher, opt)
    index = torch.randint(0, 17, (256, 1), generator=g)
    noise = torch.randn(256, 2, generator=g)
    with torch.no_grad():
        before = dist.loss(x0, cond, index=index, noise=noise).item()
    losses = [dist.step(x0, cond, generator=g) for _ in range(150)]
    with torch.no_grad():
        after = dist.loss(x0, cond, index=index, noise=noise).item()
    assert all(math.isfinite(v) for v in losses)
    assert after < 0.5 * before
    assert not any(p.requires_grad for p in target.parameters())


def test_one_and_multi_step_sampling() -> None:
    mu, s = 0.25, 0.4
    f = GaussianConsistency(mu, s)
    g = torch.Generator().manual_seed(5)
    noise = torch.randn(50_000, 1, generator=g, dtype=torch.float64)
    one = consistency_sample(f, noise, sigmas=(SMAX,))
    assert one.mean().item() == pytest.approx(mu, abs=0.01)
    assert one.std().item() == pytest.approx(s, rel=0.02)
    multi = consistency_sample(f, noise, sigmas=(SMAX, 2.0, 0.5), generator=g)
    assert multi.mean().item() == pytest.approx(mu, abs=0.01)
    assert multi.std().item() == pytest.approx(s, rel=0.02)
    with pytest.raises(ValueError):
        consistency_sample(f, noise, sigmas=(1.0, 2.0))


def test_student_from_teacher_matches_teacher_at_large_sigma() -> None:
    """Initialising the consistency function from an EDM network: at large σ both scalings
    agree, so the untrained student's one-step sample equals the teacher's first denoising."""
    torch.manual_seed(1)
    net = TinyNet()
    teacher = EDMDenoiser(net, SD)
    student = ConsistencyFunction(copy.deepcopy(net), SMIN, SD)
    x = torch.randn(32, 2) * SMAX
    cond = torch.rand(32, 1)
    assert torch.allclose(teacher(x, SMAX, cond), student(x, SMAX, cond), atol=1e-2)
    # and the teacher sampler runs on this network
    out = heun_sample(teacher, torch.randn(32, 2), cond, n_steps=3)
    assert out.shape == (32, 2)


def _fixed_draws() -> tuple:
    """The tiny problem with a fixed grid index and noise per point, a zero-network target
    and the student-minus-target difference ``d`` computed by hand: ``(problem, kw, d)``."""
    g, cond, x0, teacher, student, _ = _tiny_problem()
    sigmas = consistency_sigmas(18)
    index = torch.randint(0, 17, (256, 1), generator=g)
    noise = torch.randn(256, 2, generator=g)
    shift = ConsistencyFunction(lambda x, c, cond: torch.zeros_like(x), SMIN, SD)
    kw = {"index": index, "noise": noise, "sigmas": sigmas}
    with torch.no_grad():
        grid = sigmas.to(x0.dtype)
        t_next, t_cur = grid[index + 1], grid[index]
        x_next = x0 + t_next * noise
        d = student(x_next, t_next, cond) - shift(
            heun_step(teacher, x_next, t_next, t_cur, cond), t_cur, cond
        )
    return (student, shift, teacher, x0, cond), kw, d


def test_pseudo_huber_distance() -> None:
    """``pseudo_huber``: sqrt(|d|^2 + c^2) - c per point, on the same noise and grid index as
    the L2 loss; near zero for the exact consistency function as L2 is."""
    problem, kw, d = _fixed_draws()
    with torch.no_grad():
        l2 = consistency_distillation_loss(*problem, **kw)
        c = 0.01
        huber = consistency_distillation_loss(*problem, distance="pseudo_huber", huber_c=c, **kw)
    torch.testing.assert_close(l2, d.pow(2).mean())
    torch.testing.assert_close(huber, ((d.pow(2).sum(-1) + c * c).sqrt() - c).mean())
    mu, s = 0.1, 0.3
    exact, gauss = GaussianConsistency(mu, s), GaussianDenoiser(mu, s).double()
    xg = mu + s * torch.randn(2000, 1, dtype=torch.float64)
    ident = ConsistencyFunction(lambda x, c, cond: torch.zeros_like(x), SMIN, SD)
    losses = [
        consistency_distillation_loss(
            f, f, gauss, xg, sigmas=consistency_sigmas(18), distance="pseudo_huber"
        ).item()
        for f in (exact, ident)
    ]
    assert losses[0] < 0.1 * losses[1]  # a distance, not its square: L2 gives ~2e-3
    with pytest.raises(ValueError, match="distance"):
        consistency_distillation_loss(*problem, distance="l1", **kw)


def test_feature_weights_of_the_distance() -> None:
    """``feature_weights`` weighs each feature's squared difference (normalised to mean 1):
    equal weights give the plain loss, (0, 1) only the second feature's, for both distances."""
    problem, kw, d = _fixed_draws()
    with torch.no_grad():
        plain = consistency_distillation_loss(*problem, **kw)
        equal = consistency_distillation_loss(*problem, feature_weights=(3.0, 3.0), **kw)
        second = consistency_distillation_loss(*problem, feature_weights=(0.0, 1.0), **kw)
        huber = consistency_distillation_loss(
            *problem, feature_weights=(1.0, 3.0), huber_c=0.01, distance="pseudo_huber", **kw
        )
    torch.testing.assert_close(equal, plain)
    torch.testing.assert_close(second, d[:, 1].pow(2).mean())
    w = torch.tensor([0.5, 1.5])
    by_hand = ((d.pow(2) * w).sum(-1) + 0.01**2).sqrt() - 0.01
    torch.testing.assert_close(huber, by_hand.mean())
    with pytest.raises(ValueError, match="feature_weights"):
        consistency_distillation_loss(*problem, feature_weights=(1.0, 1.0, 1.0), **kw)
