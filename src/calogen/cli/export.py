"""``calogen export``: a CaloClouds II model as one TorchScript or ONNX file for full simulation."""

from __future__ import annotations

import argparse
import json
from typing import Any

from calogen.cli import add_model, add_output, model_dir, positive_int


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export",
        help="write a model as a self-contained TorchScript or ONNX file (DD4hep DDML)",
        description="Export a CaloClouds II model (Shower Flow, occupancy correction, "
        "sampler and calibration in one graph) for full-simulation frameworks. The exported "
        "model is called as model(energy [B] GeV, flow_noise [B, D], point_noise [K, B, M, 4]) "
        "with standard normal noise, and returns [B, 30 + 4 M] float32: the number of points "
        "in each of the 30 layers, then (x mm, y mm, layer index, E GeV) for each point, "
        "grouped by layer and zero padded to M points (M = the model's max_points, 6000 for the "
        "shipped model). D, K and M are printed and stored in the file (TorchScript extra file "
        "/ ONNX metadata 'calogen_export.json'). --format ddml writes TorchScript in the "
        "contract of DD4hep's DDML plug-in (CaloCloudsTwoAngleModel with TorchInference): "
        "model(energy [1] GeV, theta [1] deg, phi [1] deg) draws its own noise and returns "
        "35,000 float32: the 30 counts, then (x mm, y mm, layer, E MeV) per point, inclined "
        "along (theta, phi), at most 8,742 points.",
    )
    add_model(p, help="CaloClouds II model folder or 'default' (the shipped model)")
    p.add_argument(
        "--format",
        choices=["torchscript", "onnx", "ddml"],
        required=True,
        dest="fmt",
        help="torchscript (.pt) / onnx (.onnx): noise as input, batches; ddml (.pt): "
        "TorchScript in the contract of DD4hep DDML's CaloCloudsTwoAngleModel (one shower "
        "per call, noise drawn inside, energy and two angles)",
    )
    add_output(p, metavar="FILE", help="exported model file")
    p.add_argument(
        "--max-points",
        type=positive_int,
        default=None,
        metavar="M",
        help="maximum points per shower (default: the model's max_points; for ddml at most "
        "8742, the default capped there)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    import torch

    from calogen.export import export_model

    torch.set_num_threads(1)
    info = export_model(
        model_dir(args.model),
        args.fmt,
        args.output,
        max_points=args.max_points,
        overwrite=args.overwrite,
    )
    if args.json:
        print(json.dumps(info.to_dict(), indent=2))
        return 0
    print(f"wrote {args.output} ({info.format}, model {info.model})")
    for name, text in info.inputs.items():
        print(f"  input  {name}: {text}")
    print(f"  output showers: {info.output}")
    if info.direction:
        print(f"  direction: {info.direction}")
    return 0
