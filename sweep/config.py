"""Sweep configuration: presets, YAML files and ``--set`` overrides, validated into one frozen object.

Order of precedence: the preset (``sweep/presets.py``), then ``--config FILE.yaml``, then ``--set`` pairs.
Dotted keys reach into the per-tuner tables: ``--set tuner_config.pez.steps=30``,
``--set search.pez.lambda_ppl=[0.01,10]``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from objectives.metrics import METRICS
from objectives.problem import ConfigError
from tuners import available, get_tuner
from tuners.base import make_config, unknown_message
from tuners.presets import preset_values

SAMPLERS = ("tpe", "nsga2", "random")


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    """One sweep: which tuners, what Optuna searches, how trials are placed, where results go."""

    name: str = field(metadata={"help": "MLflow experiment name and Optuna study prefix"})
    preset: str = field(metadata={"help": "tuner preset the trials start from (smoke, demo, paper)"})
    tuners: tuple[str, ...] = field(metadata={"help": "tuners to sweep, each with its own study"})
    tuner_config: dict[str, dict[str, Any]] = field(
        default_factory=dict, metadata={"help": "per tuner: config fields on top of the tuner preset"}
    )
    search: dict[str, dict[str, tuple[float, float]]] = field(
        default_factory=dict,
        metadata={"help": "per tuner: weight -> [low, high] searched on a log scale; 0 is always reachable"},
    )
    objectives: tuple[str, ...] = field(
        default=("task/acc_dev", "interp/scrutability"),
        metadata={"help": "metrics Optuna optimises (directions from the metric registry)"},
    )
    sampler: str = field(default="tpe", metadata={"help": "Optuna sampler: tpe, nsga2 or random"})
    num_samples: int = field(default=8, metadata={"help": "trials per tuner"})
    max_concurrent: int = field(default=2, metadata={"help": "trials running at once, all tuners together"})
    cpus_per_trial: float = field(default=1.0, metadata={"help": "CPUs each trial reserves"})
    gpus_per_trial: float = field(default=0.0, metadata={"help": "GPUs each trial reserves (fractions share a GPU)"})
    seed: int = field(default=0, metadata={"help": "seeds the Optuna sampler (trials keep their preset seed)"})
    tracking_uri: str | None = field(default=None, metadata={"help": "MLflow URI; default sqlite:///<out>/mlflow.db"})
    ray_num_cpus: int | None = field(default=None, metadata={"help": "CPUs of the embedded local Ray (default all)"})

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in "/\\"):
            raise ConfigError(f"name={self.name!r} must be a non-empty name without slashes")
        if not self.tuners:
            raise ConfigError(f"tuners is empty; choose from {available()}")
        for tuner in self.tuners:
            get_tuner(tuner)  # unknown names raise with a suggestion
            cls = get_tuner(tuner).config_cls
            make_config(cls, {**preset_values(self.preset, tuner), **self.tuner_config.get(tuner, {})})
            fields = {f.name for f in dataclasses.fields(cls)}
            for weight, bounds in self.search.get(tuner, {}).items():
                if weight not in fields:
                    weights = sorted(f for f in fields if f.startswith("lambda"))
                    raise ConfigError(f"search.{tuner}: {unknown_message('weight', weight, weights)}")
                if len(bounds) != 2 or not 0 < bounds[0] < bounds[1]:
                    raise ConfigError(
                        f"search.{tuner}.{weight}={list(bounds)} must be [low, high] with 0 < low < high "
                        "(log scale; the weight 0 is reachable on its own)"
                    )
        # Entries for tuners left out of this sweep are kept (a preset lists all its tuners' tables, and
        # `--set tuners=[pez]` should just work), but each must name a real tuner: a typo is an error.
        for extra in set(self.tuner_config) | set(self.search):
            if extra not in self.tuners:
                get_tuner(extra)
        if len(self.objectives) < 2:
            raise ConfigError(f"objectives={self.objectives} needs at least 2 metrics for a Pareto front")
        for name in self.objectives:
            if name not in METRICS:
                raise ConfigError(unknown_message("objective metric", name, sorted(METRICS)))
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler={self.sampler!r} is not one of {SAMPLERS}")
        for key in ("num_samples", "max_concurrent"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)} must be >= 1")
        if self.cpus_per_trial <= 0 or self.gpus_per_trial < 0:
            raise ConfigError(
                f"cpus_per_trial={self.cpus_per_trial} must be > 0 and gpus_per_trial={self.gpus_per_trial} >= 0"
            )
        if self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial):
            raise ConfigError(f"gpus_per_trial={self.gpus_per_trial}: above 1 it must be a whole number")

    def trial_values(self, tuner: str) -> dict[str, Any]:
        """The plain config values of one tuner's trials, before the searched weights are set."""
        return {**preset_values(self.preset, tuner), **self.tuner_config.get(tuner, {})}

    def to_dict(self) -> dict[str, Any]:
        return json_ready(dataclasses.asdict(self))


def json_ready(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def load_sweep_config(preset: str, *, config_file: str | None, overrides: Mapping[str, Any]) -> SweepConfig:
    """Preset, then YAML file, then dotted overrides → a validated ``SweepConfig``."""
    from sweep.presets import PRESETS

    if preset not in PRESETS:
        raise ConfigError(unknown_message("preset", preset, sorted(PRESETS)))
    values = copy.deepcopy(PRESETS[preset])
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"--config {config_file!r}: no such file")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            kind = type(loaded).__name__
            raise ConfigError(f"--config {config_file!r} must hold a mapping of sweep fields, got a {kind}")
        _merge(values, loaded, where=str(path))
    for key, value in overrides.items():
        _set_dotted(values, key, value)
    known = {f.name: f for f in dataclasses.fields(SweepConfig)}
    for key in values:
        if key not in known:
            raise ConfigError(unknown_message("sweep config key", key, sorted(known)))
    values["tuners"] = _as_tuple(values.get("tuners", ()), "tuners")
    if "objectives" in values:
        values["objectives"] = _as_tuple(values["objectives"], "objectives")
    values["search"] = {t: {w: tuple(b) for w, b in s.items()} for t, s in (values.get("search") or {}).items()}
    for key in ("num_samples", "max_concurrent", "seed"):
        if key in values and not isinstance(values[key], int):
            raise ConfigError(f"{key}={values[key]!r} must be an integer")
    return SweepConfig(**values)


def _as_tuple(value: Any, key: str) -> tuple:
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, (list, tuple)):
        return tuple(value)
    raise ConfigError(f"{key}={value!r} must be a list")


def _merge(base: dict[str, Any], update: Mapping[str, Any], *, where: str) -> None:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value, where=where)
        else:
            base[key] = copy.deepcopy(value)


def _set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    target = values
    for part in parts[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a table")
    target[parts[-1]] = value
