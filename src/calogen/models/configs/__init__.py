"""Configuration presets and config files.

A model keeps its hyperparameters in a dataclass with ``to_dict``/``from_dict`` and a dict of
presets (``"small"``, ``"paper"``). ``--config`` is either a preset name or a YAML/JSON
file with overrides; the file may name its preset with ``base: small`` (default ``small``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import yaml

from calogen.errors import UsageError

T = TypeVar("T")


def resolve_config(spec: str | dict[str, Any] | T, presets: dict[str, T], cls: type[T]) -> T:
    """A config from a preset name, a YAML/JSON file path, a dict of overrides or a config
    (returned as it is)."""
    if isinstance(spec, cls):
        return spec
    if isinstance(spec, dict):
        overrides = dict(spec)
    elif spec in presets:
        return presets[spec]
    else:
        overrides = read_config_file(spec, presets)
    base = overrides.pop("base", "small")
    if base not in presets:
        raise UsageError(f"config base '{base}' unknown (choose from {', '.join(presets)})")
    data = presets[base].to_dict()  # type: ignore[attr-defined]
    unknown = sorted(set(overrides) - set(data))
    if unknown:
        raise UsageError(f"unknown config keys: {', '.join(unknown)}")
    data.update(overrides)
    return cls.from_dict(data)  # type: ignore[attr-defined]


def read_config_file(spec: str, presets: Any) -> dict[str, Any]:
    """The mapping in the YAML/JSON file ``spec`` (one-line :class:`UsageError` if ``spec`` is
    neither a file nor one of ``presets`` or the file holds no mapping)."""
    path = Path(spec)
    if not path.is_file():
        raise UsageError(
            f"--config: '{spec}' is neither a preset ({', '.join(presets)}) nor a file"
        )
    try:
        text = path.read_text()
        overrides = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise UsageError(f"{path}: cannot read config: {detail}") from None
    if not isinstance(overrides, dict):
        raise UsageError(f"{path}: config must be a mapping of names to values")
    return overrides


__all__ = ["read_config_file", "resolve_config"]
