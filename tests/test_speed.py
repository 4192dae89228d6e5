"""Fast inference paths (issue 7) give the results of the reference paths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from calogen.benchmark import benchmark, matmul_peak_gflops, set_precision
from calogen.errors import UsageError
from calogen.models.blocks import PointWiseNet
from calogen.models.shower_flow import ShowerFlow, ShowerFlowConfig


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _net() -> PointWiseNet:
    torch.manual_seed(0)
    return PointWiseNet(4, 6, (16, 32, 16), residual=False).eval()


def test_forward_segments_matches_forward() -> None:
    net = _net()
    counts = (5, 0, 300, 1, 40)
    x = torch.randn(sum(counts), 4)
    context = torch.randn(len(counts), 6)
    index = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    with torch.no_grad():
        expected = net(x, context, index)
    got = net.forward_segments(x, context, counts, chunk=64)  # chunks inside a shower too
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    low = net.forward_segments(x, context, counts, dtype=torch.bfloat16)
    assert low.dtype == torch.float32
    assert (low - expected).abs().max() < 0.05 * expected.abs().max()
    with pytest.raises(ValueError, match="counts"):
        net.forward_segments(x, context, (1, 2))
    with torch.no_grad():  # cached stacked projections follow in-place weight updates
        for p in net.parameters():
            p.mul_(1.1)
        expected = net(x, context, index)
    torch.testing.assert_close(net.forward_segments(x, context, counts), expected)


def test_residual_forward_segments() -> None:
    torch.manual_seed(1)
    net = PointWiseNet(4, 3, (8,), residual=True).eval()
    x, context = torch.randn(7, 4), torch.randn(1, 3)
    with torch.no_grad():
        expected = net(x, context, torch.zeros(7, dtype=torch.long))
    torch.testing.assert_close(net.forward_segments(x, context, (7,)), expected)


def test_shower_flow_inverse_is_zuko_and_follows_weight_updates() -> None:
    flow = ShowerFlow(
        ShowerFlowConfig(
            feature_set="caloclouds2", blocks=2, affine_per_block=2, spline_per_block=0
        )
    )
    c, z = torch.randn(5, 1), torch.randn(5, flow.dim)
    with torch.no_grad():
        # the same algebra in another order of the sums: equal up to float32 rounding
        torch.testing.assert_close(flow.inverse(c, z), flow.flow(c).transform.inv(z))
        for p in flow.flow.parameters():
            p.add_(0.01)  # in place, as an optimiser step
        torch.testing.assert_close(flow.inverse(c, z), flow.flow(c).transform.inv(z))
        for name, p in flow.flow.named_parameters():
            if name.endswith("bias"):
                p.add_(0.05)  # the biases alone
        torch.testing.assert_close(flow.inverse(c, z), flow.flow(c).transform.inv(z))


def test_shower_flow_inverse_with_angle_condition_is_zuko() -> None:
    flow = ShowerFlow(
        ShowerFlowConfig(feature_set="caloclouds2_core", blocks=2, affine_per_block=2,
                         spline_per_block=0, angle=True)
    )  # fmt: skip
    for n in (1, 64):  # one shower (full simulation) and a batch
        c = flow.condition(np.linspace(10, 90, n), np.linspace(0, 60, n))
        z = torch.randn(n, flow.dim)
        with torch.no_grad():
            torch.testing.assert_close(flow.inverse(c, z), flow.flow(c).transform.inv(z))


def test_shower_flow_numpy_inverse_is_the_torch_inverse() -> None:
    """sample() runs the inverse in numpy (torch's per-op dispatch dominates at batch 1):
    equal to the torch form up to float32 rounding, and it follows weight updates."""
    from calogen.models.shower_flow import _inverse_numpy

    flow = ShowerFlow(
        ShowerFlowConfig(feature_set="caloclouds2_core", blocks=2, affine_per_block=2,
                         spline_per_block=0, angle=True)
    )  # fmt: skip
    for n in (1, 64):
        c = flow.condition(np.linspace(10, 90, n), np.linspace(0, 60, n))
        z = torch.randn(n, flow.dim)
        with torch.no_grad():
            got = _inverse_numpy(flow._inverse_layers_numpy(), c.numpy(), z.numpy())
            np.testing.assert_allclose(got, flow.inverse(c, z).numpy(), rtol=1e-4, atol=1e-5)
            for p in flow.flow.parameters():
                p.add_(0.01)
            got = _inverse_numpy(flow._inverse_layers_numpy(), c.numpy(), z.numpy())
            np.testing.assert_allclose(got, flow.inverse(c, z).numpy(), rtol=1e-4, atol=1e-5)
    first = next(iter(flow.flow.transform.transforms))
    first.hyper[0].weight = torch.nn.Parameter(first.hyper[0].weight.detach() * 0.5)
    with torch.no_grad():  # a replaced (not updated) weight is followed too
        got = _inverse_numpy(flow._inverse_layers_numpy(), c.numpy(), z.numpy())
        np.testing.assert_allclose(got, flow.inverse(c, z).numpy(), rtol=1e-4, atol=1e-5)
    zuko_out = flow.flow(c).transform.inv(z).detach().numpy()
    np.testing.assert_allclose(got, zuko_out, rtol=1e-4, atol=1e-5)
    first.hyper[1] = torch.nn.ELU()  # not a plain affine MAF any more: torch/zuko path
    assert flow._inverse_layers_numpy() is None
    out = flow.sample(np.array([20.0]), torch.Generator().manual_seed(0), np.array([10.0]))
    assert out["n_per_layer"].shape == (1, 30)


def test_shower_flow_inverse_with_another_activation_uses_zuko() -> None:
    flow = ShowerFlow(
        ShowerFlowConfig(feature_set="caloclouds2", blocks=1, affine_per_block=2,
                         spline_per_block=0)
    )  # fmt: skip
    first = next(iter(flow.flow.transform.transforms))
    first.hyper[1] = torch.nn.ELU()  # not the Shower Flow's LeakyReLU: zuko's own inverse
    c, z = torch.randn(3, 1), torch.randn(3, flow.dim)
    with torch.no_grad():
        assert torch.equal(flow.inverse(c, z), flow.flow(c).transform.inv(z))


def test_shower_flow_inverse_with_splines_uses_zuko() -> None:
    flow = ShowerFlow(ShowerFlowConfig(blocks=1, affine_per_block=1, spline_per_block=1))
    c, z = torch.randn(3, 1), torch.randn(3, flow.dim)
    with torch.no_grad():
        assert torch.equal(flow.inverse(c, z), flow.flow(c).transform.inv(z))


def test_benchmark_smoke() -> None:
    from calogen.models.registry import load_generator

    generator = load_generator(None)
    result = benchmark(generator, num=2, batch=2, repeats=1, count_flops=False)
    assert result.ms_per_shower_median > 0 and result.cpu_ms_per_shower > 0
    assert result.precision == "float32"
    assert set_precision(generator, "bfloat16") == torch.bfloat16
    assert generator.model.net.compute_dtype == torch.bfloat16
    showers = generator.sample(np.array([50.0]), seed=1)
    assert showers._num_points[0] > 100
    set_precision(generator, "float32")
    assert generator.model.net.compute_dtype is None
    assert matmul_peak_gflops(seconds=0.05) > 0


def test_bfloat16_needs_a_caloclouds2_model() -> None:
    from calogen.reference.gflash import GFlash

    with pytest.raises(UsageError, match="only float32"):
        set_precision(GFlash(), "bfloat16")
    with pytest.raises(UsageError, match="unknown precision"):
        set_precision(GFlash(), "float64")


class _Recorder:
    """A generator that records its calls (energies, directions, seed) and makes no showers."""

    def __init__(self, name: str, calls: list, supports_direction: bool) -> None:
        self.name, self.calls, self.supports_direction = name, calls, supports_direction

    def sample(self, energies, directions=None, *, seed=None):  # type: ignore[no-untyped-def]
        from types import SimpleNamespace

        self.calls.append((self.name, np.array(energies), directions, seed))
        return SimpleNamespace(_num_points=np.full(len(energies), 7))


def test_compare_alternates_with_the_same_inputs() -> None:
    """``compare`` times A and B round by round in alternating order (A B, B A, ...), with
    the same energies and seeds for both, directions only for the one that takes them."""
    from calogen.benchmark import compare

    calls: list = []
    a, b = _Recorder("A", calls, True), _Recorder("B", calls, False)
    dirs = np.tile([0.0, 0.5, np.sqrt(0.75)], (6, 1))
    result = compare((a, b), num=6, batch=4, rounds=3, directions=(dirs, None))
    # warm-up A, B; then rounds A B, B A, A B; two sample() calls (4 + 2 showers) per run
    order = [name for name, *_ in calls[::2]]
    assert order == ["A", "B", "A", "B", "B", "A", "A", "B"]
    for first, second in zip(calls[0::4], calls[2::4], strict=True):  # the pairs of a round
        np.testing.assert_array_equal(first[1], second[1])
        assert first[3] == second[3]
    assert all(d is not None and d.shape == (len(e), 3) for n, e, d, _ in calls if n == "A")
    assert all(d is None for n, _, d, _ in calls if n == "B")
    assert [len(t) for t in result.ms_per_shower] == [3, 3]
    assert result.ratios == pytest.approx(
        [x / y for x, y in zip(*result.ms_per_shower, strict=True)]
    )
    assert result.mean_points_per_shower == (7.0, 7.0)
    lines = "\n".join(result.lines())
    assert "A / B:" in lines and "normal incidence: B" in lines
    assert result.to_dict()["ratio_median"] == pytest.approx(float(np.median(result.ratios)))


def test_bench_against_cli(capsys) -> None:
    from calogen.cli import main as cli_main

    base = ["bench", "--model", "default", "-n", "2", "--repeats", "2"]
    assert cli_main([*base, "--against", "gflash", "--theta", "30", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["inclined"] == [True, True] and len(out["ratios"]) == 2
    assert out["labels"][1].startswith("gflash")
    assert cli_main([*base, "--against", "gflash", "--precision", "bfloat16"]) == 2
    err = capsys.readouterr().err
    assert "--against" in err and err.count("\n") == 1
