"""Evaluation of generated showers against a reference: observables, metrics, plots, report.

* :mod:`calogen.evaluation.observables` — per-shower observables from projected cell hits
  (:func:`shower_features`, :class:`ShowerFeatures`) and their chunked accumulation.
* :mod:`calogen.evaluation.metrics` — W1 table of CaloClouds II (plus the fitted-axis rows),
  classifier AUC, single-feature ranking, FPD, KPD.
* :mod:`calogen.evaluation.angles` — groups of incident energy and angle, the per-condition
  table and the centroid along the tilt of inclined showers.
* :mod:`calogen.evaluation.plots` — comparison figures (PNG + PDF).
* :mod:`calogen.evaluation.report` — :func:`evaluate`, behind ``calogen evaluate``.

Plotting modules are imported lazily (``from calogen.evaluation import report``) so that
importing the observables does not pull in matplotlib.
"""

from calogen.evaluation.observables import (
    ObservableAccumulator,
    SampleObservables,
    ShowerFeatures,
    feature_names,
    shower_features,
)

__all__ = [
    "ObservableAccumulator",
    "SampleObservables",
    "ShowerFeatures",
    "feature_names",
    "shower_features",
]
