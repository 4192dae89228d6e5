"""From a shower file to a finished one-step model: ``calogen train caloclouds2-cm``.

Three stages, each resumable, run one after the other into one output folder ``OUT``:

1. ``teacher``: the CaloClouds II teacher (EDM) in ``OUT/teacher``
   (:func:`~calogen.models.caloclouds2.train`, without corrections: the teacher is a means);
2. ``distillation``: consistency distillation into ``OUT``
   (:func:`~calogen.models.caloclouds2.distill`);
3. ``corrections``: the student's radial map and occupancy correction, fitted on the first
   (up to 1,000) training showers (:func:`~calogen.models.caloclouds2.fit_corrections`).

``OUT/pipeline.json`` records the run's settings (data, seed, both configs, corrections) and
the stages that are complete (the stage markers). Re-running the same command after a kill at
any point continues: complete stages are skipped, an interrupted training stage resumes from
its newest checkpoint (which repeats the uninterrupted run exactly), an interrupted correction
fit starts again (it depends only on the model, the data and the seed). The finished model is
therefore the same as the one of an uninterrupted run, bit for bit.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from calogen.data.io import ShowerFile
from calogen.errors import UsageError
from calogen.models import caloclouds2 as cc2
from calogen.models import scaffold
from calogen.models.configs import read_config_file
from calogen.models.training import (
    CHECKPOINT_DIR,
    check_run_folder,
    is_main_process,
    latest_checkpoint,
    read_json,
    write_json,
)

PIPELINE_JSON = "pipeline.json"
TEACHER_DIR = "teacher"
STAGES = ("teacher", "distillation", "corrections")


def pipeline_configs(
    config: str | dict[str, Any],
) -> tuple[cc2.CaloClouds2Config, cc2.DistillConfig]:
    """Teacher and distillation configs of ``config``: a preset name (``small``, ``paper``:
    the preset of both) or a YAML/JSON file (or dict) ``{base: small|paper, teacher: {...},
    distill: {...}}`` whose two sections override the ``base`` preset of each."""
    presets = cc2.PRESETS
    if isinstance(config, str) and config in presets:
        # a teacher preset's variants (e.g. 'small-angles') distil with their base's preset
        distill = config if config in cc2.DISTILL_PRESETS else config.split("-")[0]
        return cc2.get_config(config), cc2.get_distill_config(distill)
    spec = dict(config) if isinstance(config, dict) else read_config_file(config, presets)
    unknown = sorted(set(spec) - {"base", "teacher", "distill"})
    if unknown:
        raise UsageError(
            f"{config}: unknown keys {', '.join(unknown)} (a caloclouds2-cm config has "
            "'base', 'teacher' and 'distill')"
        )
    base = spec.get("base", "small")
    sections = []
    for key in ("teacher", "distill"):
        section = spec.get(key) or {}
        if not isinstance(section, dict):
            raise UsageError(f"{config}: '{key}' must be a mapping of names to values")
        sections.append({"base": base, **section})
    return cc2.get_config(sections[0]), cc2.get_distill_config(sections[1])


def _settings(
    config: str | dict[str, Any],
    data: Any,
    seed: int,
    iterations: int | None,
    n_showers: int | None,
    corrections: bool,
) -> dict[str, Any]:
    teacher, distill = pipeline_configs(config)
    for cfg in (teacher, distill):
        if iterations is not None:
            cfg.iterations = int(iterations)
        if n_showers is not None:
            cfg.max_showers = int(n_showers)
    if iterations is not None:
        teacher.shower_flow_iterations = min(teacher.shower_flow_iterations, int(iterations))
    return {
        "data": scaffold.data_paths(data),
        "seed": int(seed),
        "corrections": bool(corrections),
        "teacher_config": teacher.to_dict(),
        "distill_config": distill.to_dict(),
    }


def _same(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Names of the settings in which ``a`` and ``b`` differ (the data by resolved paths)."""
    differ = [k for k in a if k != "data" and a[k] != b.get(k)]
    paths = [[Path(p).resolve() for p in scaffold.data_paths(s["data"])] for s in (a, b)]
    if paths[0] != paths[1]:
        differ.insert(0, "data")
    return differ


def _has_checkpoint(folder: Path) -> bool:
    return latest_checkpoint(folder / CHECKPOINT_DIR) is not None


def train(
    *,
    config: str | dict[str, Any] = "small",
    data: Any,
    out: str | os.PathLike[str],
    resume: bool = False,
    seed: int = 0,
    iterations: int | None = None,
    progress: bool = True,
    corrections: bool = True,
    n_showers: int | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Teacher, distillation and corrections from ``data`` (one shower file or several,
    concatenated) into ``out`` (module docstring).

    Args:
        config: preset name or file (:func:`pipeline_configs`).
        resume: continue with the settings stored in ``out``; without it, a folder holding
            a pipeline run continues only if the settings are the same (the same command).
        iterations: both training stages' iterations (default: the configs').
        n_showers: train on the first N showers of ``data`` (default: the configs'
            ``max_showers``, else all).
        corrections: fit the student's corrections (stage 3; else it is skipped).
        device: where the two training stages run (``"cpu"``, ``"cuda"``; not part of the
            run's settings: a run may resume on another device).
    Returns:
        ``{"model", "out", "stages": {stage: summary}, "wall_seconds"}``.
    """
    t0 = time.perf_counter()
    out = Path(out)
    state_path = out / PIPELINE_JSON
    wanted = _settings(config, data, seed, iterations, n_showers, corrections)
    check_run_folder(out)
    for path in wanted["data"]:  # before anything is written: readable files of showers
        with ShowerFile(path) as f:
            f.check_columns()
            if len(f) < 4:
                raise UsageError(f"{path}: {len(f)} showers; training needs at least 4")
    if state_path.is_file():
        state = read_json(state_path)
        if not isinstance(state, dict) or "settings" not in state:
            raise UsageError(f"{state_path}: not a calogen pipeline record")
        if not resume:
            differ = _same(wanted, state["settings"])
            if differ:
                raise UsageError(
                    f"{out}: holds a caloclouds2-cm run with other settings "
                    f"({', '.join(differ)} differ); re-run its command, add --resume, or "
                    "use a new --output"
                )
    else:
        if resume:
            raise UsageError(f"{out}: no caloclouds2-cm run to resume ({PIPELINE_JSON} missing)")
        if out.is_dir() and any(out.iterdir()):
            raise UsageError(
                f"{out}: exists and is not a caloclouds2-cm run folder (use a new --output)"
            )
        state = {"model": cc2.CM_NAME, "settings": wanted, "done": {}}
        if is_main_process():
            out.mkdir(parents=True, exist_ok=True)
            write_json(state_path, state)
    settings = state["settings"]
    done: dict[str, Any] = state.setdefault("done", {})
    files = scaffold.data_paths(settings["data"])
    data_path: Any = files[0] if len(files) == 1 else files
    run_seed = int(settings["seed"])
    teacher_dir = out / TEACHER_DIR

    def announce(index: int, stage: str, what: str) -> None:
        if progress and is_main_process():
            status = "done" if stage in done else what
            print(f"stage {index}/{len(STAGES)} {stage}: {status}", file=sys.stderr, flush=True)

    def mark(stage: str, summary: Any) -> None:
        done[stage] = summary
        if is_main_process():
            write_json(state_path, state)

    tcfg = cc2.CaloClouds2Config.from_dict(settings["teacher_config"])
    dcfg = cc2.DistillConfig.from_dict(settings["distill_config"])
    announce(1, "teacher", f"{cc2.MODEL_NAME}, {tcfg.iterations} iterations -> {teacher_dir}")
    if "teacher" not in done:
        summary = cc2.train(
            config=tcfg,
            data=data_path,
            out=teacher_dir,
            resume=_has_checkpoint(teacher_dir),
            seed=run_seed,
            progress=progress,
            corrections=False,
            device=device,
            desc=f"1/{len(STAGES)} teacher",
        )
        mark("teacher", summary)
    announce(2, "distillation", f"{cc2.CM_NAME}, {dcfg.iterations} iterations -> {out}")
    if "distillation" not in done:
        summary = cc2.distill(
            teacher=teacher_dir,
            config=dcfg,
            data=data_path,
            out=out,
            resume=_has_checkpoint(out),
            seed=run_seed,
            progress=progress,
            corrections=False,
            device=device,
            desc=f"2/{len(STAGES)} distillation",
        )
        mark("distillation", summary)
    n_fit = scaffold.correction_showers(
        dcfg, int(done["distillation"]["training_showers"]), angled=tcfg.directions
    )
    what = f"radial map and occupancy on the first {n_fit} training showers of each file"
    announce(3, "corrections", what if settings["corrections"] else "off (--no-corrections)")
    if "corrections" not in done:
        if settings["corrections"] and is_main_process():
            summary = cc2.fit_corrections(out, data_path, run_seed, n_fit)
        else:
            summary = "off (--no-corrections)"
        mark("corrections", summary)
    return {
        "model": cc2.CM_NAME,
        "out": str(out),
        "stages": {stage: done.get(stage) for stage in STAGES},
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }


__all__ = ["PIPELINE_JSON", "STAGES", "TEACHER_DIR", "pipeline_configs", "train"]
