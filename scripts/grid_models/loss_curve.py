"""Training and validation loss against iteration, from a run folder's ``train_log.json``.

Usage::

    python scripts/grid_models/loss_curve.py RUN [--out PNG] [--train-key KEY] [--log-y]

``RUN`` is the ``--out`` folder of ``calogen train l2lflows|bibae`` (any model's run works
for the training losses). ``train_log.json`` holds ``history``: entries
``{"iteration": i, <training loss>: mean over the iterations since the previous entry, ...}``
and, at the validation iterations (config ``validation_showers`` > 0, every
``validate_every``), ``val_loss`` and its parts (``val_*``) computed on the held-out showers;
``best_val_loss`` holds the lowest ``val_loss`` and its iteration.

The first panel shows ``val_loss`` against the training loss of the same definition
(``vae_loss`` for the BIB-AE, ``loss`` otherwise; ``--train-key`` to choose), with the best
iteration marked; one more panel per part of the validation loss that has a training
counterpart (``val_X`` against ``X``; ``val_rec`` against the BIB-AE's ``loss``). Writes
``RUN/loss_curve.png`` unless ``--out`` is given and prints the best validation loss.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import mplhep

from calogen.evaluation.plots import STYLE_OVERRIDES

#: training counterparts of validation keys whose name does not follow ``val_X`` ↔ ``X``
COUNTERPARTS = {"val_loss": ("vae_loss", "loss"), "val_rec": ("loss",)}


def read_log(run: Path) -> dict[str, Any]:
    """The parsed ``train_log.json`` of a run folder (or the file itself)."""
    path = run / "train_log.json" if run.is_dir() else run
    if not path.exists():
        sys.exit(f"{path}: no training log (is this a 'calogen train' --out folder?)")
    return json.loads(path.read_text())


def series(history: list[dict[str, float]], key: str) -> tuple[list[int], list[float]]:
    """Iterations and values of ``key`` in the entries that hold it."""
    rows = [(int(h["iteration"]), float(h[key])) for h in history if key in h]
    return [r[0] for r in rows], [r[1] for r in rows]


def counterpart(val_key: str, keys: set[str], train_key: str | None = None) -> str | None:
    """The training key compared with ``val_key`` (``None``: none in the log)."""
    if val_key == "val_loss" and train_key is not None:
        return train_key if train_key in keys else None
    for key in COUNTERPARTS.get(val_key, (val_key[len("val_") :],)):
        if key in keys:
            return key
    return None


def plot(log: dict[str, Any], out: Path, train_key: str | None, log_y: bool, title: str) -> None:
    """Write the figure of ``log`` (see the module docstring) to ``out`` (PNG)."""
    history = log.get("history", [])
    keys = {k for h in history for k in h if k != "iteration"}
    val_keys = sorted((k for k in keys if k.startswith("val_")), key=lambda k: k != "val_loss")
    if not val_keys:  # training losses only: the first one
        first = train_key or ("loss" if "loss" in keys else sorted(keys)[0])
        panels = [(first, None)]
    else:
        panels = [(counterpart(k, keys, train_key), k) for k in val_keys]
        panels = [p for p in panels if p[0] is not None or p[1] == "val_loss"]
    best = log.get("best_val_loss")
    with plt.style.context([mplhep.style.ROOT, STYLE_OVERRIDES]):
        fig, axes = plt.subplots(
            len(panels), 1, figsize=(8, 3.2 * len(panels) + 0.8), sharex=True, squeeze=False
        )
        for ax, (tkey, vkey) in zip(axes[:, 0], panels, strict=True):
            if tkey is not None:
                it, v = series(history, tkey)
                ax.plot(it, v, color="tab:blue", lw=1.2, label=f"training ({tkey})")
            if vkey is not None:
                it, v = series(history, vkey)
                ax.plot(it, v, "o-", color="tab:orange", ms=3.5, lw=1.2, label=vkey)
                if vkey == "val_loss" and best is not None:
                    ax.axvline(best["iteration"], color="0.5", ls=":", lw=1)
                    label = f"best: {best['val_loss']:.4g} at {best['iteration']}"
                    ax.plot([best["iteration"]], [best["val_loss"]], "*", ms=12, label=label)
            ax.set_ylabel(vkey[len("val_") :] if vkey else str(tkey))
            if log_y:
                ax.set_yscale("log")
            ax.legend(loc="upper right")
        axes[-1, 0].set_xlabel("iteration")
        fig.suptitle(title)
        fig.tight_layout()
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=110)
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="run folder (or its train_log.json)")
    parser.add_argument("--out", type=Path, help="PNG to write (default RUN/loss_curve.png)")
    parser.add_argument("--train-key", help="training loss shown with val_loss")
    parser.add_argument("--log-y", action="store_true", help="logarithmic loss axes")
    args = parser.parse_args(argv)
    log = read_log(args.run)
    folder = args.run if args.run.is_dir() else args.run.parent
    out = args.out or folder / "loss_curve.png"
    plot(log, out, args.train_key, args.log_y, folder.name)
    best = log.get("best_val_loss")
    if best is not None:
        print(f"best val_loss {best['val_loss']:.6g} at iteration {best['iteration']}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
