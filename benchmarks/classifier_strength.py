"""How strong is the classifier of ``calogen evaluate``? The same samples, several classifiers.

Compares, on one reference file and one candidate file (projected like ``calogen evaluate``):

* ``old``: the earlier classifier (25 -> 32 -> 16 -> 1, at most 30 epochs, patience 5, the
  25 per-shower features only);
* ``64-32 on 25 + log E``: the architecture of the independent evaluation quoted in issue 16
  (hidden layers 64 and 32 on the 25 features plus log E) with the current training;
* ``evaluate``: what ``calogen evaluate`` uses now (64-32 on the 25 features, the 3 fitted-axis
  observables and log E, cos theta and the two incident slopes).

Usage::

    python benchmarks/classifier_strength.py REF.h5 CAND.h5 [--folds 5] [--seed 0]
"""

from __future__ import annotations

import argparse

import numpy as np

from calogen.evaluation import metrics as M
from calogen.evaluation.report import EvaluationConfig, classifier_inputs, collect
from calogen.geometry import slab


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference")
    parser.add_argument("candidate")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = EvaluationConfig(progress=False)
    ref = collect(args.reference, slab(), config).features
    cand = collect(args.candidate, slab(), config).features
    log_e = [np.log(f.incident_energy_gev)[:, None] for f in (ref, cand)]
    variants = {
        "old (25-32-16-1, 25 features)": (
            ref.matrix()[0],
            cand.matrix()[0],
            {
                "hidden": (32, 16),
                "epochs": 30,
                "patience": 5,
                "batch_size": 256,
                "weight_decay": 0.0,
            },
        ),
        "64-32 on 25 features + log E": (
            np.hstack([ref.matrix()[0], log_e[0]]),
            np.hstack([cand.matrix()[0], log_e[1]]),
            {},
        ),
        "evaluate (64-32 on 28 + 4 conditions)": (
            classifier_inputs(ref)[0],
            classifier_inputs(cand)[0],
            {},
        ),
    }
    for name, (a, b, kwargs) in variants.items():
        r = M.classifier_test(a, b, k_folds=args.folds, seed=args.seed, **kwargs)
        print(f"{name:<40} AUC {r.auc_mean:.3f} ± {r.auc_std:.3f}  epochs {r.epochs}")


if __name__ == "__main__":
    main()
