"""PointWise Net, ConcatSquash and EPiC encoder: shapes, layouts, equivariance."""

from __future__ import annotations

import pytest
import torch

from calogen.models.blocks import (
    ConcatSquashLinear,
    EPiCEncoder,
    PointWiseNet,
    count_parameters,
    hidden_unit_importance,
    prune_point_network,
)


@pytest.fixture
def net() -> PointWiseNet:
    torch.manual_seed(0)
    return PointWiseNet(point_dim=4, context_dim=7, widths=(8, 16, 8))


def test_concat_squash_shapes() -> None:
    layer = ConcatSquashLinear(4, 6, 3)
    assert layer(torch.randn(2, 5, 4), torch.randn(2, 3)).shape == (2, 5, 6)
    assert layer(torch.randn(10, 4), torch.randn(10, 3)).shape == (10, 6)


def test_pointwise_shapes_and_layouts_agree(net: PointWiseNet) -> None:
    x = torch.randn(3, 5, 4)
    ctx = torch.randn(3, 7)
    padded = net(x, ctx)
    assert padded.shape == (3, 5, 4)
    index = torch.arange(3).repeat_interleave(5)
    packed_index = net(x.reshape(15, 4), ctx, index)
    packed_per_point = net(x.reshape(15, 4), ctx[index])
    per_point_padded = net(x, ctx[:, None, :].expand(3, 5, 7))
    torch.testing.assert_close(packed_index, padded.reshape(15, 4))
    torch.testing.assert_close(packed_per_point, padded.reshape(15, 4))
    torch.testing.assert_close(per_point_padded, padded)


def test_pointwise_permutation_equivariant(net: PointWiseNet) -> None:
    x = torch.randn(2, 9, 4)
    ctx = torch.randn(2, 7)
    perm = torch.randperm(9)
    torch.testing.assert_close(net(x[:, perm], ctx), net(x, ctx)[:, perm])
    # packed: permuting points together with their shower index
    index = torch.tensor([0] * 9 + [1] * 9)
    flat = x.reshape(18, 4)
    perm = torch.randperm(18)
    torch.testing.assert_close(net(flat[perm], ctx, index[perm]), net(flat, ctx, index)[perm])


def test_points_are_independent(net: PointWiseNet) -> None:
    x = torch.randn(1, 6, 4)
    ctx = torch.randn(1, 7)
    y = net(x, ctx)
    x2 = x.clone()
    x2[0, 0] += 1.0
    torch.testing.assert_close(net(x2, ctx)[0, 1:], y[0, 1:])


def test_residual_flag() -> None:
    torch.manual_seed(0)
    res = PointWiseNet(4, 3, (8,), residual=True)
    plain = PointWiseNet(4, 3, (8,), residual=False)
    plain.load_state_dict(res.state_dict())
    x, c = torch.randn(2, 3, 4), torch.randn(2, 3)
    torch.testing.assert_close(res(x, c), x + plain(x, c))


def test_paper_size_and_errors() -> None:
    # CaloClouds: context = latent 256 + E + N + 3 time features -> about 1.0 M parameters
    net = PointWiseNet(4, 256 + 2 + 3)
    assert 0.95e6 < count_parameters(net) < 1.05e6
    with pytest.raises(ValueError):
        net(torch.randn(2, 3), torch.randn(2, 261))
    with pytest.raises(ValueError):
        net(torch.randn(2, 4), torch.randn(2, 5))


def test_epic_encoder_shapes_invariance_and_mask() -> None:
    torch.manual_seed(0)
    enc = EPiCEncoder(point_dim=4, cond_dim=2, latent_dim=6, hidden=8, global_dim=4, n_layers=2)
    x = torch.randn(2, 7, 4)
    cond = torch.randn(2, 2)
    mu, logvar = enc(x, cond)
    assert mu.shape == logvar.shape == (2, 6)
    perm = torch.randperm(7)
    mu_p, logvar_p = enc(x[:, perm], cond)
    torch.testing.assert_close(mu_p, mu)
    torch.testing.assert_close(logvar_p, logvar)
    # packed input gives the same as padded
    index = torch.arange(2).repeat_interleave(7)
    mu_k, _ = enc(x.reshape(14, 4), cond, index=index)
    torch.testing.assert_close(mu_k, mu)
    # padding is ignored under a mask
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[:, 7:] = False
    padded = torch.cat([x, 100 * torch.randn(2, 2, 4)], 1)
    mu_m, _ = enc(padded, cond, mask=mask)
    torch.testing.assert_close(mu_m, mu)
    with pytest.raises(ValueError):
        enc(x.reshape(14, 4), cond)


def test_pruning_drops_units_that_contribute_nothing() -> None:
    """Units whose outgoing weights are zero have zero importance; pruning exactly those
    leaves the network's output unchanged, and the kept weights are the teacher's slices."""
    torch.manual_seed(0)
    net = PointWiseNet(4, 3, (8, 12, 8), residual=False)
    dead = [torch.tensor([1, 5]), torch.tensor([0, 3, 7, 11]), torch.tensor([2, 6])]
    with torch.no_grad():
        for i, units in enumerate(dead):
            net.layers[i + 1].layer.weight[:, units] = 0.0
    x, ctx = torch.randn(50, 4), torch.randn(50, 3)
    importance = hidden_unit_importance(net, lambda: net(x, ctx))
    assert [imp.shape[0] for imp in importance] == [8, 12, 8]
    for imp, units in zip(importance, dead, strict=True):
        assert torch.all(imp[units] == 0) and torch.all(imp[imp != 0] > 0)
        assert int((imp > 0).sum()) == imp.shape[0] - units.numel()
    keep = [torch.nonzero(imp > 0).flatten() for imp in importance]
    pruned = prune_point_network(net, keep)
    assert pruned.widths == (6, 8, 6)
    assert torch.allclose(pruned(x, ctx), net(x, ctx), atol=1e-6)
    w0, w1 = net.layers[1].layer.weight, pruned.layers[1].layer.weight
    assert torch.equal(w1, w0[keep[1]][:, keep[0]])
    assert torch.equal(pruned.layers[3].hyper_gate.bias, net.layers[3].hyper_gate.bias)
    with pytest.raises(ValueError, match="width 8"):
        prune_point_network(net, [torch.tensor([0, 8]), keep[1], keep[2]])
    with pytest.raises(ValueError, match="never called"):
        hidden_unit_importance(net, lambda: None)
