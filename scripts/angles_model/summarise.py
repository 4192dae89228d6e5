"""One table row per evaluation folder of scripts/angles_model/evaluate.sh: the sum of the 8
W1 x100 groups of the default model's table, the classifier AUC, the visible energy and the
fitted axis angle against Geant4. Usage: python summarise.py EVAL_DIR [EVAL_DIR ...]"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from calogen.evaluation.metrics import W1_ROWS as GROUPS


def rows(folder: Path) -> list[str]:
    m = json.loads((folder / "metrics.json").read_text())
    labels = m["conditions"]["labels"]
    group = m["conditions"]["groups"]
    out = []
    floor = sum(m["floor"]["w1"]["rows"][g]["mean"] for g in GROUPS)
    for k, label in enumerate(labels[1:], start=1):
        c = m["candidates"][label]
        w1 = sum(c["w1"]["rows"][g]["mean"] for g in GROUPS)
        auc = c["classifier"]
        e_ref = sum(g["samples"][0]["visible_energy_mev"]["mean"] for g in group) / len(group)
        e = sum(g["samples"][k]["visible_energy_mev"]["mean"] for g in group) / len(group)
        t_ref = sum(g["samples"][0]["axis_theta_deg"]["mean"] for g in group) / len(group)
        t = sum(g["samples"][k]["axis_theta_deg"]["mean"] for g in group) / len(group)
        out.append(
            f"| {folder.name} | {label} | {w1:.1f} | {auc['auc_mean']:.3f} ± {auc['auc_std']:.3f} "
            f"| {100 * (e / e_ref - 1):+.2f} % | {t - t_ref:+.2f} (G4 {t_ref:.2f}) | {floor:.1f} |"
        )
    return out


print(
    "| test set | candidate | W1 sum (8 groups) | classifier AUC | E_vis vs G4 | "
    "axis theta - G4 [deg] | G4 floor W1 sum |"
)
print("|---|---|---|---|---|---|---|")
for arg in sys.argv[1:]:
    if (Path(arg) / "metrics.json").exists():
        print("\n".join(rows(Path(arg))))
