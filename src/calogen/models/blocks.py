"""Network building blocks shared by the point-cloud models.

* :class:`ConcatSquashLinear` — a linear layer on the point features whose output is gated
  and shifted by the (shower-level) context (Grathwohl et al., FFJORD).
* :class:`PointWiseNet` — a stack of ConcatSquash layers applied to every point
  independently (CaloClouds / CaloClouds II denoiser). Permutation equivariant; knows nothing
  about diffusion: the caller puts its time features into the context.
* :class:`EPiCEncoder` — equivariant point-cloud (EPiC) layers with mean/sum pooling that
  encode a whole shower into the mean and log-variance of a latent vector.

Point layouts accepted everywhere:

* padded: ``x [B, P, D]`` with context ``[B, C]`` (one per shower, broadcast to its points)
  or ``[B, P, C]`` (one per point);
* packed: ``x [P, D]`` with per-point context ``[P, C]``, or with per-shower context
  ``[S, C]`` plus ``index [P]`` (shower of every point). The packed form with ``index`` is the
  fastest: the context projections are computed once per shower, then gathered.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

#: points per matmul of :meth:`PointWiseNet.forward_segments`: a 1,024 x 128 float32
#: activation (512 KiB) stays in a core's L2 cache; measured on one thread of an AMD EPYC
#: (2 MiB L2 per core), a 1,850-point shower of the default network: 1.09 ms with chunks of
#: 1,024 points, 1.10-1.13 with 512-768, 1.22-1.36 with 2,048
SEGMENT_CHUNK_POINTS = 1024

#: row multiple of the low-precision chunks in :meth:`PointWiseNet.forward_segments`
_PAD_ROWS = 256


def _expand_context(values: Tensor, x: Tensor, context: Tensor, index: Tensor | None) -> Tensor:
    """Bring per-shower context projections ``values`` to the layout of ``x``."""
    if index is not None:
        if values.shape[0] == 1:  # a single shower: broadcasting is cheaper than a gather
            return values
        return values.index_select(0, index)
    if x.dim() == 3 and context.dim() == 2:
        return values.unsqueeze(1)
    return values


class ConcatSquashLinear(nn.Module):
    """``y = Linear(x) * sigmoid(A c + a) + B c``: a linear layer modulated by a context ``c``.

    Args:
        dim_in: input point features.
        dim_out: output point features.
        dim_context: context features.
    """

    def __init__(self, dim_in: int, dim_out: int, dim_context: int) -> None:
        super().__init__()
        self.layer = nn.Linear(dim_in, dim_out)
        self.hyper_gate = nn.Linear(dim_context, dim_out)
        self.hyper_bias = nn.Linear(dim_context, dim_out, bias=False)

    def forward(self, x: Tensor, context: Tensor, index: Tensor | None = None) -> Tensor:
        """Apply the layer.

        Args:
            x: ``[B, P, dim_in]`` or ``[P, dim_in]``.
            context: ``[B, C]``, ``[B, P, C]``, ``[P, C]`` or (with ``index``) ``[S, C]``.
            index: optional ``[P]`` long tensor, shower index of each packed point.
        """
        gate = torch.sigmoid(self.hyper_gate(context))
        bias = self.hyper_bias(context)
        gate = _expand_context(gate, x, context, index)
        bias = _expand_context(bias, x, context, index)
        return torch.addcmul(bias, self.layer(x), gate)


class PointWiseNet(nn.Module):
    """ConcatSquash network applied to each point independently (``point_dim → … → point_dim``).

    With the default widths ``(128, 256, 512, 256, 128)`` this is the CaloClouds PointWise
    Net: 4→128→256→512→256→128→4, LeakyReLU between layers, no activation after the last
    layer, and (``residual=True``) the input added to the output.

    Args:
        point_dim: features per point (4: x, y, z, e).
        context_dim: context features per shower (or per point).
        widths: hidden widths.
        residual: add the input to the output.
        negative_slope: LeakyReLU slope.
    """

    def __init__(
        self,
        point_dim: int = 4,
        context_dim: int = 1,
        widths: Sequence[int] = (128, 256, 512, 256, 128),
        residual: bool = True,
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__()
        self.point_dim = int(point_dim)
        self.context_dim = int(context_dim)
        self.widths = tuple(int(w) for w in widths)
        self.residual = bool(residual)
        dims = (self.point_dim, *self.widths, self.point_dim)
        self.layers = nn.ModuleList(
            ConcatSquashLinear(a, b, self.context_dim) for a, b in itertools.pairwise(dims)
        )
        self.act = nn.LeakyReLU(negative_slope)

    def forward(self, x: Tensor, context: Tensor, index: Tensor | None = None) -> Tensor:
        """Map points ``x`` to an output of the same shape.

        Args:
            x: ``[B, P, point_dim]`` (padded) or ``[P, point_dim]`` (packed).
            context: ``[B, context_dim]`` (broadcast over points), ``[B, P, context_dim]``,
                ``[P, context_dim]`` (packed, per point) or ``[S, context_dim]`` with ``index``.
            index: ``[P]`` shower index of each packed point (only with per-shower context).
        """
        if x.shape[-1] != self.point_dim:
            raise ValueError(f"expected {self.point_dim} point features, got {x.shape[-1]}")
        if context.shape[-1] != self.context_dim:
            raise ValueError(
                f"expected {self.context_dim} context features, got {context.shape[-1]}"
            )
        out = x
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            out = layer(out, context, index)
            if i < last:
                out = self.act(out)
        return x + out if self.residual else out

    def _stacked_hyper(self) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor]]:
        """All layers' gate projections, then all bias projections, stacked into one
        ``([Σ 2·out, C], [Σ 2·out])`` matmul, plus the layers' weight and bias parameters;
        cached until a parameter changes (in-place update, loading, moving)."""
        params = self.__dict__.get("_hyper_params")
        if params is None:
            params = [p for layer in self.layers for p in layer.parameters()]
            self.__dict__["_hyper_params"] = params
        key = [(p._version, p.data_ptr()) for p in params]
        cache = self.__dict__.get("_hyper_cache")
        if cache is None or cache[0] != key:
            layers = list(self.layers)
            with torch.no_grad():
                weight = torch.cat(
                    [m.hyper_gate.weight for m in layers] + [m.hyper_bias.weight for m in layers]
                )
                bias = torch.cat(
                    [m.hyper_gate.bias for m in layers]
                    + [torch.zeros_like(m.hyper_gate.bias) for m in layers]
                )
            weights = [m.layer.weight for m in layers]
            biases = [m.layer.bias for m in layers]
            cache = (key, weight, bias, weights, biases)
            self.__dict__["_hyper_cache"] = cache
        return cache[1], cache[2], cache[3], cache[4]

    def merged_weights(self, context: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per-shower weights with the ConcatSquash gate and bias merged into the layer.

        ``Linear(x) * g + c = x (g ⊙ W)ᵀ + (g ⊙ b + c)`` with ``g = sigmoid(A c + a)`` and
        ``c = B c`` of one shower's context. Returns, per layer, ``(weight [S, out, in],
        bias [S, out])`` for ``context [S, C]``. For inference: the stacked gate and bias
        projections are cached without gradients.
        """
        hyper, offset, weights, biases = self._stacked_hyper()
        projected = torch.addmm(offset, context, hyper.t())  # all layers in one matmul
        half = projected.shape[1] // 2
        gates = torch.sigmoid(projected[:, :half])
        merged, start = [], 0
        for weight, bias in zip(weights, biases, strict=True):
            width = weight.shape[0]
            gate = gates[:, start : start + width]
            shift = projected[:, half + start : half + start + width]
            start += width
            merged.append((weight[None] * gate[:, :, None], torch.addcmul(shift, bias[None], gate)))
        return merged

    @torch.no_grad()
    def forward_padded(self, x: Tensor, context: Tensor) -> Tensor:
        """Inference on padded showers ``x [S, P, point_dim]`` with ``context [S, C]``.

        Equal to ``forward(x, context)`` up to float rounding; each shower's gates and biases
        are merged into its weights (:meth:`merged_weights`), so a layer is one batched
        matmul (``baddbmm``) and a LeakyReLU. Traceable (used by :mod:`calogen.export`).
        """
        out = x
        merged = self.merged_weights(context)
        last = len(merged) - 1
        for i, (weight, bias) in enumerate(merged):
            out = torch.baddbmm(bias[:, None, :], out, weight.transpose(1, 2))
            if i < last:  # in place: a new tensor per layer costs more than the LeakyReLU
                out = torch.nn.functional.leaky_relu_(out, self.act.negative_slope)
        return x + out if self.residual else out

    @torch.no_grad()
    def forward_segments(
        self,
        x: Tensor,
        context: Tensor,
        counts: Sequence[int],
        *,
        chunk: int = SEGMENT_CHUNK_POINTS,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Inference on packed points stored shower after shower (no gradients).

        Equal to ``forward(x, context, index)`` up to float rounding when ``x`` holds
        ``counts[s]`` consecutive points of shower ``s``, but each shower's gates and biases
        are merged into its weights (:meth:`merged_weights`), so a layer is one ``addmm`` and
        an in-place LeakyReLU on at most ``chunk`` points (activations stay in cache).

        Args:
            x: ``[P, point_dim]`` packed points, ``P = sum(counts)``.
            context: ``[S, context_dim]`` per-shower context.
            counts: points of each shower.
            chunk: points per matmul (:data:`SEGMENT_CHUNK_POINTS`).
            dtype: compute dtype of the hidden layers (e.g. ``torch.bfloat16``); the first and
                last layer (a few % of the work) stay in the dtype of ``x``. The hidden
                layers then run on chunks zero-padded to a multiple of :data:`_PAD_ROWS`
                rows: oneDNN builds a kernel per matmul shape, and one per shower size
                would cost more than the matmul.
        """
        if x.shape[0] != sum(int(n) for n in counts):
            raise ValueError("counts do not add up to the number of points")
        merged = self.merged_weights(context)
        slope = float(self.act.negative_slope)
        last = len(merged) - 1
        low = dtype is not None and dtype != x.dtype
        out = torch.empty_like(x)
        start = 0
        for s, n in enumerate(int(c) for c in counts):
            layers = []
            for i, (weight, bias) in enumerate(merged):
                w, b = weight[s].t(), bias[s]
                if low and 0 < i < last:
                    w, b = w.to(dtype), b.to(dtype)
                layers.append((w, b))
            for a in range(start, start + n, chunk):
                stop = min(a + chunk, start + n)
                rows = stop - a
                h = x[a:stop]
                for i, (w, b) in enumerate(layers):
                    if low and i == 1:
                        padded = -(-rows // _PAD_ROWS) * _PAD_ROWS
                        buffer = h.new_zeros((padded, h.shape[1]), dtype=w.dtype)
                        buffer[:rows] = h
                        h = buffer
                    elif low and i == last:
                        h = h[:rows].to(w.dtype)
                    h = torch.addmm(b, h, w)
                    if i < last:
                        torch.nn.functional.leaky_relu_(h, slope)
                out[a:stop] = h
            start += n
        return x + out if self.residual else out


# ---------------------------------------------------------------------------------------------
# EPiC encoder
# ---------------------------------------------------------------------------------------------


def hidden_unit_importance(net: PointWiseNet, run: Callable[[], object]) -> list[Tensor]:
    """Importance of every hidden unit of ``net`` on the inputs that ``run()`` feeds it.

    The importance of unit ``j`` of hidden layer ``i`` is the mean magnitude of its
    activation (after the LeakyReLU) times the norm of the weights that carry it into layer
    ``i + 1``: the size of its contribution to the next layer. Returns one ``[width]`` float
    tensor per hidden layer. ``run`` calls the network (e.g. on noised training points) any
    number of times; gradients are not needed.
    """
    last = len(net.layers) - 1
    sums = [torch.zeros(w, dtype=torch.float64) for w in net.widths]
    counts = [0] * len(net.widths)

    def hook(i: int) -> Callable[[nn.Module, object, Tensor], None]:
        def record(_module: nn.Module, _inputs: object, out: Tensor) -> None:
            act = torch.nn.functional.leaky_relu(out.detach(), net.act.negative_slope)
            flat = act.reshape(-1, act.shape[-1]).abs()
            sums[i] += flat.sum(0).to(torch.float64).cpu()
            counts[i] += flat.shape[0]

        return record

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(net.layers[:last])]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    if not all(counts):
        raise ValueError("hidden_unit_importance: run() never called the network")
    return [
        (sums[i] / counts[i]) * net.layers[i + 1].layer.weight.detach().norm(dim=0).cpu().double()
        for i in range(len(net.widths))
    ]


def prune_point_network(net: PointWiseNet, keep: Sequence[Tensor]) -> PointWiseNet:
    """A narrower copy of ``net`` that keeps the hidden units ``keep[i]`` (indices into hidden
    layer ``i``) with their weights: the start of a narrower student that computes nearly
    what its teacher computes, instead of a fresh initialisation.

    Each ConcatSquash layer keeps the rows of its kept outputs (linear, gate and bias
    projections) and the columns of the previous layer's kept units.
    """
    if len(keep) != len(net.widths):
        raise ValueError(f"expected {len(net.widths)} index sets, got {len(keep)}")
    keep = [torch.as_tensor(k, dtype=torch.long).sort().values for k in keep]
    for k, width in zip(keep, net.widths, strict=True):
        if k.numel() == 0 or int(k.max()) >= width or k.unique().numel() != k.numel():
            raise ValueError(f"invalid unit indices for a hidden layer of width {width}")
    pruned = PointWiseNet(
        net.point_dim,
        net.context_dim,
        [k.numel() for k in keep],
        net.residual,
        net.act.negative_slope,
    )
    points = torch.arange(net.point_dim)  # the input and output features, all kept
    rows = [*keep, points]
    cols = [points, *keep]
    with torch.no_grad():
        for old, new, r, c in zip(net.layers, pruned.layers, rows, cols, strict=True):
            new.layer.weight.copy_(old.layer.weight[r][:, c])
            new.layer.bias.copy_(old.layer.bias[r])
            new.hyper_gate.weight.copy_(old.hyper_gate.weight[r])
            new.hyper_gate.bias.copy_(old.hyper_gate.bias[r])
            new.hyper_bias.weight.copy_(old.hyper_bias.weight[r])
    return pruned


def segment_mean_sum(
    values: Tensor, index: Tensor, n_segments: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-segment mean and sum of packed ``values [P, F]``; also returns the counts ``[S]``."""
    sums = values.new_zeros(n_segments, values.shape[-1]).index_add_(0, index, values)
    counts = torch.bincount(index, minlength=n_segments).to(values.dtype).clamp_min(1.0)
    return sums / counts[:, None], sums, counts


class EPiCLayer(nn.Module):
    """One equivariant point-cloud layer: a global update from pooled point features, then a
    local (per-point) update conditioned on the new global vector. Both residual."""

    def __init__(
        self, local_dim: int, global_dim: int, cond_dim: int, hidden: int, sum_scale: float
    ) -> None:
        super().__init__()
        self.sum_scale = float(sum_scale)
        self.global_mlp = nn.Sequential(
            nn.Linear(2 * local_dim + global_dim + cond_dim, hidden),
            nn.LeakyReLU(0.01),
            nn.Linear(hidden, global_dim),
        )
        self.local_in = nn.Linear(local_dim, hidden)
        self.local_ctx = nn.Linear(global_dim + cond_dim, hidden, bias=False)
        self.local_out = nn.Linear(hidden, local_dim)
        self.act = nn.LeakyReLU(0.01)

    def forward(
        self, local: Tensor, glob: Tensor, cond: Tensor, index: Tensor
    ) -> tuple[Tensor, Tensor]:
        mean, total, _ = segment_mean_sum(local, index, glob.shape[0])
        glob = glob + self.global_mlp(torch.cat([mean, total * self.sum_scale, glob, cond], -1))
        ctx = self.local_ctx(torch.cat([glob, cond], -1)).index_select(0, index)
        hidden = self.act(self.local_in(local) + ctx)
        local = local + self.local_out(hidden)
        return self.act(local), glob


class EPiCEncoder(nn.Module):
    """EPiC encoder: point cloud + conditions → ``(mu, logvar)`` of a latent vector.

    Args:
        point_dim: features per point.
        cond_dim: shower conditions (CaloClouds: normalised E and N).
        latent_dim: size of the latent vector (paper: 256).
        hidden: width of the per-point features and MLPs (paper: 128).
        global_dim: width of the global (per-shower) vector.
        n_layers: number of EPiC layers (paper: 3).
        sum_scale: factor on the sum pooling (sums over thousands of points are large).
    """

    def __init__(
        self,
        point_dim: int = 4,
        cond_dim: int = 2,
        latent_dim: int = 256,
        hidden: int = 128,
        global_dim: int = 16,
        n_layers: int = 3,
        sum_scale: float = 1e-3,
    ) -> None:
        super().__init__()
        self.point_dim = point_dim
        self.cond_dim = cond_dim
        self.latent_dim = latent_dim
        self.sum_scale = float(sum_scale)
        self.local_embed = nn.Sequential(nn.Linear(point_dim, hidden), nn.LeakyReLU(0.01))
        self.global_embed = nn.Sequential(
            nn.Linear(2 * hidden + cond_dim, hidden),
            nn.LeakyReLU(0.01),
            nn.Linear(hidden, global_dim),
        )
        self.layers = nn.ModuleList(
            EPiCLayer(hidden, global_dim, cond_dim, hidden, sum_scale) for _ in range(n_layers)
        )
        self.head = nn.Sequential(
            nn.Linear(2 * hidden + global_dim + cond_dim, hidden),
            nn.LeakyReLU(0.01),
            nn.Linear(hidden, 2 * latent_dim),
        )

    def forward(
        self,
        x: Tensor,
        cond: Tensor,
        index: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Encode showers.

        Args:
            x: packed ``[P, point_dim]`` (with ``index``) or padded ``[B, P, point_dim]``
                (with optional ``mask [B, P]``, True for real points).
            cond: ``[S, cond_dim]`` per-shower conditions.
            index: ``[P]`` shower index of each packed point.
            mask: ``[B, P]`` bool for padded input.

        Returns:
            ``(mu, logvar)``, each ``[S, latent_dim]``.
        """
        n_showers = cond.shape[0]
        if x.dim() == 3:
            if mask is None:
                mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
            index = torch.arange(x.shape[0], device=x.device)[:, None].expand_as(mask)[mask]
            x = x[mask]
        elif index is None:
            raise ValueError("packed input needs the per-point shower index")
        local = self.local_embed(x)
        mean, total, _ = segment_mean_sum(local, index, n_showers)
        glob = self.global_embed(torch.cat([mean, total * self.sum_scale, cond], -1))
        for layer in self.layers:
            local, glob = layer(local, glob, cond, index)
        mean, total, _ = segment_mean_sum(local, index, n_showers)
        out = self.head(torch.cat([mean, total * self.sum_scale, glob, cond], -1))
        mu, logvar = out.chunk(2, dim=-1)
        return mu, logvar


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = [
    "ConcatSquashLinear",
    "EPiCEncoder",
    "EPiCLayer",
    "PointWiseNet",
    "count_parameters",
    "segment_mean_sum",
]
