"""Export of CaloClouds II models for full simulation (DD4hep's DDML plug-in, Geant4 hooks).

Two flavours: noise as input and batches (``torchscript``, ``onnx``: :class:`ShowerPipeline`,
described below), and ``ddml`` (:class:`DDMLShower`): TorchScript in the contract of DDML's
``CaloCloudsTwoAngleModel``, one shower per call from energy and two angles, the noise drawn
inside, the shower inclined by :func:`incline_points_torch`.

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
  multi-step consistency sampling (``K = len(cm_sigmas)``; ``K = 1`` for a teacher), and for
  models that mirror each point (``mirror_points``, the angle-aware presets) one more tensor
  whose first two columns' signs mirror each point in x (normal incidence only) and y. Shower
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

import numpy as np
import torch
from torch import Tensor, nn

from calogen.calibration import DEPTH_STRETCH_TAIL_KNOTS
from calogen.errors import CalogenError, UsageError
from calogen.models.shower_flow import FLOW_SUPPORT_Z

FORMATS = ("torchscript", "onnx", "ddml")
N_LAYERS = 30
#: floats DD4hep's DDML plug-in (``CaloCloudsTwoAngleModel`` with ``TorchInference``) copies
#: out of the model's output tensor, whatever its size: the DDML flavour returns exactly these
DDML_OUTPUT_FLOATS = 35_000
#: most points that fit in DDML's buffer after the 30 per-layer counts: (35,000 - 30) / 4
DDML_MAX_POINTS = (DDML_OUTPUT_FLOATS - N_LAYERS) // 4
#: the DDML flavour clamps the polar angle to [0, DDML_MAX_THETA_DEG] deg (tan(theta) finite)
DDML_MAX_THETA_DEG = 89.0
#: end knots of the exported radial tables at ln(r / mm) = -RADIAL_END and +RADIAL_END (far
#: beyond any radius), each layer group's table moved by RADIAL_SPAN from the previous one
RADIAL_END = 50.0
RADIAL_SPAN = 2.0 * RADIAL_END + 1.0
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
    #: fixed length of the output beyond the points (the DDML flavour: 35,000); 0: none
    padded_size: int = 0
    #: how a direction reaches the model (DDML flavour): the geometric transform only, or
    #: theta passed to the network as well
    direction: str = ""

    @property
    def output_size(self) -> int:
        return max(self.n_layers + 4 * self.max_points, self.padded_size)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["output_size"] = self.output_size
        return out


# ---------------------------------------------------------------------------------------------
# the pipeline as tensor operations on padded showers [B, M]
# ---------------------------------------------------------------------------------------------


def _polyval_rows(coefficients: Tensor, x: Tensor) -> Tensor:
    """Row ``b`` of ``x [n, B]`` through the polynomial of row ``b`` of ``coefficients
    [n, D]`` (Horner, highest power first)."""
    y = torch.zeros_like(x)
    for j in range(coefficients.shape[1]):
        y = y * x + coefficients[:, j : j + 1]
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
        binned = list(getattr(model, "binned", []) or [])
        #: angle-aware models with corrections per polar-angle bin (edges in deg): the
        #: occupancy correction of each bin, and one radial table whose energy bins run over
        #: (angle bin, energy bin)
        self.occupancies = [model.occupancy] + [occ for occ, _ in binned]
        self.n_angle_bins = len(self.occupancies)
        if binned:
            self.angle_edges = [float(v) for v in model.theta_edges_deg]
        else:
            self.angle_edges = []
        #: polar angles (deg) of the inclined bins: corrections interpolated between them
        #: (:meth:`calogen.models.caloclouds2.CaloClouds2.correction_weights`)
        nodes = getattr(model, "theta_nodes_deg", None) if binned else None
        self.angle_nodes = [float(v) for v in nodes] if nodes and len(nodes) >= 2 else []
        self.angle_last_weight = float(model._last_weight()) if self.angle_nodes else 1.0
        radials = [radial] + [rad for _, rad in binned]
        if binned and any(r is not None for r in radials):
            shapes = {None if r is None else r.binning for r in radials}
            if None in shapes or len(shapes) != 1:
                raise UsageError("export: the angle bins' radial maps differ in their binning")
        #: radial quantile correction (calogen.calibration.RadialCorrection) as buffers
        self.has_radial = radial is not None
        #: the radial maps group layers relative to each shower's depth
        #: (RadialCorrection.depth_relative)
        self.radial_depth_relative = bool(getattr(radial, "depth_relative", False))
        from calogen.calibration import RELATIVE_DEPTH_LAYER

        #: the layer a shower's (rounded) depth counts as, and the depth of a shower without
        #: energy (calibration.shower_depth)
        self.middle_layer = float(RELATIVE_DEPTH_LAYER)
        classes = getattr(radial, "shower_classes", None)
        #: shower classes of the radial maps (calibration.ShowerClasses): by depth and/or
        #: visible fraction, in this order; their trends a + b ln E and inner edges
        self.class_depth = classes is not None and "depth" in classes.kinds
        self.class_visible = classes is not None and "visible" in classes.kinds
        self.radial_layer_groups = int(radial.n_layer_groups) if radial is not None else 1
        for kind in ("depth", "visible"):
            used = classes is not None and kind in classes.kinds
            at = classes.kinds.index(kind) if used else 0
            trend = list(classes.trends[at]) if used else [0.0, 0.0, 0.0]
            edges = list(classes.edges[at]) if used else [0.0]
            spread = list(classes.spreads[at]) if used and classes.spreads else [1.0, 0.0]
            self.register_buffer(f"class_{kind}_spread", torch.tensor(spread, dtype=torch.float64))
            self.register_buffer(f"class_{kind}_trend", torch.tensor(trend, dtype=torch.float64))
            self.register_buffer(f"class_{kind}_edges", torch.tensor(edges, dtype=torch.float64))
        if radial is not None:
            k = radial.log_r_gen.shape[-1]
            self.radial_groups = int(radial.n_groups)
            self.radial_energy_bins = int(radial.n_energy_bins)
            knots = np.concatenate([r.log_r_gen.reshape(-1, k) for r in radials])
            data_knots = np.concatenate([r.log_r_data.reshape(-1, k) for r in radials])
            for name, values in (
                ("radial_e_inner", radial.energy_edges_gev[1:-1]),
                ("radial_l_inner", radial.layer_edges[1:-1]),
                ("radial_gen", knots),  # the bins' tables as they are: the ONNX path
                ("radial_data", data_knots),
            ):
                self.register_buffer(name, torch.as_tensor(values, dtype=torch.float64))
        self._register_occupancy_tables()
        #: how the radial maps apply in the incident energy (CaloClouds2.radial_energy)
        self.radial_energy = str(getattr(model, "radial_energy", "bins"))
        if radial is not None:
            self._register_radial_pairs(model, radials)
        axis_shift = getattr(model, "axis_shift", None)
        #: per-layer shift along the inclination (calogen.calibration.AxisShiftCorrection)
        self.has_axis_shift = axis_shift is not None
        self.axis_layers = 1
        if axis_shift is not None:
            self.axis_layers = int(axis_shift.shift_mm.shape[1])
            for name, values in (
                ("axis_nodes", axis_shift.theta_nodes_deg),
                ("axis_table", axis_shift.shift_mm),
            ):
                self.register_buffer(name, torch.as_tensor(values, dtype=torch.float64))
        self.consistency = bool(model.consistency)
        #: mirror each point (config ``mirror_points``) by the signs of one more point-noise
        #: tensor, or else each shower (``mirror``) by two more flow-noise columns
        self.mirror_points = bool(getattr(cfg, "mirror_points", False))
        #: ... and at normal incidence rotate each point by the azimuth of those two draws
        self.rotate_points = self.mirror_points and bool(getattr(cfg, "rotate_points", False))
        self.mirror = bool(getattr(cfg, "mirror", False)) and not self.mirror_points
        axis_tilt = getattr(model, "axis_tilt", None)
        #: random tilt of each shower's axis correlated with its centre of gravity
        #: (calogen.calibration.AxisTilt); its two normals per shower are columns 2 and 3 of
        #: the first row of the last point-noise tensor (the mirror draws), as in Python
        self.has_axis_tilt = axis_tilt is not None
        if axis_tilt is not None:
            if not self.mirror_points:
                raise UsageError("export: an axis tilt needs a model with mirror_points")
            from calogen.geometry import slab

            nodes = np.asarray(axis_tilt.energy_nodes_gev, np.float64)
            angles = np.asarray(axis_tilt.theta_nodes_deg, np.float64)
            offsets = np.asarray(axis_tilt.cog_offset_mm, np.float64)
            if angles.size == 0:  # no offsets: zero everywhere
                angles, offsets = np.array([0.0]), np.array([0.0])
            for name, values in (
                ("tilt_nodes", nodes[:-1]),
                ("tilt_widths", np.diff(nodes)),
                ("tilt_k", np.asarray(axis_tilt.k_per_mm, np.float64)),
                ("tilt_sigma", np.asarray(axis_tilt.sigma, np.float64)),
                ("tilt_theta_nodes", angles[:-1]),
                ("tilt_theta_widths", np.diff(angles)),
                ("tilt_offsets", offsets),
                ("tilt_depth", np.asarray(slab().layer_z_mm, np.float64)[:N_LAYERS]),
            ):
                self.register_buffer(name, torch.as_tensor(values, dtype=torch.float64))
        depth_stretch = getattr(model, "depth_stretch", None)
        #: the Shower Flow's depth spread widened about its mean (calibration.DepthStretch)
        self.has_depth_stretch = depth_stretch is not None
        if depth_stretch is not None:
            z = np.asarray(depth_stretch.layer_z_mm, np.float64)
            angles = np.asarray(depth_stretch.theta_nodes_deg, np.float64)
            for name, values in (
                ("stretch_z", z),
                ("stretch_knots", depth_stretch.knots),
                ("stretch_theta_nodes", angles[:-1]),
                ("stretch_theta_widths", np.diff(angles)),
                ("stretch_values", np.asarray(depth_stretch.stretch, np.float64)),
                ("stretch_trend", np.asarray(depth_stretch.trend, np.float64)),
            ):  # fmt: skip
                self.register_buffer(name, torch.as_tensor(values, dtype=torch.float64))
        #: an angle-aware model (config ``directions``): the point network and the Shower Flow
        #: take the polar angle theta as a condition (``theta / ANGLE_SCALE_DEG - 1``), the
        #: points come out around the shower axis, and only y is mirrored for theta > 0;
        #: :meth:`sample` then takes ``theta_deg``
        self.takes_theta = bool(getattr(cfg, "directions", False))
        #: config ``depth_condition``: the network also takes the shower's energy-weighted
        #: mean layer (from the Shower Flow's energies per layer) as ``depth / 15 - 1``
        self.depth_condition = bool(getattr(cfg, "depth_condition", False))
        #: config ``visible_condition``: ... and its visible energy over the incident energy
        self.visible_condition = bool(getattr(cfg, "visible_condition", False))
        from calogen.models import caloclouds2 as cc2

        self.depth_scale = float(cc2.DEPTH_SCALE_LAYERS)
        self.visible_share_ref = float(cc2.VISIBLE_SHARE_REF)
        self.visible_gain = float(cc2.VISIBLE_GAIN)
        flow_config = getattr(model.shower_flow, "config", None)
        self.flow_angle = bool(getattr(flow_config, "angle", False))
        self.angle_scale_deg = 30.0
        if self.takes_theta or self.flow_angle:
            from calogen.models.shower_flow import ANGLE_SCALE_DEG

            self.angle_scale_deg = float(ANGLE_SCALE_DEG)
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
        #: radius (mm) of the core whose azimuths are spread evenly in energy (0: off;
        #: calibration.equalise_core_azimuth)
        self.core_azimuth_mm = float(getattr(model, "core_azimuth_radius_mm", 0.0))
        #: groups of this many halo points share an azimuth beyond halo_clump_mm (0 or 1:
        #: off; calibration.clump_halo_azimuth): the largest size of any layer, and with
        #: sizes per layer (calibration.parse_halo_clump) the buffer of the 30 sizes
        clump_sizes = np.maximum(np.asarray(getattr(model, "halo_clump", 0), np.float64), 1.0)
        self.halo_clump = float(clump_sizes.max())
        self.halo_clump_per_layer = bool(clump_sizes.ndim) and len(set(clump_sizes.tolist())) > 1
        if self.halo_clump_per_layer:  # one per layer (parse_halo_clump gives N_LAYERS)
            if clump_sizes.size != N_LAYERS:
                raise UsageError(
                    f"export needs {N_LAYERS} halo clump sizes, got {clump_sizes.size}"
                )
            self.register_buffer("halo_clump_sizes", torch.as_tensor(clump_sizes))
        self.halo_clump_mm = float(getattr(model, "halo_clump_radius_mm", 3.0))
        if (self.halo_clump > 1 or self.core_azimuth_mm > 0) and int(
            max_points or cfg.max_points
        ) >= 1 << 16:  # their sort keys hold the network's row in 16 bits
            raise UsageError("export: at most 65,535 points per shower with the core azimuth")
        self.cog_prefix = "core_cog" if self.core_cog else "cog"
        missing = {"n_per_layer", "e_per_layer", f"{self.cog_prefix}_x", f"{self.cog_prefix}_y"}
        missing -= set(self.slices)
        if missing:
            raise UsageError(f"export needs a Shower Flow with {', '.join(sorted(missing))}")

    def _register_occupancy_tables(self) -> None:
        """The angle bins' occupancy corrections as stacked tables (polynomials padded with
        leading zeros, which Horner's scheme passes through exactly): all bins' factors in a
        handful of tensor operations instead of a few dozen per bin."""

        def table(rows: list[list[float]]) -> Tensor:
            width = max(len(r) for r in rows)
            return torch.tensor([[0.0] * (width - len(r)) + r for r in rows], dtype=torch.float64)

        occs = self.occupancies
        for name, rows in (
            ("occ_p_data", [[float(v) for v in o.p_data] for o in occs]),
            ("occ_p_gen", [[float(v) for v in o.p_gen] for o in occs]),
            ("occ_p_refine", [[float(v) for v in getattr(o, "p_refine", [0.0])] for o in occs]),
            ("occ_n_range", [[float(v) for v in o.n_range] for o in occs]),
            ("occ_factor_range", [[float(v) for v in o.factor_range] for o in occs]),
        ):
            self.register_buffer(name, table(rows))
        self.occ_refined = any(any(float(v) for v in getattr(o, "p_refine", [0.0])) for o in occs)
        #: bins whose fits are in logarithms (OccupancyCorrection.log_space): [n_bins, 1]
        logs = [[bool(getattr(o, "log_space", False))] for o in occs]
        self.register_buffer("occ_log_space", torch.tensor(logs, dtype=torch.bool))
        self.occ_any_log = any(row[0] for row in logs)

    def _register_radial_pairs(self, model: Any, radials: list[Any]) -> None:
        """Radial maps as one table per combination of the angle bins ``(k0, k1)`` and the
        energy bins ``(e0, e1)`` whose maps a shower blends (``(k, k)``, ``(e, e)``: one
        bin's map; energy pairs only with ``radial_energy`` "interpolate"): per layer group
        the union of the (up to four) maps' knots, with end knots at ``±RADIAL_END`` on the
        maps' constant shifts, and each map's values there. Any blend of the maps is then
        the linear interpolation of the blended values: one ``searchsorted`` per point,
        exact. The tables are the model's own (``CaloClouds2._radial_combo_table``), padded to
        one width."""
        n_bins = len(radials)
        ref = next(r for r in radials if r is not None)
        n_e, groups, k = ref.log_r_gen.shape
        pairs = [(b, b) for b in range(n_bins)]
        if self.angle_nodes:
            pairs += [(b, b + 1) for b in range(1, n_bins - 1)]
        e_pairs = [(e, e) for e in range(n_e)]
        if self.radial_energy == "interpolate":
            e_pairs += [(e, e + 1) for e in range(n_e - 1)]
        #: combination index of (k0, k1, e0, e1): combo_index[((k0 * B + k1) * E + e0) * E + e1]
        index = [-1] * (n_bins * n_bins * n_e * n_e)
        combos = [(a, b, c, d) for a, b in pairs for c, d in e_pairs]
        for n, (a, b, c, d) in enumerate(combos):
            index[((a * n_bins + b) * n_e + c) * n_e + d] = n
        width = 4 * k + 2
        end = RADIAL_END
        knots = np.empty((len(combos), groups, width))
        values = np.empty((4, len(combos), groups, width))
        for n, combo in enumerate(combos):
            x, v = model._radial_combo_table(*combo)  # [G, K'], [4, G, K']: the model's own
            if x.min() <= -end + 1 or x.max() >= end - 1:
                raise UsageError("export: radial map knots beyond the table's end knots")
            # padded to the fixed width between the last knot and the end knot (every map a
            # shift there), end knots at -end and +end on the shifts
            fill = (np.arange(1, width - x.shape[1] - 1) / (width - x.shape[1] - 1))[None, :]
            pad = x[:, -1:] + (end - x[:, -1:]) * fill
            knots[n] = np.concatenate(
                [np.full((groups, 1), -end), x, pad, np.full((groups, 1), end)], 1
            )
            values[:, n] = np.concatenate(
                [v[..., :1] + (-end - x[:, :1]), v, v[..., -1:] + (pad - x[:, -1:]),
                 v[..., -1:] + (end - x[:, -1:])],
                2,
            )  # fmt: skip
        #: each layer group's knots moved to its own interval (group * RADIAL_SPAN): one
        #: searchsorted over a shower's groups at once
        group_offset = np.arange(groups)[:, None] * RADIAL_SPAN
        self.register_buffer("radial_combo_index", torch.tensor(index, dtype=torch.int64))
        self.register_buffer(
            "radial_combo_keys", torch.as_tensor(knots + group_offset, dtype=torch.float64)
        )
        self.register_buffer(
            "radial_combo_values", torch.as_tensor(values + group_offset, dtype=torch.float64)
        )
        self.radial_n_bins = n_bins
        edges = np.asarray(ref.energy_edges_gev, np.float64)
        centres = 0.5 * (edges[1:] + edges[:-1])
        self.register_buffer("radial_e_centres", torch.as_tensor(centres, dtype=torch.float64))
        #: the extrapolation limits of the energy weight (RadialCorrection.energy_weights)
        self.radial_e_lowest = 0.0
        self.radial_e_highest = 1.0
        if n_e >= 2:
            self.radial_e_lowest = float((edges[0] - centres[0]) / (centres[1] - centres[0]))
            self.radial_e_highest = float(
                1.0 + (edges[-1] - centres[-1]) / (centres[-1] - centres[-2])
            )

    def _energy_weights(self, energy: Tensor, e_bin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(e0, e1, w)`` of the radial maps in the incident energy (as
        RadialCorrection.energy_weights); each shower's own bin without interpolation."""
        n_e = self.radial_e_centres.shape[0]
        if self.radial_energy != "interpolate" or n_e < 2:
            return e_bin, e_bin, torch.zeros(e_bin.shape, dtype=torch.float64)
        e64 = energy.to(torch.float64)
        centres = self.radial_e_centres
        j = ((e64[:, None] >= centres[None, :]).sum(1) - 1).clamp(0, n_e - 2)
        w = (e64 - centres[j]) / (centres[j + 1] - centres[j])
        low = torch.where(j == 0, torch.full_like(w, self.radial_e_lowest), torch.zeros_like(w))
        high = torch.where(
            j == n_e - 2, torch.full_like(w, self.radial_e_highest), torch.ones_like(w)
        )
        return j, j + 1, torch.minimum(torch.maximum(w, low), high)

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
        """Point-noise tensors: the sampler's, plus one whose signs mirror the points."""
        return (len(self.sigmas) if self.consistency else 1) + int(self.mirror_points)

    @property
    def flow_features(self) -> int:
        """Columns of ``flow_noise``: the Shower Flow's, plus 2 mirror values if mirroring."""
        return int(self.shower_flow.dim) + (2 if self.mirror else 0)

    def _feature(self, pre: Tensor, name: str) -> Tensor:
        a, b = self.slices[name]
        return pre[:, a:b]

    def _angle_bin(self, theta: Tensor) -> Tensor:
        """Correction bin of each shower (``[B]`` int64; all 0 without angle bins)."""
        if not self.angle_edges:
            return torch.zeros(theta.shape, dtype=torch.int64)
        edges = torch.tensor(self.angle_edges, dtype=torch.float64)
        return (theta.to(torch.float64)[:, None] >= edges[None, :]).sum(1)

    def _angle_weights(self, theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(bin k0, bin k1, weight w)`` per shower (``[B]``; float64 ``w``): corrections
        ``(1 - w)`` of bin ``k0`` plus ``w`` of bin ``k1`` (as ``correction_weights``)."""
        k0 = self._angle_bin(theta)
        if not self.angle_nodes:
            return k0, k0, torch.zeros(theta.shape, dtype=torch.float64)
        node = torch.tensor(self.angle_nodes, dtype=torch.float64)
        t64 = theta.to(torch.float64)
        j = ((t64[:, None] >= node[None, :]).sum(1) - 1).clamp(0, len(self.angle_nodes) - 2)
        lo, hi = node[j], node[j + 1]
        last = j == len(self.angle_nodes) - 2  # extrapolated beyond the last node
        w = ((t64 - lo) / (hi - lo)).clamp_min(0.0)
        cap = torch.where(last, torch.full_like(w, self.angle_last_weight), torch.ones_like(w))
        w = torch.minimum(w, cap)
        inclined = k0 > 0
        zero = torch.zeros_like(k0)
        return (
            torch.where(inclined, j + 1, zero),
            torch.where(inclined, j + 2, zero),
            torch.where(inclined, w, torch.zeros_like(w)),
        )

    def _occupancy_factors(self, total: Tensor) -> Tensor:
        """``c_N(N)`` of every angle bin's :class:`~calogen.calibration.OccupancyCorrection`
        for the totals ``N [B]``: ``[n_bins, B]`` float64."""
        lo, hi = self.occ_n_range[:, :1], self.occ_n_range[:, 1:]
        n = torch.clamp_min(torch.minimum(torch.maximum(total[None, :], lo), hi), 1.0)
        factor = _polyval_rows(self.occ_p_gen, _polyval_rows(self.occ_p_data, n)) / n
        if self.occ_any_log:  # ln N -> ln hits -> ln N' for those bins
            in_logs = torch.exp(
                _polyval_rows(self.occ_p_gen, _polyval_rows(self.occ_p_data, n.log()))
            )
            factor = torch.where(self.occ_log_space, in_logs / n, factor)
        if self.occ_refined:  # closed-loop refinement exp(polyval(p_refine, N / 1000))
            factor = factor * torch.exp(_polyval_rows(self.occ_p_refine, n / 1000.0))
        low, high = self.occ_factor_range[:, :1], self.occ_factor_range[:, 1:]
        return torch.minimum(torch.maximum(factor, low), high)

    def _shower_flow(
        self,
        energy: Tensor,
        flow_noise: Tensor,
        theta: Tensor,
        weights: tuple[Tensor, Tensor, Tensor],
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per-layer counts (occupancy corrected), per-layer energies (GeV), CoG (mm), f64."""
        flow = self.shower_flow
        c = (energy.reshape(-1, 1).log() - flow.cond_stats[0]) / flow.cond_stats[1]
        if self.flow_angle:  # ShowerFlow.condition: theta / scale - 1 in float64, then float32
            t = theta.to(torch.float64).reshape(-1, 1) / self.angle_scale_deg - 1.0
            c = torch.cat([c, t.to(torch.float32)], 1)
        z = flow_noise[:, : flow.dim]
        # beyond the training showers: again from the noise halved, then clipped
        # (shower_flow.FLOW_SUPPORT_Z). Both drawings in one inverse on twice the rows: a
        # second inverse on the (nearly always no) rows outside would cost its ~180
        # operations per call anyway, and the flow's cost is their count, not their size
        both = flow.inverse(torch.cat([c, c]), torch.cat([z, z * 0.5]))
        x, again = both[: c.shape[0]], both[c.shape[0] :]
        outside = x.abs().amax(1, keepdim=True) > FLOW_SUPPORT_Z
        x = torch.where(outside, again, x).clamp(-FLOW_SUPPORT_Z, FLOW_SUPPORT_Z)
        pre = (x * flow.std + flow.mean).double()
        counts = torch.floor(self._expm1(self._feature(pre, "n_per_layer").clamp(0.0, 20.0)))
        counts = torch.clamp_min(counts, 0.0)
        e_layer = self._expm1(self._feature(pre, "e_per_layer").clamp(0.0, 30.0)) * 1e-3
        prefix = self.cog_prefix
        cog = torch.cat([self._feature(pre, f"{prefix}_x"), self._feature(pre, f"{prefix}_y")], 1)
        if self.has_depth_stretch:  # each profile moved with its depth's spread
            counts, e_layer = self._depth_stretch(counts, e_layer, energy, theta)
        # occupancy correction c_N(N) · N_i (of the shower's angle bin), then N clipped to
        # [1, max_points]
        total = counts.sum(1)
        factors = self._occupancy_factors(total)
        if self.n_angle_bins > 1:  # the bins' factors of each shower, blended
            k0, k1, w = weights
            f0 = torch.gather(factors, 0, k0[None, :])[0]
            f1 = torch.gather(factors, 0, k1[None, :])[0]
            factor = (1.0 - w) * f0 + w * f1
        else:
            factor = factors[0]
        # to the new total, clipped to [1, max_points] first (one rounding pass, as Python)
        wanted = torch.round(total * factor).clamp(1.0, float(self.max_points))
        counts = distribute_counts(counts, wanted)
        return counts, e_layer, cog

    def _radial(
        self,
        points: Tensor,
        layer: Tensor,
        energy: Tensor,
        weights: tuple[Tensor, Tensor, Tensor],
        point_energy: Tensor,
        theta: Tensor,
    ) -> Tensor:
        """The radial quantile map of :class:`~calogen.calibration.RadialCorrection` on
        ``points [B, M, 4]`` with layers ``layer [B, M]`` (float64 inside); with angle bins,
        each shower's bins' maps blended by ``weights`` (:meth:`_angle_weights`);
        ``point_energy [B, M]``: the points' calibrated energies (0 for padding), for maps
        whose layer groups follow each shower's depth (:func:`~calogen.calibration.
        relative_layers`) and shower classes; ``theta [B]``: polar angles (deg)."""
        e_bin = (energy.to(torch.float64)[:, None] >= self.radial_e_inner[None, :]).sum(1)
        layer64 = layer.to(torch.float64)
        # each shower's visible energy and depth (its energy-weighted mean layer; the middle
        # layer for a shower without energy: calibration.shower_depth)
        e = point_energy.to(torch.float64).clamp_min(0.0)
        e_sum = e.sum(1)
        mean = (e * layer64).sum(1) / torch.where(e_sum > 0, e_sum, torch.ones_like(e_sum))
        depth = torch.where(e_sum > 0, mean, torch.full_like(mean, self.middle_layer))
        if self.radial_depth_relative:
            layer64 = layer64 - torch.round(depth)[:, None] + self.middle_layer
        group = (layer64[..., None] >= self.radial_l_inner).sum(-1)
        if self.class_depth or self.class_visible:  # calibration.ShowerClasses.classify
            log_e = torch.log(energy.to(torch.float64))
            slant = torch.zeros_like(log_e)
            if self.takes_theta:  # 1 / cos(theta) - 1 (ShowerClasses._regressors)
                slant = 1.0 / torch.cos(torch.deg2rad(theta.to(torch.float64))) - 1.0
            index = torch.zeros_like(e_bin)
            if self.class_depth:
                index = self._class_index(
                    index, depth, log_e, slant,
                    self.class_depth_trend, self.class_depth_spread, self.class_depth_edges,
                )  # fmt: skip
            if self.class_visible:
                index = self._class_index(
                    index, e_sum / energy.to(torch.float64), log_e, slant,
                    self.class_visible_trend, self.class_visible_spread,
                    self.class_visible_edges,
                )  # fmt: skip
            group = group + self.radial_layer_groups * index[:, None]
        x = points[..., 0].to(torch.float64)
        y = points[..., 1].to(torch.float64)
        r = torch.sqrt(x * x + y * y)
        log_r = torch.log(r.clamp_min(1e-6))
        e_weights = self._energy_weights(energy, e_bin)
        if self.onnx:  # no searchsorted: each point compared with its cell's knots
            new = self._mapped_log_r_onnx(log_r, group, weights, e_weights)
        else:
            new = self._mapped_log_r(log_r, group, weights, e_weights)
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

    def _equalise_core_azimuth(
        self, points: Tensor, layer: Tensor, energy: Tensor, network_row: Tensor
    ) -> Tensor:
        """:func:`~calogen.calibration.equalise_core_azimuth` on ``points [B, M, 4]`` with
        layers ``layer [B, M]``, calibrated energies ``energy [B, M]`` (0 for padding) and the
        row of each point in the network's output ``network_row [B, M]`` (ties in azimuth go
        in the Python sampler's row order)."""
        from calogen.calibration import AZIMUTH_STEPS

        x = points[..., 0].to(torch.float64)
        y = points[..., 1].to(torch.float64)
        r = torch.sqrt(x * x + y * y)
        core = (r < self.core_azimuth_mm) & (energy > 0)
        # calibration.pseudo_azimuth (no atan2: ONNX Runtime has no float64 Atan)
        s = x.abs() + y.abs()
        t = x / torch.where(s > 0, s, torch.ones_like(s))
        azimuth = torch.where(y >= 0, 1.0 - t, 3.0 + t)
        steps = float(AZIMUTH_STEPS)
        step = torch.floor(azimuth * (steps / 4.0)).clamp_max(steps - 1.0)
        # order: by layer, then azimuth step, then network row (< 2^16; exact in float64);
        # the points outside the core last
        key = (layer.to(torch.float64) * steps + step) * 65536.0 + network_row.to(torch.float64)
        key = torch.where(core, key, torch.full_like(r, float("inf")))
        order = self._argsort(key)
        e = torch.where(core, energy.to(torch.float64), torch.zeros_like(r))
        e_s = torch.gather(e, 1, order)
        layer_s = torch.gather(layer, 1, order)
        cum = torch.cumsum(e_s, 1)
        # each layer's core: its energy and the sorted index of its first point
        total = torch.zeros_like(e[:, :1]).repeat(1, N_LAYERS).scatter_add(1, layer, e)
        count = torch.zeros_like(total).scatter_add(1, layer, core.to(torch.float64))
        first = (torch.cumsum(count, 1) - count).to(torch.int64)
        first_s = torch.gather(first, 1, layer_s).clamp_max(e.shape[1] - 1)
        before = torch.gather(cum - e_s, 1, first_s)  # energy of the earlier layers' cores
        total_s = torch.gather(total, 1, layer_s)
        safe = torch.where(total_s > 0, total_s, torch.ones_like(total_s))
        turn = 2.0 * np.pi * (cum - before - 0.5 * e_s) / safe  # from the first point's azimuth
        first_row = torch.gather(order, 1, first_s)
        r_first = torch.gather(r, 1, first_row)
        has = r_first > 0
        r_safe = torch.where(has, r_first, torch.ones_like(r_first))
        cos_first = torch.where(has, torch.gather(x, 1, first_row) / r_safe, torch.ones_like(r))
        sin_first = torch.where(has, torch.gather(y, 1, first_row) / r_safe, torch.zeros_like(r))
        cos_turn, sin_turn = torch.cos(turn), torch.sin(turn)
        cos_new = cos_first * cos_turn - sin_first * sin_turn
        sin_new = sin_first * cos_turn + cos_first * sin_turn
        # back to the rows
        cos_new = torch.zeros_like(cos_new).scatter(1, order, cos_new)
        sin_new = torch.zeros_like(sin_new).scatter(1, order, sin_new)
        new_x = torch.where(core, (r * cos_new).to(points.dtype), points[..., 0])
        new_y = torch.where(core, (r * sin_new).to(points.dtype), points[..., 1])
        return torch.stack([new_x, new_y, points[..., 2], points[..., 3]], -1)

    def _clump_halo_azimuth(
        self, points: Tensor, layer: Tensor, energy: Tensor, network_row: Tensor, row: Tensor
    ) -> Tensor:
        """:func:`~calogen.calibration.clump_halo_azimuth` on ``points [B, M, 4]`` with layers
        ``layer [B, M]``, calibrated energies ``energy [B, M]`` (0 for padding) and the row of
        each point in the network's output ``network_row [B, M]`` (the Python sampler's row
        order, which makes the groups); ``row [M]``: 0 ... M - 1."""
        x = points[..., 0].to(torch.float64)
        y = points[..., 1].to(torch.float64)
        r = torch.sqrt(x * x + y * y)
        halo = (r >= self.halo_clump_mm) & (energy > 0)
        # by layer, then network row (< 2^16); the points outside the halo last
        key = layer.to(torch.float64) * 65536.0 + network_row.to(torch.float64)
        rows = self._argsort(torch.where(halo, key, torch.full_like(key, float("inf"))))
        count = (
            torch.zeros_like(x[:, :1])
            .repeat(1, N_LAYERS)
            .scatter_add(1, layer, halo.to(torch.float64))
        )
        before = torch.cumsum(count, 1) - count  # halo points of the earlier layers
        position = row.to(torch.float64)[None, :]
        rank = position - torch.gather(before, 1, torch.gather(layer, 1, rows))
        if self.halo_clump_per_layer:  # the size of each sorted point's layer
            size = self.halo_clump_sizes[torch.gather(layer, 1, rows)]
            lead_at = position - rank + torch.ceil(torch.floor(rank / size) * size)
        else:  # calibration.clump_halo_azimuth's groups
            size_all = float(self.halo_clump)
            lead_at = position - rank + torch.ceil(torch.floor(rank / size_all) * size_all)
        lead_at = lead_at.clamp_min(0.0)
        lead_sorted = torch.gather(rows, 1, lead_at.to(torch.int64).expand_as(rows))
        lead = torch.zeros_like(rows).scatter(1, rows, lead_sorted)  # back to the rows
        x_lead, y_lead = torch.gather(x, 1, lead), torch.gather(y, 1, lead)
        r_lead = torch.gather(r, 1, lead)
        scale = r / torch.where(r_lead > 0, r_lead, torch.ones_like(r_lead))
        new_x = torch.where(halo, (x_lead * scale).to(points.dtype), points[..., 0])
        new_y = torch.where(halo, (y_lead * scale).to(points.dtype), points[..., 1])
        return torch.stack([new_x, new_y, points[..., 2], points[..., 3]], -1)

    def _class_index(
        self,
        index: Tensor,
        value: Tensor,
        log_e: Tensor,
        slant: Tensor,
        trend: Tensor,
        spread: Tensor,
        edges: Tensor,
    ) -> Tensor:
        """One quantity's step of :meth:`calibration.ShowerClasses.classify`: ``index``
        times its number of classes plus the class of ``value [B]`` (its residual from
        ``a + b ln E + c slant`` over ``d + f ln E``, kept above ``1e-3 |d|``)."""
        expected = trend[0] + trend[1] * log_e + trend[2] * slant
        scale = torch.maximum(spread[0] + spread[1] * log_e, torch.abs(spread[0]) * 1e-3 + 1e-12)
        above = (((value - expected) / scale)[:, None] >= edges[None, :]).sum(1)
        return index * (edges.shape[0] + 1) + above

    def _mapped_log_r(
        self,
        log_r: Tensor,
        group: Tensor,
        weights: tuple[Tensor, Tensor, Tensor],
        e_weights: tuple[Tensor, Tensor, Tensor],
    ) -> Tensor:
        """ln r of points ``[B, M]`` mapped by the blended table of their shower's angle bins
        (``weights``) and energy bins (``e_weights``, :meth:`_energy_weights`) and layer group
        (:meth:`_register_radial_pairs`): one batched ``searchsorted``."""
        k0, k1, w = weights
        e0, e1, we = e_weights
        n_bins, n_e = self.radial_n_bins, self.radial_e_centres.shape[0]
        second = torch.where(w != 0, k1, k0)
        second_e = torch.where(we != 0, e1, e0)
        combo = self.radial_combo_index[((k0 * n_bins + second) * n_e + e0) * n_e + second_e]
        keys = self.radial_combo_keys[combo].reshape(k0.shape[0], -1)  # [B, G * K]
        tables = self.radial_combo_values[:, combo].reshape(4, k0.shape[0], -1)
        wa, wb = w.to(torch.float64)[:, None], we[:, None]
        values = ((1.0 - wa) * (1.0 - wb)) * tables[0] + ((1.0 - wa) * wb) * tables[1]
        values = values + (wa * (1.0 - wb)) * tables[2] + (wa * wb) * tables[3]
        offset = group.to(torch.float64) * RADIAL_SPAN
        inside = log_r.clamp(-RADIAL_END + 1.0, RADIAL_END - 1.0)
        key = inside + offset
        i1 = torch.searchsorted(keys, key).clamp(1, keys.shape[1] - 1)
        g0, g1 = torch.gather(keys, 1, i1 - 1), torch.gather(keys, 1, i1)
        d0, d1 = torch.gather(values, 1, i1 - 1), torch.gather(values, 1, i1)
        mapped = d0 + (key - g0) / (g1 - g0) * (d1 - d0) - offset
        # beyond the end knots (ln r outside +-49: never for real points) the constant shift
        return mapped + (log_r - inside)

    def _mapped_log_r_onnx(
        self,
        log_r: Tensor,
        group: Tensor,
        weights: tuple[Tensor, Tensor, Tensor],
        e_weights: tuple[Tensor, Tensor, Tensor],
    ) -> Tensor:
        """:meth:`_mapped_log_r` without ``searchsorted`` (ONNX): each map on its own, by
        comparison with the point's knots, then blended."""
        k0, k1, w = weights
        e0, e1, we = e_weights
        n_e, groups = self.radial_energy_bins, self.radial_groups

        def mapped(k: Tensor, e: Tensor) -> Tensor:
            return self._mapped_log_r_cell(log_r, (e + k * n_e)[:, None] * groups + group)

        new = mapped(k0, e0)
        if self.radial_energy == "interpolate":  # blended with the next energy bin's map
            new = (1.0 - we[:, None]) * new + we[:, None] * mapped(k0, e1)
        if self.angle_nodes:  # blended with the next angle bin's map(s)
            new1 = mapped(k1, e0)
            if self.radial_energy == "interpolate":
                new1 = (1.0 - we[:, None]) * new1 + we[:, None] * mapped(k1, e1)
            new = (1.0 - w[:, None]) * new + w[:, None] * new1
        return new

    def _mapped_log_r_cell(self, log_r: Tensor, cell: Tensor) -> Tensor:
        """ln r of points ``[B, M]`` mapped by the radial table of their ``cell [B, M]``
        (comparison with each point's K knots: ONNX has no searchsorted)."""
        n_knots = self.radial_gen.shape[-1]
        knots_gen = self.radial_gen[cell]  # [B, M, K]
        knots_data = self.radial_data[cell]
        above = (log_r[..., None] > knots_gen).sum(-1)  # knots below the radius, 0 … K
        i1 = above.clamp(1, n_knots - 1)[..., None]
        g0 = torch.gather(knots_gen, -1, i1 - 1)[..., 0]
        g1 = torch.gather(knots_gen, -1, i1)[..., 0]
        d0 = torch.gather(knots_data, -1, i1 - 1)[..., 0]
        d1 = torch.gather(knots_data, -1, i1)[..., 0]
        first_gen, first_data = knots_gen[..., 0], knots_data[..., 0]
        last_gen, last_data = knots_gen[..., -1], knots_data[..., -1]
        inner = d0 + (log_r - g0) / (g1 - g0) * (d1 - d0)
        below = log_r + (first_data - first_gen)
        beyond = log_r + (last_data - last_gen)
        return torch.where(above == 0, below, torch.where(above == n_knots, beyond, inner))

    def _axis_shift(self, theta: Tensor, layer: Tensor) -> Tensor:
        """``[B, M]`` float32 shift (mm) along x of points in ``layer [B, M]`` of showers at
        ``theta [B]`` (deg): linear in theta between the nodes, per layer."""
        nodes, table = self.axis_nodes, self.axis_table
        k_max = nodes.shape[0] - 2
        t = theta.to(torch.float64).clamp(0.0, float(nodes[-1]))
        k = (t[:, None] >= nodes[None, 1:]).sum(1).clamp(0, k_max)  # nodes[0] = 0 <= t
        t0, t1 = nodes[k], nodes[k + 1]
        w = ((t - t0) / (t1 - t0)).clamp(0.0, 1.0)[:, None]
        ell = layer.round().to(torch.int64).clamp(0, self.axis_layers - 1)
        s0 = torch.gather(table[k], 1, ell)
        s1 = torch.gather(table[k + 1], 1, ell)
        return ((1.0 - w) * s0 + w * s1).to(torch.float32)

    def _interpolate(self, x: Tensor, nodes: Tensor, widths: Tensor, values: Tensor) -> Tensor:
        """``values [K]`` at the nodes ``nodes[:-1]`` (given without the last; ``widths``
        their spacings) interpolated linearly at ``x [B]`` (constant beyond the outer nodes,
        as ``np.interp``), float64 ``[B]``."""
        run = torch.minimum((x.to(torch.float64)[:, None] - nodes[None, :]).clamp_min(0.0), widths)
        slopes = (values[1:] - values[:-1]) / widths
        return values[0] + (run * slopes[None, :]).sum(1)

    def _axis_tilt(
        self,
        xy: list[Tensor],
        normals: Tensor,
        e32: Tensor,
        layer: Tensor,
        energy: Tensor,
        theta: Tensor,
    ) -> list[Tensor]:
        """x and y ``[B, M]`` (float32, axis frame) of every shower tilted by
        ``k(E) * (cog - offset(theta)) + sigma(E) * normals`` about its energy-weighted depth
        (calogen.calibration.AxisTilt.apply); ``normals [B, 2]``, ``theta [B]`` in deg."""
        k = self._interpolate(energy, self.tilt_nodes, self.tilt_widths, self.tilt_k)
        sigma = self._interpolate(energy, self.tilt_nodes, self.tilt_widths, self.tilt_sigma)
        offset = self._interpolate(
            theta, self.tilt_theta_nodes, self.tilt_theta_widths, self.tilt_offsets
        )
        offset = torch.where(theta > 0, offset, torch.zeros_like(offset))
        e = e32.to(torch.float64).clamp_min(0.0)
        total = e.sum(1)
        safe = torch.where(total > 0, total, torch.ones_like(total))
        depth = self.tilt_depth[layer.clamp(0, N_LAYERS - 1)]
        lever = depth - ((e * depth).sum(1) / safe)[:, None]
        out = []
        for axis in (0, 1):
            coord = xy[axis].to(torch.float64)
            cog = (coord * e).sum(1) / safe
            if axis == 0:
                cog = cog - offset
            slope = k * cog + sigma * normals[:, axis].to(torch.float64)
            out.append((coord + slope[:, None] * lever).to(torch.float32))
        return out

    def _depth_stretch(
        self, counts: Tensor, e_layer: Tensor, energy: Tensor, theta: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Per-layer counts and energies ``[B, L]`` (float64) moved by
        ``(s(theta) - 1) * (depth - mu(E, theta))`` mm (calibration.DepthStretch.apply)."""
        z = self.stretch_z
        total = e_layer.sum(1)
        safe = torch.where(total > 0, total, torch.ones_like(total))
        depth = torch.where(total > 0, (e_layer * z).sum(1) / safe, torch.zeros_like(total) + z[0])
        s = self._interpolate(
            theta, self.stretch_theta_nodes, self.stretch_theta_widths, self.stretch_values
        )
        log_e = energy.to(torch.float64).log()
        t = theta.to(torch.float64)
        features = torch.stack([torch.ones_like(t), log_e, log_e * log_e, t, t * t, t * log_e], 1)
        shift = (s - 1.0) * (depth - (features * self.stretch_trend).sum(1))
        at = z[None, :] - shift[:, None]
        # counts and energies read in one pass (rows are independent: half the operations)
        both = self._stretch_sample(torch.cat([counts, e_layer]), torch.cat([at, at]))
        moved, e_moved = both[: counts.shape[0]], both[counts.shape[0] :]
        return distribute_counts(moved, moved.sum(1)), e_moved

    def _stretch_sample(self, values: Tensor, at: Tensor) -> Tensor:
        """``values [B, L]`` (a density at the layers' depths) read at depths ``at [B, L]``
        (calibration.DepthStretch.sample)."""
        knots = self.stretch_knots
        last, prev = values[:, -1], values[:, -2]
        has = prev > 0
        ratio = torch.where(
            has, (last / torch.where(has, prev, torch.ones_like(prev))).clamp(0.0, 1.0),
            torch.full_like(prev, 0.5),
        )  # fmt: skip
        tail = [last * ratio**k for k in range(1, DEPTH_STRETCH_TAIL_KNOTS + 1)]
        table = torch.cat([torch.zeros_like(last)[:, None], values, torch.stack(tail, 1)], 1)
        j = ((at[..., None] >= knots).sum(-1) - 1).clamp(0, knots.shape[0] - 2)
        k0, k1 = knots[j], knots[j + 1]
        w = ((at - k0) / (k1 - k0)).clamp(0.0, 1.0)
        out = torch.gather(table, 1, j) * (1.0 - w) + torch.gather(table, 1, j + 1) * w
        return torch.where(at > knots[-1], torch.zeros_like(out), out.clamp_min(0.0))

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
        counts, points, position = self._generate(energy, flow_noise, point_noise, None)
        # zero padding to the fixed size: rows max(N) … M − 1
        index = position[None, :, None].expand(points.shape[0], -1, 4)
        full = torch.zeros_like(point_noise[0]).scatter(1, index, points)
        return torch.cat([counts, full.reshape(full.shape[0], 4 * self.max_points)], 1)

    def sample(self, energy: Tensor, theta_deg: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The showers of :meth:`forward` with the noise drawn inside (torch's global
        generator): ``(counts [B, 30], points [B, max_b N_b, 4])``, each shower's points as in
        :meth:`forward` followed by zero rows (no padding to ``M``). An angle-aware model
        (:attr:`takes_theta`) generates for the polar angles ``theta_deg [B]`` (deg; ``None``:
        0) around the shower axis, in the frame where the axis is inclined along x (the
        caller inclines them: :func:`incline_points_torch`).

        Drawn in :meth:`CaloClouds2.generate`'s order (the Shower Flow's noise, then ``[N, 4]``
        per consistency step, then the two mirror values per shower), for the first
        ``max_b N_b`` rows only: for one shower, ``torch.manual_seed(s)`` then this call gives
        the shower of ``CaloClouds2.generate([E], torch.Generator().manual_seed(s))``.
        """
        counts, points, _ = self._generate(energy, None, None, theta_deg)
        return counts, points

    def _generate(
        self,
        energy: Tensor,
        flow_noise: Tensor | None,
        point_noise: Tensor | None,
        theta_deg: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(counts [B, 30], points [B, max N, 4], position [max N])`` (rows 0 … max N − 1)."""
        cfg = self.config
        m, n_layers = self.max_points, N_LAYERS
        energy = energy.reshape(-1).to(torch.float32)
        if theta_deg is None:
            theta = torch.zeros_like(energy)
        else:
            theta = theta_deg.reshape(-1).to(torch.float32)
        if flow_noise is None:  # sample(): the mirror values are drawn after the points
            flow_noise = torch.randn((energy.shape[0], int(self.shower_flow.dim)))
        weights = self._angle_weights(theta)  # the corrections' angle bins of each shower
        counts_layer, e_layer, cog = self._shower_flow(energy, flow_noise, theta, weights)
        n_points = counts_layer.sum(1)
        conditions = [
            energy / cfg.e_scale_gev * 2.0 - 1.0,
            n_points.to(torch.float32) / cfg.n_scale * 2.0 - 1.0,
        ]
        if self.takes_theta:
            conditions.append(theta / self.angle_scale_deg - 1.0)
        if self.depth_condition or self.visible_condition:
            e_pos = e_layer.clamp_min(0.0)
            e_total = e_pos.sum(1)
            if self.depth_condition:  # calibration.shower_depth
                index = torch.arange(e_pos.shape[1], dtype=e_pos.dtype, device=e_pos.device)
                mean = (e_pos * index).sum(1) / torch.where(
                    e_total > 0, e_total, torch.ones_like(e_total)
                )
                depth = torch.where(e_total > 0, mean, torch.full_like(mean, self.middle_layer))
                conditions.append(depth.to(torch.float32) / self.depth_scale - 1.0)
            if self.visible_condition:  # caloclouds2.visible_condition_value
                share = e_total / energy.to(torch.float64)
                value = (share / self.visible_share_ref - 1.0) * self.visible_gain
                conditions.append(value.to(torch.float32))
        values = torch.stack(conditions, -1)
        # the network runs on the rows 0 … max(N) − 1 only (a data-dependent size: NonZero)
        limit = n_points.max().to(torch.int64)
        position = torch.nonzero(torch.arange(m, device=energy.device) < limit).reshape(-1)
        if point_noise is None:  # randn_like of a [B, max N, 4] view keeps the size dynamic
            rows = position[None, :, None].expand(energy.shape[0], -1, 4)
            draws = [torch.randn_like(rows, dtype=torch.float32) for _ in range(self.noise_tensors)]
            noise = torch.stack(draws)
            if self.mirror:
                flow_noise = torch.cat([flow_noise, torch.randn((energy.shape[0], 2))], 1)
        else:
            noise = point_noise.index_select(2, position)
        x = self._sample(noise, values)
        x = x.clamp(-cfg.output_clip, cfg.output_clip)
        depth = x[..., 2]
        points = self.normalisation.inverse(x)
        if self.mirror_points:  # the signs of the last noise tensor mirror each point
            draw_x, draw_y = noise[-1][..., 0], noise[-1][..., 1]
            flip_x = draw_x < 0
            if self.takes_theta:  # inclined along x: only y -> -y is a symmetry
                flip_x = flip_x & (theta[:, None] <= 0)
            flip_y = draw_y < 0
            normal = (theta[:, None] <= 0).expand(flip_x.shape)
            if self.rotate_points:  # normal incidence: rotated instead (by the draws' azimuth)
                flip_x = flip_x & ~normal
                flip_y = flip_y & ~normal
            px, py = points[..., 0], points[..., 1]
            px = torch.where(flip_x, -px, px)
            py = torch.where(flip_y, -py, py)
            if self.rotate_points:  # as caloclouds2.rotate_by_draws, in float64
                d0, d1 = draw_x.to(torch.float64), draw_y.to(torch.float64)
                norm = torch.sqrt(d0 * d0 + d1 * d1)
                has = norm > 0
                safe = torch.where(has, norm, torch.ones_like(norm))
                cos = torch.where(has, d0 / safe, torch.ones_like(norm))
                sin = torch.where(has, d1 / safe, torch.zeros_like(norm))
                x64, y64 = px.to(torch.float64), py.to(torch.float64)
                px = torch.where(normal, (cos * x64 - sin * y64).to(px.dtype), px)
                py = torch.where(normal, (sin * x64 + cos * y64).to(py.dtype), py)
            points = torch.stack([px, py, points[..., 2], points[..., 3]], -1)

        # depth-sorted layer assignment; rows beyond N go to the end
        valid = position[None, :] < n_points.to(torch.int64)[:, None]
        key = torch.where(valid, depth, torch.full_like(depth, float("inf")))
        order = self._argsort(key)
        points = torch.gather(points, 1, order[..., None].expand(-1, -1, 4))
        edges = torch.cumsum(counts_layer, 1)  # [B, L] upper edge of every layer
        row = position.to(edges.dtype)[None, :]
        if self.onnx:  # the layer edges at or below each row
            layer = (edges[:, None, :] <= row[..., None]).sum(-1)
        else:
            layer = torch.searchsorted(
                edges, row.expand(edges.shape[0], -1).contiguous(), right=True
            )
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
            points = self._radial(points, layer, energy, weights, e32, theta)
        if self.core_azimuth_mm > 0:  # the core's energy evenly around the axis
            points = self._equalise_core_azimuth(points, layer, e32, order)
        if self.halo_clump > 1:  # groups of halo points share an azimuth
            points = self._clump_halo_azimuth(points, layer, e32, order, position)

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
        if self.has_axis_tilt:  # a random tilt correlated with the centre of gravity
            shifted = self._axis_tilt(shifted, noise[-1][:, 0, 2:4], e32, layer, energy, theta)
        if self.has_axis_shift:  # the lean of each layer (AxisShiftCorrection.shift)
            shifted[0] = shifted[0] + self._axis_shift(theta, layer)
        if self.mirror:  # mirror in x and y by the signs of the last two flow-noise columns
            dim = self.shower_flow.dim
            for axis in (0, 1):
                flip = flow_noise[:, dim + axis : dim + axis + 1] < 0
                if axis == 0 and self.takes_theta:  # inclined along x: only y -> -y is a symmetry
                    flip = flip & (theta[:, None] <= 0)
                shifted[axis] = torch.where(flip, -shifted[axis], shifted[axis])

        # drop points without energy, keep the layer order, pad with zeros
        keep = e32 > 0
        target = torch.where(keep, position, position + m)
        keep_order = self._argsort(target)
        out = torch.stack([shifted[0], shifted[1], layer.to(torch.float32), e32], -1)
        out = torch.gather(out, 1, keep_order[..., None].expand(-1, -1, 4))
        out = out * torch.gather(keep, 1, keep_order).to(out.dtype)[..., None]
        counts_out = per_layer(keep.to(torch.float64)).to(torch.float32)
        return counts_out, out, position


# ---------------------------------------------------------------------------------------------
# the DDML flavour: noise drawn inside, one shower per call, inclined by (theta, phi)
# ---------------------------------------------------------------------------------------------


def incline_points_torch(
    x: Tensor, y: Tensor, layer: Tensor, theta_deg: Tensor, phi_deg: Tensor, depth_mm: Tensor
) -> tuple[Tensor, Tensor]:
    """:func:`calogen.directions.incline_points` in torch (TorchScript-able).

    Points ``x, y`` (mm) of layers ``layer`` (indices as float or int, same shape), generated
    around the shower axis with the axis' azimuth along x: shifted by ``depth_l * tan(theta)``
    along x, then rotated by ``phi``. ``theta_deg``, ``phi_deg`` broadcast against the points;
    ``depth_mm [L]`` is each layer's depth behind the front face (mm).
    """
    depth = depth_mm.index_select(0, layer.reshape(-1).to(torch.int64)).reshape(layer.shape)
    theta = torch.deg2rad(theta_deg)
    phi = torch.deg2rad(phi_deg)
    shifted = x + depth * torch.tan(theta)
    cos = torch.cos(phi)
    sin = torch.sin(phi)
    return cos * shifted - sin * y, sin * shifted + cos * y


class DDMLShower(nn.Module):
    """One shower per call in the contract of DD4hep's DDML ``CaloCloudsTwoAngleModel``.

    ``forward(energy, theta, phi) -> [35000]`` float32: ``energy`` (GeV), ``theta`` (deg, from
    the layer normal) and ``phi`` (deg, ``atan2(y, x)`` in the module-local frame) are one
    value each (shape ``[1]``, or ``[1, 1]`` as DDML's ``TorchInference`` builds them). The
    noise is drawn inside from torch's global generator (``torch.manual_seed`` reproduces a
    call; one call gives the shower of :meth:`ShowerPipeline.sample`, i.e. of the Python
    model with the same seed). Output: the number of points in each of the 30 layers, then
    ``(x mm, y mm, layer, E MeV)`` of every point grouped by layer (ascending), zero padded to
    35,000 floats (DDML copies exactly that many floats out of the tensor).

    Direction: the wrapped :class:`ShowerPipeline` gives points around the shower axis;
    :func:`incline_points_torch` then shifts each layer by ``depth_l * tan(theta)`` along x
    and rotates by ``phi``. A pipeline with ``takes_theta = True`` (an angle-conditioned
    model) is called as ``pipeline.sample(energy, theta_deg)``; for one without (the
    normal-incidence default) theta only enters the geometric transform, a crude
    approximation: the shower keeps its normal-incidence shape, only its layers move along
    the inclined axis.
    """

    def __init__(self, pipeline: ShowerPipeline, layer_depth_mm: Any) -> None:
        super().__init__()
        if pipeline.max_points > DDML_MAX_POINTS:
            raise UsageError(
                f"--max-points {pipeline.max_points} does not fit DDML's buffer of "
                f"{DDML_OUTPUT_FLOATS} floats (at most {DDML_MAX_POINTS} points)"
            )
        self.pipeline = pipeline
        self.takes_theta = bool(getattr(pipeline, "takes_theta", False))
        #: the polar angles the network was trained on (deg): its theta condition is clamped
        #: into them (the geometric transform uses the true theta)
        lo, hi = getattr(pipeline, "theta_range_deg", None) or (0.0, DDML_MAX_THETA_DEG)
        if hi <= lo:  # a range of one angle (or none recorded): no clamping
            lo, hi = 0.0, DDML_MAX_THETA_DEG
        self.theta_condition_deg = (float(lo), float(hi))
        self.flow_features = int(pipeline.flow_features)
        self.noise_tensors = int(pipeline.noise_tensors)
        self.max_points = int(pipeline.max_points)
        depth = torch.as_tensor(layer_depth_mm, dtype=torch.float32).reshape(-1)
        if depth.numel() != N_LAYERS:
            raise UsageError(f"DDML export needs {N_LAYERS} layer depths, got {depth.numel()}")
        self.register_buffer("layer_depth_mm", depth)

    def forward(self, energy: Tensor, theta: Tensor, phi: Tensor) -> Tensor:
        energy = energy.reshape(1).to(torch.float32)
        theta = theta.reshape(1).to(torch.float32).clamp(0.0, DDML_MAX_THETA_DEG)
        phi = phi.reshape(1).to(torch.float32)
        if self.takes_theta:
            lo, hi = self.theta_condition_deg
            counts, points = self.pipeline.sample(energy, theta.clamp(lo, hi))
        else:
            counts, points = self.pipeline.sample(energy)
        points = points[0]  # [N, 4], rows of dropped points (E = 0) last
        layer = points[:, 2]
        e_gev = points[:, 3]
        x, y = incline_points_torch(
            points[:, 0], points[:, 1], layer, theta, phi, self.layer_depth_mm
        )
        real = e_gev > 0  # rows without a point stay zero
        zero = torch.zeros_like(x)
        out = torch.stack(
            [torch.where(real, x, zero), torch.where(real, y, zero), layer, e_gev * 1000.0], 1
        )
        values = torch.cat([counts[0], out.reshape(-1)])
        # into the fixed 35,000 floats (a scatter keeps the traced size of values dynamic)
        index = torch.cumsum(torch.ones_like(values, dtype=torch.int64), 0) - 1
        return torch.zeros(DDML_OUTPUT_FLOATS, dtype=values.dtype).scatter(0, index, values)


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
            "energy": "[B] float32, incident energy in GeV (normal incidence"
            + (
                "; this flavour has no direction input: an angle-aware model generates at "
                "theta = 0, use --format ddml for angles)"
                if pipeline.takes_theta
                else ")"
            ),
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


def _ddml_info(shower: DDMLShower, name: str) -> ExportInfo:
    m = shower.max_points
    return ExportInfo(
        model=name,
        format="ddml",
        max_points=m,
        flow_features=shower.flow_features,
        noise_tensors=shower.noise_tensors,
        sigmas=shower.pipeline.sigmas,
        inputs={
            "energy": "[1] float32, incident energy in GeV",
            "theta": "[1] float32, polar angle to the layer normal in deg (clamped to "
            f"[0, {DDML_MAX_THETA_DEG:g}])",
            "phi": "[1] float32, azimuth atan2(y, x) in the module-local frame, deg",
        },
        output=f"[{DDML_OUTPUT_FLOATS}] float32: points per layer ({N_LAYERS}), then (x, y, "
        f"layer, E) per point grouped by layer (ascending), at most {m} points, zero padded; "
        "noise drawn inside (torch.manual_seed reproduces a call)",
        units={"x": "mm", "y": "mm", "layer": "index 0-29", "E": "MeV"},
        padded_size=DDML_OUTPUT_FLOATS,
        direction=(
            "theta is a condition of the network (clamped to the trained "
            f"{shower.theta_condition_deg[0]:g}-{shower.theta_condition_deg[1]:g} deg), then "
            "each layer is shifted by depth*tan(theta) along x and rotated by phi"
            if shower.takes_theta
            else "normal-incidence model: the shower keeps its normal-incidence shape, each "
            "layer is only shifted by depth*tan(theta) along x and rotated by phi (a crude "
            "approximation for inclined showers)"
        ),
    )


def build_ddml(
    model: str | os.PathLike[str] | None, max_points: int | None = None
) -> tuple[DDMLShower, str]:
    """``(DDMLShower, model name)`` for a model folder (``None``: the shipped default).

    ``max_points`` defaults to the model's, capped at :data:`DDML_MAX_POINTS`.
    """
    from calogen.geometry import slab

    pipeline, name = build_pipeline(model, max_points)
    if max_points is None:
        pipeline.max_points = min(pipeline.max_points, DDML_MAX_POINTS)
    shower = DDMLShower(pipeline, slab().layer_z_mm).eval()
    return shower, name


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
    #: polar angles the model was trained on (angle-aware models), for the DDML wrapper
    pipeline.theta_range_deg = getattr(generator, "theta_range_deg", None)
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


def _write_ddml(shower: DDMLShower, info: ExportInfo, tmp: Path) -> None:
    import warnings

    inputs = (torch.tensor([50.0]), torch.tensor([30.0]), torch.tensor([45.0]))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python floats
        traced = torch.jit.trace(shower, inputs, check_trace=False)
        # frozen: parameters inlined as constants, ~10 % faster per call
        frozen = torch.jit.freeze(traced.eval())
    torch.jit.save(frozen, str(tmp), _extra_files={INFO_NAME: json.dumps(info.to_dict())})


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
        fmt: ``"torchscript"`` or ``"onnx"`` (noise as input, batches), or ``"ddml"``
            (TorchScript in the contract of DD4hep's DDML plug-in: :class:`DDMLShower`).
        out: output file.
        max_points: maximum points per shower (default: the model's ``max_points``; for
            ``"ddml"`` capped at :data:`DDML_MAX_POINTS`, and a larger value is refused).
        overwrite: replace an existing ``out`` (else :class:`UsageError`).
    """
    from calogen.data.io import check_output_path

    if fmt not in FORMATS:
        raise UsageError(f"unknown export format '{fmt}' (choose from {', '.join(FORMATS)})")
    out = check_output_path(out, overwrite)
    if fmt == "ddml":
        shower, name = build_ddml(model, max_points)
        info = _ddml_info(shower, name)
    else:
        pipeline, name = build_pipeline(model, max_points)
        info = _info(pipeline, name, fmt)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        if fmt == "ddml":
            _write_ddml(shower, info, tmp)
        elif fmt == "torchscript":
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
    "DDML_MAX_POINTS",
    "DDML_MAX_THETA_DEG",
    "DDML_OUTPUT_FLOATS",
    "FORMATS",
    "INFO_NAME",
    "DDMLShower",
    "ExportInfo",
    "ShowerPipeline",
    "build_ddml",
    "build_pipeline",
    "decode",
    "distribute_counts",
    "example_inputs",
    "export_model",
    "incline_points_torch",
]
