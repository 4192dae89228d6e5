"""The report read at a glance (issue 17): which way is better, the best value and the rows
within the Geant4 floor marked; ratio panels named and with arrows for points off scale;
one colour per energy selection and no ratio panel for too few showers; shared axes and
colour scale in the event display; captions true for the geometry."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from calogen.evaluation import metrics as M
from calogen.evaluation import plots
from calogen.evaluation.report import (
    HALF,
    LOWER,
    EvaluationConfig,
    _marked_html,
    _marked_md,
    _table_marks,
    _table_rows,
    collect,
    figure_caption,
)
from calogen.geometry import slab


def _entry(w1: float, w1_std: float, auc: float, fpd: float) -> dict:
    names = (*M.W1_ROWS, *M.W1_AXIS_ROWS, *M.W1_EXTRA_ROWS)
    rows = {name: {"mean": w1, "std": w1_std} for name in names}
    return {
        "w1": {"rows": rows},
        "classifier": {"auc_mean": auc, "auc_std": 0.01},
        "fpd": {"value": fpd, "error": 0.001},
        "kpd": {"value": fpd / 10, "error": 0.0001},
    }


@pytest.fixture
def metrics() -> dict:
    return {
        "candidates": {
            "good": _entry(10.0, 1.0, 0.525, 0.0095),  # within the floor's spread everywhere
            "bad": _entry(50.0, 1.0, 0.95, 0.200),
        },
        "floor": _entry(9.5, 1.0, 0.52, 0.009),
    }


def test_better_column_and_marks(metrics: dict) -> None:
    header, rows = _table_rows(metrics)
    assert header[:2] == ["metric", "better"] and header[-1] == "reference floor"
    better = {row[0]: row[1] for row in rows}
    assert better["classifier AUC"] == HALF and better["FPD ×10³"] == LOWER
    assert all(better[f"W1×100 {name}"] == LOWER for name in M.W1_ROWS)
    marks = _table_marks(metrics)
    assert all(m[0] == {"best", "ns"} and m[1] == set() for m in marks)
    md = _marked_md(metrics)
    assert "**10.0 ± 1.0 (n.s.)**" in md and "| 50.0 ± 1.0 |" in md
    page = _marked_html(metrics)
    assert "class='best ns'" in page and page.count("class='best") == len(rows)


def test_auc_best_is_closest_to_half(metrics: dict) -> None:
    metrics["candidates"]["bad"]["classifier"]["auc_mean"] = 0.49  # below 0.5 but closer
    auc_row = [r[0] for r in _table_rows(metrics)[1]].index("classifier AUC")
    assert "best" in _table_marks(metrics)[auc_row][1]


def test_no_marks_without_floor_or_with_one_candidate(metrics: dict) -> None:
    metrics["floor"] = None
    assert all(m == [{"best"}, set()] for m in _table_marks(metrics))  # best, nothing n.s.
    del metrics["candidates"]["bad"]
    assert all(m == [set()] for m in _table_marks(metrics))


def test_ratio_label_and_arrows() -> None:
    assert plots.ratio_label("Geant4 (test split)") == "model / Geant4"
    assert plots.ratio_label("Geant4") == "model / Geant4"
    fig, (ax, rax) = plt.subplots(2)
    edges = np.arange(6.0)
    ref = np.ones(5)
    plots._draw(
        ax,
        rax,
        edges,
        [ref, np.array([1.0, 3.0, 0.2, 1.1, 0.0])],
        [ref * 0, ref * 0],
        ["Geant4", "m"],
    )
    markers = {line.get_marker(): len(line.get_xdata()) for line in rax.get_lines()}
    assert markers.get("^") == 1 and markers.get("v") == 2  # 3.0 above, 0.2 and 0.0 below
    assert rax.get_ylabel() == "model / Geant4"
    legend = ax.get_legend()
    assert legend is not None and legend.get_bbox_to_anchor().x0 > ax.get_window_extent().x1 - 1
    plt.close(fig)


def test_captions_follow_the_geometry() -> None:
    slab_run = {"run": {"geometry": "slab", "threshold_mev": 0.1}}
    ild_run = {"run": {"geometry": "ild", "threshold_mev": 0.2}}
    assert "gaps" not in figure_caption("layer_map", slab_run)
    assert "gaps" in figure_caption("layer_map", ild_run)
    assert "half a MIP" in figure_caption("cell_energy", slab_run)
    assert "0.2 MeV" in figure_caption("cell_energy", ild_run)
    assert "half a MIP" not in figure_caption("cell_energy", ild_run)


@pytest.fixture(scope="module")
def samples(fixtures: Path) -> list:
    config = EvaluationConfig(progress=False)
    ref = collect(fixtures / "g4_photons_subset.h5", slab(), config, "Geant4")
    return [ref, collect(fixtures / "g4_photons_subset.h5", slab(), config, "copy", seed=1)]


def _figure(monkeypatch: pytest.MonkeyPatch, make) -> plt.Figure:  # type: ignore[no-untyped-def]
    captured = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, out, stem: captured.append(fig) or [])
    make()
    return captured[0]


def test_energy_selections_colours_and_ratio_panel(samples, monkeypatch, tmp_path) -> None:
    fig = _figure(monkeypatch, lambda: plots.plot_energy_and_hits(samples, tmp_path))
    assert len(fig.axes) == 2  # 80 showers: no ratio panel
    assert "no ratio panel" in fig.axes[0].get_title(loc="left")
    monkeypatch.setattr(plots, "MIN_RATIO_SHOWERS", 1)
    fig = _figure(monkeypatch, lambda: plots.plot_energy_and_hits(samples, tmp_path))
    assert len(fig.axes) == 4 and fig.axes[2].get_ylabel() == "model / Geant4"
    # one colour per selection: the reference fill and the model line of a selection agree
    ax = fig.axes[0]
    fills = [p for p in ax.patches if p.get_fill()]
    lines = [p for p in ax.patches if not p.get_fill()]
    assert len({tuple(np.round(p.get_facecolor()[:3], 3)) for p in fills}) == len(fills) > 1
    assert {tuple(np.round(p.get_edgecolor()[:3], 3)) for p in lines} == {
        tuple(np.round(p.get_facecolor()[:3], 3)) for p in fills
    }


def test_event_display_shares_axes_and_colours(samples, monkeypatch, tmp_path) -> None:
    fig = _figure(monkeypatch, lambda: plots.plot_event_display(samples, tmp_path))
    axes3d = [a for a in fig.axes if a.name == "3d"]
    assert len(axes3d) == 2 and len(fig.axes) == 3  # one colour bar for both
    assert axes3d[0].get_xlim() == axes3d[1].get_xlim()
    assert axes3d[0].get_zlim() == axes3d[1].get_zlim()
    norms = [c.norm for a in axes3d for c in a.collections]
    assert all(n.vmin == norms[0].vmin and n.vmax == norms[0].vmax for n in norms)
