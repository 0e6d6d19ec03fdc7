"""Final metrics of a prompt (names, directions and definitions in objectives/metrics.py), shared by every tuner."""

from __future__ import annotations

import math

import torch

from objectives.metrics import (
    accuracy,
    faith_dist,
    faith_output,
    faith_perf,
    repeat_frac,
    special_frac,
    task_ce,
    token_nll,
    word_frac,
)
from objectives.problem import Problem
from objectives.scoring import prompt_logits


@torch.no_grad()
def split_scores(problem: Problem, split: str, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Accuracy and cross-entropy of each prompt on a whole split: ``(P, L, d)`` → ``(P,)``, ``(P,)``.

    ``L = 0`` (no prompt at all) is scored from the frozen pass over the inputs alone.
    """
    scorer = problem.scorers[split]
    if prompt.shape[1] == 0:
        logits = scorer.empty_prompt_logits().expand(prompt.shape[0], -1, -1)
    else:
        logits = scorer.logits(prompt)
    labels = problem.labels[split]
    return accuracy(logits, labels), task_ce(logits, labels)


@torch.no_grad()
def empty_prompt_accuracy(problem: Problem, split: str) -> float:
    """Accuracy with no prompt at all on ``split``: the least a tuned prompt must reach to be worth anything."""
    return float(accuracy(problem.scorers[split].empty_prompt_logits(), problem.labels[split]))


def _no_prompt_metrics(problem: Problem) -> dict[str, float]:
    """The metrics ``baseline/acc_{dev,test}``: accuracy with no prompt, computed once per problem (per process)."""
    if not problem.no_prompt_metrics:
        problem.no_prompt_metrics.update(
            {f"baseline/acc_{s}": empty_prompt_accuracy(problem, s) for s in ("dev", "test")}
        )
    return dict(problem.no_prompt_metrics)


@torch.no_grad()
def log_ppl(problem: Problem, prompt_ids: torch.Tensor) -> torch.Tensor:
    """``interp/log_ppl`` of discrete prompts ``(P, L)`` under the task LM → ``(P,)`` (0 for ``L <= 1``)."""
    if prompt_ids.shape[1] <= 1:
        return torch.zeros(prompt_ids.shape[0], device=prompt_ids.device)
    embeds = problem.lm.embeddings[prompt_ids]
    return token_nll(prompt_logits(problem.lm, embeds), prompt_ids)


def readability(problem: Problem, prompt_ids: torch.Tensor) -> dict[str, float]:
    """The scrutability metrics of one discrete prompt ``(L,)``."""
    ids = prompt_ids.tolist()
    nll = float(log_ppl(problem, prompt_ids[None])[0])
    return {
        "interp/log_ppl": nll,
        "interp/scrutability": -nll,
        "interp/repeat_frac": repeat_frac(ids),
        "interp/special_frac": special_frac(ids, problem.lm.tokenizer),
        "interp/word_frac": word_frac(problem.lm.tokenizer.decode(ids)),
    }


@torch.no_grad()
def evaluate(problem: Problem, prompt_ids: torch.Tensor, soft: torch.Tensor | None = None) -> dict[str, float]:
    """Every final metric of a discrete prompt ``(L,)``, and of its soft counterpart ``(L, d)`` when given.

    ``task/ce`` is the dev cross-entropy of the discrete prompt (dev is the split prompts are selected on).
    Without a soft prompt the faithfulness metrics are 0: a prompt that is discrete from the start is its
    own readable form. An empty ``prompt_ids`` scores the input alone (the ``no_prompt`` baseline).
    ``baseline/acc_{dev,test}`` (no prompt at all) come with every result, so that a reader of any table can
    see whether a prompt beats having none. Both prompts are taken to the LM's device first (a prompt restored
    from a checkpoint arrives on the CPU); every tuner restores its state onto its model's device as well.
    """
    embeds = problem.lm.embeddings
    prompt_ids = prompt_ids.to(device=embeds.device, dtype=torch.long)
    discrete = embeds[prompt_ids].float()
    if soft is not None:
        soft = soft.detach().to(device=embeds.device, dtype=torch.float32)
    prompts = discrete[None] if soft is None else torch.stack([discrete, soft])
    metrics: dict[str, float] = {}
    scores = {split: split_scores(problem, split, prompts) for split in ("train", "dev", "test")}
    for split, (acc, _) in scores.items():
        metrics[f"task/acc_{split}"] = float(acc[0])
    metrics["task/ce"] = float(scores["dev"][1][0])
    metrics.update(readability(problem, prompt_ids))
    metrics.update(_no_prompt_metrics(problem))
    if soft is None:
        metrics.update({"faith/dist": 0.0, "faith/output": 0.0, "faith/perf": 0.0, "faith/perf_ce": 0.0})
    else:
        acc_dev, ce_dev = scores["dev"]
        metrics["task/acc_dev_soft"] = float(acc_dev[1])
        metrics["task/acc_test_soft"] = float(scores["test"][0][1])
        metrics["faith/dist"] = float(faith_dist(soft, embeds))
        metrics["faith/output"] = _faith_output(problem, discrete, soft)
        metrics["faith/perf"] = faith_perf(float(acc_dev[1]), float(acc_dev[0]))
        metrics["faith/perf_ce"] = faith_perf(float(ce_dev[1]), float(ce_dev[0]))
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    if bad:
        raise FloatingPointError(f"non-finite metrics {bad} for prompt {prompt_ids.tolist()}")
    return metrics


def _faith_output(problem: Problem, discrete: torch.Tensor, soft: torch.Tensor) -> float:
    """``faith/output`` on dev, in chunks of examples: full-vocabulary logits are large."""
    scorer = problem.scorers["dev"]
    total, count = 0.0, 0.0
    chunk = 8
    for start in range(0, scorer.n, chunk):
        rows = torch.arange(start, min(start + chunk, scorer.n), device=problem.lm.device)
        logits, mask = scorer.logits(torch.stack([discrete, soft]), rows, full_vocab=True)
        n = float(mask[0].sum())
        total += float(faith_output(logits[1], logits[0], mask[0])) * n
        count += n
    return total / count
