"""Metrics against closed-form answers: W1, AUC, Fréchet distance, FPD, KPD, the W1 table."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from calogen.evaluation.metrics import (
    W1_AXIS_ROWS,
    W1_EXTRA_ROWS,
    W1_ROWS,
    W1Result,
    classifier_test,
    combine_scores,
    feature_ranking,
    fpd,
    frechet_distance,
    group_classifier,
    kpd,
    mmd_poly_unbiased,
    roc_auc,
    w1_table,
    wasserstein_batched,
)
from calogen.evaluation.observables import shower_features
from calogen.geometry import CellHits

torch.set_num_threads(1)


def test_w1_identical_is_zero() -> None:
    x = np.random.default_rng(0).normal(size=1000)
    r = wasserstein_batched(x, x.copy(), n_batches=5)
    assert r.mean == 0.0 and r.std == 0.0 and len(r.values) == 5 and r.batch_size == 200


def test_w1_shift_is_shift_over_std() -> None:
    x = np.random.default_rng(1).normal(3.0, 2.0, size=2000)
    shift = 0.5
    r = wasserstein_batched(x, x + shift, n_batches=4)
    assert r.mean == pytest.approx(100 * shift / x.std(), rel=1e-9)
    assert r.std == pytest.approx(0.0, abs=1e-9)
    # explicit standardisation
    r2 = wasserstein_batched(x, x + shift, n_batches=4, mean=0.0, std=4.0)
    assert r2.mean == pytest.approx(100 * shift / 4.0, rel=1e-9)


def test_w1_batch_size_caps_batches() -> None:
    x = np.arange(100.0)
    r = wasserstein_batched(x, x, n_batches=10, batch_size=30)
    assert r.batch_size == 30 and len(r.values) == 3
    with pytest.raises(ValueError):
        wasserstein_batched(np.zeros(0), x)


def test_combine_scores() -> None:
    a = wasserstein_batched(np.arange(10.0), np.arange(10.0) + 1, n_batches=2)
    c = combine_scores([a, a])  # two identical bins: the row is that bin
    assert c.mean == pytest.approx(a.mean) and c.std == pytest.approx(a.std)
    # bins whose batch-to-batch changes cancel: the row's value does not move between batches
    up = W1Result(2.0, 1.0, [1.0, 3.0], 5)
    down = W1Result(2.0, 1.0, [3.0, 1.0], 5)
    row = combine_scores([up, down])
    assert row.mean == 2.0 and row.std == 0.0 and row.values == [2.0, 2.0]


def test_roc_auc_rank_formula() -> None:
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5  # ties count half
    # brute force over all pairs
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.normal(size=200) + y, 1)
    pos, neg = s[y == 1], s[y == 0]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert roc_auc(y, s) == pytest.approx(pairs)
    with pytest.raises(ValueError):
        roc_auc([1, 1], [0.1, 0.2])


def test_classifier_auc_same_and_different() -> None:
    rng = np.random.default_rng(3)
    data = rng.normal(size=(1200, 5))
    threads_before = torch.get_num_threads()
    same = classifier_test(data[:600], data[600:], k_folds=3, epochs=5, seed=0)
    assert abs(same.auc_mean - 0.5) < 0.08
    assert len(same.aucs) == 3 and same.n_per_class == 600
    other = rng.normal(size=(600, 5))
    other[:, 0] += 4.0  # optimal AUC: Phi(4 / sqrt(2)) = 0.998
    diff = classifier_test(data[:600], other, k_folds=3, epochs=20, seed=0)
    assert diff.auc_mean > 0.95
    assert torch.get_num_threads() == threads_before  # restored
    with pytest.raises(ValueError):
        classifier_test(data[:10], data[10:20], k_folds=2)


def test_classifier_reports_its_network() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(300, 6)), rng.normal(size=(300, 6))
    b[:, 2] *= 2.5  # a difference in width only: invisible to the mean, visible to an MLP
    result = classifier_test(a, b, k_folds=5, seed=1)
    assert "6 -> 64 -> 32 -> 1" in result.network
    assert len(result.aucs) == 5 and result.n_per_class == 300
    assert result.auc_mean > 0.68  # optimal AUC P(|2.5 y| > |x|) = 0.76
    assert all(1 <= e <= 200 for e in result.epochs)
    with pytest.raises(ValueError, match="validation_fraction"):
        classifier_test(a, b, validation_fraction=1.0)


def test_feature_ranking_orders_by_single_feature_auc() -> None:
    rng = np.random.default_rng(5)
    ref = rng.normal(size=(2000, 3))
    cand = rng.normal(size=(1500, 3))
    cand[:, 1] += 1.0  # AUC Phi(1 / sqrt 2) = 0.760
    cand[:, 2] -= 0.3  # AUC Phi(-0.3 / sqrt 2) = 0.416
    ranking = feature_ranking(ref, cand, ["a", "b", "c"])
    assert [r["name"] for r in ranking] == ["b", "c", "a"]
    assert ranking[0]["auc"] == pytest.approx(0.760, abs=0.02)
    assert ranking[1]["auc"] == pytest.approx(0.416, abs=0.02)
    assert ranking[2]["separation"] < 0.03
    # the Mann-Whitney statistic by brute force on the top feature
    x, y = ref[:, 1], cand[:, 1]
    pairs = (y[:, None] > x[None, :]).mean()
    assert ranking[0]["auc"] == pytest.approx(pairs)
    assert ranking[0]["candidate_mean"] - ranking[0]["reference_mean"] == pytest.approx(
        1.0, abs=0.1
    )
    with pytest.raises(ValueError):
        feature_ranking(ref, cand, ["a", "b"])


def test_group_classifier_finds_the_group_with_the_wrong_spread() -> None:
    """Two "radial" features whose means match but whose spread is 2.5x too wide: no single
    feature's AUC sees it, the radial group's classifier does; the others stay near 0.5."""
    rng = np.random.default_rng(6)
    names = ["occupancy", "radial_0", "radial_1", "cog_x", "log_energy"]
    ref = rng.normal(size=(400, 5))
    cand = rng.normal(size=(400, 5))
    cand[:, 1:3] *= 2.5
    groups = group_classifier(ref, cand, names, conditions=("log_energy",), k_folds=3, seed=0)
    assert groups[0]["group"] == "radial profile"
    by_name = {g["group"]: g for g in groups}
    assert set(by_name) == {
        "occupancy and sampling fraction",
        "radial profile",
        "centre of gravity",
    }
    assert by_name["radial profile"]["features"] == ["radial_0", "radial_1"]
    assert by_name["radial profile"]["auc_mean"] > 0.7
    assert by_name["centre of gravity"]["auc_mean"] < 0.6
    assert all(abs(r["auc"] - 0.5) < 0.06 for r in feature_ranking(ref, cand, names))


def test_frechet_distance_closed_form() -> None:
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 4.0, 1.0])
    # diagonal covariances: |dmu|^2 + sum (sigma1 - sigma2)^2
    expected = 1 + 0 + 4 + (1 - 2) ** 2 + 0 + (3 - 1) ** 2
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected)
    # general covariances: identical Gaussians -> 0; rotated covariance against explicit formula
    a = np.array([[2.0, 0.5], [0.5, 1.0]])
    assert frechet_distance([0, 0], a, [0, 0], a) == pytest.approx(0.0, abs=1e-9)
    b = np.array([[1.0, -0.3], [-0.3, 2.0]])
    from scipy.linalg import sqrtm

    sa = sqrtm(a)
    expected = np.trace(a + b - 2 * np.real(sqrtm(sa @ b @ sa)))
    assert frechet_distance([0, 0], a, [0, 0], b) == pytest.approx(expected, rel=1e-9)


def test_fpd_recovers_closed_form_and_zero() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(0.0, 1.0, size=(20000, 3))
    y = rng.normal(0.0, 1.0, size=(20000, 3)) * np.array([1.0, 1.0, 2.0]) + np.array([0.5, 0, 0])
    value, err = fpd(x, y, normalise=False, num_batches=5, num_points=5, seed=0)
    expected = 0.25 + (2.0 - 1.0) ** 2  # |dmu|^2 + (sigma1 - sigma2)^2
    assert value == pytest.approx(expected, rel=0.05) and err >= 0
    same, _ = fpd(x[:10000], x[10000:], num_batches=5, num_points=5, seed=0)
    assert same < 1e-3


def test_kpd_zero_for_identical_and_positive_for_different() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4000, 4))
    y = rng.normal(size=(4000, 4))
    value, err = kpd(x, y, batch_size=1000, num_batches=6)
    assert abs(value) < 3 * err + 1e-3
    shifted, _ = kpd(x, y + 1.0, batch_size=1000, num_batches=6)
    assert shifted > 0.01 and shifted > 10 * abs(value)


def test_mmd_poly_matches_dense_formula() -> None:
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(1500, 3)), rng.normal(0.3, 1.0, size=(1300, 3))
    for degree in (3, 4):
        g = 1 / 3
        xx, yy, xy = (
            (x @ x.T * g + 1) ** degree,
            (y @ y.T * g + 1) ** degree,
            (x @ y.T * g + 1) ** degree,
        )
        m, n = len(x), len(y)
        dense = (
            (xx.sum() - np.trace(xx)) / (m * (m - 1))
            + (yy.sum() - np.trace(yy)) / (n * (n - 1))
            - 2 * xy.mean()
        )
        assert mmd_poly_unbiased(x, y, degree) == pytest.approx(dense, rel=1e-9)


def _random_hits(rng: np.random.Generator, n: int, scale: float = 1.0) -> CellHits:
    per = rng.integers(5, 40, n)
    shower = np.repeat(np.arange(n), per)
    h = len(shower)
    return CellHits(
        shower=shower,
        layer=rng.integers(0, 30, h),
        ix=np.zeros(h, np.int64),
        iy=np.zeros(h, np.int64),
        x_mm=rng.normal(0, 10, h).astype(np.float32),
        y_mm=rng.normal(0, 10, h).astype(np.float32),
        energy_mev=(rng.exponential(2.0, h) * scale + 0.1).astype(np.float32),
        n_showers=n,
        incident_energy_gev=rng.uniform(10, 90, n).astype(np.float32),
    )


def test_w1_table_rows() -> None:
    rng = np.random.default_rng(7)
    hits = _random_hits(rng, 400)
    f = shower_features(hits)
    cells = hits.energy_mev.astype(np.float64)
    table = w1_table(f, f, cells, cells, n_batches=4)
    assert list(table.rows) == [*W1_ROWS, *W1_AXIS_ROWS, *W1_EXTRA_ROWS]
    assert all(r.mean == 0.0 for r in table.rows.values())
    assert table.shower_batch_size == 100 and len(table.per_feature) == 25 + 3
    other_hits = _random_hits(rng, 400, scale=1.5)
    g = shower_features(other_hits)
    t2 = w1_table(f, g, cells, other_hits.energy_mev, n_batches=4)
    assert t2.rows["cell energy"].mean > 5 and t2.rows["sampling fraction"].mean > 5
    d = t2.to_dict()
    assert set(d) == {"rows", "per_feature", "shower_batch_size", "cell_batch_size"}
