"""Sweep configuration: presets, YAML files and ``--set`` overrides, validated into one frozen object.

Order of precedence: the preset (``sweep/presets.py``), then ``--config FILE.yaml``, then ``--set`` pairs.
Dotted keys reach into the tables: ``--set problem.task=PATH`` (the problem every tuner and baseline
shares), ``--set tuner_config.pez.steps=30``, ``--set search.pez.lambda_ppl=[0.01,10]``.

A trial's config is its tuner's preset, then ``problem``, then ``tuner_config.<tuner>``, then what the
search chose. Every tuner and baseline of a sweep must end up on the same problem (model, data, template,
verbalizer, sizes, seed): fronts and baselines are only comparable on the same replicates.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from objectives.errors import ConfigError
from objectives.errors import did_you_mean as unknown_message
from tuners.base import BASELINES

if typing.TYPE_CHECKING:
    from objectives.problem import ProblemConfig

# The project's heavy modules (torch, transformers, through ``tuners``) are imported where they are used, so
# that ``sweep/run.py --help`` can list these fields in well under a second.


SAMPLERS = ("tpe", "nsga2", "random")
# fifo: every trial runs its full budget; mo_asha: trials are stopped at rungs where they are dominated
# (sweep/scheduler.py).
SCHEDULERS = ("fifo", "mo_asha")
# Rungs below a tuner's full budget when grace_steps is left to the default: steps / reduction_factor**3.
DEFAULT_RUNGS = 3
# Upper bounds that catch a typo (an extra zero or three) in seconds instead of a sweep that never ends: far above
# any preset (paper: 32 trials per tuner, 5 replicates). Each trial is a whole tuner run per replicate, and
# Optuna's sampler, Tune's experiment state and the exports all grow with the trials.
MAX_NUM_SAMPLES = 10_000
MAX_REPLICATES = 100
# Problem fields that must agree across a sweep's tuners and baselines (the others only change speed or the
# prompt's length).
SHARED_PROBLEM_FIELDS = ("model", "task", "verbalizer", "template", "k_shot", "k_dev", "n_test", "seed")


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    """One sweep: which tuners, what Optuna searches, how trials are placed, where results go."""

    name: str = field(metadata={"help": "MLflow experiment name and Optuna study prefix"})
    preset: str = field(metadata={"help": "tuner preset the trials start from (smoke, demo, paper)"})
    tuners: tuple[str, ...] = field(metadata={"help": "tuners to sweep, each with its own study"})
    problem: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "problem fields shared by every tuner and baseline (model, task, k_shot, ...)"},
    )
    tuner_config: dict[str, dict[str, Any]] = field(
        default_factory=dict, metadata={"help": "per tuner: config fields on top of the tuner preset and problem"}
    )
    search: dict[str, dict[str, tuple[float, float]]] = field(
        default_factory=dict,
        metadata={"help": "per tuner: weight -> [low, high] searched on a log scale; 0 is always reachable"},
    )
    objectives: tuple[str, ...] = field(
        default=("task/acc_dev", "interp/scrutability"),
        metadata={"help": "metrics Optuna optimises (directions from the metric registry)"},
    )
    sampler: str = field(default="tpe", metadata={"help": "Optuna sampler: " + ", ".join(SAMPLERS)})
    scheduler: str = field(
        default="fifo",
        metadata={"help": "fifo (every trial runs its full budget) or mo_asha (stop trials dominated at a rung)"},
    )
    grace_steps: int | None = field(
        default=None,
        metadata={
            "help": "mo_asha: steps of the first rung, every tuner (default: each tuner's steps / reduction_factor^3)"
        },
    )
    reduction_factor: float = field(
        default=3.0, metadata={"help": "mo_asha: a rung lets the top 1/reduction_factor go on; rungs grow by it"}
    )
    num_samples: int = field(default=8, metadata={"help": "trials per tuner (its unregularised trial included)"})
    replicates: int = field(
        default=3, metadata={"help": "runs per trial (data seeds x init seeds); objectives are replicate means"}
    )
    baselines: tuple[str, ...] = field(
        default=BASELINES, metadata={"help": f"baselines scored with every sweep: {', '.join(BASELINES)}"}
    )
    manual_prompts: tuple[str, ...] | None = field(
        default=None, metadata={"help": "hand-written prompts of the manual baseline (default: suited to the task)"}
    )
    max_concurrent: int = field(default=2, metadata={"help": "trials running at once, all tuners together"})
    cpus_per_trial: float = field(default=1.0, metadata={"help": "CPUs each trial reserves"})
    gpus_per_trial: float = field(default=0.0, metadata={"help": "GPUs each trial reserves (fractions share a GPU)"})
    seed: int = field(default=0, metadata={"help": "seeds the Optuna sampler (trials keep their preset seed)"})
    axis_labels: dict[str, str] = field(
        default_factory=dict,
        metadata={"help": "metric -> axis label of the exported figures (defaults: 'Test accuracy', ...)"},
    )
    max_retries: int = field(
        default=2, metadata={"help": "retries of a trial whose worker died, each from its last checkpoint"}
    )
    checkpoint_every: int = field(
        default=50, metadata={"help": "tuner steps between trial checkpoints (a lost worker resumes from there)"}
    )
    tracking_uri: str | None = field(default=None, metadata={"help": "MLflow URI; default sqlite:///<out>/mlflow.db"})
    ray_num_cpus: int | None = field(default=None, metadata={"help": "CPUs of the embedded local Ray (default all)"})

    def __post_init__(self) -> None:
        # In this order: a message about a name comes before one about the values it names.
        self._check_names()
        self._check_search()
        self._check_sizes()
        self._check_shared_problem()
        self._check_objectives()
        self._check_scheduling()

    def _check_names(self) -> None:
        from tuners import available

        if not self.name or any(c in self.name for c in "/\\"):
            raise ConfigError(f"name={self.name!r} must be a non-empty name without slashes")
        if not self.tuners:
            raise ConfigError(f"tuners is empty; choose from {[t for t in available() if t not in BASELINES]}")
        for name in self.baselines:
            if name not in BASELINES:
                raise ConfigError(unknown_message("baseline", name, list(BASELINES)))
        for key in ("tuners", "baselines", "objectives", "manual_prompts"):
            listed = list(getattr(self, key) or ())
            twice = sorted({item for item in listed if listed.count(item) > 1})
            if twice:
                # A second entry would run (or count) the same thing twice under one name.
                raise ConfigError(f"{key}={listed} lists {', '.join(map(repr, twice))} more than once; list each once")
        overlap = sorted(set(self.tuners) & set(self.baselines))
        if overlap:
            raise ConfigError(f"{overlap} are baselines; list them under baselines, not tuners")

    def _check_search(self) -> None:
        from objectives.problem import ProblemConfig
        from tuners import get_tuner

        known_problem = {f.name for f in dataclasses.fields(ProblemConfig)}
        for key in self.problem:
            if key not in known_problem:
                raise ConfigError(f"problem: {unknown_message('problem field', key, sorted(known_problem))}")
        for tuner in self.tuners:
            get_tuner(tuner)  # unknown names raise with a suggestion
            cls = get_tuner(tuner).config_cls
            fields = {f.name for f in dataclasses.fields(cls)}
            for knob, bounds in self.search.get(tuner, {}).items():
                searchable = searchable_knobs(cls)
                if knob not in fields:
                    raise ConfigError(f"search.{tuner}: {unknown_message('knob', knob, searchable)}")
                if knob not in searchable:
                    # The search sets every knob that is off to 0, and measures the all-zero trial as its anchor:
                    # for any other field (lr, steps) 0 is no "off" but a broken run.
                    raise ConfigError(
                        f"search.{tuner}.{knob}: {knob} cannot be searched; a sweep searches the knobs whose 0 "
                        f"switches a term off ({', '.join(searchable)}), each 0 or log-uniform in [low, high]. "
                        f"Set {knob} for every trial instead: --set tuner_config.{tuner}.{knob}=VALUE"
                    )
                if len(bounds) != 2 or not 0 < bounds[0] < bounds[1]:
                    raise ConfigError(
                        f"search.{tuner}.{knob}={list(bounds)} must be [low, high] with 0 < low < high "
                        "(log scale; the value 0, 'off', is reachable on its own)"
                    )
                if typing.get_type_hints(cls).get(knob) is int and not all(float(b).is_integer() for b in bounds):
                    raise ConfigError(f"search.{tuner}.{knob}={list(bounds)}: {knob} is an integer; give whole bounds")

    def _check_sizes(self) -> None:
        from objectives.problem import MAX_SEED

        if not 1 <= self.replicates <= MAX_REPLICATES:
            raise ConfigError(
                f"replicates={self.replicates} must be in [1, {MAX_REPLICATES}]: each replicate is a whole tuner run "
                "in every trial (3 to 5 are usual)"
            )
        if not 1 <= self.num_samples <= MAX_NUM_SAMPLES:
            raise ConfigError(
                f"num_samples={self.num_samples} must be in [1, {MAX_NUM_SAMPLES}] trials per tuner (the paper preset "
                "runs 256 with early stopping); for more, run several sweeps"
            )
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed={self.seed} must be in [0, {MAX_SEED}] (numpy seeds are unsigned 32-bit)")
        if self.ray_num_cpus is not None and self.ray_num_cpus < 1:
            raise ConfigError(
                f"ray_num_cpus={self.ray_num_cpus}: the embedded Ray needs at least 1 CPU (each trial reserves "
                f"cpus_per_trial={self.cpus_per_trial:g}); set ray_num_cpus >= that, or null for every CPU here"
            )
        if self.manual_prompts is not None and (not self.manual_prompts or not all(self.manual_prompts)):
            raise ConfigError(f"manual_prompts={list(self.manual_prompts)} must be a non-empty list of non-empty texts")

    def _check_shared_problem(self) -> None:
        from tuners import get_tuner
        from tuners.configs import make_config

        configs = {t: make_config(get_tuner(t).config_cls, self.trial_values(t)) for t in self.runs()}
        first, reference = next(iter(configs.items()))
        for name, config in configs.items():
            for key in SHARED_PROBLEM_FIELDS:
                if getattr(config, key) != getattr(reference, key):
                    raise ConfigError(
                        f"{name} has {key}={getattr(config, key)!r} but {first} has {getattr(reference, key)!r}: every "
                        "tuner and baseline of a sweep must share one problem to be comparable; set it once with "
                        f"--set problem.{key}=VALUE (and drop it from tuner_config)"
                    )
        # Entries for tuners left out of this sweep are kept (a preset lists all its tuners' tables, and
        # `--set tuners=[pez]` should just work), but each must name a real tuner: a typo is an error.
        for extra in set(self.tuner_config) | set(self.search):
            if extra not in self.tuners:
                get_tuner(extra)

    def _check_objectives(self) -> None:
        from objectives.metrics import METRICS

        if len(self.objectives) < 2:
            raise ConfigError(f"objectives={self.objectives} needs at least 2 metrics for a Pareto front")
        for metric, label in self.axis_labels.items():
            if metric not in METRICS:
                raise ConfigError(f"axis_labels: {unknown_message('metric', metric, sorted(METRICS))}")
            if not isinstance(label, str) or not label:
                raise ConfigError(f"axis_labels.{metric}={label!r} must be a non-empty text")
        for name in self.objectives:
            if name not in METRICS:
                raise ConfigError(unknown_message("objective metric", name, sorted(METRICS)))
            if "test" in name:
                raise ConfigError(
                    f"objective {name!r} is measured on test data, which must never steer the search; use its dev "
                    "counterpart (test accuracy is reported with every trial)"
                )

    def _check_scheduling(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler={self.sampler!r} is not one of {SAMPLERS}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(unknown_message("scheduler", self.scheduler, list(SCHEDULERS)))
        if self.grace_steps is not None and self.grace_steps < 1:
            raise ConfigError(f"grace_steps={self.grace_steps} must be >= 1 step (or null for the default)")
        if not (self.reduction_factor > 1 and math.isfinite(self.reduction_factor)):
            raise ConfigError(f"reduction_factor={self.reduction_factor} must be a number > 1 (3 keeps a third)")
        if self.max_retries < 0:
            raise ConfigError(f"max_retries={self.max_retries} must be >= 0")
        for key in ("max_concurrent", "checkpoint_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)} must be >= 1")
        if self.cpus_per_trial <= 0 or self.gpus_per_trial < 0:
            raise ConfigError(
                f"cpus_per_trial={self.cpus_per_trial} must be > 0 and gpus_per_trial={self.gpus_per_trial} >= 0"
            )
        if self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial):
            raise ConfigError(f"gpus_per_trial={self.gpus_per_trial}: above 1 it must be a whole number")

    def trial_values(self, tuner: str) -> dict[str, Any]:
        """The plain config values of one tuner's trials, before a fixed trial's or the search's values."""
        from tuners.presets import preset_values

        values = {**preset_values(self.preset, tuner), **self.problem, **self.tuner_config.get(tuner, {})}
        task = values.get("task")
        # Trials run in their own working directories (Tune's trial dirs), where a folder given relative to the
        # driver's (--set problem.task=../data/sst-2/16-13) is not found; the driver makes it absolute. Anything
        # else (an asset name, hf:..., a path that does not exist) stays as given, so its error names it.
        if isinstance(task, str) and task != "rotten-tomatoes" and not task.startswith("hf:"):
            folder = Path(task).expanduser()
            if folder.is_dir():
                values["task"] = str(folder.resolve())
        return values

    def rung_plan(self) -> dict[str, tuple[int, int]]:
        """Per learned tuner with a search: ``(grace_steps, full steps)`` of its rungs under ``mo_asha`` (empty
        under ``fifo``). Baselines train nothing and are never stopped."""
        if self.scheduler != "mo_asha":
            return {}
        from tuners import get_tuner, make_config

        plan = {}
        for tuner in self.tuners:
            if not self.search.get(tuner) or not getattr(get_tuner(tuner), "trains", True):
                continue
            steps = int(getattr(make_config(get_tuner(tuner).config_cls, self.trial_values(tuner)), "steps", 0))
            grace = self.grace_steps or max(1, math.ceil(steps / self.reduction_factor**DEFAULT_RUNGS))
            plan[tuner] = (grace, steps)
        return plan

    def runs(self) -> tuple[str, ...]:
        """Every tuner a sweep runs: its learned tuners, then its baselines."""
        return (*self.tuners, *self.baselines)

    def fixed_trials(self) -> dict[str, list[dict[str, Any]]]:
        """Per tuner, the trials that run as given: each learned tuner's unregularised one, each baseline's."""
        fixed: dict[str, list[dict[str, Any]]] = {tuner: [{}] for tuner in self.tuners}
        for name in self.baselines:
            if name == "manual":
                fixed[name] = [{"prompt_text": text} for text in self.resolved_manual_prompts()]
            else:
                fixed[name] = [{}]
        return fixed

    def total_trials(self) -> int:
        """Trials the sweep runs in all: ``num_samples`` per searched tuner, the fixed ones of the others."""
        fixed = self.fixed_trials()
        return sum(self.num_samples if self.search.get(t) and t in self.tuners else len(fixed[t]) for t in self.runs())

    def resolved_manual_prompts(self) -> tuple[str, ...]:
        if self.manual_prompts is not None:
            return self.manual_prompts
        values = self.trial_values(self.tuners[0])
        from objectives.problem import ProblemConfig
        from tuners.baselines import default_manual_prompts

        defaults = ProblemConfig()
        verbalizer = values.get("verbalizer", defaults.verbalizer)
        return default_manual_prompts(tuple(verbalizer), values.get("template", defaults.template))

    def to_dict(self) -> dict[str, Any]:
        return json_ready(dataclasses.asdict(self))


def searchable_knobs(cls: type[ProblemConfig]) -> list[str]:
    """Fields a sweep may search: the interpretability weights ``lambda_*`` and ``fluent_top_k``."""
    return sorted(f.name for f in dataclasses.fields(cls) if f.name.startswith("lambda_") or f.name == "fluent_top_k")


def json_ready(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def load_sweep_config(preset: str, *, config_file: str | None, overrides: Mapping[str, Any]) -> SweepConfig:
    """Preset, then YAML file, then dotted overrides → a validated ``SweepConfig``."""
    from sweep.presets import SWEEP_PRESETS
    from tuners.configs import DuplicateKeyError, coerce, load_yaml

    if preset not in SWEEP_PRESETS:
        raise ConfigError(unknown_message("preset", preset, sorted(SWEEP_PRESETS)))
    values = copy.deepcopy(SWEEP_PRESETS[preset])
    if config_file:
        path = Path(config_file)
        if path.is_dir():
            raise ConfigError(f"--config {config_file!r} is a folder; give the path of a YAML file of sweep fields")
        if not path.is_file():
            raise ConfigError(f"--config {config_file!r}: no such file")
        try:
            loaded = load_yaml(path.read_text()) or {}
        except DuplicateKeyError as err:
            raise ConfigError(f"--config {config_file!r}: {err}") from err
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise ConfigError(
                f"--config {config_file!r} is not valid YAML{where}: {getattr(err, 'problem', err)}"
            ) from err
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"--config {config_file!r} cannot be read: {err}") from err
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
    for key in ("objectives", "baselines", "manual_prompts"):
        if values.get(key) is not None:
            values[key] = _as_tuple(values[key], key, split=key != "manual_prompts")
    hints = typing.get_type_hints(SweepConfig)
    for key in ("problem", "tuner_config", "search", "axis_labels"):
        if not isinstance(values.get(key, {}), dict):
            raise ConfigError(f"{key}={values[key]!r} must be a table of key: value entries")
    for table in ("tuner_config", "search"):
        for tuner, entries in values.get(table, {}).items():
            if not isinstance(entries, dict):
                raise ConfigError(f"{table}.{tuner}={entries!r} must be a table of key: value entries")
    values["search"] = {
        tuner: {knob: _bounds(f"search.{tuner}.{knob}", bounds) for knob, bounds in knobs.items()}
        for tuner, knobs in (values.get("search") or {}).items()
    }
    for key, value in list(values.items()):
        values[key] = coerce(key, value, hints[key])
    return SweepConfig(**values)


def _bounds(key: str, bounds: Any) -> tuple[float, ...]:
    """A search range as numbers. YAML 1.1 reads ``1e-3`` (no dot) as text; a bound can only mean the number."""
    from tuners.configs import coerce

    if not isinstance(bounds, (list, tuple)):
        raise ConfigError(f"{key}={bounds!r} must be [low, high], two numbers")
    numbers = []
    for bound in bounds:
        try:
            number = coerce(key, bound, float)
        except ConfigError as err:
            if "finite" in str(err):
                raise ConfigError(f"{key}={list(bounds)}: bounds must be finite numbers") from err
            raise ConfigError(f"{key}={list(bounds)} must be [low, high], two numbers") from err
        # Whole numbers stay ints, so an integer knob's bounds read as given.
        numbers.append(int(number) if isinstance(bound, int) else number)
    return tuple(numbers)


def _as_tuple(value: Any, key: str, *, split: bool = True) -> tuple:
    if isinstance(value, str):
        items: tuple = (value,) if not split else tuple(v.strip() for v in value.split(",") if v.strip())
    elif isinstance(value, (list, tuple)):
        items = tuple(value)
    else:
        raise ConfigError(f"{key}={value!r} must be a list")
    spaced = [item for item in items if split and isinstance(item, str) and len(item.split()) > 1]
    if spaced:
        # `--set tuners=pez soft` is one name with a space in it, not two names.
        names = ", ".join(name for item in items for name in str(item).split())
        raise ConfigError(f"{key}={value!r}: {spaced[0]!r} is not a name; separate names by commas: {key}=[{names}]")
    return items


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
