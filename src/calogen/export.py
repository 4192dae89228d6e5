"""Export of CaloClouds II models for full simulation (DD4hep's DDML plug-in, Geant4 hooks).

:func:`export_model` writes a self-contained TorchScript (``.pt``) or ONNX (``.onnx``) file
whose graph holds the whole generation pipeline of :meth:`CaloClouds2.generate
<calogen.models.caloclouds2.CaloClouds2.generate>`: Shower Flow sampling, occupancy
correction, the network's sampler (consistency sampling for the distilled model, the Heun
sampler for a teacher), and the post-diffusion calibration (negative energies to zero,
depth-sorted layer assignment, each layer's energy rescaled to the Shower Flow's, centre of
gravity moved to the Shower Flow's prediction, zero-energy points dropped).

Call signature of the exported model (``B`` showers, ``M`` = maximum points per shower, ``D``
= Shower Flow features, ``K`` = noise tensors of the sampler; see :class:`ExportInfo`)::

    flat = model(energy, flow_noise, point_noise)

* ``energy``: ``[B]`` float32, incident energy in GeV (normal incidence: the model has no
  direction input);
* ``flow_noise``: ``[B, D]`` float32, standard normal noise: the Shower Flow's base
  distribution (its first ``D - 2`` columns), then, for models that mirror their showers
  (``mirror`` in the config, the default), two values whose signs mirror the shower in x and
  in y (``D`` = features + 2);
* ``point_noise``: ``[K, B, M, 4]`` float32, standard normal noise of the points: entry 0 is the
  initial noise (scaled by σ_max inside), entries 1… the re-noising of the further steps of
  multi-step consistency sampling (``K = len(cm_sigmas)``; ``K = 1`` for a teacher). Shower
  ``b`` uses the first ``N_b`` rows of ``point_noise[:, b]``; the rest are ignored.
* ``flat``: ``[B, 30 + 4 M]`` float32: the number of points in each of the 30 layers, then
  ``(x, y, layer, E)`` for each point with x, y in mm relative to the impact point, the layer
  index 0–29 (as a float) and the deposited energy in GeV (the project's point-cloud
  convention; multiply by 1000 for MeV). Points are grouped by layer (ascending), so the
  counts are also the offsets of each layer's points; after the last point the array is
  padded with zeros (every real point has E > 0).

With the same noise (drawn in :meth:`CaloClouds2.generate`'s order: the flow noise, then the
initial point noise, then one tensor per further σ, then the two mirror values per shower) the exported model returns the Python
sampler's showers (tests/test_export.py). The maximum number of points ``M`` is the model's
``max_points`` (6000 for the shipped model): the occupancy-corrected number of points is
clipped to it, as in Python. Inside, the network runs on the first ``max_b N_b`` rows only
(a data-dependent size made with ``NonZero``, which both TorchScript tracing and ONNX keep
dynamic); rows beyond each shower's own ``N_b`` are masked, and the output is padded back to
``M`` points.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from calogen.errors import CalogenError, UsageError

FORMATS = ("torchscript", "onnx")
N_LAYERS = 30
#: name of the JSON description inside TorchScript files (``_extra_files``) and the key of the
#: ONNX metadata entry
INFO_NAME = "calogen_export.json"


@dataclass
class ExportInfo:
    """What an exported file expects and returns (stored inside the file as JSON)."""

    model: str
    format: str
    max_points: int
    flow_features: int
    noise_tensors: int
    sigmas: list[float]
    n_layers: int = N_LAYERS
    inputs: dict[str, str] = field(default_factory=dict)
    output: str = ""
    units: dict[str, str] = field(default_factory=dict)

    @property
    def output_size(self) -> int:
        return self.n_layers + 4 * self.max_points

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["output_size"] = self.output_size
        return out


# ---------------------------------------------------------------------------------------------
# the pipeline as tensor operations on padded showers [B, M]
# ---------------------------------------------------------------------------------------------


def _polyval(coefficients: Sequence[float], x: Tensor) -> Tensor:
    """``numpy.polyval`` (Horner, highest power first) in the dtype of ``x``."""
    y = torch.zeros_like(x)
    for c in coefficients:
        y = y * x + float(c)
    return y


def distribute_counts(counts: Tensor, totals: Tensor) -> Tensor:
    """:func:`calogen.calibration.distribute_counts` on float64 tensors ``[B, L]``, ``[B]``.

    Largest-remainder rounding; the stable descending rank of the remainders is computed by
    pairwise comparison (ties go to the lower layer index, as numpy's stable argsort does).
    """
    totals = torch.clamp_min(torch.round(totals), 0.0)
    current = counts.sum(1)
    safe = torch.where(current > 0, current, torch.ones_like(current))
    ideal = counts * (totals / safe)[:, None]
    base = torch.floor(ideal)
    missing = totals - base.sum(1)
    rem = ideal - base
    n_layers = counts.shape[1]
    ahead = rem[:, None, :] > rem[:, :, None]  # [B, i, j]: layer j ranks before layer i
    before = torch.ones(n_layers, n_layers, dtype=torch.bool, device=counts.device).tril(-1)
    ties = (rem[:, None, :] == rem[:, :, None]) & before
    rank = ahead.sum(-1) + ties.sum(-1)
    base = base + (rank < missing[:, None]).to(base.dtype)
    first = torch.zeros_like(base)
    first[:, 0] = 1.0
    return torch.where((current <= 0)[:, None], first * totals[:, None], base)


class ShowerPipeline(nn.Module):
    """The generation of :class:`~calogen.models.caloclouds2.CaloClouds2` for padded showers.

    ``forward(energy [B], flow_noise [B, D], point_noise [K, B, M, 4]) -> [B, 30 + 4 M]``
    (see the module docstring). Built from a loaded model; shares its modules.
    """

    def __init__(self, model: Any, max_points: int | None = None) -> None:
        super().__init__()
        from calogen.models.consistency import ConsistencyFunction
        from calogen.models.edm import EDMDenoiser

        cfg = model.config
        self.config = cfg
        self.normalisation = model.normalisation
        self.occupancy = model.occupancy
        radial = getattr(model, "radial", None)
        #: radial quantile correction (calogen.calibration.RadialCorrection) as buffers
        self.has_radial = radial is not None
        if radial is not None:
            k = radial.log_r_gen.shape[-1]
            self.radial_groups = int(radial.n_layer_groups)
            for name, values in (
                ("radial_e_inner", radial.energy_edges_gev[1:-1]),
                ("radial_l_inner", radial.layer_edges[1:-1]),
                ("radial_gen", radial.log_r_gen.reshape(-1, k)),
                ("radial_data", radial.log_r_data.reshape(-1, k)),
            ):
                self.register_buffer(name, torch.as_tensor(values, dtype=torch.float64))
        self.consistency = bool(model.consistency)
        self.mirror = bool(getattr(cfg, "mirror", False))
        self.sigmas = [float(s) for s in model.cm_sigmas] if self.consistency else []
        self.max_points = int(max_points or cfg.max_points)
        self.shower_flow = model.shower_flow
        #: ONNX-friendly operators (``topk`` for sorting, ``exp − 1`` for ``expm1``): set
        #: while exporting to ONNX
        self.onnx = False
        if self.consistency:
            self.sampler = ConsistencyFunction(model.net, cfg.sigma_min, cfg.sigma_data)
        else:
            self.sampler = EDMDenoiser(model.net, cfg.sigma_data)
        flow = self.shower_flow
        self.slices: dict[str, tuple[int, int]] = {}
        start = 0
        for name, width in zip(flow.names, flow.widths, strict=True):
            self.slices[name] = (start, start + width)
            start += width
        #: Shower Flow of the ``caloclouds2_core`` feature set: the core's centre of gravity
        #: (points within ``CORE_COG_RADIUS_MM`` of the axis) is shifted, not the whole shower's
        self.core_cog = "core_cog_x" in self.slices
        from calogen.models.shower_flow import CORE_COG_RADIUS_MM

        self.core_radius_mm = float(CORE_COG_RADIUS_MM)
        self.cog_prefix = "core_cog" if self.core_cog else "cog"
        missing = {"n_per_layer", "e_per_layer", f"{self.cog_prefix}_x", f"{self.cog_prefix}_y"}
        missing -= set(self.slices)
        if missing:
            raise UsageError(f"export needs a Shower Flow with {', '.join(sorted(missing))}")

    def _expm1(self, x: Tensor) -> Tensor:
        # ONNX has no Expm1; in float64 (as here) exp − 1 differs from it by ~1e-16 relative
        return torch.exp(x) - 1.0 if self.onnx else torch.expm1(x)

    def _argsort(self, key: Tensor) -> Tensor:
        """Stable ascending argsort along dim 1 (ties: lower index first, as numpy's lexsort).

        For ONNX this is ``topk`` (ONNX ``TopK`` breaks ties by the lower index; the exporter
        has no stable sort).
        """
        if self.onnx:
            return torch.topk(key, key.shape[1], dim=1, largest=False, sorted=True).indices
        return torch.sort(key, dim=1, stable=True).indices

    @property
    def noise_tensors(self) -> int:
        return len(self.sigmas) if self.consistency else 1

    @property
    def flow_features(self) -> int:
        """Columns of ``flow_noise``: the Shower Flow's, plus 2 mirror values if mirroring."""
        return int(self.shower_flow.dim) + (2 if self.mirror else 0)

    def _feature(self, pre: Tensor, name: str) -> Tensor:
        a, b = self.slices[name]
        return pre[:, a:b]

    def _shower_flow(self, energy: Tensor, flow_noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-layer counts (occupancy corrected), per-layer energies (GeV), CoG (mm), f64."""
        flow = self.shower_flow
        c = (energy.reshape(-1, 1).log() - flow.cond_stats[0]) / flow.cond_stats[1]
        x = flow.flow(c).transform.inv(flow_noise[:, : flow.dim])
        pre = (x * flow.std + flow.mean).double()
        counts = torch.floor(self._expm1(self._feature(pre, "n_per_layer").clamp(0.0, 20.0)))
        counts = torch.clamp_min(counts, 0.0)
        e_layer = self._expm1(self._feature(pre, "e_per_layer").clamp(0.0, 30.0)) * 1e-3
        prefix = self.cog_prefix
        cog = torch.cat([self._feature(pre, f"{prefix}_x"), self._feature(pre, f"{prefix}_y")], 1)
        # occupancy correction c_N(N) · N_i, then N clipped to [1, max_points]
        occ = self.occupancy
        total = counts.sum(1)
        n = torch.clamp_min(total.clamp(float(occ.n_range[0]), float(occ.n_range[1])), 1.0)
        factor = _polyval(occ.p_gen, _polyval(occ.p_data, n)) / n
        refine = [float(v) for v in getattr(occ, "p_refine", [0.0])]
        if any(refine):  # closed-loop refinement exp(polyval(p_refine, N / 1000))
            factor = factor * torch.exp(_polyval(refine, n / 1000.0))
        factor = factor.clamp(float(occ.factor_range[0]), float(occ.factor_range[1]))
        counts = distribute_counts(counts, total * factor)
        counts = distribute_counts(counts, counts.sum(1).clamp(1.0, float(self.max_points)))
        return counts, e_layer, cog

    def _radial(self, points: Tensor, layer: Tensor, energy: Tensor) -> Tensor:
        """The radial quantile map of :class:`~calogen.calibration.RadialCorrection` on
        ``points [B, M, 4]`` with layers ``layer [B, M]`` (float64 inside)."""
        e_bin = (energy.to(torch.float64)[:, None] >= self.radial_e_inner[None, :]).sum(1)
        group = (layer.to(torch.float64)[..., None] >= self.radial_l_inner).sum(-1)
        cell = e_bin[:, None] * self.radial_groups + group  # [B, M]
        knots_gen = self.radial_gen[cell]  # [B, M, K]
        knots_data = self.radial_data[cell]
        x = points[..., 0].to(torch.float64)
        y = points[..., 1].to(torch.float64)
        r = torch.sqrt(x * x + y * y)
        log_r = torch.log(r.clamp_min(1e-6))
        n_knots = knots_gen.shape[-1]
        above = (log_r[..., None] > knots_gen).sum(-1)  # knots below the radius, 0 … K
        i1 = above.clamp(1, n_knots - 1)[..., None]
        g0 = torch.gather(knots_gen, -1, i1 - 1)[..., 0]
        g1 = torch.gather(knots_gen, -1, i1)[..., 0]
        d0 = torch.gather(knots_data, -1, i1 - 1)[..., 0]
        d1 = torch.gather(knots_data, -1, i1)[..., 0]
        inner = d0 + (log_r - g0) / (g1 - g0) * (d1 - d0)
        below = log_r + (knots_data[..., 0] - knots_gen[..., 0])
        beyond = log_r + (knots_data[..., -1] - knots_gen[..., -1])
        new = torch.where(above == 0, below, torch.where(above == n_knots, beyond, inner))
        scale = torch.where(r > 0, torch.exp(new - log_r), torch.ones_like(r))
        return torch.stack(
            [
                (x * scale).to(points.dtype),
                (y * scale).to(points.dtype),
                points[..., 2],
                points[..., 3],
            ],
            -1,
        )

    def _sample(self, point_noise: Tensor, values: Tensor) -> Tensor:
        from calogen.models.caloclouds2 import Conditioning
        from calogen.models.consistency import consistency_sample
        from calogen.models.edm import heun_sample

        cfg = self.config
        cond = Conditioning(values, None)
        if self.consistency:
            extra = [point_noise[k] for k in range(1, len(self.sigmas))]
            return consistency_sample(
                self.sampler,
                point_noise[0],
                cond,
                sigmas=self.sigmas,
                sigma_min=cfg.sigma_min,
                extra_noise=extra,
            )
        return heun_sample(
            self.sampler,
            point_noise[0],
            cond,
            n_steps=cfg.sampler_steps,
            sigma_min=cfg.sigma_min,
            sigma_max=cfg.sigma_max,
            rho=cfg.rho,
        )

    def forward(self, energy: Tensor, flow_noise: Tensor, point_noise: Tensor) -> Tensor:
        cfg = self.config
        m, n_layers = self.max_points, N_LAYERS
        energy = energy.reshape(-1).to(torch.float32)
        counts_layer, e_layer, cog = self._shower_flow(energy, flow_noise)
        n_points = counts_layer.sum(1)
        values = torch.stack(
            [
                energy / cfg.e_scale_gev * 2.0 - 1.0,
                n_points.to(torch.float32) / cfg.n_scale * 2.0 - 1.0,
            ],
            -1,
        )
        # the network runs on the rows 0 … max(N) − 1 only (a data-dependent size: NonZero)
        limit = n_points.max().to(torch.int64)
        position = torch.nonzero(torch.arange(m, device=energy.device) < limit).reshape(-1)
        x = self._sample(point_noise.index_select(2, position), values)
        x = x.clamp(-cfg.output_clip, cfg.output_clip)
        depth = x[..., 2]
        points = self.normalisation.inverse(x)

        # depth-sorted layer assignment; rows beyond N go to the end
        valid = position[None, :] < n_points.to(torch.int64)[:, None]
        key = torch.where(valid, depth, torch.full_like(depth, float("inf")))
        order = self._argsort(key)
        points = torch.gather(points, 1, order[..., None].expand(-1, -1, 4))
        edges = torch.cumsum(counts_layer, 1)  # [B, L] upper edge of every layer
        layer = (edges[:, None, :] <= position.to(edges.dtype)[None, :, None]).sum(-1)
        layer = layer.clamp_max(n_layers - 1)
        valid64 = valid.to(torch.float64)

        def per_layer(values: Tensor) -> Tensor:  # sum over each shower's layers, [B, L]
            return torch.zeros_like(e_layer).scatter_add(1, layer, values * valid64)

        # negative energies to zero, then each layer's energy to the Shower Flow's
        energy64 = points[..., 3].clamp_min(0.0).to(torch.float64)
        total = per_layer(energy64)
        count = per_layer(torch.ones_like(energy64))
        empty = total <= 0
        factor = torch.where(
            empty, torch.zeros_like(total), e_layer / torch.where(empty, 1.0, total)
        )
        share = torch.where(count > 0, e_layer / count.clamp_min(1.0), torch.zeros_like(count))
        new = torch.where(
            torch.gather(empty, 1, layer),
            torch.gather(share, 1, layer),
            energy64 * torch.gather(factor, 1, layer),
        )
        e32 = torch.where(valid, new, torch.zeros_like(new)).to(torch.float32)

        if self.has_radial:  # radial quantile correction (layers assigned, before the shift)
            points = self._radial(points, layer, energy)

        # centre of gravity (x, y), of the core within CORE_COG_RADIUS_MM where the Shower Flow
        # gives the core's (all points for showers without energy in the core), to the flow's
        e64 = e32.to(torch.float64)
        if self.core_cog:
            x64 = points[..., 0].to(torch.float64)
            y64 = points[..., 1].to(torch.float64)
            radius = torch.sqrt(x64 * x64 + y64 * y64)  # ONNX has no hypot
            inside = radius < self.core_radius_mm
            core_e = torch.where(inside, e64, torch.zeros_like(e64))
            has_core = core_e.sum(1, keepdim=True) > 0
            e64 = torch.where(has_core, core_e, e64)
        e_sum = e64.sum(1)
        has_energy = e_sum > 0
        safe = torch.where(has_energy, e_sum, torch.ones_like(e_sum))
        shifted = []
        for axis in (0, 1):
            coord = points[..., axis].to(torch.float64)
            centre = (coord * e64).sum(1) / safe
            shift = torch.where(has_energy, cog[:, axis] - centre, torch.zeros_like(centre))
            shifted.append((coord + shift[:, None]).to(torch.float32))
        if self.mirror:  # mirror in x and y by the signs of the last two flow-noise columns
            dim = self.shower_flow.dim
            for axis in (0, 1):
                flip = flow_noise[:, dim + axis : dim + axis + 1] < 0
                shifted[axis] = torch.where(flip, -shifted[axis], shifted[axis])

        # drop points without energy, keep the layer order, pad with zeros
        keep = e32 > 0
        target = torch.where(keep, position, position + m)
        keep_order = self._argsort(target)
        out = torch.stack([shifted[0], shifted[1], layer.to(torch.float32), e32], -1)
        out = torch.gather(out, 1, keep_order[..., None].expand(-1, -1, 4))
        out = out * torch.gather(keep, 1, keep_order).to(out.dtype)[..., None]
        counts_out = per_layer(keep.to(torch.float64)).to(torch.float32)
        # zero padding to the fixed size: rows max(N) … M − 1
        full = torch.zeros_like(point_noise[0]).scatter(
            1, position[None, :, None].expand(out.shape[0], -1, 4), out
        )
        return torch.cat([counts_out, full.reshape(full.shape[0], 4 * m)], 1)


# ---------------------------------------------------------------------------------------------
# helpers for callers (inputs, decoding) and the writer
# ---------------------------------------------------------------------------------------------


def example_inputs(
    pipeline: ShowerPipeline, energies: Sequence[float], seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Standard normal inputs for ``energies`` (GeV): ``(energy, flow_noise, point_noise)``."""
    gen = torch.Generator().manual_seed(int(seed))
    b = len(energies)
    energy = torch.as_tensor(list(energies), dtype=torch.float32)
    flow_noise = torch.randn((b, pipeline.flow_features), generator=gen)
    point_noise = torch.randn((pipeline.noise_tensors, b, pipeline.max_points, 4), generator=gen)
    return energy, flow_noise, point_noise


def decode(flat: Any, n_layers: int = N_LAYERS) -> list[tuple[Any, Any]]:
    """Split exported output ``[B, L + 4 M]`` (numpy or torch) into ``(counts [L], points
    [N, 4])`` per shower (points without the zero padding)."""
    result = []
    for row in flat:
        counts = row[:n_layers]
        n = int(counts.sum())
        result.append((counts, row[n_layers:].reshape(-1, 4)[:n]))
    return result


def _info(pipeline: ShowerPipeline, name: str, fmt: str) -> ExportInfo:
    k, d, m = pipeline.noise_tensors, pipeline.flow_features, pipeline.max_points
    return ExportInfo(
        model=name,
        format=fmt,
        max_points=m,
        flow_features=d,
        noise_tensors=k,
        sigmas=pipeline.sigmas,
        inputs={
            "energy": "[B] float32, incident energy in GeV (normal incidence)",
            "flow_noise": f"[B, {d}] float32, standard normal (Shower Flow base noise"
            + (
                ", then 2 columns whose signs mirror the shower in x and y)"
                if pipeline.mirror
                else ")"
            ),
            "point_noise": f"[{k}, B, {m}, 4] float32, standard normal (point noise: initial, "
            "then one per further consistency step); shower b uses its first N_b rows",
        },
        output=f"[B, {N_LAYERS + 4 * m}] float32: points per layer ({N_LAYERS}), then "
        f"(x, y, layer, E) per point grouped by layer, zero padded to {m} points",
        units={"x": "mm", "y": "mm", "layer": "index 0-29", "E": "GeV"},
    )


def build_pipeline(model: str | os.PathLike[str] | None, max_points: int | None = None) -> Any:
    """``(pipeline, model name)`` for a model folder (``None``: the shipped default)."""
    from calogen.models.caloclouds2 import CaloClouds2Generator
    from calogen.models.registry import load_generator

    generator = load_generator(model)
    if not isinstance(generator, CaloClouds2Generator):
        raise UsageError(
            f"export supports CaloClouds II models (caloclouds2, caloclouds2-cm), "
            f"not '{generator.name}'"
        )
    if max_points is not None and max_points <= 0:
        raise UsageError(f"--max-points must be > 0, got {max_points}")
    pipeline = ShowerPipeline(generator.model, max_points).eval()
    for p in pipeline.parameters():
        p.requires_grad_(False)
    return pipeline, generator.name


def _trace(pipeline: ShowerPipeline, inputs: tuple[Tensor, ...]) -> torch.jit.ScriptModule:
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python floats
        return torch.jit.trace(pipeline, inputs, check_trace=False)


def _write_torchscript(pipeline: ShowerPipeline, info: ExportInfo, tmp: Path) -> None:
    inputs = example_inputs(pipeline, [50.0])
    traced = _trace(pipeline, inputs)
    torch.jit.save(traced, str(tmp), _extra_files={INFO_NAME: json.dumps(info.to_dict())})


def _write_onnx(pipeline: ShowerPipeline, info: ExportInfo, tmp: Path) -> None:
    import contextlib
    import io
    import warnings

    try:
        import onnx
    except ImportError:
        raise UsageError("--format onnx needs the 'onnx' package (pip install onnx)") from None
    # operators the TorchScript-based exporter lacks but ONNX has (the normalisation's
    # radial compression uses sinh)
    torch.onnx.register_custom_op_symbolic("aten::sinh", lambda g, x: g.op("Sinh", x), 9)
    inputs = example_inputs(pipeline, [20.0, 70.0])
    pipeline.onnx = True
    log = io.StringIO()
    try:
        with (
            warnings.catch_warnings(),
            torch.no_grad(),
            contextlib.redirect_stdout(log),
            contextlib.redirect_stderr(log),
        ):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                pipeline,
                inputs,
                str(tmp),
                input_names=["energy", "flow_noise", "point_noise"],
                output_names=["showers"],
                dynamic_axes={
                    "energy": {0: "batch"},
                    "flow_noise": {0: "batch"},
                    "point_noise": {1: "batch"},
                    "showers": {0: "batch"},
                },
                opset_version=17,
                dynamo=False,
            )
    finally:
        pipeline.onnx = False
    proto = onnx.load(str(tmp))
    entry = proto.metadata_props.add()
    entry.key, entry.value = INFO_NAME, json.dumps(info.to_dict())
    onnx.save(proto, str(tmp))


def export_model(
    model: str | os.PathLike[str] | None,
    fmt: str,
    out: str | os.PathLike[str],
    *,
    max_points: int | None = None,
    overwrite: bool = True,
) -> ExportInfo:
    """Write the exported model to ``out`` atomically (temporary name, then rename).

    Args:
        model: model folder, or ``None`` for the shipped default model.
        fmt: ``"torchscript"`` or ``"onnx"``.
        out: output file.
        max_points: maximum points per shower (default: the model's ``max_points``).
        overwrite: replace an existing ``out`` (else :class:`UsageError`).
    """
    from calogen.data.io import check_output_path

    if fmt not in FORMATS:
        raise UsageError(f"unknown export format '{fmt}' (choose from {', '.join(FORMATS)})")
    out = check_output_path(out, overwrite)
    pipeline, name = build_pipeline(model, max_points)
    info = _info(pipeline, name, fmt)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        if fmt == "torchscript":
            _write_torchscript(pipeline, info, tmp)
        else:
            _write_onnx(pipeline, info, tmp)
        os.replace(tmp, out)
    except CalogenError:
        raise
    except (RuntimeError, ValueError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CalogenError(f"export to {fmt} failed: {type(exc).__name__}: {first}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return info


__all__ = [
    "FORMATS",
    "INFO_NAME",
    "ExportInfo",
    "ShowerPipeline",
    "build_pipeline",
    "decode",
    "distribute_counts",
    "example_inputs",
    "export_model",
]
