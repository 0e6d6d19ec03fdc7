"""Baselines every learned prompt must beat: tuners that train nothing.

- ``no_prompt``: the input alone (``{x}`` for the suffix template, ``{x} It was`` for prefix).
- ``manual``: one hand-written prompt (``prompt_text``); a sweep runs one trial per prompt of its
  ``manual_prompts`` list (defaults suited to the task: :func:`default_manual_prompts`).
- ``lm_sample``: fluent by construction and nearly free: ``n_candidates`` prompts of ``prompt_len`` tokens
  sampled from the task LM itself (top-k sampling from the document start), the best on train+dev kept.

They return a ``PromptResult`` scored by the same ``evaluate`` on the same splits as the learned tuners, so a
sweep runs them as ordinary trials (replicates, MLflow, exports) with their own ``tuner`` names.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from objectives.errors import ConfigError
from objectives.evaluation import evaluate
from objectives.metrics import accuracy, task_ce
from objectives.problem import Problem, ProblemConfig, build_problem
from tuners.base import Checkpointing, PromptResult, Reporter, register
from tuners.configs import config_dict
from tuners.selection import best_index, selection_key

_SENTIMENT_WORDS = {
    "terrible", "great", "bad", "good", "negative", "positive", "awful", "excellent", "poor", "fine",
    "horrible", "wonderful", "worst", "best", "neutral", "okay", "ok",
}  # fmt: skip
# Defaults a reader would write first, per kind of task and template (suffix: after {x}; prefix: before it).
_DEFAULT_PROMPTS = {
    ("sentiment", "suffix"): (" It was", " All in all, the movie was", " My rating: the film is"),
    ("sentiment", "prefix"): ("Review:", "Movie review:", "Here is what I thought of the film:"),
    ("topic", "suffix"): (" This article is about", " Topic:", " The topic of this text is"),
    ("topic", "prefix"): ("Article:", "News:", "Classify the topic of this article:"),
}


def task_kind(verbalizer: Sequence[str]) -> str:
    """``sentiment`` when the verbalizer words are sentiment words (" terrible"/" great"), else ``topic``."""
    words = {w.strip().lower() for w in verbalizer}
    return "sentiment" if words <= _SENTIMENT_WORDS else "topic"


def default_manual_prompts(verbalizer: Sequence[str], template: str) -> tuple[str, ...]:
    """Hand-written prompts suited to the task (by its verbalizer) and the template."""
    return _DEFAULT_PROMPTS[(task_kind(verbalizer), template)]


def _result(
    name: str, problem: Problem, config: ProblemConfig, ids: Sequence[int], start: float, steps: int = 0
) -> PromptResult:
    tensor = torch.tensor(list(ids), dtype=torch.long, device=problem.lm.device)
    return PromptResult(
        tuner=name,
        prompt_text=problem.lm.tokenizer.decode(list(ids)),
        prompt_ids=[int(i) for i in ids],
        metrics=evaluate(problem, tensor),
        steps=steps,
        seed=config.seed,
        wall_s=time.perf_counter() - start,
        config=config_dict(config),
    )


@dataclass(frozen=True, kw_only=True)
class NoPromptConfig(ProblemConfig):
    """The problem fields only; ``prompt_len`` is ignored (there is no prompt)."""


class NoPrompt:
    """The input alone: the accuracy every prompt must beat to be worth anything."""

    name = "no_prompt"
    trains = False
    config_cls = NoPromptConfig

    def run(
        self, config: NoPromptConfig, *, report: Reporter | None = None, checkpoint: Checkpointing | None = None
    ) -> PromptResult:
        start = time.perf_counter()
        return _result(self.name, build_problem(config), config, [], start)

    def __repr__(self) -> str:
        return "NoPrompt()"


@dataclass(frozen=True, kw_only=True)
class ManualConfig(ProblemConfig):
    """A hand-written prompt; its length is its own (``prompt_len`` is ignored)."""

    prompt_text: str = field(default=" It was", metadata={"help": "the hand-written prompt, as placed in the template"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.prompt_text:
            raise ConfigError("prompt_text is empty; the no_prompt baseline is the empty prompt")


class Manual:
    """A hand-written prompt, scored as it is."""

    name = "manual"
    trains = False
    config_cls = ManualConfig

    def run(
        self, config: ManualConfig, *, report: Reporter | None = None, checkpoint: Checkpointing | None = None
    ) -> PromptResult:
        start = time.perf_counter()
        problem = build_problem(config)
        ids = problem.lm.tokenizer.encode(config.prompt_text, add_special_tokens=False)
        return _result(self.name, problem, config, ids, start)

    def __repr__(self) -> str:
        return "Manual()"


@dataclass(frozen=True, kw_only=True)
class LMSampleConfig(ProblemConfig):
    """How many prompts to sample from the LM, and from how many of its top next tokens."""

    n_candidates: int = field(
        default=32, metadata={"help": "prompts sampled from the LM; the best on train+dev is kept"}
    )
    top_k: int = field(default=50, metadata={"help": "sample each token from the LM's top-k (0: the whole vocabulary)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_candidates < 1:
            raise ConfigError(f"n_candidates={self.n_candidates} must be >= 1")
        if self.top_k < 0:
            raise ConfigError(f"top_k={self.top_k} must be >= 0 (0: the whole vocabulary)")


class LMSample:
    """The best of ``n_candidates`` prompts the LM writes itself, picked on train+dev (never test)."""

    name = "lm_sample"
    trains = False
    config_cls = LMSampleConfig

    def run(
        self, config: LMSampleConfig, *, report: Reporter | None = None, checkpoint: Checkpointing | None = None
    ) -> PromptResult:
        from objectives.fluent import sample_prompts

        start = time.perf_counter()
        problem = build_problem(config)
        generator = torch.Generator().manual_seed(config.seed)
        candidates = sample_prompts(
            problem.lm, config.n_candidates, config.prompt_len, generator=generator, top_k=config.top_k or None
        )
        best = int(_pick(problem, candidates))
        return _result(self.name, problem, config, candidates[best].tolist(), start, steps=config.n_candidates)

    def __repr__(self) -> str:
        return "LMSample()"


@torch.no_grad()
def _pick(problem: Problem, candidates: torch.Tensor) -> int:
    """Index of the candidate ``(N, L)`` with the best train+dev accuracy (ties: lower cross-entropy, then first)."""
    prompts = problem.lm.embeddings[candidates].float()
    logits = torch.cat([problem.scorers[s].logits(prompts) for s in ("train", "dev")], dim=1)
    labels = torch.cat([problem.labels[s] for s in ("train", "dev")])
    acc, ce = accuracy(logits, labels).tolist(), task_ce(logits, labels).tolist()
    return best_index(
        [selection_key("dev_acc", step=i, acc=a, ce=c) for i, (a, c) in enumerate(zip(acc, ce, strict=True))]
    )


for _tuner in (NoPrompt(), Manual(), LMSample()):
    register(_tuner)
del _tuner
