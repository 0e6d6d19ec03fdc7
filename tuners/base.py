"""The ``Tuner`` protocol, ``PromptResult``, the tuner registry and config building.

Lifecycle of a tuner run: the caller builds a frozen config (``make_config``: preset, then overrides, then
validation in the config's ``__post_init__``), calls ``tuner.run(config, report=...)``; the tuner trains,
calling ``report(step, metrics)`` every ``eval_every`` steps, and returns a ``PromptResult`` whose metrics
are final. Tuners know nothing of Ray, MLflow or Optuna: ``sweep/`` adapts ``report`` to them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import yaml

from objectives.errors import did_you_mean
from objectives.problem import SELECTIONS, ConfigError, ProblemConfig

Reporter = Callable[[int, Mapping[str, float]], None]


@dataclass(frozen=True)
class PromptResult:
    """What every tuner returns.

    ``soft_prompt`` is the continuous prompt ``(L, d_model)`` as nested lists when the tuner has one.
    ``history`` holds the metrics of every ``report`` call, as ``(step, metrics)``.
    """

    tuner: str
    prompt_text: str
    prompt_ids: list[int]
    metrics: dict[str, float]
    steps: int
    seed: int
    wall_s: float
    config: dict[str, Any] = field(default_factory=dict)
    soft_prompt: list[list[float]] | None = None
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        bad = {k: v for k, v in self.metrics.items() if not (isinstance(v, float) and math.isfinite(v))}
        if bad:
            raise ValueError(f"PromptResult metrics must be finite floats; got {bad}")

    def to_json(self) -> dict[str, Any]:
        """The JSON contract of ``python -m tuners run --json`` (README; soft tensor and history left out)."""
        return {
            "tuner": self.tuner,
            "prompt_text": self.prompt_text,
            "prompt_ids": self.prompt_ids,
            "metrics": self.metrics,
            "steps": self.steps,
            "seed": self.seed,
            "wall_s": self.wall_s,
            "config": self.config,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PromptResult:
        """Rebuild a result from :meth:`to_json` (soft prompt and history are not in it)."""
        return cls(
            tuner=data["tuner"],
            prompt_text=data["prompt_text"],
            prompt_ids=[int(i) for i in data["prompt_ids"]],
            metrics={k: float(v) for k, v in data["metrics"].items()},
            steps=int(data["steps"]),
            seed=int(data["seed"]),
            wall_s=float(data["wall_s"]),
            config=dict(data.get("config", {})),
        )

    def write_json(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")


@dataclass
class Selection:
    """The candidate a run returns, kept by one of the rules of ``objectives.problem.SELECTIONS``.

    Each dev evaluation ``offer``s its candidate with its dev accuracy, dev cross-entropy and dev value of the
    trained objective (lower is better: a loss, or a negated reward). A strictly better candidate replaces the
    kept one, so ties keep the earlier. ``payload`` is whatever the tuner needs to rebuild the prompt.
    """

    rule: str
    key: tuple[float, ...] | None = None
    step: int = 0
    acc: float = float("nan")
    payload: Any = None

    def __post_init__(self) -> None:
        if self.rule not in SELECTIONS:
            raise ConfigError(f"select={self.rule!r} is not one of {SELECTIONS}")

    def offer(self, step: int, *, acc: float, ce: float, objective: float, payload: Any) -> bool:
        """Keep ``payload`` if it beats the kept candidate under the rule; True when it was kept."""
        if self.rule == "dev_acc":
            key: tuple[float, ...] = (acc, -ce)
        elif self.rule == "dev_objective":
            key = (-objective, acc)
        else:
            key = (float(step),)
        if self.key is not None and not key > self.key:
            return False
        self.key, self.step, self.acc, self.payload = key, step, acc, payload
        return True

    def state(self) -> dict[str, Any]:
        """JSON-able state, for checkpoints (``payload`` must be JSON-able itself)."""
        return {
            "rule": self.rule,
            "key": list(self.key or []),
            "step": self.step,
            "acc": self.acc,
            "payload": self.payload,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Selection:
        key = tuple(float(k) for k in state["key"]) or None
        return cls(state["rule"], key, int(state["step"]), float(state["acc"]), state["payload"])


@dataclass
class Checkpointing:
    """How a run saves its state as it goes, and the state of an earlier attempt it resumes from.

    ``save`` is called with the run's whole state (a dict ``torch.save`` can write: tensors, numbers, lists)
    every ``every`` steps, after the step's report; a run given ``state`` continues from it and ends as an
    uninterrupted run would. Tuners that train nothing ignore it. The tuner never learns where the state goes
    (the trial's MLflow run, a file, memory): ``sweep/`` decides.

    ``until`` (a step before the run's last) pauses the run there: the tuner offers that step's candidate to
    its selection as at an evaluation step, calls ``save`` with its state, and returns the result it would
    return if it ended there (``steps == until``). Given that state, a later call continues to the next pause
    or the end, and ends where a run without pauses ends, but for the candidates offered at the pauses. This
    is how a trial's replicates advance in lockstep to the scheduler's rungs (``tuners/replicates.py``).
    """

    every: int
    save: Callable[[dict[str, Any]], None]
    state: dict[str, Any] | None = None
    until: int | None = None

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ConfigError(f"checkpoint every={self.every} must be >= 1 step")
        if self.until is not None and self.until < 1:
            raise ConfigError(f"checkpoint until={self.until} must be >= 1 step")

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def last_step(self, steps: int) -> int:
        """The last step this call runs, of a run of ``steps``."""
        return steps if self.until is None else min(steps, self.until)


@runtime_checkable
class Tuner(Protocol):
    """A prompt tuner: a name, its config class, and ``run``.

    A tuner may set ``trains = False`` (the baselines in ``tuners/baselines.py``): it optimises nothing, so it
    reports no steps and its prompt does not depend on an init seed. A tuner that trains saves its state
    through ``checkpoint`` and stops with ``objectives.errors.DivergedError`` at the first step whose loss
    or reward is not finite.
    """

    name: ClassVar[str]
    config_cls: ClassVar[type[ProblemConfig]]

    def run(
        self, config: ProblemConfig, *, report: Reporter | None = None, checkpoint: Checkpointing | None = None
    ) -> PromptResult: ...


_REGISTRY: dict[str, Tuner] = {}


def register(tuner: Tuner) -> Tuner:
    if tuner.name in _REGISTRY:
        raise ValueError(f"a tuner named {tuner.name!r} is already registered ({_REGISTRY[tuner.name]!r})")
    _REGISTRY[tuner.name] = tuner
    return tuner


def available() -> list[str]:
    return sorted(_REGISTRY)


def get_tuner(name: str) -> Tuner:
    if name not in _REGISTRY:
        raise ConfigError(did_you_mean("tuner", name, available()))
    return _REGISTRY[name]


unknown_message = did_you_mean  # the name the rest of the code base has used


class DuplicateKeyError(yaml.YAMLError):
    """A YAML table gives one key twice; plain YAML loading would keep the last one without a word."""

    def __init__(self, key: Any, lines: tuple[int, int]) -> None:
        self.key, self.lines = key, lines
        super().__init__(
            f"key {key!r} is given twice in one table (lines {lines[0]} and {lines[1]}); YAML would keep only the "
            "last one: remove one of them"
        )


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one table (``DuplicateKeyError``)."""


def _strict_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            if key in seen and key != "<<":  # `<<` merges a table in; repeating it is YAML's own business
                raise DuplicateKeyError(key, (seen[key], line))
            seen[key] = line
        except TypeError:  # an unhashable key: construct_mapping names it below
            pass
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _strict_mapping)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load``, except that a key given twice in one table raises ``DuplicateKeyError``."""
    return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: builds plain values only


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["k=v", ...]`` → dict, values read as YAML (``3``, ``0.1``, ``null``, ``[" a", " b"]``).

    Unquoted text is kept exactly as typed: YAML would strip ``prompt_text= It was`` to ``"It was"``, and the
    leading space is part of the prompt (another token under BPE). A key given by two pairs keeps the later value,
    on purpose, as a repeated flag does (a script's command line can be extended to override it); a key given
    twice inside one value (``problem={k_shot: 2, k_shot: 4}``) is an error.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} is not of the form key=value")
        key, raw = pair.split("=", 1)
        try:
            value = load_yaml(raw) if raw.strip() else ""
            if isinstance(value, str) and raw.strip()[:1] not in ("'", '"'):
                value = raw
            out[key.strip()] = value
        except DuplicateKeyError as err:
            raise ConfigError(
                f"override {pair!r} gives key {err.key!r} twice; YAML would keep the last: remove one"
            ) from err
        except yaml.YAMLError as err:
            where = getattr(err, "problem", None) or type(err).__name__
            raise ConfigError(
                f"override {pair!r}: the value is not valid YAML ({where}); quote text values, e.g. "
                f"{key.strip()}='\"...\"', and write lists as [a, b]"
            ) from err
    return out


def make_config(cls: type[ProblemConfig], values: Mapping[str, Any]) -> ProblemConfig:
    """Build ``cls`` from plain values, with clear errors for unknown keys and wrongly typed values."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(unknown_message(f"config key for {cls.__name__}", key, sorted(fields)))
        kwargs[key] = coerce(key, value, typing.get_type_hints(cls)[key])
    return cls(**kwargs)


def coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against a field's type hint; ints are accepted for floats, lists for tuples.

    Floats must be finite: a NaN weight or learning rate would only show up as NaN results much later.
    """
    options = (
        typing.get_args(hint)
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        else (hint,)
    )
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"{key}=None is not allowed; expected {_type_name(hint)}")
    for option in options:
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            # YAML 1.1 reads 1e-3 (no dot) as text; a float field can only have meant the number.
            if isinstance(value, str) and not _FLOAT.fullmatch(value.strip()):
                if _NONFINITE.fullmatch(value.strip()) and str not in options:
                    # `lr=nan` (YAML's own spelling is `.nan`) is a number, just not a usable one.
                    raise ConfigError(f"{key}={value!r} must be a finite number")
                continue
            number = float(value)
            if not math.isfinite(number):
                raise ConfigError(f"{key}={value!r} must be a finite number")
            return number
        if option is str and isinstance(value, str):
            return value
        if typing.get_origin(option) is tuple and isinstance(value, (list, tuple)):
            return tuple(value)
        if typing.get_origin(option) is dict and isinstance(value, Mapping):
            return dict(value)
    hint_text = ""
    if str in options and not isinstance(value, str):
        # `--set init_text= My rating: the film is` reads as the YAML mapping {'My rating': 'the film is'}.
        hint_text = f"; if you meant text, quote it: {key}='\"...\"'"
    raise ConfigError(f"{key}={value!r} has the wrong type: expected {_type_name(hint)}{hint_text}")


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_NONFINITE = re.compile(r"[-+]?\.?(nan|inf|infinity)", re.IGNORECASE)


def _type_name(hint: Any) -> str:
    # `float`, not `<class 'float'>`; unions and generics print as written (`int | None`, `tuple[str, ...]`).
    return hint.__name__ if isinstance(hint, type) and not typing.get_args(hint) else str(hint).replace("typing.", "")


def config_dict(config: ProblemConfig) -> dict[str, Any]:
    """A config as plain JSON-able values (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
