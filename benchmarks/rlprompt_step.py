"""One RLPrompt training step at demo size, before and after, side by side in one run, with a profile.

    python benchmarks/rlprompt_step.py                          # the demo preset: SmolLM2-135M, Rotten Tomatoes
    python benchmarks/rlprompt_step.py --fluent-top-k 16        # the fluent restriction (sparse Q-values)
    python benchmarks/rlprompt_step.py --set prompts_per_step=16 --set batch_size=32
    python benchmarks/rlprompt_step.py --device cuda                # on a GPU: phases wait for it; peak memory

Two runs of the same configuration and seed share the model and the frozen input caches:

- ``before``: the step as it was, copied here (``_BeforePolicy``, ``before_step``): every decode starts with
  an LM pass over the start token; ``interp/log_ppl`` is a separate pass over the prompts; every sampled
  prompt is scored, repeats included; the loss's Q-values cover the whole vocabulary even under the fluent
  restriction (disallowed actions ``-inf``); dev evaluation scores the greedy prompt even when unchanged.
- ``after``: ``RLPrompt.train_step`` and ``evaluate_dev`` as they are, timed phase by phase by wrapping the
  functions they call (so what is timed is the code that runs, not a copy). As in ``RLPrompt.train``, the
  samples' log_ppl is measured on reported steps only unless the reward needs it: ``--set lambda_ppl=1``
  shows the cost of the log_ppl rows the decode then carries.

Both start from the same MLP; each step of one is followed by the same step of the other, so machine noise
hits both alike, and their first step's prompts and rewards are checked equal (without the fluent restriction,
with which the two draw their samples in a different order, and without ``include_greedy``, which the before
step lacks: the demo preset sets it, so check with ``--set include_greedy=false``). Medians over ``--steps`` steps
after one warm-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

import tuners.rlprompt.trainer as trainer_module
from objectives.evaluation import log_ppl
from objectives.metrics import accuracy, task_ce
from objectives.models import LanguageModel
from tuners import preset_config
from tuners.configs import parse_overrides
from tuners.rlprompt import RLPrompt
from tuners.rlprompt.policy import PolicyMLP, sample_top_k
from tuners.rlprompt.sql import polyak_update, shaped_rewards, sql_loss, task_rewards

# Phase name -> per-step totals of (wall seconds, process CPU seconds); ``end_step`` closes a step.
Times = dict[str, list[tuple[float, float]]]
_OPEN: dict[int, dict[str, list[float]]] = {}


def _sync() -> None:
    """Wait for the GPU where one is in use: its work is queued, and a phase's time is when it is done."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@contextmanager
def timed(times: Times, name: str):
    """Add the wall and CPU time of the block to phase ``name`` of the current step of ``times``."""
    _sync()
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        _sync()
        acc = _OPEN.setdefault(id(times), {}).setdefault(name, [0.0, 0.0])
        acc[0] += time.perf_counter() - wall
        acc[1] += time.process_time() - cpu


def end_step(times: Times) -> None:
    for name, (wall, cpu) in _OPEN.pop(id(times), {}).items():
        times[name].append((wall, cpu))


# --- before: the previous decode, rewards and step, copied ---------------------------------------------------


@dataclass(frozen=True)
class _BeforeRollout:
    ids: torch.Tensor
    hidden: torch.Tensor
    base: torch.Tensor
    allowed: torch.Tensor | None


class _BeforeDecoder:
    def __init__(self, lm: LanguageModel) -> None:
        self.lm = lm
        self.cache: object | None = None

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        with self.lm.autocast():
            out = self.lm.body(input_ids=tokens, cache=self.cache, use_cache=True)
        self.cache = out.cache
        return out.last_hidden_state[:, -1].float()


class _BeforePolicy:
    """The previous ``PromptPolicy``: dense Q-values, an LM pass for the start token, no log_ppl rows."""

    def __init__(self, lm: LanguageModel, task_lm: LanguageModel, start_id: int, n_actions: int, k: int | None):
        self.lm, self.task_lm, self.start_id, self.n_actions, self.fluent_top_k = lm, task_lm, start_id, n_actions, k

    def q_values(self, mlp: PolicyMLP, rollout: _BeforeRollout) -> torch.Tensor:
        q = rollout.base + mlp(rollout.hidden) @ self.lm.head.weight[: self.n_actions].float().T
        if rollout.allowed is not None:
            q = q.masked_fill(~rollout.allowed, float("-inf"))
        return q

    @torch.no_grad()
    def decode(
        self, mlp: PolicyMLP, n: int, length: int, *, top_k: int | None = None, generator: torch.Generator | None = None
    ) -> _BeforeRollout:
        tokens = torch.full((n, 1), self.start_id, dtype=torch.long, device=self.lm.device)
        policy_lm = _BeforeDecoder(self.lm)
        task_lm = _BeforeDecoder(self.task_lm) if self.fluent_top_k and self.task_lm is not self.lm else None
        ids, hiddens, bases, alloweds = [], [], [], []
        for _ in range(length):
            hidden = policy_lm(tokens)
            base = torch.log_softmax(self.lm.head(hidden.to(self.lm.embeddings.dtype)).float()[:, : self.n_actions], -1)
            allowed = None
            if self.fluent_top_k:
                if task_lm is None:
                    task_logits = base
                else:
                    task_hidden = task_lm(tokens).to(self.task_lm.embeddings.dtype)
                    task_logits = self.task_lm.head(task_hidden).float()[:, : self.n_actions]
                index = task_logits.topk(self.fluent_top_k, dim=-1).indices
                allowed = torch.zeros_like(task_logits, dtype=torch.bool).scatter_(-1, index, True)
            step = _BeforeRollout(tokens, hidden[:, None], base[:, None], None if allowed is None else allowed[:, None])
            q = self.q_values(mlp, step)[:, 0]
            action = q.argmax(-1) if generator is None else sample_top_k(q, top_k or self.n_actions, generator)
            tokens = action[:, None]
            ids.append(action)
            hiddens.append(hidden)
            bases.append(base)
            alloweds.append(allowed)
        return _BeforeRollout(
            ids=torch.stack(ids, 1),
            hidden=torch.stack(hiddens, 1),
            base=torch.stack(bases, 1),
            allowed=None if alloweds[0] is None else torch.stack(alloweds, 1),
        )


def before_step(run: RLPrompt, policy: _BeforePolicy, times: Times) -> dict[str, Any]:
    """The previous ``RLPrompt.train_step``, phase by phase."""
    config, problem = run.config, run.problem
    polyak_update(run.target, run.mlp, config.polyak)
    with timed(times, "decode"):
        rollout = policy.decode(
            run.mlp, config.prompts_per_step, config.prompt_len, top_k=config.top_k, generator=run.generator
        )
    rows = run._train_rows()
    with timed(times, "reward: scorer"), torch.no_grad():
        logits = problem.scorers["train"].logits(problem.lm.embeddings[rollout.ids].float(), rows)
    with timed(times, "reward: log_ppl"):
        nll = log_ppl(problem, rollout.ids)
    labels = problem.labels["train"][rows]
    coefs = {"correct_coef": config.reward_correct, "incorrect_coef": config.reward_incorrect}
    raw = task_rewards(logits, labels, nll, lambda_ppl=config.lambda_ppl, **coefs)
    rewards = shaped_rewards(
        raw,
        old_min=config.shaping_old_min,
        old_max=config.shaping_old_max,
        new_min=config.shaping_new_min,
        new_max=config.shaping_new_max,
    )
    with timed(times, "Q-values (online + target)"):
        q = policy.q_values(run.mlp, rollout)
        with torch.no_grad():
            q_target = policy.q_values(run.target, rollout)
    with timed(times, "SQL loss"):
        loss = sql_loss(q, q_target, rollout.ids, rewards)
    with timed(times, "backward + clip"):
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(run.mlp.parameters(), config.grad_clip)
    with timed(times, "Adam"):
        run.optimizer.step()
    run.step += 1
    return {"ids": rollout.ids, "raw": raw, "loss": float(loss.detach()), "nll": nll}


@torch.no_grad()
def before_dev(run: RLPrompt, policy: _BeforePolicy) -> float:
    """The previous dev evaluation of the greedy prompt (decoded and scored every time)."""
    problem = run.problem
    ids = policy.decode(run.mlp, 1, run.config.prompt_len).ids[0]
    logits = problem.scorers["dev"].logits(problem.lm.embeddings[ids].float())
    labels = problem.labels["dev"]
    task_ce(logits, labels)
    return float(accuracy(logits, labels))


# --- after: the code as it is, timed by wrapping what it calls -----------------------------------------------


_ACTIVE = [False]  # timing the after run's phases only inside its train_step, not in its dev evaluation


@contextmanager
def _inactive():
    yield


def _wrap(times: Times, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with timed(times, name) if _ACTIVE[0] else _inactive():
            return fn(*args, **kwargs)

    return wrapper


def instrument(run: RLPrompt, times: Times, rollouts: list[Any]) -> None:
    """Time the phases of ``run.train_step`` where they happen (instance attributes and module globals); the
    decoded rollouts go to ``rollouts``."""
    decode = run.policy.decode

    def decode_and_keep(*args: Any, **kwargs: Any) -> Any:
        with timed(times, "decode") if _ACTIVE[0] else _inactive():
            rollouts.append(decode(*args, **kwargs))
        return rollouts[-1]

    run.policy.decode = decode_and_keep  # type: ignore[method-assign]
    # Module globals of the trainer: the before step calls its own imports, so only the after run is timed.
    trainer_module.sql_loss = _wrap(times, "SQL loss", trainer_module.sql_loss)
    trainer_module.log_ppl = _wrap(times, "reward: log_ppl", trainer_module.log_ppl)
    scorer = run.problem.scorers["train"]
    # The scorer is shared with the before run: wrap it only for this run's calls, via the trainer's view.
    original_rewards = run._rewards

    def rewards(ids: torch.Tensor, rows: torch.Tensor, nll: torch.Tensor | None = None, **kwargs: Any) -> Any:
        logits = scorer.logits
        scorer.logits = _wrap(times, "reward: scorer", logits)  # type: ignore[method-assign]
        try:
            with timed(times, "reward: all") if _ACTIVE[0] else _inactive():
                return original_rewards(ids, rows, nll, **kwargs)
        finally:
            scorer.logits = logits  # type: ignore[method-assign]

    run._rewards = rewards  # type: ignore[method-assign]
    q_values = run.policy.q_values
    run.policy.q_values = _wrap(times, "Q-values (online + target)", q_values)  # type: ignore[method-assign]
    opt_step = run.optimizer.step
    run.optimizer.step = _wrap(times, "Adam", opt_step)  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--fluent-top-k", type=int, default=0)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the phases then wait for the GPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # A small test split: the benchmark never scores test, and its frozen pass would only lengthen the start.
    values = {"device": args.device, "n_test": 8, "fluent_top_k": args.fluent_top_k}
    values.update(parse_overrides(args.overrides))
    config = preset_config("rlprompt", args.preset, values)
    started = time.perf_counter()
    before_run, after_run = RLPrompt(config), RLPrompt(config)
    build_s = time.perf_counter() - started
    policy = _BeforePolicy(
        before_run.policy.lm,
        before_run.policy.task_lm,
        before_run.policy.start_id,
        before_run.policy.n_actions,
        before_run.policy.fluent_top_k,
    )
    t_before: Times = defaultdict(list)
    t_after: Times = defaultdict(list)
    rollouts: list[Any] = []
    instrument(after_run, t_after, rollouts)
    first: tuple[dict[str, Any], dict[str, Any]] | None = None
    cuda = torch.device(config.device).type == "cuda" if config.device != "auto" else torch.cuda.is_available()
    peaks = {"before": 0, "after": 0}

    def reset_peak() -> None:
        if cuda:
            torch.cuda.reset_peak_memory_stats()

    def read_peak(which: str) -> None:
        if cuda:
            peaks[which] = max(peaks[which], torch.cuda.max_memory_allocated())

    for i in range(args.steps + 1):
        reset_peak()
        with timed(t_before, "step total"):
            b = before_step(before_run, policy, t_before)
        read_peak("before")
        reset_peak()
        with timed(t_after, "step total"):
            _ACTIVE[0] = True
            try:
                # As RLPrompt.train: log_ppl of the samples on the steps it reports (and the first, checked
                # below), and on every step where the reward needs it (lambda_ppl > 0).
                a = after_run.train_step(measure_ppl=i == 0 or (i + 1) % config.eval_every == 0)
            finally:
                _ACTIVE[0] = False
        read_peak("after")
        if i == 0:
            first = (b, {**a, "ids": rollouts[0].ids})
        with timed(t_before, "dev evaluation"):
            before_dev(before_run, policy)
        with timed(t_after, "dev evaluation"):
            after_run.evaluate_dev()
        end_step(t_before)
        end_step(t_after)

    assert first is not None
    b, a = first
    print(
        f"preset={args.preset} model={config.model} P={config.prompts_per_step} B={config.batch_size} "
        f"L={config.prompt_len} fluent_top_k={config.fluent_top_k} lambda_ppl={config.lambda_ppl} "
        f"device={before_run.problem.lm.device} threads={args.threads}; build {build_s:.1f} s; medians of "
        f"{args.steps} steps after 1 warm-up (ms)"
    )
    if cuda:
        print(
            f"peak MiB allocated during a step: before {peaks['before'] / 2**20:.0f}, "
            f"after {peaks['after'] / 2**20:.0f} "
            f"(both runs' models and caches included); process total {torch.cuda.memory_reserved() / 2**20:.0f} "
            "MiB reserved"
        )
    if config.include_greedy:
        # The before step had no greedy row: its prompts and rewards differ from the first row on.
        print("first step: not compared (include_greedy: the after step rewards the greedy prompt among the samples;")
        print("            --set include_greedy=false checks that both steps draw the same prompts and rewards)")
    elif not config.fluent_top_k:
        # Same MLP, same generator state: the first step must agree.
        print(
            f"first step: same prompts {bool(torch.equal(b['ids'], a['ids']))}"
            f" | reward before {float(b['raw'].mean()):.4f} after {a['train/reward']:.4f}"
            f" | log_ppl before {float(b['nll'].mean()):.5f} after {a['train/log_ppl']:.5f}"
            f" | loss before {b['loss']:.4f} after {a['train/loss']:.4f}"
        )

    def med(times: Times, name: str, which: int) -> float:
        """Median over the timed steps (the warm-up left out) in ms; 0 for a phase that never ran."""
        values = [t[which] for t in times.get(name, [])[1:]]
        return statistics.median(values) * 1000 if values else 0.0

    names = [
        "decode",
        "reward: scorer",
        "reward: log_ppl",
        "Q-values (online + target)",
        "SQL loss",
        "backward + clip",
        "Adam",
    ]
    print(f"{'phase (ms per step)':<36}{'before':>9}{'after':>9}  |  {'CPU before':>10}{'CPU after':>10}")

    def row(label: str, name: str, before: Times | None = t_before) -> None:
        cells = [med(before, name, 0) if before else float("nan"), med(t_after, name, 0)]
        cpu = [med(before, name, 1) if before else float("nan"), med(t_after, name, 1)]
        print(f"{label:<36}{cells[0]:>9.1f}{cells[1]:>9.1f}  |  {cpu[0]:>10.1f}{cpu[1]:>10.1f}")

    for name in names:
        row(name, name)
    row("(after) reward incl. dedupe, gap", "reward: all", None)
    rest = [med(t_after, "step total", w) - sum(med(t_after, n, w) for n in names) for w in (0, 1)]
    print(f"{'(after) backward + clip + rest':<36}{'':>9}{rest[0]:>9.1f}  |  {'':>10}{rest[1]:>10.1f}")
    row("step total", "step total")
    row("dev evaluation of the greedy prompt", "dev evaluation")
    every = config.eval_every
    per = {
        (w, label): med(t, "step total", w) + med(t, "dev evaluation", w) / every
        for w in (0, 1)
        for label, t in (("before", t_before), ("after", t_after))
    }
    print(
        f"{f'per step incl. dev every {every}':<36}{per[0, 'before']:>9.1f}{per[0, 'after']:>9.1f}  |  "
        f"{per[1, 'before']:>10.1f}{per[1, 'after']:>10.1f}"
    )
    print(
        f"speed-up per step: {per[0, 'before'] / per[0, 'after']:.2f}x wall, "
        f"{per[1, 'before'] / per[1, 'after']:.2f}x CPU time; load average {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores at the end (other processes share them: CPU time is the steadier measure)"
    )


if __name__ == "__main__":
    main()
