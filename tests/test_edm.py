"""EDM preconditioning, noise sampling, loss weighting, Karras grid, Heun sampler and EMA."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from calogen.models.edm import (
    EMA,
    EDMConfig,
    EDMDenoiser,
    edm_loss,
    edm_loss_weight,
    edm_scalings,
    ema_warmup_decay,
    fourier_features,
    heun_evaluations,
    heun_sample,
    karras_sigmas,
    sample_training_sigma,
)

torch.set_num_threads(1)

SIGMAS = [0.002, 0.01, 0.1, 0.5, 1.0, 3.0, 80.0]


class GaussianDenoiser(nn.Module):
    """Ideal denoiser for data ~ N(mu, s²) per feature: D = mu + s²/(s²+σ²) (x − mu)."""

    def __init__(self, mu: float, s: float) -> None:
        super().__init__()
        self.mu, self.s = mu, s
        self.calls = 0

    def forward(self, x, sigma, cond=None):
        self.calls += 1
        s2 = self.s**2
        return self.mu + s2 / (s2 + sigma**2) * (x - self.mu)


def test_edm_scalings_match_formulas() -> None:
    sd = 0.5
    sigma = torch.tensor(SIGMAS, dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = edm_scalings(sigma, sd)
    for i, s in enumerate(SIGMAS):
        assert c_skip[i].item() == pytest.approx(sd**2 / (s**2 + sd**2), rel=1e-12)
        assert c_out[i].item() == pytest.approx(s * sd / math.sqrt(s**2 + sd**2), rel=1e-12)
        assert c_in[i].item() == pytest.approx(1 / math.sqrt(s**2 + sd**2), rel=1e-12)
        assert c_noise[i].item() == pytest.approx(math.log(s) / 4, rel=1e-12)
    # c_skip² σ_data²-variance bookkeeping of EDM: c_skip² σ_d² + c_out² ... unit target
    # variance: c_in² (σ_d² + σ²) = 1
    assert torch.allclose(c_in**2 * (sd**2 + sigma**2), torch.ones_like(sigma))
    # loss weight is 1 / c_out²
    assert torch.allclose(edm_loss_weight(sigma, sd) * c_out**2, torch.ones_like(sigma))


def test_denoiser_combines_network_output() -> None:
    calls = {}

    class Net(nn.Module):
        def forward(self, x_in, c_noise, cond):
            calls["x_in"], calls["c_noise"], calls["cond"] = x_in, c_noise, cond
            return torch.full_like(x_in, 2.0)

    den = EDMDenoiser(Net(), sigma_data=0.5).double()
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    sigma = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64).view(3, 1, 1)
    out = den(x, sigma, "cond")
    c_skip, c_out, c_in, _ = edm_scalings(sigma, 0.5)
    assert torch.allclose(out, c_skip * x + c_out * 2.0)
    assert torch.allclose(calls["x_in"], c_in * x)
    assert torch.allclose(calls["c_noise"], torch.log(sigma) / 4)
    assert calls["cond"] == "cond"


def test_training_sigma_is_log_normal() -> None:
    g = torch.Generator().manual_seed(0)
    sigma = sample_training_sigma((200_000,), p_mean=-1.2, p_std=1.2, generator=g)
    log_sigma = torch.log(sigma)
    assert log_sigma.mean().item() == pytest.approx(-1.2, abs=0.02)
    assert log_sigma.std().item() == pytest.approx(1.2, abs=0.02)


def test_karras_grid_matches_formula() -> None:
    n, smin, smax, rho = 13, 0.002, 80.0, 7.0
    sig = karras_sigmas(n, smin, smax, rho).numpy()
    assert sig.shape == (n + 1,)
    i = np.arange(n)
    expected = (smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    np.testing.assert_allclose(sig[:-1], expected, rtol=1e-12)
    assert sig[0] == pytest.approx(80.0)
    assert sig[n - 1] == pytest.approx(0.002)
    assert sig[-1] == 0.0
    assert np.all(np.diff(sig) < 0)
    assert karras_sigmas(5, append_zero=False).shape == (5,)
    with pytest.raises(ValueError):
        karras_sigmas(0)


@pytest.mark.parametrize("n_steps", [1, 2, 13])
def test_heun_evaluation_count(n_steps: int) -> None:
    den = GaussianDenoiser(0.0, 0.5)
    heun_sample(den, torch.randn(10, 4), n_steps=n_steps)
    assert den.calls == heun_evaluations(n_steps) == 2 * n_steps - 1
    if n_steps == 13:
        assert den.calls == 25


def test_heun_sampler_recovers_gaussian() -> None:
    mu, s = 0.3, 0.4
    den = GaussianDenoiser(mu, s)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(40_000, 2, generator=g, dtype=torch.float64)
    # 13 steps: small discretisation error on this narrow Gaussian; it vanishes with more steps
    x = heun_sample(den, noise, n_steps=13)
    assert x.mean().item() == pytest.approx(mu, abs=0.01)
    assert x.std().item() == pytest.approx(s, rel=0.15)
    fine = heun_sample(den, noise, n_steps=100)
    assert fine.std().item() == pytest.approx(s, rel=0.02)
    assert abs(fine.std().item() - s) < abs(x.std().item() - s)
    # deterministic: same noise gives the same samples
    assert torch.equal(x, heun_sample(den, noise, n_steps=13))


def test_edm_loss_of_ideal_denoiser_is_lower() -> None:
    g = torch.Generator().manual_seed(2)
    x0 = 0.4 * torch.randn(4096, 1, generator=g, dtype=torch.float64)
    sigma = sample_training_sigma((4096, 1), generator=g, dtype=torch.float64)
    noise = torch.randn(4096, 1, generator=g, dtype=torch.float64)
    ideal = edm_loss(GaussianDenoiser(0.0, 0.4), x0, None, sigma, noise=noise)
    wrong = edm_loss(GaussianDenoiser(0.0, 1.0), x0, None, sigma, noise=noise)
    assert ideal < wrong
    # masking: zero-weight points do not count
    weight = torch.zeros(4096, 1, dtype=torch.float64)
    weight[:10] = 1
    masked = edm_loss(GaussianDenoiser(0.0, 0.4), x0, None, sigma, noise=noise, weight=weight)
    direct = edm_loss(GaussianDenoiser(0.0, 0.4), x0[:10], None, sigma[:10], noise=noise[:10])
    assert masked.item() == pytest.approx(direct.item(), rel=1e-10)


def test_edm_training_reduces_loss() -> None:
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = nn.Sequential(nn.Linear(2, 32), nn.SiLU(), nn.Linear(32, 1))

        def forward(self, x_in, c_noise, cond):
            return self.mlp(torch.cat([x_in, c_noise.expand_as(x_in)], dim=-1))

    den = EDMDenoiser(Net())
    opt = torch.optim.Adam(den.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(3)
    data = 0.3 + 0.2 * torch.randn(2048, 1, generator=g)
    sig = sample_training_sigma((2048, 1), generator=g)
    noise = torch.randn(2048, 1, generator=g)
    before = edm_loss(den, data, None, sig, noise=noise).item()
    for _ in range(150):
        opt.zero_grad()
        loss = edm_loss(den, data, None, sample_training_sigma((2048, 1)))
        loss.backward()
        opt.step()
    after = edm_loss(den, data, None, sig, noise=noise).item()
    assert after < 0.7 * before


def test_ema_update_and_warmup() -> None:
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    assert torch.allclose(ema.shadow.weight, torch.full((2, 2), 0.1))
    ema.update(model, decay=ema_warmup_decay(100, 0.9))
    assert torch.allclose(ema.shadow.weight, torch.full((2, 2), 0.19))
    assert not any(p.requires_grad for p in ema.shadow.parameters())
    assert ema_warmup_decay(0, 0.999) == pytest.approx(0.1)
    assert ema_warmup_decay(10_000, 0.999) == pytest.approx(0.999)
    assert ema_warmup_decay(0, 0.999, warmup=False) == 0.999
    with pytest.raises(ValueError):
        ema_warmup_decay(0, 1.0)


def test_fourier_features_and_config() -> None:
    c = torch.linspace(-2, 1, 7).view(7, 1)
    f = fourier_features(c, 8)
    assert f.shape == (7, 8)
    assert torch.allclose(f[:, :4] ** 2 + f[:, 4:] ** 2, torch.ones(7, 4))
    with pytest.raises(ValueError):
        fourier_features(c, 3)
    cfg = EDMConfig()
    assert (cfg.sigma_data, cfg.p_mean, cfg.p_std) == (0.5, -1.2, 1.2)
    assert (cfg.sigma_min, cfg.sigma_max, cfg.rho, cfg.n_steps) == (0.002, 80.0, 7.0, 13)
    assert EDMConfig.from_dict(cfg.to_dict()) == cfg
