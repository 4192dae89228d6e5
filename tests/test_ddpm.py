"""DDPM schedule, noising and the reverse step against the formulas."""

from __future__ import annotations

import math

import pytest
import torch

from calogen.errors import UsageError
from calogen.models.ddpm import DDPM, beta_schedule


def test_quadratic_schedule_values() -> None:
    betas = beta_schedule(100, 1e-4, 0.02, "quadratic")
    assert betas.shape == (100,)
    assert float(betas[0]) == pytest.approx(1e-4, rel=1e-12)
    assert float(betas[-1]) == pytest.approx(0.02, rel=1e-12)
    for t in (1, 2, 37, 100):  # beta_t = (sqrt(b1) + (t-1)/(T-1) (sqrt(bT) - sqrt(b1)))^2
        expected = (math.sqrt(1e-4) + (t - 1) / 99 * (math.sqrt(0.02) - math.sqrt(1e-4))) ** 2
        assert float(betas[t - 1]) == pytest.approx(expected, rel=1e-12)
    assert torch.all(torch.diff(betas) > 0)


def test_linear_schedule_and_bad_kind() -> None:
    betas = beta_schedule(11, 0.1, 0.2, "linear")
    torch.testing.assert_close(betas, torch.linspace(0.1, 0.2, 11, dtype=torch.float64))
    with pytest.raises(UsageError):
        beta_schedule(10, kind="cosine-ish")


def test_alpha_bars_and_noising() -> None:
    ddpm = DDPM(100, 1e-4, 0.02)
    expected = 1.0
    for t in range(1, 101):
        expected *= 1.0 - float(ddpm.betas[t - 1])
        assert float(ddpm.alpha_bars[t - 1]) == pytest.approx(expected, rel=1e-10)
    x0 = torch.randn(5, 4)
    noise = torch.randn(5, 4)
    t = torch.tensor([1, 10, 50, 99, 100])
    xt = ddpm.add_noise(x0, t, noise)
    ab = ddpm.alpha_bars[t - 1].float()[:, None]
    torch.testing.assert_close(xt, ab.sqrt() * x0 + (1 - ab).sqrt() * noise)


def test_reverse_step_formula() -> None:
    ddpm = DDPM(100)
    x, eps, z = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    t = 40
    beta = float(ddpm.betas[t - 1])
    ab = float(ddpm.alpha_bars[t - 1])
    mean = (x - beta / math.sqrt(1 - ab) * eps) / math.sqrt(1 - beta)
    torch.testing.assert_close(ddpm.step(x, eps, t, z), mean + math.sqrt(beta) * z)
    torch.testing.assert_close(
        ddpm.step(x, eps, 1, z),
        (x - float(ddpm.betas[0]) / math.sqrt(1 - float(ddpm.alpha_bars[0])) * eps)
        / math.sqrt(1 - float(ddpm.betas[0])),
    )


def test_time_features() -> None:
    ddpm = DDPM(100)
    feats = ddpm.time_features(torch.tensor([1, 100]))
    assert feats.shape == (2, 3)
    assert float(feats[1, 0]) == pytest.approx(0.02)
    assert float(feats[1, 1]) == pytest.approx(math.sin(0.02))
    sin = DDPM(100, time_embedding="sinusoidal", time_dim=9)
    assert sin.time_dim == 9
    feats = sin.time_features(torch.tensor([[1, 50]]))
    assert feats.shape == (1, 2, 9)
    assert float(feats[0, 1, 0]) == pytest.approx(0.5)


def test_sampling_is_seeded_and_exact_with_oracle() -> None:
    ddpm = DDPM(20)

    # with an oracle that knows the noise of x_T = pure noise, sampling is deterministic per seed
    def eps_fn(x: torch.Tensor, t: int) -> torch.Tensor:
        return torch.zeros_like(x)

    a = ddpm.sample(eps_fn, (6, 4), torch.Generator().manual_seed(3))
    b = ddpm.sample(eps_fn, (6, 4), torch.Generator().manual_seed(3))
    c = ddpm.sample(eps_fn, (6, 4), torch.Generator().manual_seed(4))
    assert a.shape == (6, 4)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
