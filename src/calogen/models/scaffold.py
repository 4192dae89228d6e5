"""What every learned model module shares: config (de)serialisation, the ``train`` entry point
(fresh or resumed config, the training loop, the summary), model-folder loading, the
trainer's and the generator's common parts, and the Shower Flow's training step.

A model module (:mod:`~calogen.models.caloclouds`, :mod:`~calogen.models.caloclouds2`,
:mod:`~calogen.models.l2lflows`, :mod:`~calogen.models.bibae`) keeps only what is its own:
the networks, the batch and loss of one iteration, how a model is built from data and how it
generates. The rest lives here once.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from calogen.errors import UsageError
from calogen.generator import as_rng
from calogen.models.configs import resolve_config
from calogen.models.training import (
    CHECKPOINT_DIR,
    MODEL_JSON,
    Trainer,
    is_main_process,
    latest_checkpoint,
    load_model_tensors,
    lr_schedule,
    read_json,
    read_model_info,
    run_training,
    set_lr,
)

C = TypeVar("C", bound="ModelConfig")

#: ``fit_corrections(model_dir, data, seed, n_showers) -> summary`` of a model whose
#: training ends with corrections fitted on its training showers (occupancy, radial map).
FitCorrections = Callable[[Path, Any, int, int], dict[str, Any]]

#: Training showers (the first ones of the file) that the corrections are fitted on.
CORRECTION_SHOWERS = 1000
#: ... of an angle-aware model (per file): its corrections come in classes of polar angle,
#: each needing a few hundred inclined showers (docs/default_model.md)
CORRECTION_SHOWERS_ANGLED = 3000
M = TypeVar("M", bound=nn.Module)

#: Incident energies (GeV) a model folder without ``energy_range_gev`` was trained on.
DEFAULT_ENERGY_RANGE_GEV = (10.0, 90.0)

#: Seed of the noise of a validation loss (dequantisation, latent draws): the same for every
#: evaluation and every run, so that validation losses compare between them.
VALIDATION_SEED = 0
#: Showers per batch of a validation loss (the noise depends on the batching: keep it fixed).
VALIDATION_BATCH = 128


# ---------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------


class ModelConfig:
    """Mixin for a model's hyperparameter dataclass (JSON-serialisable).

    Subclasses set ``LABEL`` (the model's name in error messages) and ``TUPLES`` (fields that
    hold tuples, with the type of their items) and may override :meth:`validate`.
    """

    LABEL: ClassVar[str] = "model"
    TUPLES: ClassVar[dict[str, type]] = {}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)  # type: ignore[call-overload]
        for key in self.TUPLES:
            value = getattr(self, key)
            out[key] = None if value is None else list(value)
        return out

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """Config from a dict; unknown keys are a :class:`UsageError`, then :meth:`validate`."""
        fields = cls.__dataclass_fields__  # type: ignore[attr-defined]
        known = {k: data[k] for k in fields if k in data}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise UsageError(f"unknown {cls.LABEL} config keys: {', '.join(unknown)}")
        for key, kind in cls.TUPLES.items():
            if known.get(key) is not None:
                known[key] = tuple(kind(v) for v in known[key])
        cfg = cls(**known)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Refuse inconsistent values with a :class:`UsageError` (nothing to check here)."""

    def check_positive(self, keys: Sequence[str], what: str = "config") -> None:
        """Each of ``keys`` must be > 0 (``"<what> '<key>' must be > 0"`` otherwise)."""
        for key in keys:
            if int(getattr(self, key)) <= 0:
                raise UsageError(f"{what} '{key}' must be > 0")


@dataclass
class ValidationTraining(ModelConfig):
    """Config fields of a validation loss during training (the voxel models).

    ``validation_showers`` (0: off): N showers of each training file held out from training;
    their loss (the model module's ``validation_losses``) is computed every
    ``validate_every`` iterations and after the last one, and logged as ``val_loss``
    (:func:`~calogen.models.training.run_training`). The held-out showers of a file are the
    N right after the training showers: with ``max_showers`` M, showers ``M`` to ``M + N - 1``
    (the file must hold them); without ``max_showers``, the last N of the file, and training
    uses the ones before (see :func:`validation_split`).
    """

    validation_showers: int = 0
    validate_every: int = 200

    def check_validation(self, what: str) -> None:
        """``validation_showers`` >= 0 and ``validate_every`` > 0 (``UsageError``)."""
        if int(self.validation_showers) < 0:
            raise UsageError(f"{what} 'validation_showers' must be >= 0")
        self.check_positive(("validate_every",), what)


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------


def validation_split(
    n_file: int, max_showers: int | None, n_validation: int, path: str = "data"
) -> tuple[int, int, int]:
    """``(train_stop, first, last)`` for a file of ``n_file`` showers: training on showers
    ``[0, train_stop)``, validation on ``[first, last)`` (see :class:`ValidationTraining`).

    With ``max_showers`` M the validation showers are ``[M, M + n_validation)``; without it,
    the last ``n_validation`` of the file. Too few showers is a :class:`UsageError`.
    """
    n_val = int(n_validation)
    if max_showers is None:
        if n_val >= n_file:
            raise UsageError(
                f"{path}: {n_file} showers; 'validation_showers' {n_val} leaves none to train on"
            )
        return n_file - n_val, n_file - n_val, n_file
    m = int(max_showers)
    if m + n_val > n_file:
        raise UsageError(
            f"{path}: {n_file} showers; 'validation_showers' {n_val} after the {m} training "
            f"showers ('max_showers') need {m + n_val}"
        )
    return m, m, m + n_val


def data_paths(data: Any) -> list[str]:
    """The training files of ``data``: one path or a sequence of paths (``--data A B``)."""
    if isinstance(data, (str, os.PathLike)):
        return [os.fspath(data)]
    paths = [os.fspath(p) for p in data]
    if not paths:
        raise UsageError("--data: no training file given")
    return paths


def is_training_cache(data: Any) -> bool:
    """True for one training-cache file (:mod:`calogen.models.training_cache`)."""
    return isinstance(data, (str, os.PathLike)) and str(data).endswith(".npz")


def data_label(data: Any) -> str:
    """The training files of ``data`` as one string (comma-separated), for messages and JSON."""
    return ", ".join(data_paths(data))


def correction_showers(config: Any, n_train: int, angled: bool | None = None) -> int:
    """How many of the first showers of each training file the corrections are fitted on:
    :data:`CORRECTION_SHOWERS` (:data:`CORRECTION_SHOWERS_ANGLED` for angle-aware models:
    ``angled``, by default the config's ``directions``; a distillation config has none, its
    teacher's says), at most the showers trained on (``max_showers`` per file, ``n_train``
    in all), so that they are all training showers."""
    per_file = getattr(config, "max_showers", None)
    if angled is None:
        angled = bool(getattr(config, "directions", False))
    wanted = CORRECTION_SHOWERS_ANGLED if angled else CORRECTION_SHOWERS
    return int(min(wanted, n_train, per_file or n_train))


def stored_checkpoint(out: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``extra`` JSON of the newest complete checkpoint in ``out`` (for ``--resume``)."""
    latest = latest_checkpoint(Path(out) / CHECKPOINT_DIR)
    if latest is None:
        raise UsageError(f"{out}: no complete checkpoint to resume from")
    return read_json(latest)["extra"]


def training_config(
    config: Any,
    out: str | os.PathLike[str],
    *,
    resume: bool,
    seed: int,
    iterations: int | None,
    presets: dict[str, C],
    cls: type[C],
    key: str = "config",
    n_showers: int | None = None,
) -> tuple[C, int, dict[str, Any] | None]:
    """``(config, seed, stored)`` of a training run.

    A fresh run resolves ``config`` (preset name, file, overrides or a config object; a copy,
    presets are never changed); a resumed one takes the config (under ``key``) and the seed
    stored in the newest checkpoint, which is returned as ``stored``. ``iterations`` overrides
    the config's and caps a Shower Flow's (``shower_flow_iterations``) at it. ``n_showers``
    (train on the first N showers of the file) sets ``max_showers`` of a fresh run; a resumed
    run keeps its own and refuses another.
    """
    stored = None
    if resume:
        stored = stored_checkpoint(out)
        cfg = cls.from_dict(stored[key])
        seed = int(stored["seed"])
        kept = getattr(cfg, "max_showers", None)
        if n_showers is not None and int(n_showers) != kept:
            raise UsageError(
                f"{out}: the run trains on {kept or 'all'} showers; --num {n_showers} cannot "
                "change that on --resume"
            )
    else:
        cfg = copy.deepcopy(resolve_config(config, presets, cls))
        if n_showers is not None:
            cfg.max_showers = int(n_showers)  # type: ignore[attr-defined]
    if iterations is not None:
        cfg.iterations = int(iterations)  # type: ignore[attr-defined]
        if hasattr(cfg, "shower_flow_iterations"):
            cfg.shower_flow_iterations = min(cfg.shower_flow_iterations, cfg.iterations)  # type: ignore[attr-defined]
    return cfg, seed, stored


def train_model(
    name: str,
    presets: dict[str, C],
    cls: type[C],
    make_trainer: Callable[[C, Any, int, dict[str, Any] | None], Trainer],
    *,
    config: Any,
    data: Any,
    out: str | os.PathLike[str],
    resume: bool = False,
    seed: int = 0,
    iterations: int | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    key: str = "config",
    n_showers: int | None = None,
    corrections: bool = True,
    fit_corrections: FitCorrections | None = None,
    desc: str | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """The ``train`` of a model module: resolve the config (:func:`training_config`), let
    ``make_trainer(config, data, seed, stored)`` load the data and build the model and its
    trainer (``stored``: the checkpoint's JSON on ``resume``, else ``None``), then run it
    (:func:`run_model_training`) and return the summary.

    A model with post-training corrections passes ``fit_corrections`` (see
    :data:`FitCorrections`): once the last iteration is done (not after ``stop_after``) they
    are fitted on the training showers with the run's seed, unless ``corrections`` is off,
    and their summary is added under ``"corrections"``. A resumed run that was already
    complete fits them again, so it ends with the same model as an uninterrupted one.
    ``desc`` names the progress bar (default ``name``). ``device`` (``"cpu"``, ``"cuda"``):
    where the trainer's networks train (:meth:`TrainerBase.to`); checkpoints and the model
    folder are the same either way.
    """
    if fit_corrections is not None and corrections and is_training_cache(data):
        raise UsageError(
            f"{data_label(data)}: a training cache holds no whole showers to fit the "
            "corrections on: train with --no-corrections, then run 'calogen fit-occupancy "
            "--data' on the shower files the cache was made from"
        )
    cfg, seed, stored = training_config(
        config,
        out,
        resume=resume,
        seed=seed,
        iterations=iterations,
        presets=presets,
        cls=cls,
        key=key,
        n_showers=n_showers,
    )
    t0 = time.perf_counter()
    trainer = make_trainer(cfg, data, seed, stored)
    if str(device) != "cpu":
        trainer.to(device)
    summary = run_model_training(
        trainer,
        out,
        cfg,
        name=name,
        resume=resume,
        progress=progress,
        stop_after=stop_after,
        t0=t0,
        desc=desc,
    )
    if getattr(trainer, "validation", None) is not None:
        summary["validation"] = trainer.validation_info()  # type: ignore[attr-defined]
    n_data = getattr(getattr(trainer, "data", None), "n_showers", None)
    if n_data is not None:
        summary["training_showers"] = int(n_data)
        finished = summary["iterations"] >= cfg.iterations  # type: ignore[attr-defined]
    if fit_corrections is not None and finished and is_main_process():
        if corrections:
            teacher = getattr(trainer, "teacher_model", None)  # a distillation: its teacher's
            angled = getattr(getattr(teacher, "config", None), "directions", None)
            n_fit = correction_showers(cfg, int(trainer.data.n_showers), angled)  # type: ignore[attr-defined]
            if progress:
                print(
                    f"{name}: fitting the corrections on {n_fit} training showers "
                    "(--no-corrections skips this)",
                    file=sys.stderr,
                    flush=True,
                )
            summary["corrections"] = fit_corrections(Path(out), data, seed, n_fit)
        else:
            summary["corrections"] = "off (--no-corrections)"
        summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return summary


def run_model_training(
    trainer: Trainer,
    out: str | os.PathLike[str],
    config: Any,
    *,
    name: str,
    resume: bool,
    progress: bool,
    stop_after: int | None,
    t0: float,
    desc: str | None = None,
) -> dict[str, Any]:
    """Run ``trainer`` for ``config.iterations`` (checkpoints every ``config.checkpoint_every``)
    into ``out``; the summary every ``train`` returns (iterations, seconds, last losses, and
    ``best_val_loss`` when the trainer has validation showers: :class:`ValidationTraining`)."""
    validate = None
    if getattr(trainer, "validation", None) is not None:
        validate = trainer.validation_losses  # type: ignore[attr-defined]
    result = run_training(
        trainer,
        Path(out),
        iterations=config.iterations,
        checkpoint_every=config.checkpoint_every,
        resume=resume,
        progress=progress,
        log_every=min(50, config.checkpoint_every),
        stop_after=stop_after,
        desc=desc or name,
        validate=validate,
        validate_every=int(getattr(config, "validate_every", 0)),
    )
    history = result["history"]
    summary = {
        "model": name,
        "out": str(out),
        "iterations": result["iteration"],
        "train_seconds": round(result["seconds"], 1),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "final": history[-1] if history else {},
    }
    if result.get("best_val_loss") is not None:
        summary["best_val_loss"] = result["best_val_loss"]
    return summary


def training_info(
    data_path: str, seed: int, n_showers: int, energies: NDArray, **more: Any
) -> dict[str, Any]:
    """``training`` (data, seed, showers, ``more``) and ``energy_range_gev`` of a model.json."""
    return {
        "training": {"data": data_path, "seed": int(seed), "n_showers": int(n_showers), **more},
        "energy_range_gev": [float(np.min(energies)), float(np.max(energies))],
    }


class TrainerBase:
    """The common part of the trainers (:class:`~calogen.models.training.Trainer` protocol).

    All randomness of iteration ``i`` is derived from ``(seed, i)``, so there are no RNG
    states to checkpoint. ``name`` is the model type written into the checkpoints.
    """

    name: ClassVar[str] = "model"

    def __init__(self, model: Any, data: Any, seed: int, data_path: str) -> None:
        self.model = model
        self.data = data
        self.seed = int(seed)
        self.data_path = data_path
        #: held-out showers of the validation loss (``None``: off); see :meth:`set_validation`
        self.validation: Any = None
        self.validation_ranges: list[tuple[str, int, int]] = []

    def set_validation(self, data: Any, ranges: Sequence[tuple[str, int, int]]) -> None:
        """Held-out showers ``data`` for :meth:`validation_losses`: showers
        ``[first, last)`` of each ``(path, first, last)`` of ``ranges``."""
        self.validation = data
        self.validation_ranges = [(str(p), int(a), int(b)) for p, a, b in ranges]

    def validation_info(self) -> dict[str, Any]:
        """Which showers the validation loss is computed on (for the JSON files)."""
        return {
            "showers": sum(b - a for _, a, b in self.validation_ranges),
            "ranges": [[p, a, b] for p, a, b in self.validation_ranges],
            "seed": VALIDATION_SEED,
            "batch": VALIDATION_BATCH,
        }

    def validation_losses(self) -> dict[str, float]:
        """``{"val_loss": ..., <components>}`` of the current weights on :attr:`validation`
        (models with a validation loss override this)."""
        raise UsageError(f"'{self.name}' has no validation loss")

    def generators(self) -> dict[str, Any]:
        return {}  # all randomness is derived from (seed, iteration)

    def to(self, device: str | torch.device) -> None:
        """Move the trained networks to ``device`` (before a checkpoint is loaded into
        them); trainers that support a GPU override this."""
        raise UsageError(f"--device {device}: '{self.name}' trains on the CPU only")

    def checkpoint_json(self) -> dict[str, Any]:
        info = self.model.model_info() if hasattr(self.model, "model_info") else {}
        out = {
            "model": self.name,
            "config": self.model.config.to_dict(),
            "seed": self.seed,
            **info,
        }
        if self.validation is not None:
            out["validation"] = self.validation_info()
        return out


@dataclass
class ShowerFlowTraining(ModelConfig):
    """Config fields of a Shower Flow trained beside the point network
    (:func:`shower_flow_step`): Adam with a cosine learning rate from ``shower_flow_lr_start``
    to ``shower_flow_lr_end`` over ``shower_flow_iterations``, ``shower_flow_batch`` showers."""

    shower_flow_lr_start: float = 1e-3
    shower_flow_lr_end: float = 1e-5
    shower_flow_iterations: int = 100_000
    shower_flow_batch: int = 512


def export_voxel_model(
    model: nn.Module, out: str | os.PathLike[str], name: str, extra: dict[str, Any] | None = None
) -> Path:
    """Write the folder (``model.json`` + ``model.safetensors``) of a voxel model (its config
    has a ``grid``)."""
    from calogen.models.training import save_model

    config = model.config  # type: ignore[attr-defined]
    return save_model(
        out,
        model_type=name,
        modules=model.generation_modules(),  # type: ignore[operator]
        config=config.to_dict(),
        extra={"grid": config.grid.to_dict(), **(extra or {})},
    )


def shower_flow_step(
    shower_flow: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Any,
    config: Any,
    iteration: int,
    rng: np.random.Generator,
) -> dict[str, float]:
    """One Shower Flow update on a random batch of the training showers, while
    ``iteration < config.shower_flow_iterations`` (cosine learning rate from
    ``shower_flow_lr_start`` to ``shower_flow_lr_end``); ``{"shower_nll": loss}`` or ``{}``.

    ``data`` has ``n_showers``, ``features`` (per-shower arrays) and ``energies``; the batch
    is ``config.shower_flow_batch`` showers drawn with replacement from ``rng``.
    """
    if iteration >= config.shower_flow_iterations:
        return {}
    sel = rng.integers(0, data.n_showers, size=min(config.shower_flow_batch, data.n_showers))
    feats = {k: v[sel] for k, v in data.features.items()}
    xs, cs = shower_flow.preprocess(feats, data.energies[sel], rng)
    set_lr(
        optimizer,
        lr_schedule(
            iteration,
            config.shower_flow_iterations,
            config.shower_flow_lr_start,
            config.shower_flow_lr_end,
            "cosine",
        ),
    )
    loss = shower_flow.nll(xs, cs)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(shower_flow.flow.parameters(), 10.0)
    optimizer.step()
    return {"shower_nll": float(loss.detach())}


# ---------------------------------------------------------------------------------------------
# loading and generating
# ---------------------------------------------------------------------------------------------


def load_folder(
    model_dir: str | os.PathLike[str],
    info: dict[str, Any] | None,
    kinds: Sequence[str],
    what: str,
    build: Callable[[dict[str, Any]], M],
) -> M:
    """Rebuild a model from a folder: ``info`` (``model.json``, read if ``None``) must name one
    of ``kinds``; ``build(info)`` makes the model (a missing JSON entry is a one-line
    :class:`UsageError`), whose ``generation_modules()`` get the folder's weights."""
    info = read_model_info(model_dir) if info is None else info
    kind = info.get("calogen_model")
    if kind not in kinds:
        raise UsageError(f"{model_dir}: not {what} ({kind})")
    try:
        model = build(info)
    except KeyError as exc:
        raise UsageError(f"{model_dir}/{MODEL_JSON}: missing entry {exc}") from None
    load_model_tensors(model_dir, model.generation_modules())  # type: ignore[operator]
    return model.eval()


def load_config_model(
    model_dir: str | os.PathLike[str],
    info: dict[str, Any] | None,
    name: str,
    model_cls: Callable[[Any], M],
    config_cls: type[ModelConfig],
) -> M:
    """:func:`load_folder` for a model built from its config alone (``model_cls(config)``)."""
    article = "an" if name[0] in "aeiou" else "a"
    return load_folder(
        model_dir,
        info,
        (name,),
        f"{article} {name} model",
        lambda info: model_cls(config_cls.from_dict(info["config"])),
    )


def voxel_trainer(
    trainer_cls: Callable[..., Trainer], build_model: Callable[[Any, Any, int], Any]
) -> Callable[[Any, Any, int, dict[str, Any] | None], Trainer]:
    """``make_trainer`` of :func:`train_model` for a voxel model: the showers of ``data`` (one
    file or several, concatenated; the first ``max_showers`` of each) voxelised on the
    config's grid, in the axis frame of each shower when the config has ``axis_frame`` set, a
    model from ``build_model(config, voxels, seed)`` and its ``trainer_cls``."""
    from calogen.data.voxels import SparseVoxels

    def make(config: Any, data: Any, seed: int, stored: dict[str, Any] | None) -> Trainer:
        from calogen.data.io import ShowerFile

        straighten = bool(getattr(config, "axis_frame", False))
        n_val = int(getattr(config, "validation_showers", 0))
        parts, held_out, ranges = [], [], []
        for path in data_paths(data):
            stop = config.max_showers
            if n_val:
                with ShowerFile(path) as f:
                    n_file = len(f)
                stop, first, last = validation_split(n_file, config.max_showers, n_val, path)
                held_out.append(
                    SparseVoxels.from_file(
                        path, config.grid, last, straighten=straighten, start=first
                    )
                )
                ranges.append((path, first, last))
            parts.append(SparseVoxels.from_file(path, config.grid, stop, straighten=straighten))
        voxels = SparseVoxels.concatenate(parts, config.grid)
        trainer = trainer_cls(build_model(config, voxels, seed), voxels, seed, data_label(data))
        if n_val:
            trainer.set_validation(SparseVoxels.concatenate(held_out, config.grid), ranges)
        return trainer

    return make


def validation_loss(
    model_dir: str | os.PathLike[str],
    data_path: str | os.PathLike[str],
    first: int,
    last: int,
    *,
    seed: int = VALIDATION_SEED,
    batch_size: int = VALIDATION_BATCH,
) -> float:
    """The validation loss (``val_loss`` of the training log) of a saved voxel model (a folder
    with ``model.json`` + ``model.safetensors``: L2LFlows or BIB-AE) on showers
    ``[first, last)`` of the file ``data_path``, voxelised on the model's grid.

    With the default ``seed`` and ``batch_size`` (those of training) it equals the value
    logged in training for the same weights and showers.
    """
    from calogen.data.voxels import SparseVoxels
    from calogen.models.registry import get_entry

    info = read_model_info(model_dir)
    kind = str(info.get("calogen_model"))
    module = get_entry(kind).import_module()
    if not hasattr(module, "validation_losses"):
        raise UsageError(f"{model_dir}: a '{kind}' model has no validation loss")
    if not 0 <= int(first) < int(last):
        raise UsageError(f"validation showers [{first}, {last}): need 0 <= first < last")
    model = module.load_model(model_dir, info)
    cfg = model.config
    voxels = SparseVoxels.from_file(
        data_path,
        cfg.grid,
        int(last),
        straighten=bool(getattr(cfg, "axis_frame", False)),
        start=int(first),
    )
    if len(voxels) != int(last) - int(first):
        raise UsageError(f"{data_path}: holds fewer than {last} showers")
    losses = module.validation_losses(model, voxels, seed=seed, batch_size=batch_size)
    return float(losses["val_loss"])


def energy_range(info: dict[str, Any]) -> tuple[float, float]:
    """Incident energies (GeV) of a model's training data, from its ``model.json``."""
    lo, hi = info.get("energy_range_gev", DEFAULT_ENERGY_RANGE_GEV)
    return float(lo), float(hi)


@dataclass
class OccupancyReference:
    """What an occupancy fit compares with (see :func:`occupancy_reference`)."""

    calorimeter: Any
    packed: Any  #: PackedPoints of the data showers (detector frame)
    n_points: NDArray[np.float64]  #: [S] points per shower
    hits: NDArray[np.float64]  #: [S] cells above threshold per shower
    energies: NDArray[np.float64]  #: [S] incident energies, GeV
    directions: NDArray[np.float64] | None  #: [S, 3] unit vectors (None: all normal)

    def subset(self, showers: NDArray[np.integer]) -> OccupancyReference:
        """The same reference restricted to ``showers`` (indices, in that order)."""
        showers = np.asarray(showers, np.int64)
        return OccupancyReference(
            calorimeter=self.calorimeter,
            packed=self.packed.select(showers),
            n_points=self.n_points[showers],
            hits=self.hits[showers],
            energies=self.energies[showers],
            directions=None if self.directions is None else self.directions[showers],
        )


def occupancy_reference(data: Any, n_showers: int, geometry: str) -> OccupancyReference:
    """The first ``n_showers`` showers of each file of ``data`` (one path or several) on the
    cells of ``geometry`` (``"slab"`` or ``"ild"``): points, hits, energies, directions."""
    from calogen.data.io import ShowerFile
    from calogen.data.packed import PackedPoints, pack
    from calogen.geometry import get_calorimeter, project

    try:
        calorimeter = get_calorimeter(geometry)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    parts, hits, energies, directions = [], [], [], []
    for path in data_paths(data):
        with ShowerFile(path) as f:
            real = f.read(0, min(n_showers, len(f)))
        parts.append(pack(real))
        hits.append(project(real, calorimeter).hits_per_shower().astype(np.float64))
        energies.append(real.energies.reshape(-1).astype(np.float64))
        n = len(parts[-1].counts)
        dirs = real.directions
        directions.append(np.tile([0.0, 0.0, 1.0], (n, 1)) if dirs is None else dirs)
    counts = np.concatenate([p.counts for p in parts])
    packed = PackedPoints(
        points=np.concatenate([p.points for p in parts]),
        shower=np.repeat(np.arange(len(counts), dtype=np.int64), counts),
        counts=counts,
    )
    dirs_all = np.concatenate(directions).astype(np.float64)
    return OccupancyReference(
        calorimeter=calorimeter,
        packed=packed,
        n_points=counts.astype(np.float64),
        hits=np.concatenate(hits),
        energies=np.concatenate(energies),
        directions=None if np.all(dirs_all[:, 2] >= 1.0) else dirs_all,
    )


def save_occupancy(
    model_dir: Path,
    info: dict[str, Any],
    correction: Any,
    ref: OccupancyReference,
    n_generated: NDArray[np.float64],
    hits_generated: NDArray[np.float64],
    **more: Any,
) -> dict[str, Any]:
    """Store a fitted occupancy correction in ``model_dir`` (``occupancy.json`` and the
    ``occupancy`` entry of ``info``, written to ``model.json``) and return the fit's summary:
    data and uncorrected generated showers (``n_generated``, ``hits_generated``), plus
    ``more``."""
    from calogen.models.training import write_json

    info["occupancy"] = correction.to_dict()
    correction.save(model_dir / "occupancy.json")
    write_json(model_dir / MODEL_JSON, info)
    return {
        "model": str(model_dir),
        "showers": len(ref.energies),
        "mean_hits_data": float(ref.hits.mean()),
        "mean_hits_generated_uncorrected": float(hits_generated.mean()),
        "mean_points_data": float(ref.n_points.mean()),
        "mean_points_generated": float(n_generated.mean()),
        "factor_at_mean_points": float(correction.factor([ref.n_points.mean()])[0]),
        **more,
    }


class GeneratorBase:
    """The common part of the models' :class:`~calogen.generator.Generator` classes.

    ``max_points`` is the number of voxels of a voxel model (its config has a ``grid``, kept
    as :attr:`grid`) or the config's ``max_points`` for a point-cloud model; ``name``
    defaults to the class's ``default_name``.
    """

    supports_direction = False
    default_name = "model"

    def __init__(
        self,
        model: nn.Module,
        energy_range_gev: tuple[float, float] = DEFAULT_ENERGY_RANGE_GEV,
        name: str | None = None,
    ) -> None:
        self.model: Any = model.eval()
        self.name = name or self.default_name
        self.energy_range_gev = (float(energy_range_gev[0]), float(energy_range_gev[1]))
        config = self.model.config
        self.grid = getattr(config, "grid", None)
        self.max_points = int(config.max_points if self.grid is None else self.grid.n_voxels)

    @staticmethod
    def torch_generator(seed: int | np.random.Generator | None) -> torch.Generator:
        """A torch generator seeded by one draw of ``as_rng(seed)``."""
        return torch.Generator().manual_seed(int(as_rng(seed).integers(0, 2**62)))

    def refuse_directions(self, directions: object) -> None:
        """A one-line error for directions given to a normal-incidence model."""
        if directions is not None:
            raise UsageError(
                f"{self.name} does not support incident directions (normal incidence only)"
            )


__all__ = [
    "CORRECTION_SHOWERS",
    "DEFAULT_ENERGY_RANGE_GEV",
    "VALIDATION_BATCH",
    "VALIDATION_SEED",
    "FitCorrections",
    "GeneratorBase",
    "ModelConfig",
    "OccupancyReference",
    "ShowerFlowTraining",
    "TrainerBase",
    "ValidationTraining",
    "correction_showers",
    "data_label",
    "data_paths",
    "energy_range",
    "export_voxel_model",
    "load_config_model",
    "load_folder",
    "occupancy_reference",
    "run_model_training",
    "save_occupancy",
    "shower_flow_step",
    "stored_checkpoint",
    "train_model",
    "training_config",
    "training_info",
    "validation_loss",
    "validation_split",
    "voxel_trainer",
]
