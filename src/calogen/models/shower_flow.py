"""Shower Flow: a conditional normalizing flow (zuko) for per-shower quantities given E.

CaloClouds (2305.04847, section 3.3) uses it to draw, for a requested incident energy E,
the visible energy and the number of points in each of the 30 layers (N = their sum);
CaloClouds II (2309.05704) extends the feature set by the number of points, the centre of
gravity and the energy per layer. Both sets are available here:

* ``"caloclouds"``: ``e_vis`` (GeV), ``n_per_layer`` (30);
* ``"caloclouds2"``: ``n_points``, ``e_vis`` (GeV), ``cog_x``, ``cog_y`` (mm), ``cog_z``
  (layer units, energy weighted mean of the layer index), ``n_per_layer`` (30),
  ``e_per_layer`` (30, GeV);
* ``"caloclouds2_core"``: as ``"caloclouds2"`` but the transverse centre of gravity of the
  shower core only (``core_cog_x``, ``core_cog_y``: points within
  :data:`CORE_COG_RADIUS_MM` of the shower axis). The calibration shifts generated showers so
  that their *core* sits there. In Geant4 the full centre of gravity fluctuates mostly
  through asymmetric tails (std 0.23 mm, core only 0.13 mm, photons 10-90 GeV); shifting a
  generated shower so that its full centre of gravity matches moves the dense core instead,
  by the difference between two independent tails, and the cell-level centre of gravity
  comes out 1.6x too wide (docs/default_model.md).

Preprocessing (inside the module, fitted on data by :meth:`ShowerFlow.fit_preprocessing`
and stored as buffers, hence in the weights file):

* counts: uniform dequantisation ``n + u``, ``u ~ U[0, 1)``, then ``log1p``; sampling inverts
  with ``expm1`` and ``floor`` so counts are non-negative integers;
* energies: ``log1p(e / 1 MeV)`` (zeros allowed);
* centre of gravity: unchanged;
* then every column is standardised with the data mean and standard deviation.

The condition is ``ln(E / GeV)``, standardised with the training mean and std.

The flow is a stack of ``blocks`` blocks, each of ``affine_per_block`` affine and
``spline_per_block`` rational-quadratic spline coupling transforms (zuko
``MaskedAutoregressiveTransform`` with ``passes=2``), with a fixed random feature order per
transform (drawn from ``seed`` at construction; stored in the weights). Paper: 10 blocks of
6 affine + 1 spline couplings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, Literal

import numpy as np
import showerdata
import torch
import torch.nn.functional as F
import zuko
from numpy.typing import NDArray
from torch import Tensor, nn
from zuko.nn import MaskedLinear, MaskedMLP
from zuko.transforms import MonotonicAffineTransform, MonotonicRQSTransform

from calogen.data.packed import pack
from calogen.errors import UsageError

N_LAYERS = 30
FeatureSet = Literal["caloclouds", "caloclouds2"]

#: name → (width, kind); kind is "count", "energy", or "real".
_FEATURES: dict[str, tuple[int, str]] = {
    "n_points": (1, "count"),
    "e_vis": (1, "energy"),
    "cog_x": (1, "real"),
    "cog_y": (1, "real"),
    "cog_z": (1, "real"),
    "core_cog_x": (1, "real"),
    "core_cog_y": (1, "real"),
    "n_per_layer": (N_LAYERS, "count"),
    "e_per_layer": (N_LAYERS, "energy"),
}

FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "caloclouds": ("e_vis", "n_per_layer"),
    "caloclouds2": ("n_points", "e_vis", "cog_x", "cog_y", "cog_z", "n_per_layer", "e_per_layer"),
    "caloclouds2_core": (
        "n_points",
        "e_vis",
        "core_cog_x",
        "core_cog_y",
        "cog_z",
        "n_per_layer",
        "e_per_layer",
    ),
}

#: Radius (mm) around the shower axis (x = y = 0) of the core centre of gravity: about one
#: Moliere radius of the SiW calorimeter, 90 % of the visible energy of Geant4 photons.
CORE_COG_RADIUS_MM = 10.0

#: The angle condition is ``theta / ANGLE_SCALE_DEG - 1``: [-1, 1] for 0-60 deg.
ANGLE_SCALE_DEG = 30.0

#: Energy unit inside ``log1p(e / unit)``: 1 MeV in GeV.
_ENERGY_UNIT_GEV = 1e-3


def shower_features(showers: showerdata.Showers, n_layers: int = N_LAYERS) -> dict[str, NDArray]:
    """Per-shower features of point clouds (all of :data:`FEATURE_SETS`' names).

    Returns a dict of numpy arrays: ``n_points [N]`` int64, ``e_vis [N]`` GeV (sum of point
    energies), ``cog_x``, ``cog_y`` ``[N]`` mm and ``cog_z`` ``[N]`` (layer index), energy
    weighted, ``core_cog_x``, ``core_cog_y`` ``[N]`` mm (points within
    :data:`CORE_COG_RADIUS_MM` of the axis; the full value if none), ``n_per_layer [N, n_layers]`` int64, ``e_per_layer [N, n_layers]`` GeV, and
    ``energy [N]`` the incident energy in GeV.
    """
    packed = pack(showers)
    n = packed.n_showers
    pts = packed.points.astype(np.float64)
    layer = np.clip(np.rint(pts[:, 2]), 0, n_layers - 1).astype(np.int64)
    key = packed.shower * n_layers + layer
    e = pts[:, 3]
    n_per_layer = np.bincount(key, minlength=n * n_layers).reshape(n, n_layers)
    e_per_layer = np.bincount(key, weights=e, minlength=n * n_layers).reshape(n, n_layers)
    e_vis = e_per_layer.sum(1)
    safe = np.where(e_vis > 0, e_vis, 1.0)

    def cog(values: NDArray) -> NDArray:
        return np.bincount(packed.shower, weights=values * e, minlength=n) / safe

    core_xy = core_cog(pts, packed.shower, n, CORE_COG_RADIUS_MM)
    return {
        "n_points": packed.counts.astype(np.int64),
        "e_vis": e_vis,
        "cog_x": cog(pts[:, 0]),
        "cog_y": cog(pts[:, 1]),
        "cog_z": cog(pts[:, 2]),
        "core_cog_x": core_xy[:, 0],
        "core_cog_y": core_xy[:, 1],
        "n_per_layer": n_per_layer.astype(np.int64),
        "e_per_layer": e_per_layer,
        "energy": showers.energies.reshape(-1).astype(np.float64),
    }


def core_cog(
    points: NDArray[np.floating], shower: NDArray[np.integer], n_showers: int, radius_mm: float
) -> NDArray[np.float64]:
    """Energy-weighted ``(x, y)`` centre of gravity ``[S, 2]`` (mm) of the points of each shower
    within ``radius_mm`` of the axis ``x = y = 0``; the centre of gravity of all points where a
    shower has no energy inside (and 0 for a shower without energy).

    ``points [P, >=4]`` packed ``(x mm, y mm, ·, e)``, ``shower [P]`` shower index.
    """
    pts = np.asarray(points, dtype=np.float64)
    e = pts[:, 3]
    inside = np.hypot(pts[:, 0], pts[:, 1]) < radius_mm
    w_core = e * inside
    e_core = np.bincount(shower, weights=w_core, minlength=n_showers)
    e_all = np.bincount(shower, weights=e, minlength=n_showers)
    use_core = e_core > 0
    weights = np.where(use_core[shower], w_core, e)
    norm = np.where(use_core, e_core, np.where(e_all > 0, e_all, 1.0))
    out = np.empty((n_showers, 2))
    for axis in (0, 1):
        out[:, axis] = (
            np.bincount(shower, weights=weights * pts[:, axis], minlength=n_showers) / norm
        )
    return out


@dataclass
class ShowerFlowConfig:
    """Hyperparameters of :class:`ShowerFlow` (JSON-serialisable)."""

    feature_set: str = "caloclouds"
    blocks: int = 10
    affine_per_block: int = 6
    spline_per_block: int = 1
    hidden: Sequence[int] = field(default_factory=lambda: (128, 128))
    bins: int = 8
    seed: int = 0
    #: also condition on the incident polar angle (feature ``theta_deg``, 0-60 deg)
    angle: bool = False

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["hidden"] = list(self.hidden)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShowerFlowConfig:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if "hidden" in known:
            known["hidden"] = tuple(int(h) for h in known["hidden"])
        return cls(**known)


class ShowerFlow(nn.Module):
    """Conditional flow ``p(features | E)`` with its own preprocessing (see module docstring).

    Typical use::

        flow = ShowerFlow(ShowerFlowConfig(feature_set="caloclouds"))
        feats = shower_features(showers)
        flow.fit(feats, feats["energy"], iterations=2000)
        out = flow.sample(np.array([10.0, 50.0]), generator=torch.Generator().manual_seed(0))
        out["n_per_layer"]  # [2, 30] int64, >= 0
    """

    def __init__(self, config: ShowerFlowConfig | None = None) -> None:
        super().__init__()
        self.config = config or ShowerFlowConfig()
        if self.config.feature_set not in FEATURE_SETS:
            raise UsageError(
                f"unknown shower-flow feature set '{self.config.feature_set}' "
                f"(choose from {', '.join(FEATURE_SETS)})"
            )
        self.names = FEATURE_SETS[self.config.feature_set]
        self.widths = [_FEATURES[name][0] for name in self.names]
        self.kinds = [_FEATURES[name][1] for name in self.names]
        self.dim = int(sum(self.widths))
        self.register_buffer("mean", torch.zeros(self.dim))
        self.register_buffer("std", torch.ones(self.dim))
        self.register_buffer("cond_stats", torch.tensor([0.0, 1.0]))
        self.flow = self._build()

    # -- construction ----------------------------------------------------------------------
    def _build(self) -> zuko.flows.Flow:
        cfg = self.config
        gen = torch.Generator().manual_seed(int(cfg.seed))
        spline = partial(MonotonicRQSTransform, bound=5.0)
        transforms = []
        kinds = [("affine", MonotonicAffineTransform, ((), ()))] * cfg.affine_per_block + [
            ("spline", spline, ((cfg.bins,), (cfg.bins,), (cfg.bins - 1,)))
        ] * cfg.spline_per_block
        for _ in range(cfg.blocks):
            for _name, univariate, shapes in kinds:
                order = torch.randperm(self.dim, generator=gen)
                transforms.append(
                    zuko.flows.MaskedAutoregressiveTransform(
                        self.dim,
                        2 if cfg.angle else 1,
                        passes=2,
                        order=order,
                        univariate=univariate,
                        shapes=shapes,
                        hidden_features=tuple(cfg.hidden),
                        activation=nn.LeakyReLU,
                    )
                )
        base = zuko.flows.UnconditionalDistribution(
            zuko.distributions.DiagNormal,
            torch.zeros(self.dim),
            torch.ones(self.dim),
            buffer=True,
        )
        return zuko.flows.Flow(transforms, base)

    # -- preprocessing ---------------------------------------------------------------------
    def _stack(self, features: dict[str, Any]) -> NDArray[np.float64]:
        cols = []
        for name, width in zip(self.names, self.widths, strict=True):
            if name not in features:
                raise UsageError(f"shower flow: feature '{name}' missing")
            cols.append(np.asarray(features[name], dtype=np.float64).reshape(-1, width))
        return np.concatenate(cols, axis=1)

    def _transform(self, raw: NDArray[np.float64], rng: np.random.Generator | None) -> NDArray:
        out = raw.copy()
        start = 0
        for width, kind in zip(self.widths, self.kinds, strict=True):
            block = out[:, start : start + width]
            if kind == "count":
                noise = rng.random(block.shape) if rng is not None else 0.5
                block[:] = np.log1p(np.maximum(block, 0.0) + noise)
            elif kind == "energy":
                block[:] = np.log1p(np.maximum(block, 0.0) / _ENERGY_UNIT_GEV)
            start += width
        return out

    def _untransform(self, pre: NDArray[np.float64]) -> dict[str, NDArray]:
        out: dict[str, NDArray] = {}
        start = 0
        for name, width, kind in zip(self.names, self.widths, self.kinds, strict=True):
            block = pre[:, start : start + width]
            if kind == "count":
                values = np.floor(np.expm1(np.clip(block, 0.0, 20.0)))
                values = np.maximum(values, 0).astype(np.int64)
            elif kind == "energy":
                values = np.expm1(np.clip(block, 0.0, 30.0)) * _ENERGY_UNIT_GEV
            else:
                values = block.copy()
            out[name] = values[:, 0] if width == 1 else values
            start += width
        return out

    def fit_preprocessing(self, features: dict[str, Any], energies: NDArray) -> None:
        """Set the standardisation of features and condition from data."""
        pre = self._transform(self._stack(features), None)
        std = pre.std(0)
        self.mean.copy_(torch.as_tensor(pre.mean(0), dtype=torch.float32))
        self.std.copy_(torch.as_tensor(np.where(std > 1e-6, std, 1.0), dtype=torch.float32))
        log_e = np.log(np.asarray(energies, np.float64).reshape(-1))
        self.cond_stats.copy_(torch.tensor([log_e.mean(), max(log_e.std(), 1e-6)]))

    def condition(self, energies: NDArray | Tensor, theta_deg: NDArray | None = None) -> Tensor:
        """Network condition ``[N, 1]`` from incident energies in GeV; with ``angle`` ``[N, 2]``,
        the second column ``theta / 30 deg - 1`` (``theta_deg`` ``None``: normal incidence)."""
        e = torch.as_tensor(np.asarray(energies, np.float64).reshape(-1, 1), dtype=torch.float32)
        c = (e.log() - self.cond_stats[0]) / self.cond_stats[1]
        if not self.config.angle:
            return c
        theta = np.zeros(c.shape[0]) if theta_deg is None else np.asarray(theta_deg, np.float64)
        t = torch.as_tensor(theta.reshape(-1, 1) / ANGLE_SCALE_DEG - 1.0, dtype=torch.float32)
        return torch.cat([c, t], 1)

    def preprocess(
        self, features: dict[str, Any], energies: NDArray, rng: np.random.Generator | None
    ) -> tuple[Tensor, Tensor]:
        """``(x [N, dim], c [N, 1 or 2])`` network inputs; ``rng`` draws the dequantisation
        noise (with ``angle``, ``features["theta_deg"]`` is the polar angle of each shower)."""
        pre = self._transform(self._stack(features), rng)
        x = (torch.as_tensor(pre, dtype=torch.float32) - self.mean) / self.std
        return x, self.condition(energies, features.get("theta_deg"))

    # -- likelihood and sampling -----------------------------------------------------------
    def nll(self, x: Tensor, c: Tensor) -> Tensor:
        """Mean negative log-likelihood per feature of preprocessed ``x`` given ``c``."""
        return -self.flow(c).log_prob(x).mean() / self.dim

    @torch.no_grad()
    def sample(
        self,
        energies: NDArray | Sequence[float],
        generator: torch.Generator | None = None,
        theta_deg: NDArray | None = None,
    ) -> dict[str, NDArray]:
        """Draw features for incident energies (GeV).

        Returns a dict of numpy arrays named as in the feature set (counts are non-negative
        int64, energies in GeV and non-negative), plus ``n_points`` (for ``"caloclouds"`` the sum
        of ``n_per_layer``; for ``"caloclouds2"`` the flow's own prediction, see
        ``n_points_sum`` for the sum over layers).
        """
        c = self.condition(np.asarray(energies), theta_deg)
        z = torch.randn((c.shape[0], self.dim), generator=generator)
        # a few showers (full simulation calls one at a time): numpy, whose per-call cost is
        # a third of torch's; more: torch, which honours torch.set_num_threads (numpy's BLAS
        # may thread larger matmuls on its own)
        layers = self._inverse_layers_numpy() if c.shape[0] <= NUMPY_INVERSE_MAX_ROWS else None
        if layers is None:
            x = self.inverse(c, z).numpy()
        else:
            x = _inverse_numpy(layers, c.numpy(), z.numpy())
        outside = np.abs(x).max(1) > FLOW_SUPPORT_Z
        if outside.any():  # beyond the training showers: again from the noise halved
            rows = torch.as_tensor(np.flatnonzero(outside))
            x[outside] = self.inverse(c[rows], z[rows] * 0.5).numpy()
        np.clip(x, -FLOW_SUPPORT_Z, FLOW_SUPPORT_Z, out=x)
        pre = (x * self.std.numpy() + self.mean.numpy()).astype(np.float64)
        out = self._untransform(pre)
        if "n_per_layer" in out:
            total = out["n_per_layer"].sum(1)
            if "n_points" in out:
                out["n_points_sum"] = total
            else:
                out["n_points"] = total
        return out

    def inverse(self, c: Tensor, z: Tensor) -> Tensor:
        """``flow(c).transform.inv(z)``: base noise ``z [N, dim]`` to preprocessed features.

        For flows of affine masked-autoregressive transforms (the default Shower Flows) the
        same algebra runs without zuko's per-call objects, on weights prepared once
        (:meth:`_inverse_layers`): the masked first layer split into its feature and
        condition columns (the condition's part computed once per transform, not once per
        pass; the first pass, on zeros, needs only that part) and the last layer's rows
        reordered into all shifts, then all scales. Equal to zuko's result up to float
        rounding (the sums run in another order), several times faster for one shower,
        which is how full simulation calls it. Other flows go through zuko.
        """
        prepared = self._inverse_layers()
        if prepared is None:
            return self.flow(c).transform.inv(z)
        dim = self.dim
        y = z
        for passes, w_x, w_c, b_1, hidden, w_out, b_out, slope in reversed(prepared):
            context = F.linear(c, w_c, b_1)  # [N, H]: the condition's part of layer 1
            x = torch.zeros_like(y)
            for p in range(passes):
                h = context if p == 0 else torch.addmm(context, x, w_x)
                h = F.leaky_relu(h, slope)
                for w, b in hidden:
                    h = F.leaky_relu(torch.addmm(b, h, w), slope)
                out = torch.addmm(b_out, h, w_out)
                shift, scale = out[:, :dim], out[:, dim:]
                log_scale = scale / (1 + abs(scale / _LOG_MIN_SLOPE))
                x = (y - shift) / log_scale.exp()
            y = x
        return y

    def _inverse_layers_numpy(self) -> list[tuple[Any, ...]] | None:
        """:meth:`_inverse_layers` as float32 numpy arrays (``None`` for flows that are not
        plain affine MAFs), for :func:`_inverse_numpy`; cached like them."""
        prepared = self._inverse_layers()
        if prepared is None:
            return None
        cache = self.__dict__.get("_inverse_numpy_cache")
        if cache is not None and cache[0] is prepared:
            return cache[1]
        arrays: list[tuple[Any, ...]] | None = [
            (
                passes,
                w_x.numpy(),
                w_c.t().contiguous().numpy(),
                b_1.numpy(),
                [(w.numpy(), b.numpy()) for w, b in hidden],
                w_out.numpy(),
                b_out.numpy(),
                np.float32(slope),
            )
            for passes, w_x, w_c, b_1, hidden, w_out, b_out, slope in prepared
        ]
        if not all(0.0 <= a[-1] <= 1.0 for a in arrays):  # max(h, s h) is LeakyReLU for these
            arrays = None
        self.__dict__["_inverse_numpy_cache"] = (prepared, arrays)
        return arrays

    def _plain_affine_parts(self) -> tuple[list[nn.Module], list[nn.Module]] | None:
        """The flow's transforms and their masked linear layers, or ``None`` when a
        transform is not a plain affine MAF (:func:`_plain_affine`). Looked up again only
        when a module of the flow is replaced (the identities of the transforms' layers,
        read from the module dicts, ~3 us): walking and checking the modules through
        ``nn.Module`` on every call cost ~0.05 ms per shower at batch 1."""
        flow = self.flow
        structure = tuple(
            id(m)
            for t in flow.transform._modules["transforms"]._modules.values()
            for m in (t, *getattr(t._modules.get("hyper"), "_modules", {}).values())
        )
        entry = self.__dict__.get("_plain_affine_entry")
        if entry is None or entry[0] is not flow or entry[1] != structure:
            transforms = list(flow.transform.transforms)
            parts = None
            if all(_plain_affine(t) for t in transforms):
                masked = [m for t in transforms for m in t.hyper if isinstance(m, MaskedLinear)]
                parts = (transforms, masked)
            entry = (flow, structure, parts)
            self.__dict__["_plain_affine_entry"] = entry
        return entry[2]

    def _inverse_layers(self) -> list[tuple[Any, ...]] | None:
        """Per transform ``(passes, W1_x^T, W1_c, b1, [(W^T, b) hidden], W_out^T, b_out,
        LeakyReLU slope)`` with the masks applied (see :meth:`inverse`), ``None`` for flows
        that are not plain affine MAFs; cached until a weight changes (training and loading
        change them in place, which moves their version counters), a weight is replaced or
        the flow is."""
        parts = self._plain_affine_parts()
        if parts is None:
            return None
        transforms, masked = parts
        key = tuple(
            (id(p), p._version, p.data_ptr())
            for m in masked
            for p in (m._parameters["weight"], m._parameters["bias"])
        )
        cache = self.__dict__.get("_inverse_cache")
        if cache is not None and cache[0] == key:
            return cache[1]
        dim = self.dim
        prepared = []
        with torch.no_grad():
            for t in transforms:
                masked, acts = list(t.hyper)[::2], list(t.hyper)[1::2]  # see _plain_affine
                first, *middle, last = masked
                w_1 = first.weight * first.mask
                w_last = (last.weight * last.mask).unflatten(0, (dim, 2))  # (shift, scale)
                b_last = last.bias.unflatten(0, (dim, 2))
                prepared.append(
                    (
                        int(t.passes),
                        w_1[:, :dim].t().contiguous(),
                        w_1[:, dim:].contiguous(),
                        first.bias.clone(),
                        [((m.weight * m.mask).t().contiguous(), m.bias.clone()) for m in middle],
                        torch.cat([w_last[:, 0], w_last[:, 1]]).t().contiguous(),
                        torch.cat([b_last[:, 0], b_last[:, 1]]),
                        float(acts[0].negative_slope),
                    )
                )
        self.__dict__["_inverse_cache"] = (key, prepared)
        return prepared

    # -- stand-alone training -------------------------------------------------------------
    def fit(
        self,
        features: dict[str, Any],
        energies: NDArray,
        *,
        iterations: int = 2000,
        batch_size: int = 256,
        lr: float = 1e-3,
        seed: int = 0,
        progress: bool = False,
    ) -> list[float]:
        """Fit preprocessing and train the flow with Adam; return the loss per iteration."""
        self.fit_preprocessing(features, energies)
        raw = self._stack(features)
        energies = np.asarray(energies, np.float64).reshape(-1)
        rng = np.random.default_rng(seed)
        names = (*self.names, *(("theta_deg",) if self.config.angle else ()))
        opt = torch.optim.Adam(self.flow.parameters(), lr=lr)
        losses = []
        iterator = range(iterations)
        if progress:
            from tqdm import tqdm

            iterator = tqdm(iterator, desc="shower flow")
        for it in iterator:
            idx = rng.integers(0, raw.shape[0], size=min(batch_size, raw.shape[0]))
            x, c = self.preprocess(_subset(features, names, idx), energies[idx], rng)
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * it / max(iterations, 1)))
            loss = self.nll(x, c)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        return losses


#: a Shower Flow sample whose standardised features go beyond +-this is outside what the flow
#: was trained on (the default's training showers reach 9.7) and is drawn again from its
#: noise halved, then clipped (ShowerFlow.sample and the exports alike): the flow's far tails
#: are untrained, and about 1 shower in 800 of the default (10-90 GeV, 0-60 deg) came out
#: there, 1 in 50,000 with a visible energy of 1e8 times the incident energy; from the halved
#: noise all of them lie in 0.022-0.035 of the incident energy (docs/reliability.md)
FLOW_SUPPORT_Z = 12.0

#: largest batch whose Shower Flow inverse runs in numpy when sampling (:func:`_inverse_numpy`)
NUMPY_INVERSE_MAX_ROWS = 16

#: ``log`` of the minimum slope of zuko's ``MonotonicAffineTransform`` (default 1e-3)
_LOG_MIN_SLOPE = math.log(1e-3)


def _inverse_numpy(
    layers: list[tuple[Any, ...]], c: NDArray[np.float32], z: NDArray[np.float32]
) -> NDArray[np.float32]:
    """:meth:`ShowerFlow.inverse` in numpy float32 on :meth:`ShowerFlow._inverse_layers_numpy`:
    the same algebra, equal up to float rounding. Written out by hand because a generator
    called for one shower at a time (full simulation) spends more in torch's per-operation
    dispatch of the ~180 tiny operations than in the arithmetic: numpy takes a third of the
    time at batch 1 and less at batch 100."""
    dim = z.shape[1]
    y = z
    log_min = np.float32(_LOG_MIN_SLOPE)
    for passes, w_x, w_c, b_1, hidden, w_out, b_out, slope in reversed(layers):
        context = c @ w_c
        context += b_1
        x = y
        for p in range(passes):
            h = context if p == 0 else x @ w_x + context
            h = np.maximum(h, h * slope)
            for w, b in hidden:
                h = h @ w
                h += b
                h = np.maximum(h, h * slope)
            out = h @ w_out
            out += b_out
            scale = out[:, dim:]
            x = (y - out[:, :dim]) / np.exp(scale / (1 + np.abs(scale / log_min)))
        y = x
    return y


def _plain_affine(transform: nn.Module) -> bool:
    """A zuko masked-autoregressive transform with default affine univariates and a hyper
    network of masked linear layers with LeakyReLU between them (the Shower Flow's)."""
    if not (
        isinstance(transform, zuko.flows.MaskedAutoregressiveTransform)
        and transform.univariate is MonotonicAffineTransform
        and transform.total == 2
        and isinstance(transform.hyper, MaskedMLP)
    ):
        return False
    layers = list(transform.hyper)
    return (
        len(layers) >= 3
        and all(isinstance(m, MaskedLinear) for m in layers[::2])
        and all(isinstance(m, nn.LeakyReLU) for m in layers[1::2])
        and len({m.negative_slope for m in layers[1::2]}) == 1
    )


def _subset(features: dict[str, Any], names: Sequence[str], idx: NDArray) -> dict[str, NDArray]:
    return {name: np.asarray(features[name])[idx] for name in names}


__all__ = [
    "FEATURE_SETS",
    "ShowerFlow",
    "ShowerFlowConfig",
    "shower_features",
]
