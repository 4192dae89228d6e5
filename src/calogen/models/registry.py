"""Model names → training and loading functions.

Every learned model lives in one module that provides:

* ``train(*, config, data, out, resume, seed, iterations, progress) -> dict`` — train from a
  shower file into the folder ``out`` (``config``: preset name or path to a YAML/JSON file);
* ``load_generator(model_dir, info) -> Generator`` — build a generator from a model folder
  (``info`` is the parsed ``model.json``);
* optionally ``fit_occupancy(model_dir, data, *, n_showers, seed, geometry) -> dict``.

A model folder holds ``model.json`` (``"calogen_model": <name>``, ``"format_version"``, the
config, the data normalisation, …) and ``model.safetensors``. :func:`load_generator` reads the
JSON to find the model type; a missing or corrupt file, a format version newer than this
calogen, an unknown model type or a config that does not fit the model type is a one-line
:class:`~calogen.errors.UsageError` (exit code 2 on the command line).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from calogen.errors import UsageError

if TYPE_CHECKING:  # this module is imported by the CLI parser: no torch at import time
    from calogen.generator import Generator


@dataclass(frozen=True)
class ModelEntry:
    """Where a model's functions live.

    Attributes:
        module: import path of the model module.
        description: one line for ``--help``.
        configs: preset config names.
        train, load, fit_occupancy: function names inside ``module`` (``fit_occupancy`` may be
            ``None`` when the model has no occupancy correction).
    """

    module: str
    description: str
    configs: tuple[str, ...] = ("small", "paper")
    train: str = "train"
    load: str = "load_generator"
    fit_occupancy: str | None = "fit_occupancy"

    def import_module(self) -> ModuleType:
        return importlib.import_module(self.module)


#: All trainable models by name.
MODELS: dict[str, ModelEntry] = {
    "caloclouds": ModelEntry(
        module="calogen.models.caloclouds",
        description="CaloClouds (2305.04847): DDPM PointWise Net, EPiC encoder, latent and "
        "shower flows, post-diffusion calibration",
    ),
    "caloclouds2": ModelEntry(
        module="calogen.models.caloclouds2",
        description="CaloClouds II (2309.05704): EDM PointWise Net conditioned on E, N and "
        "time, extended shower flow, per-layer calibration; Heun sampler (13 steps = 25 "
        "evaluations)",
    ),
    "caloclouds2-cm": ModelEntry(
        module="calogen.models.caloclouds2",
        description="CaloClouds II (CM): consistency model distilled from a caloclouds2 "
        "teacher, one evaluation per shower; 'train caloclouds2-cm' runs the whole recipe "
        "(teacher in OUT/teacher, distillation, corrections), resumable as a whole",
        train="train_cm",
    ),
    "l2lflows": ModelEntry(
        module="calogen.models.l2lflows",
        description="L2LFlows (2302.11594): 30x10x10 voxels; a MAF for the layer energies, "
        "one MAF per layer conditioned on the previous five layers",
        fit_occupancy=None,
    ),
    "bibae": ModelEntry(
        module="calogen.models.bibae",
        description="BIB-AE (2005.05334, 2303.18150): 30x30x30 voxels; 3-D conv VAE with "
        "WGAN-GP image and latent critics, MMD terms and a 1x1x1-conv post-processor; "
        "conditioned on E, incident angle and visible energy",
        fit_occupancy=None,
    ),
}


#: Models whose training takes several --data files.
MULTI_FILE_MODELS = ("caloclouds", "caloclouds2", "caloclouds2-cm", "bibae")
#: models whose training ends with fitted corrections (occupancy, radial map)
CORRECTED_MODELS = ("caloclouds", "caloclouds2", "caloclouds2-cm")


def get_entry(name: str) -> ModelEntry:
    try:
        return MODELS[name]
    except KeyError:
        raise UsageError(
            f"unknown model '{name}' (choose from {', '.join(sorted(MODELS))})"
        ) from None


def train_model(
    name: str,
    *,
    config: str,
    data: str | os.PathLike[str] | list[str],
    out: str | os.PathLike[str],
    resume: bool = False,
    seed: int = 0,
    iterations: int | None = None,
    threads: int | None = None,
    progress: bool = True,
    corrections: bool = True,
    n_showers: int | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Train model ``name``; returns the model's summary dict (iterations, losses, time).

    ``data``: one shower file, or several (concatenated) for the point-cloud models and
    the BIB-AE.
    ``corrections``: models with post-training corrections (the CaloClouds family) fit them
    on the training showers at the end; ``n_showers``: train on the first N showers only;
    ``device``: ``"cpu"`` or ``"cuda"`` (CaloClouds II and its one-step model).
    """
    from calogen.models.training import check_run_folder, set_threads

    entry = get_entry(name)
    if not isinstance(data, (str, os.PathLike)) and name not in MULTI_FILE_MODELS:
        raise UsageError(f"--data: '{name}' trains on one file, got {len(data)}")
    if not corrections and name not in CORRECTED_MODELS:
        raise UsageError(f"--no-corrections: '{name}' has no corrections to skip")
    check_device(device)
    set_threads(threads)
    check_run_folder(out)
    if resume:
        check_resume_model(out, name)
    train = getattr(entry.import_module(), entry.train)
    return train(
        config=config,
        data=data,
        out=out,
        resume=resume,
        seed=seed,
        iterations=iterations,
        progress=progress,
        corrections=corrections,
        n_showers=n_showers,
        device=device,
    )


def check_device(device: str) -> None:
    """Refuse a device this machine lacks (one line, before any work)."""
    if device not in ("cpu", "cuda"):
        raise UsageError(f"--device {device}: expected 'cpu' or 'cuda'")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is available on this machine")


def check_resume_model(out: str | os.PathLike[str], name: str) -> None:
    """Refuse ``--resume`` of a run of another model type (one line, before any work)."""
    from calogen.models.training import (
        CHECKPOINT_DIR,
        check_format_version,
        latest_checkpoint,
        read_json,
    )

    latest = latest_checkpoint(Path(out) / CHECKPOINT_DIR)
    if latest is None:
        return  # the model's train() reports the missing checkpoint
    meta = read_json(latest)
    check_format_version(meta.get("format_version", 1), latest)
    extra = meta.get("extra", {})
    stored = extra.get("model") if isinstance(extra, dict) else None
    if stored is not None and stored != name:
        raise UsageError(
            f"{out}: holds a '{stored}' run, not '{name}' (resume it with "
            f"'calogen train {stored} --resume', or train '{name}' into a new --out)"
        )


#: Folder of the default model that ships inside the package.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "default_model"


def load_generator(model_dir: str | os.PathLike[str] | None = None) -> Generator:
    """Build the :class:`~calogen.generator.Generator` of a trained model folder.

    ``None`` loads the default model shipped with the package (``calogen/default_model``).
    """
    from calogen.models.training import read_model_info

    if model_dir is None:
        if not (DEFAULT_MODEL_DIR / "model.json").exists():
            raise UsageError("no default model is shipped with this installation; pass --model DIR")
        model_dir = DEFAULT_MODEL_DIR
    info = read_model_info(model_dir)
    entry = _model_entry(model_dir, info)
    load = getattr(entry.import_module(), entry.load)
    return _with_model_errors(model_dir, info, load, Path(model_dir), info)


def _model_entry(model_dir: str | os.PathLike[str], info: dict[str, Any]) -> ModelEntry:
    """The registry entry of the model type named in a folder's ``model.json``."""
    name = info["calogen_model"]
    if name not in MODELS:
        raise UsageError(
            f"{model_dir}: model type '{name}' is not known to this calogen "
            f"(known: {', '.join(sorted(MODELS))})"
        )
    return MODELS[name]


def _with_model_errors(
    model_dir: str | os.PathLike[str], info: dict[str, Any], func: Any, *args: Any, **kwargs: Any
) -> Any:
    """Call ``func`` that reads a model folder; a description that does not fit the model
    type (another model's config, malformed entries) becomes one line naming the folder."""
    from calogen.models.training import MODEL_JSON

    name = info["calogen_model"]
    where = Path(model_dir) / MODEL_JSON
    try:
        return func(*args, **kwargs)
    except UsageError as exc:  # e.g. the config of another model type
        message = str(exc)
        if str(model_dir) in message:
            raise
        raise UsageError(f"{where}: cannot load model type '{name}': {message}") from None
    except (TypeError, ValueError, KeyError) as exc:  # malformed entries in the JSON
        first = (str(exc).strip().splitlines() or [""])[0]
        raise UsageError(
            f"{where}: invalid '{name}' model description ({type(exc).__name__}: {first})"
        ) from None


def fit_occupancy(
    model_dir: str | os.PathLike[str],
    data: str | os.PathLike[str] | list[str],
    *,
    n_showers: int = 1000,
    seed: int = 0,
    geometry: str = "slab",
    radial: bool = True,
    axis: bool = True,
    by_angle: bool = True,
    theta_edges_deg: list[float] | str | None = None,
    radial_energy: str | None = "interpolate",
    radial_layers: str = "absolute",
    radial_classes: list[str] | None = None,
    core_azimuth_mm: float | None = None,
    halo_clump: float | str | None = None,
    axis_tilt: bool = True,
    only_axis_tilt: bool = False,
    depth_stretch: bool = True,
) -> dict[str, Any]:
    """Fit and store the occupancy correction of a model folder; returns a summary.

    ``radial``: CaloClouds II models also fit the radial quantile correction first;
    ``axis``: angle-aware CaloClouds II models fit the per-layer axis shift last;
    ``by_angle``: and their occupancy and radial corrections per polar-angle bin (edges
    ``theta_edges_deg``, deg; ``None``: normal incidence and inclined showers);
    ``radial_energy``: how their radial maps apply in the incident energy ("bins", each
    shower its bin's map; "interpolate", linearly between the bins' centres; ``None``: as
    the model has it); ``radial_layers``: their radial maps' layer groups by layer index
    ("absolute") or relative to each shower's depth ("relative"); ``radial_classes``: maps
    of their own for classes of showers by depth and/or visible energy ("depth", "visible");
    ``core_azimuth_mm``: the radius (mm) of the core whose azimuths are spread evenly in
    energy (0: off; ``None``: what CaloClouds II fits end with,
    :data:`~calogen.calibration.CORE_AZIMUTH_RADIUS_MM`); ``halo_clump``: halo points per
    group sharing an azimuth, one number or ``"K,L:K2"`` (K2 from layer L on; 0 or 1: off;
    ``None``: :data:`~calogen.calibration.HALO_CLUMP_SPEC`); ``axis_tilt``: CaloClouds II
    models that mirror points fit the random axis tilt last (on the normal-incidence showers
    of ``data``); ``only_axis_tilt``: fit that tilt alone, keeping the other corrections;
    ``depth_stretch``: CaloClouds II models fit the spread of the Shower Flow's depth first
    (:class:`~calogen.calibration.DepthStretch`).
    """
    from calogen.data.io import ShowerFile
    from calogen.models.training import read_model_info

    info = read_model_info(model_dir)
    entry = _model_entry(model_dir, info)
    if entry.fit_occupancy is None:
        raise UsageError(f"model '{info['calogen_model']}' has no occupancy correction")
    from calogen.models.scaffold import data_paths

    for path in data_paths(data):  # before any work: the fit needs a few showers
        with ShowerFile(path) as f:
            if len(f) < 4:
                raise UsageError(f"{path}: {len(f)} showers; the occupancy fit needs at least 4")
            f.check_columns()
    func = getattr(entry.import_module(), entry.fit_occupancy)
    kwargs: dict[str, Any] = {"n_showers": n_showers, "seed": seed, "geometry": geometry}
    if info["calogen_model"] in ("caloclouds2", "caloclouds2-cm"):
        kwargs["radial"] = radial
        kwargs["axis"] = axis
        kwargs["by_angle"] = by_angle
        kwargs["theta_edges_deg"] = theta_edges_deg
        kwargs["radial_energy"] = radial_energy
        kwargs["radial_layers"] = radial_layers
        kwargs["radial_classes"] = tuple(radial_classes or ())
        if core_azimuth_mm is not None:
            kwargs["core_azimuth_mm"] = core_azimuth_mm
        if halo_clump is not None:
            kwargs["halo_clump"] = halo_clump
        kwargs["axis_tilt"] = axis_tilt
        kwargs["depth_stretch"] = depth_stretch
        if only_axis_tilt:
            from calogen.models.caloclouds2 import fit_axis_tilt

            return _with_model_errors(
                model_dir,
                info,
                fit_axis_tilt,
                Path(model_dir),
                data,
                n_showers=n_showers,
                seed=seed,
                geometry=geometry,
            )
    elif only_axis_tilt:
        raise UsageError("--only-axis-tilt: only CaloClouds II models have an axis tilt")
    elif radial_classes:
        raise UsageError("--radial-classes: only CaloClouds II models have a radial map")
    elif theta_edges_deg is not None:
        raise UsageError("--angle-edges: only angle-aware CaloClouds II models have angle classes")
    elif core_azimuth_mm or halo_clump:
        raise UsageError("--core-azimuth, --halo-clump: only CaloClouds II models have them")
    return _with_model_errors(model_dir, info, func, Path(model_dir), data, **kwargs)


__all__ = [
    "MODELS",
    "ModelEntry",
    "check_resume_model",
    "fit_occupancy",
    "get_entry",
    "load_generator",
    "train_model",
]
