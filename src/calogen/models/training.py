"""Training infrastructure shared by the learned models: checkpoints, EMA, a resumable loop.

No pickle anywhere: tensors (weights, optimizer moments, EMA weights, RNG states) go into
``safetensors`` files, everything else (configuration, iteration, data normalisation,
non-tensor optimizer state, numpy RNG states, loss history) into JSON. Loading refuses files
that are not safetensors (e.g. ``torch.save`` zip/pickle files) with a
:class:`~calogen.errors.CalogenError`.

Layout of a training output folder ``OUT``::

    OUT/model.json, OUT/model.safetensors     the usable model (updated at each checkpoint)
    OUT/checkpoints/ckpt-00001000.safetensors  tensors of the latest complete checkpoint
    OUT/checkpoints/ckpt-00001000.json         its JSON part (written last = commit marker)
    OUT/train_log.json                         loss history (+ validation losses, if on)

Files are written under a temporary name and renamed, so a run killed while writing leaves
the previous complete checkpoint in place. Older checkpoints are deleted after a newer one is
complete (``keep`` most recent are kept).

Resume exactness: a checkpoint holds the module weights, optimizer states, the global torch
RNG state and any named RNGs of the trainer, and the iteration. Trainers should make batch
selection and noise a function of (seed, iteration) or of a saved RNG, and learning rates a
function of the iteration (:func:`lr_schedule`), so that a resumed run continues exactly.

Distributed data parallel training: :func:`run_training` trains on several processes when
it is started by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment; ``calogen train``
needs no other option); see :func:`run_training` for what each rank does.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from calogen.data.io import check_folder_writable
from calogen.errors import CalogenError, UsageError

#: Default number of CPU threads for training (tests use 1).
DEFAULT_TRAIN_THREADS = 2
MODEL_JSON = "model.json"
MODEL_TENSORS = "model.safetensors"
CHECKPOINT_DIR = "checkpoints"
FORMAT_VERSION = 1


def set_threads(threads: int | None, default: int = DEFAULT_TRAIN_THREADS) -> int:
    """Set ``torch.set_num_threads`` (and inter-op threads where still possible)."""
    n = int(default if threads is None else threads)
    if n <= 0:
        raise UsageError(f"--threads must be > 0, got {n}")
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # can only be set once, before any parallel work
        pass
    return n


# ---------------------------------------------------------------------------------------------
# safetensors files
# ---------------------------------------------------------------------------------------------


def check_safetensors(path: str | os.PathLike[str]) -> Path:
    """Raise :class:`CalogenError` unless ``path`` is a readable safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise CalogenError(f"{path}: no such file")
    with path.open("rb") as f:
        head = f.read(9)
    # a safetensors header length whose low byte is 0x80 must not read as a pickle
    if head[8:9] != b"{" and (head[:2] == b"PK" or head[:1] == b"\x80"):
        raise CalogenError(
            f"{path}: is a pickle/torch.save file; calogen only loads safetensors (refused)"
        )
    if len(head) < 9:
        raise CalogenError(f"{path}: not a safetensors file (too short)")
    (header_len,) = struct.unpack("<Q", head[:8])
    if head[8:9] != b"{" or header_len > path.stat().st_size - 8:
        raise CalogenError(f"{path}: not a safetensors file (refused)")
    return path


def _atomic_write_bytes(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_tensors(
    path: str | os.PathLike[str], tensors: dict[str, Tensor], metadata: dict[str, str] | None = None
) -> Path:
    """Write tensors to a safetensors file atomically (copies; shared storage is fine)."""
    path = Path(path)
    flat = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}

    def write(tmp: Path) -> None:
        save_file(flat, str(tmp), metadata=metadata)
        os.chmod(tmp, 0o644)

    _atomic_write_bytes(path, write)
    return path


def load_tensors(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a safetensors file (refusing anything else)."""
    path = check_safetensors(path)
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise CalogenError(f"{path}: cannot read safetensors file: {exc}") from None


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write JSON atomically."""
    path = Path(path)
    text = json.dumps(data, indent=2, sort_keys=False)
    _atomic_write_bytes(path, lambda tmp: tmp.write_text(text))
    return path


def read_json(path: str | os.PathLike[str]) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not valid JSON: {exc}") from None


# ---------------------------------------------------------------------------------------------
# module / optimizer / RNG state <-> (tensors, JSON)
# ---------------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return {"__tuple__": [_jsonable(v) for v in value]}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise CalogenError(f"cannot store {type(value).__name__} in a checkpoint JSON")


def _from_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(_from_jsonable(v) for v in value["__tuple__"])
        return {k: _from_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_jsonable(v) for v in value]
    return value


def optimizer_state(
    optimizer: torch.optim.Optimizer, prefix: str
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimizer's state dict into tensors (``prefix.state.i.key``) and JSON."""
    sd = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    state_json: dict[str, dict[str, Any]] = {}
    for index, entry in sd["state"].items():
        plain: dict[str, Any] = {}
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"{prefix}.state.{index}.{key}"] = value
            else:
                plain[key] = _jsonable(value)
        state_json[str(index)] = plain
    meta = {"param_groups": _jsonable(sd["param_groups"]), "state": state_json}
    return tensors, meta


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, prefix: str, tensors: dict[str, Tensor], meta: dict[str, Any]
) -> None:
    """Inverse of :func:`optimizer_state`."""
    state: dict[int, dict[str, Any]] = {
        int(i): dict(_from_jsonable(v)) for i, v in meta.get("state", {}).items()
    }
    pattern = re.compile(rf"^{re.escape(prefix)}\.state\.(\d+)\.(.+)$")
    for name, value in tensors.items():
        match = pattern.match(name)
        if match:
            state.setdefault(int(match.group(1)), {})[match.group(2)] = value
    groups = _from_jsonable(meta["param_groups"])
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as exc:
        raise CalogenError(
            f"checkpoint optimizer '{prefix}' does not fit the model: {exc}"
        ) from None


RNG = torch.Generator | np.random.Generator


def rng_state(generators: dict[str, RNG]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Global torch RNG + named generators → (tensors, JSON)."""
    tensors = {"rng.torch_global": torch.get_rng_state()}
    meta: dict[str, Any] = {}
    for name, gen in generators.items():
        if isinstance(gen, torch.Generator):
            tensors[f"rng.{name}"] = gen.get_state()
        elif isinstance(gen, np.random.Generator):
            meta[name] = _jsonable(gen.bit_generator.state)
        else:
            raise CalogenError(f"unsupported RNG type {type(gen).__name__}")
    return tensors, meta


def load_rng_state(
    generators: dict[str, RNG], tensors: dict[str, Tensor], meta: dict[str, Any]
) -> None:
    if "rng.torch_global" in tensors:
        torch.set_rng_state(tensors["rng.torch_global"])
    for name, gen in generators.items():
        if isinstance(gen, torch.Generator):
            if f"rng.{name}" not in tensors:
                raise CalogenError(f"checkpoint lacks the state of RNG '{name}'")
            gen.set_state(tensors[f"rng.{name}"])
        else:
            if name not in meta:
                raise CalogenError(f"checkpoint lacks the state of RNG '{name}'")
            gen.bit_generator.state = _from_jsonable(meta[name])


def module_tensors(modules: dict[str, nn.Module]) -> dict[str, Tensor]:
    """``{name.param: tensor}`` of several modules' state dicts."""
    return {f"{name}.{k}": v for name, m in modules.items() for k, v in m.state_dict().items()}


#: safetensors metadata key of a :func:`compact_tensors` file (value: the float dtype)
COMPACT_METADATA_KEY = "calogen_compact"


def load_module_tensors(
    modules: dict[str, nn.Module],
    tensors: dict[str, Tensor],
    what: str = "checkpoint",
    *,
    compact: bool = False,
) -> None:
    """Load ``{name.param: tensor}`` into modules; mismatches → :class:`UsageError`.

    Floating-point tensors of another precision are cast to the module's. With ``compact``
    (a :func:`compact_tensors` file) the integer and boolean buffers that the file leaves out
    (the masks and orders that a module builds from its config) keep the module's own values.
    """
    for name, module in modules.items():
        prefix = f"{name}."
        sd = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if compact:
            for key, own in module.state_dict().items():
                if key not in sd and not own.is_floating_point():
                    sd[key] = own
        try:
            module.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0:2]
            raise UsageError(
                f"{what}: weights of '{name}' do not fit the configured network "
                f"({' '.join(s.strip() for s in first)})"
            ) from None


def compact_tensors(
    modules: dict[str, nn.Module], dtype: torch.dtype = torch.float16
) -> dict[str, Tensor]:
    """``{name.param: tensor}`` of ``modules`` for shipping a model in a small file: floating
    -point tensors in ``dtype`` (float16: half the bytes; relative rounding 5e-4), integer and
    boolean buffers left out (they are structure that the module rebuilds from its config,
    e.g. the masks of masked autoregressive flows; :func:`load_module_tensors` keeps them).
    Only for models whose structure buffers do not depend on training: check the shipped
    model's fidelity after compacting."""
    out: dict[str, Tensor] = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            if value.is_floating_point():
                if value.abs().max() > torch.finfo(dtype).max:
                    raise UsageError(f"{name}.{key}: values beyond the range of {dtype}")
                out[f"{name}.{key}"] = value.detach().to(dtype)
    return out


class EMA(nn.Module):
    """Exponential moving average of a module's parameters (``shadow``; buffers copied)."""

    def __init__(self, module: nn.Module, decay: float = 0.999) -> None:
        super().__init__()
        self.decay = float(decay)
        self.shadow = copy.deepcopy(module).requires_grad_(False).eval()

    @torch.no_grad()
    def update(self, module: nn.Module, decay: float | None = None) -> None:
        d = self.decay if decay is None else float(decay)
        for ema_p, p in zip(self.shadow.parameters(), module.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1.0 - d)
        for ema_b, b in zip(self.shadow.buffers(), module.buffers(), strict=True):
            ema_b.copy_(b)


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL divergence (nats) of ``N(mu, exp(logvar))`` from ``N(0, 1)``, per dimension (same
    shape as ``mu``): the VAE term of CaloClouds' EPiC encoder and of the BIB-AE."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())


def lr_schedule(
    iteration: int,
    total: int,
    lr_start: float,
    lr_end: float,
    kind: str = "cosine",
    warmup: int = 0,
) -> float:
    """Learning rate at ``iteration`` (a pure function, so resumed runs match exactly).

    ``kind``: ``"constant"``, ``"linear"``, ``"cosine"`` or ``"exponential"`` from
    ``lr_start`` to ``lr_end`` over ``total`` iterations, after a linear warm-up.
    """
    if warmup and iteration < warmup:
        return lr_start * (iteration + 1) / warmup
    frac = min(max((iteration - warmup) / max(total - warmup, 1), 0.0), 1.0)
    if kind == "constant":
        return lr_start
    if kind == "linear":
        return lr_start + (lr_end - lr_start) * frac
    if kind == "cosine":
        return lr_end + 0.5 * (lr_start - lr_end) * (1 + math.cos(math.pi * frac))
    if kind == "exponential":
        return lr_start * (lr_end / lr_start) ** frac
    raise UsageError(f"unknown learning-rate schedule '{kind}'")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(
    directory: str | os.PathLike[str],
    iteration: int,
    *,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    generators: dict[str, RNG] | None = None,
    extra_tensors: dict[str, Tensor] | None = None,
    extra_json: dict[str, Any] | None = None,
    keep: int = 1,
) -> Path:
    """Write ``ckpt-<iteration>.safetensors`` + ``.json`` into ``directory``; return the JSON.

    The JSON (written last, atomically) names the tensor file and its SHA-256; older
    checkpoints beyond the ``keep`` most recent are deleted afterwards.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = module_tensors(modules)
    optim_meta: dict[str, Any] = {}
    for name, opt in (optimizers or {}).items():
        t, meta = optimizer_state(opt, f"optim.{name}")
        tensors.update(t)
        optim_meta[name] = meta
    rng_tensors, rng_meta = rng_state(generators or {})
    tensors.update(rng_tensors)
    for key, value in (extra_tensors or {}).items():
        tensors[f"extra.{key}"] = value
    stem = f"ckpt-{iteration:08d}"
    tensor_path = save_tensors(directory / f"{stem}.safetensors", tensors)
    meta = {
        "format_version": FORMAT_VERSION,
        "iteration": int(iteration),
        "tensors": tensor_path.name,
        "sha256": _sha256(tensor_path),
        "optimizers": optim_meta,
        "rng": rng_meta,
        "extra": _jsonable(extra_json or {}),
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    json_path = write_json(directory / f"{stem}.json", meta)
    for old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
        old.with_suffix(".safetensors").unlink(missing_ok=True)
    return json_path


def list_checkpoints(directory: str | os.PathLike[str]) -> list[Path]:
    """Checkpoint JSON files in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(directory.glob("ckpt-*.json"))


def latest_checkpoint(directory: str | os.PathLike[str]) -> Path | None:
    """Newest complete checkpoint (JSON whose tensor file exists with the recorded hash)."""
    for path in reversed(list_checkpoints(directory)):
        try:
            meta = json.loads(path.read_text())
            tensors = path.with_name(meta["tensors"])
            if tensors.is_file() and _sha256(tensors) == meta["sha256"]:
                return path
        except (OSError, ValueError, KeyError):
            continue
    return None


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    generators: dict[str, RNG] | None = None,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Restore a checkpoint (JSON path) in place; return ``(json, extra_tensors)``."""
    path = Path(path)
    meta = read_json(path)
    if not isinstance(meta, dict) or "tensors" not in meta:
        raise UsageError(f"{path}: not a calogen checkpoint")
    check_format_version(meta.get("format_version", 1), path)
    tensors = load_tensors(path.with_name(meta["tensors"]))
    load_module_tensors(modules, tensors, what=str(path))
    for name, opt in (optimizers or {}).items():
        if name not in meta.get("optimizers", {}):
            raise CalogenError(f"{path}: checkpoint lacks optimizer '{name}'")
        load_optimizer_state(opt, f"optim.{name}", tensors, meta["optimizers"][name])
    load_rng_state(generators or {}, tensors, meta.get("rng", {}))
    extra = {k[len("extra.") :]: v for k, v in tensors.items() if k.startswith("extra.")}
    meta["extra"] = _from_jsonable(meta.get("extra", {}))
    return meta, extra


# ---------------------------------------------------------------------------------------------
# model folders
# ---------------------------------------------------------------------------------------------


def save_model(
    model_dir: str | os.PathLike[str],
    *,
    model_type: str,
    modules: dict[str, nn.Module],
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors`` (weights) and ``model.json`` (type, config, extras)."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    save_tensors(model_dir / MODEL_TENSORS, module_tensors(modules))
    info = {
        "calogen_model": model_type,
        "format_version": FORMAT_VERSION,
        "config": _jsonable(config),
        **{k: _jsonable(v) for k, v in (extra or {}).items()},
    }
    write_json(model_dir / MODEL_JSON, info)
    return model_dir


def check_run_folder(out: str | os.PathLike[str]) -> Path:
    """Check, before any work, that a training output folder can be used or created."""
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise UsageError(f"{out}: exists and is not a folder (--out names the run's folder)")
    check_folder_writable(out)
    return out


def read_model_info(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``model.json`` of a model folder, with one-line errors for missing/invalid pieces."""
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise UsageError(f"{model_dir}: no such model folder")
    if not model_dir.is_dir():
        raise UsageError(f"{model_dir}: not a folder (expected a model folder with {MODEL_JSON})")
    if not (model_dir / MODEL_JSON).is_file():
        raise UsageError(f"{model_dir}: no {MODEL_JSON} (not a trained model folder)")
    info = read_json(model_dir / MODEL_JSON)
    if not isinstance(info, dict) or "calogen_model" not in info or "config" not in info:
        raise UsageError(f"{model_dir / MODEL_JSON}: not a calogen model description")
    check_format_version(info.get("format_version", 1), model_dir / MODEL_JSON)
    if not isinstance(info["calogen_model"], str):
        raise UsageError(f"{model_dir / MODEL_JSON}: 'calogen_model' must be a model name")
    if not isinstance(info["config"], dict):
        raise UsageError(f"{model_dir / MODEL_JSON}: 'config' must be a mapping of names to values")
    if not (model_dir / MODEL_TENSORS).is_file():
        raise UsageError(f"{model_dir}: no {MODEL_TENSORS} (weights missing)")
    return _from_jsonable(info)


def check_format_version(version: Any, where: str | os.PathLike[str]) -> int:
    """The ``format_version`` of a model folder or checkpoint; refuses newer ones.

    Folders written before the field existed count as version 1.
    """
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise UsageError(f"{where}: 'format_version' must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise UsageError(
            f"{where}: format version {version} is newer than this calogen reads "
            f"({FORMAT_VERSION}); upgrade calogen to use it"
        )
    return version


def load_model_tensors(model_dir: str | os.PathLike[str], modules: dict[str, nn.Module]) -> None:
    """Load ``model.safetensors`` into ``modules``."""
    path = Path(model_dir) / MODEL_TENSORS
    try:
        tensors = load_tensors(path)
        compact = COMPACT_METADATA_KEY in tensors_metadata(path)
    except CalogenError as exc:
        raise UsageError(str(exc)) from None
    load_module_tensors(modules, tensors, what=str(path), compact=compact)


def tensors_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The metadata of a safetensors file (``{}`` if it has none)."""
    from safetensors import safe_open

    path = check_safetensors(path)
    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types
        raise CalogenError(f"{path}: cannot read safetensors file: {exc}") from None


def save_compact_model(
    model_dir: str | os.PathLike[str],
    modules: dict[str, nn.Module],
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Rewrite ``model.safetensors`` of a model folder in the :func:`compact_tensors` form
    (for shipping a model inside the package; ``model.json`` is left as it is)."""
    return save_tensors(
        Path(model_dir) / MODEL_TENSORS,
        compact_tensors(modules, dtype),
        metadata={COMPACT_METADATA_KEY: str(dtype).removeprefix("torch.")},
    )


# ---------------------------------------------------------------------------------------------
# distributed data parallel training
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistributedEnv:
    """Rank, number of processes and local rank (GPU index on its node) of a torchrun job."""

    rank: int
    world_size: int
    local_rank: int


def distributed_env() -> DistributedEnv | None:
    """The torchrun environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``), ``None`` if absent.

    A ``WORLD_SIZE`` of 1 counts as a single process.
    """
    if "WORLD_SIZE" not in os.environ:
        return None
    try:
        world_size = int(os.environ["WORLD_SIZE"])
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise UsageError("WORLD_SIZE, RANK and LOCAL_RANK must be integers") from None
    if world_size <= 1:
        return None
    if not 0 <= rank < world_size:
        raise UsageError(f"RANK must be in 0..{world_size - 1}, got {rank}")
    return DistributedEnv(rank, world_size, local_rank)


def is_main_process() -> bool:
    """True unless this is a torchrun rank other than 0 (which prints and writes nothing)."""
    env = distributed_env()
    return env is None or env.rank == 0


def rank_seed(seed: int, rank: int) -> int:
    """The seed of ``rank`` derived from the run's ``seed`` (a 32-bit integer).

    Trainers combine it with the iteration, so a rank's randomness comes from
    ``(seed, rank, iteration)``; ranks draw different batches and noise.
    """
    state = np.random.SeedSequence([int(seed), int(rank)]).generate_state(1, np.uint32)
    return int(state[0])


class _DistributedRun:
    """What :func:`run_training` does differently on one rank of a torchrun job.

    * joins the process group (gloo for parameters on the CPU, NCCL for parameters on a GPU);
    * averages gradients across ranks: a hook on every trained parameter (those of the
      trainer's optimizers) all-reduces its gradient as soon as ``backward`` has accumulated
      it, so gradient clipping and the optimizer step see the averaged gradient;
    * while ``trainer.step`` runs, swaps the trainer's ``seed`` for :func:`rank_seed` and its
      ``data`` for ``data.shard(rank, world_size)`` (when the data has ``shard``); outside the
      step (checkpoint JSON, export) the trainer keeps the run's seed and full data;
    * broadcasts all module weights and buffers from rank 0 before the first step and checks
      at every checkpoint that the ranks' weights are still identical.
    """

    def __init__(self, trainer: Trainer, env: DistributedEnv) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.trainer = trainer
        self.rank, self.world = env.rank, env.world_size
        params: list[nn.Parameter] = []
        seen: set[int] = set()
        for opt in trainer.optimizers().values():
            for group in opt.param_groups:
                for p in group["params"]:
                    if p.requires_grad and id(p) not in seen:
                        seen.add(id(p))
                        params.append(p)
        self.device = params[0].device if params else torch.device("cpu")
        self.created = False
        if not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(env.local_rank)
            dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size)
            self.created = True
        elif dist.get_world_size() != self.world or dist.get_rank() != self.rank:
            raise CalogenError("torch.distributed is initialised with another rank/world size")
        self.hooks = [p.register_post_accumulate_grad_hook(self._average) for p in params]
        self.swaps: dict[str, tuple[Any, Any]] = {}
        seed = getattr(trainer, "seed", None)
        if isinstance(seed, int):
            self.swaps["seed"] = (seed, rank_seed(seed, self.rank))
        self.seed = seed if isinstance(seed, int) else 0
        data = getattr(trainer, "data", None)
        if callable(getattr(data, "shard", None)):
            self.swaps["data"] = (data, data.shard(self.rank, self.world))  # type: ignore[union-attr]

    def _average(self, param: Tensor) -> None:
        grad = param.grad
        if grad is not None:
            self.dist.all_reduce(grad)
            grad.div_(self.world)

    def start(self) -> None:
        """Rank 0's weights and buffers on every rank (as DDP does when it wraps a module)."""
        with torch.no_grad():
            for module in self.trainer.modules().values():
                for tensor in module.state_dict().values():
                    if tensor.is_contiguous():
                        self.dist.broadcast(tensor, src=0)
                    else:
                        buf = tensor.contiguous()
                        self.dist.broadcast(buf, src=0)
                        tensor.copy_(buf)

    def step(self, iteration: int) -> dict[str, float]:
        """The trainer's step on this rank's seed and shard; losses averaged over ranks.

        The global torch RNG is seeded from ``(seed, rank, iteration)`` first, so that a
        resumed distributed run repeats an uninterrupted one even for trainers that use it.
        """
        trainer = self.trainer
        torch.manual_seed(rank_seed(self.seed, self.rank) * 1_000_003 + iteration)
        for name, (_, mine) in self.swaps.items():
            setattr(trainer, name, mine)
        try:
            losses = trainer.step(iteration)
        finally:
            for name, (run, _) in self.swaps.items():
                setattr(trainer, name, run)
        keys = list(losses)
        values = torch.tensor(
            [float(losses[k]) for k in keys], dtype=torch.float64, device=self.device
        )
        self.dist.all_reduce(values)
        return dict(zip(keys, (values / self.world).tolist(), strict=True))

    def check_in_sync(self, iteration: int) -> None:
        """Raise :class:`CalogenError` if the ranks' weights differ (a checksum per rank)."""
        checksum = torch.zeros(2, dtype=torch.float64, device=self.device)
        with torch.no_grad():
            for module in self.trainer.modules().values():
                for tensor in module.state_dict().values():
                    if tensor.is_floating_point():
                        t = torch.nan_to_num(tensor.to(self.device, torch.float64), 0.0, 0.0, 0.0)
                        checksum += torch.stack([t.sum(), t.abs().sum()])
        both = torch.cat([checksum, -checksum])  # max over ranks of c and of -c (= -min c)
        self.dist.all_reduce(both, op=self.dist.ReduceOp.MAX)
        if not torch.equal(both[:2], -both[2:]):
            raise CalogenError(
                f"distributed training: the ranks' weights differ after iteration {iteration} "
                "(a trainer step must run the same backward passes on every rank)"
            )

    def close(self, ok: bool) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks = []
        if ok:
            self.dist.barrier()  # ranks > 0 return after rank 0 wrote the final checkpoint
        if self.created and ok:
            self.dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------


class Trainer(Protocol):
    """What :func:`run_training` needs from a model's trainer."""

    def modules(self) -> dict[str, nn.Module]:
        """Everything with weights to checkpoint (including EMA copies)."""
        ...

    def optimizers(self) -> dict[str, torch.optim.Optimizer]: ...

    def generators(self) -> dict[str, RNG]:
        """Named RNGs whose state must survive a resume."""
        ...

    def step(self, iteration: int) -> dict[str, float]:
        """One optimisation step; returns scalar losses (first one shown as ``loss``)."""
        ...

    def checkpoint_json(self) -> dict[str, Any]:
        """Config, normalisation etc. to store in every checkpoint."""
        ...

    def export(self, out: Path) -> None:
        """Write the usable model (``model.json`` + ``model.safetensors``) into ``out``."""
        ...


def run_training(
    trainer: Trainer,
    out: str | os.PathLike[str],
    *,
    iterations: int,
    checkpoint_every: int,
    resume: bool = False,
    progress: bool = True,
    log_every: int = 50,
    stop_after: int | None = None,
    desc: str = "train",
    validate: Callable[[], dict[str, float]] | None = None,
    validate_every: int = 0,
) -> dict[str, Any]:
    """Run (or resume) a training loop with tqdm progress and periodic atomic checkpoints.

    Distributed data parallel training: started by ``torchrun`` (``WORLD_SIZE`` > 1; e.g.
    ``torchrun --nproc-per-node 4 -m calogen train ...``), every rank runs this loop on
    the same model:

    * backend gloo when the trained parameters live on the CPU, NCCL when on a GPU;
    * gradients are averaged across ranks as soon as ``backward`` produced them (hooks on the
      parameters of ``trainer.optimizers()``; no change to the trainers), so clipping and
      the optimizer step see the average. With mean-reduced losses and equal per-rank batch
      sizes, one step on ``k`` ranks with batch ``B`` each equals one single-process step on
      the union batch of ``k·B``;
    * each rank draws its batches from its own seed :func:`rank_seed` ``(seed, rank)``
      combined with the iteration by the trainer, and from its shard of the data: when the
      trainer's ``data`` has ``shard(rank, world_size)`` (e.g.
      :class:`~calogen.models.caloclouds.TrainingData`: every ``world_size``-th shower), the
      step sees only that shard; other data are sampled whole with the rank's seed. (The
      trainer's ``seed`` and ``data`` attributes are swapped only while ``step`` runs, so
      checkpoints and the exported model describe the whole run.) Before each step the
      global torch RNG is seeded from ``(seed, rank, iteration)``, so a resumed distributed
      run repeats an uninterrupted one (with the same number of ranks);
    * rank 0's weights are broadcast before the first step, and at each checkpoint the
      ranks check that their weights are still identical;
    * only rank 0 shows the progress bar and writes checkpoints, the model and
      ``train_log.json``; logged losses are means over the ranks. A resume reads the
      checkpoint on every rank, so ``out`` must be on a file system that all ranks see.

    Args:
        trainer: see :class:`Trainer`.
        out: output folder (created; must not hold a previous run unless ``resume``).
        iterations: total iterations of the run.
        checkpoint_every: iterations between checkpoints (also one at the end).
        resume: continue from the newest complete checkpoint in ``out/checkpoints``.
        log_every: iterations between entries of the loss history.
        stop_after: stop (with a checkpoint) after this iteration — simulates an interrupted
            run in tests.
        validate: the validation losses of the current weights on held-out showers
            (``{"val_loss": ..., <more>}``; must not touch the training's randomness), called
            on rank 0 every ``validate_every`` iterations and after the last one
            (``iterations``; not at ``stop_after``, so an interrupted and resumed run
            validates at the same iterations as an uninterrupted one). Those iterations
            always get a history entry, which holds the validation losses beside the means
            of the training losses; the lowest finite ``val_loss`` and its iteration are kept
            as ``best_val_loss`` (``{"iteration", "val_loss"}``) in every checkpoint (so a
            resume keeps it) and in ``train_log.json``.

    Returns:
        ``{"iteration", "history", "seconds", "best_val_loss"}`` where history is a list of
        ``{"iteration": i, <loss>: mean over the interval}`` (plus the ``val_*`` losses at
        validation iterations) and ``best_val_loss`` is ``None`` without validation.
    """
    out = check_run_folder(out)
    ckpt_dir = out / CHECKPOINT_DIR
    start = 0
    history: list[dict[str, float]] = []
    elapsed_before = 0.0
    best_val: dict[str, float] | None = None
    if validate is not None and int(validate_every) <= 0:
        raise UsageError("validate_every must be > 0")
    if resume:
        latest = latest_checkpoint(ckpt_dir)
        if latest is None:
            raise UsageError(f"{out}: no complete checkpoint to resume from")
        meta, _ = load_checkpoint(
            latest,
            modules=trainer.modules(),
            optimizers=trainer.optimizers(),
            generators=trainer.generators(),
        )
        start = int(meta["iteration"])
        history = list(meta["extra"].get("history", []))
        elapsed_before = float(meta["extra"].get("seconds", 0.0))
        best_val = meta["extra"].get("best_val_loss")
    elif list_checkpoints(ckpt_dir):
        raise UsageError(
            f"{out}: holds checkpoints of an earlier run (use --resume or a new --out)"
        )
    env = distributed_env()
    ddp = _DistributedRun(trainer, env) if env is not None else None
    is_main = ddp is None or ddp.rank == 0
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
    if ddp is not None:
        ddp.start()
    step = trainer.step if ddp is None else ddp.step

    t0 = time.perf_counter()

    def save(iteration: int) -> None:
        extra = dict(trainer.checkpoint_json())
        extra["history"] = history
        extra["seconds"] = elapsed_before + time.perf_counter() - t0
        if best_val is not None:
            extra["best_val_loss"] = best_val
        # the model first: a complete checkpoint implies a usable model in ``out``
        trainer.export(out)
        save_checkpoint(
            ckpt_dir,
            iteration,
            modules=trainer.modules(),
            optimizers=trainer.optimizers(),
            generators=trainer.generators(),
            extra_json=extra,
        )
        write_json(
            out / "train_log.json",
            {
                "iteration": iteration,
                "history": history,
                "seconds": extra["seconds"],
                **{k: extra[k] for k in ("best_val_loss", "validation") if k in extra},
            },
        )

    from tqdm import tqdm

    bar = tqdm(
        total=iterations,
        initial=start,
        desc=desc,
        disable=not progress or not is_main,
        dynamic_ncols=True,
        mininterval=1.0,
    )
    sums: dict[str, float] = {}
    count = 0
    iteration = start
    last = iterations if stop_after is None else min(iterations, stop_after)
    finished = False
    try:
        for iteration in range(start, last):
            losses = step(iteration)
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            count += 1
            done = iteration + 1
            validating = validate is not None and (done % validate_every == 0 or done == iterations)
            if done % log_every == 0 or done == last or validating:
                entry = {"iteration": done, **{k: v / count for k, v in sums.items()}}
                if validating and is_main:
                    entry.update({k: float(v) for k, v in validate().items()})  # type: ignore[misc]
                    val = entry["val_loss"]
                    if math.isfinite(val) and (best_val is None or val < best_val["val_loss"]):
                        best_val = {"iteration": done, "val_loss": val}
                history.append(entry)
                bar.set_postfix({k: f"{v:.4g}" for k, v in entry.items() if k != "iteration"})
                sums, count = {}, 0
            bar.update(1)
            if done % checkpoint_every == 0 or done == last:
                if ddp is not None:
                    ddp.check_in_sync(done)
                if is_main:
                    save(done)
        finished = True
    except KeyboardInterrupt:
        bar.close()
        raise
    finally:
        if ddp is not None:
            ddp.close(ok=finished)
    bar.close()
    return {
        "iteration": last,
        "history": history,
        "seconds": elapsed_before + time.perf_counter() - t0,
        "best_val_loss": best_val,
    }


def iterate_chunks(n: int, size: int) -> Iterable[slice]:
    for first in range(0, n, size):
        yield slice(first, min(first + size, n))


__all__ = [
    "DEFAULT_TRAIN_THREADS",
    "EMA",
    "FORMAT_VERSION",
    "MODEL_JSON",
    "MODEL_TENSORS",
    "DistributedEnv",
    "Trainer",
    "check_format_version",
    "check_safetensors",
    "distributed_env",
    "is_main_process",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_model_tensors",
    "load_tensors",
    "lr_schedule",
    "rank_seed",
    "read_json",
    "read_model_info",
    "run_training",
    "save_checkpoint",
    "save_model",
    "save_tensors",
    "set_lr",
    "set_threads",
    "write_json",
]
