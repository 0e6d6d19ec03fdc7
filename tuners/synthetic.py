"""A synthetic tuner for tests and benchmarks of the sweep machinery: no LM, no data, no torch in its own code.

Each step sleeps ``step_s`` (a GPU-bound step leaves its CPU idle: what a cluster's trial looks like to Ray,
Tune and MLflow) and burns ``step_cpu_s`` of CPU, then moves along learning curves set by the config: dev
accuracy rises towards a ceiling that the fluency weight ``lambda_ppl`` lowers, while the prompt's perplexity
falls with it, so a sweep over it has a real accuracy/scrutability trade-off for Optuna and the Pareto exports.
Every value is a pure function of the config, the seed and the step (noise included), so a run is
deterministic, and a run resumed from any checkpoint ends exactly as an uninterrupted one.

It honours ``Checkpointing`` as the real tuners do (``save`` every ``every`` steps after the step's report,
``state`` to resume from, ``until`` to pause at a scheduler's rung), which is what the fault tests and
``mo_asha`` exercise. It is registered (``get_tuner("synthetic")``) so that a sweep can name it with
``--set tuners=[synthetic]``, but no sweep preset lists it: it measures the machinery, never prompts.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import Any

from objectives.errors import ConfigError, DivergedError
from objectives.problem import ProblemConfig
from tuners.base import Checkpointing, PromptResult, Reporter, register
from tuners.configs import config_dict
from tuners.selection import Selection

# Words the synthetic prompts are made of: readable, so the exports and report show ordinary text.
_WORDS = (
    "great", "film", "really", "the", "movie", "story", "overall", "rating", "it", "was", "good", "bad",
    "acting", "plot", "my", "review", "simply", "quite", "terrible", "fun",
)  # fmt: skip
_VOCAB = 50257  # GPT-2's: prompt ids look like the real tuners' and stay below any vocabulary of theirs


@dataclass(frozen=True, kw_only=True)
class SyntheticConfig(ProblemConfig):
    """Budget, cost and learning curves of a synthetic run, and the weights a sweep searches."""

    steps: int = field(default=10, metadata={"help": "training steps"})
    eval_every: int = field(default=1, metadata={"help": "steps between dev evaluations (each one a report)"})
    step_s: float = field(default=0.1, metadata={"help": "seconds each step waits, CPU idle (a GPU step)"})
    step_cpu_s: float = field(default=0.0, metadata={"help": "seconds of CPU each step burns on top"})
    curve_tau: float = field(
        default=0.3, metadata={"help": "learning curve's time constant as a share of the steps (smaller: faster)"}
    )
    noise: float = field(default=0.01, metadata={"help": "spread of the per-step noise on dev accuracy"})
    lambda_ppl: float = field(default=0.0, metadata={"help": "fluency weight: lower perplexity, lower accuracy"})
    lambda_dist: float = field(default=0.0, metadata={"help": "faithfulness weight: lower faith/dist"})
    diverge_at: int = field(default=0, metadata={"help": "step whose loss is NaN (0: never), for failure tests"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 1 or self.eval_every < 1:
            raise ConfigError(f"steps={self.steps} and eval_every={self.eval_every} must be >= 1")
        for name in ("step_s", "step_cpu_s", "noise", "lambda_ppl", "lambda_dist"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 0")
        if self.curve_tau <= 0:
            raise ConfigError(f"curve_tau={self.curve_tau} must be > 0")


def _unit(*parts: object) -> float:
    """A uniform number in [0, 1) that depends only on ``parts`` (stable across processes, unlike ``hash``)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _gauss(*parts: object) -> float:
    """A standard normal number that depends only on ``parts`` (Box-Muller on two ``_unit`` draws)."""
    u1, u2 = max(_unit(*parts, 1), 1e-12), _unit(*parts, 2)
    return math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2)


def _clip(x: float) -> float:
    return min(1.0, max(0.0, x))


def _ceilings(config: SyntheticConfig) -> tuple[float, float]:
    """The final dev accuracy and prompt log-perplexity this configuration tends to: the trade-off."""
    fluency = math.log1p(config.lambda_ppl)
    acc = 0.55 + 0.35 * math.exp(-0.5 * fluency) + 0.02 * _gauss("acc", config.seed)
    log_ppl = 5.0 + 4.0 * math.exp(-0.7 * fluency) + 0.2 * _gauss("ppl", config.seed)
    return acc, log_ppl


def _metrics(config: SyntheticConfig, step: int) -> dict[str, float]:
    """The final-style metrics of the prompt the run holds at ``step``."""
    acc, log_ppl = _ceilings(config)
    progress = 1 - math.exp(-step / (config.curve_tau * config.steps))
    dev = _clip(0.5 + (acc - 0.5) * progress + config.noise * _gauss("dev", config.seed, step))
    ppl = 10.0 + (log_ppl - 10.0) * progress
    dist = 0.8 * math.exp(-math.log1p(config.lambda_dist)) * (1 - 0.5 * progress)
    return {
        "task/ce": -math.log(max(dev, 1e-3)),
        "task/acc_train": _clip(dev + 0.05),
        "task/acc_dev": dev,
        "task/acc_test": _clip(dev - 0.02 + config.noise * _gauss("test", config.seed, step)),
        "interp/log_ppl": ppl,
        "interp/scrutability": -ppl,
        "interp/repeat_frac": _clip(0.4 * (1 - progress) * _unit("repeat", config.seed)),
        "interp/special_frac": 0.0,
        "interp/word_frac": _clip(0.3 + 0.6 * math.exp(-ppl / 8)),
        "faith/dist": dist,
        "faith/output": dist / 4,
        "faith/perf": abs(0.02 * _gauss("perf", config.seed, step)),
    }


def _prompt(config: SyntheticConfig, step: int) -> list[int]:
    return [int(_unit("id", config.seed, step, i) * _VOCAB) for i in range(config.prompt_len)]


def _text(ids: list[int]) -> str:
    return " " + " ".join(_WORDS[i % len(_WORDS)] for i in ids)


def _burn(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class Synthetic:
    """Learning curves from a formula, each step a sleep: thousands of trials in minutes."""

    name = "synthetic"
    config_cls = SyntheticConfig
    uses_device = False  # its steps sleep: a trial of it resolves no device (and so imports no torch)

    def run(
        self, config: SyntheticConfig, *, report: Reporter | None = None, checkpoint: Checkpointing | None = None
    ) -> PromptResult:
        start = time.perf_counter()
        best = Selection(config.select)
        history: list[tuple[int, dict[str, float]]] = []
        done, elapsed = 0, 0.0
        if checkpoint is not None and checkpoint.state is not None:
            state: dict[str, Any] = checkpoint.state
            best = Selection.from_state(state["best"])
            history = [(int(step), dict(metrics)) for step, metrics in state["history"]]
            done, elapsed = int(state["step"]), float(state["elapsed_s"])
        last = checkpoint.last_step(config.steps) if checkpoint is not None else config.steps
        for step in range(done + 1, last + 1):
            time.sleep(config.step_s)
            _burn(config.step_cpu_s)
            if step == config.diverge_at:
                raise DivergedError(f"synthetic loss is nan at step {step} (diverge_at={config.diverge_at})")
            if step % config.eval_every == 0 or step == config.steps or step == last:
                metrics = _metrics(config, step)
                best.offer(
                    step,
                    acc=metrics["task/acc_dev"],
                    ce=metrics["task/ce"],
                    objective=metrics["task/ce"] + config.lambda_ppl * metrics["interp/log_ppl"],
                    payload=step,
                )
                curve = {"dev/acc": metrics["task/acc_dev"], "dev/log_ppl": metrics["interp/log_ppl"]}
                curve["train/loss"] = metrics["task/ce"] + config.lambda_ppl * metrics["interp/log_ppl"]
                history.append((step, curve))
                if report is not None:
                    report(step, curve)
            if checkpoint is not None and (checkpoint.due(step) or step == last) and step < config.steps:
                checkpoint.save(
                    {
                        "step": step,
                        "best": best.state(),
                        "history": [[s, dict(m)] for s, m in history],
                        "elapsed_s": elapsed + time.perf_counter() - start,
                    }
                )
        kept = int(best.payload) if best.payload is not None else max(done, last)
        ids = _prompt(config, kept)
        return PromptResult(
            tuner=self.name,
            prompt_text=_text(ids),
            prompt_ids=ids,
            metrics=_metrics(config, kept),
            steps=max(done, last),
            seed=config.seed,
            wall_s=max(elapsed + time.perf_counter() - start, 1e-6),
            config=config_dict(config),
            history=history,
        )

    def __repr__(self) -> str:
        return "Synthetic()"


register(Synthetic())
