"""The ``Tuner`` protocol, what a run returns (``PromptResult``) and is given (``Checkpointing``), and the registry.

Lifecycle of a tuner run: the caller builds a frozen config (``tuners.configs.make_config``: preset, then
overrides, then validation in the config's ``__post_init__``), calls ``tuner.run(config, report=...)``; the tuner
trains, calling ``report(step, metrics)`` every ``eval_every`` steps, and returns a ``PromptResult`` whose
metrics are final. Tuners know nothing of Ray, MLflow or Optuna: ``sweep/`` adapts ``report`` to them.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from objectives.errors import ConfigError, did_you_mean
from objectives.problem import ProblemConfig

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
    reports no steps and its prompt does not depend on an init seed. A tuner may set ``uses_device = False``
    (the synthetic tuner): its config's ``device`` is then left as it is, and its trial loads no torch to look
    for CUDA. A tuner that trains saves its state through ``checkpoint`` and stops with
    ``objectives.errors.DivergedError`` at the first step whose loss or reward is not finite.
    """

    name: ClassVar[str]
    config_cls: ClassVar[type[ProblemConfig]]

    def run(
        self, config: ProblemConfig, *, report: Reporter | None = None, checkpoint: Checkpointing | None = None
    ) -> PromptResult: ...


# The tuners that train nothing (tuners/baselines.py): the references every front is compared with.
BASELINES = ("no_prompt", "manual", "lm_sample")
_REGISTRY: dict[str, Tuner] = {}
# The module that registers each built-in tuner, imported when the tuner is first asked for: a process that runs
# one tuner (a Ray worker's trial) imports that one alone; the synthetic tuner's trial then loads no torch.
BUILT_IN = {
    "pez": "tuners.pez",
    "soft": "tuners.soft",
    "rlprompt": "tuners.rlprompt",
    "synthetic": "tuners.synthetic",
    **{name: "tuners.baselines" for name in BASELINES},
}


def register(tuner: Tuner) -> Tuner:
    if tuner.name in _REGISTRY:
        raise ValueError(f"a tuner named {tuner.name!r} is already registered ({_REGISTRY[tuner.name]!r})")
    _REGISTRY[tuner.name] = tuner
    return tuner


def available() -> list[str]:
    return sorted({*_REGISTRY, *BUILT_IN})


def get_tuner(name: str) -> Tuner:
    if name not in _REGISTRY and name in BUILT_IN:
        importlib.import_module(BUILT_IN[name])
    if name not in _REGISTRY:
        raise ConfigError(did_you_mean("tuner", name, available()))
    return _REGISTRY[name]
