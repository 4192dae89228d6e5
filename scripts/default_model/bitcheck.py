"""Bit-reproduction check of the default recipe (issue 19): a short teacher and its distillation
with scripts/default_model/{teacher,distill}.yaml and seed 7, from the code at ROOT; prints
hashes of the weights. Run it for two checkouts and compare:

    PYTHONPATH=ROOT/src python scripts/default_model/bitcheck.py ROOT 30
"""

from __future__ import annotations

import hashlib
import inspect
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from calogen.models import caloclouds2 as cc2

DATA = "/work/shared/data/g4_photons_10-90GeV_train.h5"


def digest(path: Path) -> str:
    tensors = load_file(str(path))
    flat = torch.cat([tensors[k].flatten().float() for k in sorted(tensors)])
    return hashlib.sha256(flat.numpy().tobytes()).hexdigest()[:12]


def main(root: Path, iterations: int) -> None:
    torch.set_num_threads(1)
    out = Path(tempfile.mkdtemp())
    common: dict = {"data": DATA, "seed": 7, "progress": False}
    if "corrections" in str(inspect.signature(cc2.train)) or "kwargs" in str(
        inspect.signature(cc2.train)
    ):
        common["corrections"] = False  # newer code fits corrections at the end by default
    teacher_yaml = str(root / "scripts/default_model/teacher.yaml")
    cc2.train(config=teacher_yaml, out=out / "t", iterations=iterations, **common)
    print("teacher", digest(out / "t" / "model.safetensors"))
    distill_yaml = str(root / "scripts/default_model/distill.yaml")
    cc2.distill(teacher=out / "t", config=distill_yaml, out=out / "s", iterations=20, **common)
    print("student", digest(out / "s" / "model.safetensors"))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
