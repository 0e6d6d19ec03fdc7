"""The RLPrompt training run: on-policy soft Q-learning of the policy MLP, with checkpoints.

One step (as the original's ``SQLModule`` on-policy mode):

1. Polyak-update the target MLP towards the online one.
2. Sample ``prompts_per_step`` prompts from the policy (top-k); with ``include_greedy`` the first of them is
   the policy's greedy prompt. The decode also yields each prompt's ``interp/log_ppl`` (``policy.py``).
3. Reward them: the gap reward of every distinct prompt on the step's training examples, all in one batched
   ``PromptScorer.logits`` call over the frozen input cache, minus ``lambda_ppl · log_ppl``; z-scored across
   the prompts, then shaped.
4. SQL loss (single-step + path consistency) of the online Q-values against the target's; Adam step with
   the gradient norm clipped (``updates_per_step`` times on the same rewarded prompts). A loss or reward that
   is not finite stops the run with ``objectives.errors.DivergedError`` naming the step.

Every ``eval_every`` steps the greedy prompt is scored on dev and offered to the run's ``Selection``
(``config.select``; the dev objective is the negated dev reward, gap reward − λ_ppl·log_ppl). The untrained
policy's greedy prompt is scored on dev before the first step, so a result says how much the training itself
gained (``learn/acc_dev_gain``: final greedy prompt minus untrained greedy prompt, on dev), apart from what
selecting among evaluations adds. ``RLPrompt.state_dict`` holds everything a resumed run needs to continue to the
same result as an uninterrupted one: both MLPs, the optimiser, the step, the RNG and the best prompt. It reaches
the caller through the tuner protocol's ``Checkpointing`` (``tuners.base``), or a file (``checkpoint_dir``).
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from objectives.errors import ConfigError, check_finite
from objectives.evaluation import evaluate, log_ppl
from objectives.metrics import accuracy, task_ce, zscore
from objectives.models import LanguageModel, load_lm, to_device
from objectives.problem import build_problem
from tuners.base import Checkpointing, PromptResult, Reporter
from tuners.configs import config_dict
from tuners.rlprompt.config import RLPromptConfig
from tuners.rlprompt.policy import PolicyMLP, PromptPolicy, Rollout, start_token_id
from tuners.rlprompt.sql import polyak_update, shaped_rewards, sql_loss, task_rewards
from tuners.selection import Selection

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "rlprompt_last.pt"
STATE_VERSION = 3
# Fields a resumed run may change: where and how often it saves, how long it runs, where it runs and how much of
# its device's memory it may use (a retry may land on another device, or on a CPU-only worker).
RESUMABLE_CHANGES = frozenset({"steps", "checkpoint_dir", "checkpoint_every", "device", "gpu_share", "cache_budget_mb"})


class RLPrompt:
    """One RLPrompt run for ``config``: policy MLP, target MLP, Adam, RNG, best prompt and history.

    ``train()`` runs it to ``config.steps`` (optionally from a checkpoint) and returns the ``PromptResult``;
    ``state_dict()``/``load_state_dict()`` capture and restore it exactly.
    """

    name = "rlprompt"

    def __init__(self, config: RLPromptConfig) -> None:
        self.config = config
        self.problem = build_problem(config)
        task_lm = self.problem.lm
        policy_lm = load_lm(config.policy_model, config.device)
        n_actions = _shared_vocabulary(config, task_lm, policy_lm)
        self.policy = PromptPolicy(
            policy_lm,
            task_lm,
            start_id=start_token_id(task_lm.tokenizer),
            n_actions=n_actions,
            fluent_top_k=config.fluent_top_k or None,
        )
        # One generator for everything random in the run (MLP init, example batches, sampled tokens), so its
        # state in a checkpoint is the whole of the run's randomness.
        self.generator = torch.Generator().manual_seed(config.seed)
        d_model = int(policy_lm.embeddings.shape[1])
        self.mlp = PolicyMLP(d_model, config.mlp_hidden, generator=self.generator).to(policy_lm.device)
        self.target = copy.deepcopy(self.mlp).requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.mlp.parameters(), lr=config.lr)
        self.step = 0
        self.best = Selection(config.select)
        # Dev accuracy of the untrained and of the latest greedy prompt: what training (not selection) gained.
        self.untrained_acc: float | None = None
        self.last_acc: float | None = None
        self.history: list[tuple[int, dict[str, float]]] = []
        self.elapsed_s = 0.0
        # The last greedy prompt scored on dev and its scores: a policy whose greedy prompt did not change since
        # the last evaluation is not scored again. One prompt on the whole split is always the same pass, so
        # this changes no result and needs no place in a checkpoint.
        self._dev_memo: tuple[tuple[int, ...], tuple[float, float, float]] | None = None

    # --- one step ---------------------------------------------------------------------------------------

    def train_step(self, *, measure_ppl: bool = True) -> dict[str, float]:
        """One soft Q-learning step; returns its training metrics.

        ``measure_ppl=False`` skips ``interp/log_ppl`` of the sampled prompts where the reward does not need it
        (``lambda_ppl = 0``); ``train/log_ppl`` is then left out of the metrics. ``train`` measures it on the
        steps it reports only, the only ones whose metrics anyone sees.

        Raises ``DivergedError`` (before any update) when the step's loss or mean reward is not finite.
        """
        metrics = self._step(measure_ppl=measure_ppl, report=True)
        assert metrics is not None
        return {name: float(value) for name, value in metrics.items()}

    def _step(self, *, measure_ppl: bool, report: bool) -> dict[str, torch.Tensor | float] | None:
        """:meth:`train_step`, with its metrics left on the device (``None`` unless ``report``).

        A step reads the device only where it must: the distinct prompts' count (``torch.unique``, to score
        each once), the training rows (the scorer groups them by length on the host) and one flag per update
        saying whether the loss and reward are finite (so a diverged step changes nothing and its error names
        it). Its metrics stay tensors; ``train`` turns them into numbers on reporting steps only.
        """
        config = self.config
        step = self.step + 1
        measure_ppl = measure_ppl or bool(config.lambda_ppl)
        polyak_update(self.target, self.mlp, config.polyak)
        rollout = self.policy.decode(
            self.mlp,
            config.prompts_per_step,
            config.prompt_len,
            top_k=config.top_k,
            generator=self.generator,
            with_log_ppl=measure_ppl,
            greedy_rows=int(config.include_greedy),
        )
        raw, gap, acc, nll = self._rewards(rollout.ids, self._train_rows(), rollout.log_ppl, measure_ppl=measure_ppl)
        rewards = shaped_rewards(
            raw,
            old_min=config.shaping_old_min,
            old_max=config.shaping_old_max,
            new_min=config.shaping_new_min,
            new_max=config.shaping_new_max,
        )
        with torch.no_grad():
            q_target = self.policy.q_values(self.target, rollout)
        mean_reward = raw.mean()
        first_loss: torch.Tensor | None = None
        for _ in range(config.updates_per_step):
            loss = sql_loss(self.policy.q_values(self.mlp, rollout), q_target, rollout.choice, rewards)
            if first_loss is None:
                first_loss = loss.detach()
            # Checked before the update, one flag read per update: a diverged step changes nothing, and its
            # error names it.
            if not bool(torch.isfinite(loss.detach()) & torch.isfinite(mean_reward)):
                check_finite(step, loss=float(loss.detach()), reward=float(mean_reward))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.mlp.parameters(), config.grad_clip)
            self.optimizer.step()
        self.step = step
        if not report:
            return None
        assert first_loss is not None
        return self._step_metrics(rollout, raw, gap, acc, nll, reward=mean_reward, loss=first_loss)

    def _step_metrics(
        self,
        rollout: Rollout,
        raw: torch.Tensor,
        gap: torch.Tensor,
        acc: torch.Tensor,
        nll: torch.Tensor | None,
        *,
        reward: torch.Tensor,
        loss: torch.Tensor,
    ) -> dict[str, torch.Tensor | float]:
        """A step's metrics, tensors left on the device: from its samples' rewards ``(P,)`` (``reward`` their
        mean) and the first update's loss."""
        metrics: dict[str, torch.Tensor | float] = {
            "train/reward": reward,
            "train/reward_max": raw.max(),
            "train/gap_reward": gap.mean(),
            "train/acc": acc.mean(),
            "train/loss": loss,
            # Share of distinct prompts among the step's samples: near 1/P the policy has collapsed onto one
            # prompt, z-scored rewards are all 0 and learning stops.
            "train/distinct": len(torch.unique(rollout.ids, dim=0)) / len(rollout.ids),
        }
        if nll is not None:
            metrics["train/log_ppl"] = nll.mean()
        if self.config.include_greedy:
            # The greedy prompt's reward against the samples' (z-score units): > 0 when the policy's own choice
            # beats what it samples.
            metrics["train/greedy_z"] = zscore(raw)[0]
        return metrics

    def _train_rows(self) -> torch.Tensor:
        """The step's training examples: all of them, or a class-balanced random ``batch_size`` subset."""
        return self.problem.train_batch(self.config.batch_size, self.generator)

    @torch.no_grad()
    def _rewards(
        self, ids: torch.Tensor, rows: torch.Tensor, nll: torch.Tensor | None = None, *, measure_ppl: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Raw rewards of prompts ``(P, L)`` on examples ``(B,)``, and their parts: each ``(P,)``.

        Returns ``(reward, gap_reward, accuracy, log_ppl)``; ``reward`` is what gets z-scored. ``nll`` is the
        prompts' ``interp/log_ppl`` when the decode computed it already (``(P,)``), else it is computed here,
        unless ``measure_ppl`` is off and ``lambda_ppl = 0`` (then ``log_ppl`` is ``None``).
        """
        problem, config = self.problem, self.config
        # A prompt sampled several times is scored once: a peaked policy repeats itself often.
        unique, inverse = torch.unique(ids, dim=0, return_inverse=True)
        # Every distinct prompt × every example in one call: the scorer runs only the L prompt positions of each
        # pair against the cached keys/values of the examples.
        logits = problem.scorers["train"].logits(problem.lm.embeddings[unique].float(), rows)[inverse]
        labels = problem.labels["train"][rows]
        if nll is None and (measure_ppl or config.lambda_ppl):
            nll = log_ppl(problem, unique)[inverse]
        coefs = {"correct_coef": config.reward_correct, "incorrect_coef": config.reward_incorrect}
        gap = task_rewards(logits, labels, **coefs)
        reward = task_rewards(logits, labels, nll, lambda_ppl=config.lambda_ppl, **coefs)
        return reward, gap, accuracy(logits, labels), nll

    # --- evaluation -------------------------------------------------------------------------------------

    @torch.no_grad()
    def greedy_prompt(self) -> torch.Tensor:
        """The policy's greedy prompt ``(L,)``."""
        return self.policy.decode(self.mlp, 1, self.config.prompt_len).ids[0]

    @torch.no_grad()
    def _score_greedy(self) -> tuple[torch.Tensor, float, float, float]:
        """The greedy prompt ``(L,)`` and its dev accuracy, cross-entropy and objective (negated reward)."""
        problem, config = self.problem, self.config
        rollout: Rollout = self.policy.decode(self.mlp, 1, config.prompt_len, with_log_ppl=bool(config.lambda_ppl))
        ids = rollout.ids[0]
        key = tuple(ids.tolist())
        if self._dev_memo is not None and self._dev_memo[0] == key:
            return (ids, *self._dev_memo[1])
        logits = problem.scorers["dev"].logits(problem.lm.embeddings[ids].float())
        labels = problem.labels["dev"]
        coefs = {"correct_coef": config.reward_correct, "incorrect_coef": config.reward_incorrect}
        nll = None
        if config.lambda_ppl:
            nll = rollout.log_ppl if rollout.log_ppl is not None else log_ppl(problem, ids[None])
        reward = task_rewards(logits[None], labels, nll, lambda_ppl=config.lambda_ppl, **coefs)[0]
        scores = (float(accuracy(logits, labels)), float(task_ce(logits, labels)), -float(reward))
        self._dev_memo = (key, scores)
        return (ids, *scores)

    @torch.no_grad()
    def evaluate_dev(self) -> dict[str, float]:
        """Score the greedy prompt on dev and offer it to the run's ``Selection``."""
        ids, acc, ce, objective = self._score_greedy()
        self.last_acc = acc
        self.best.offer(self.step, acc=acc, ce=ce, objective=objective, payload=ids.tolist())
        return {"dev/acc": acc, "dev/ce": ce, "dev/objective": objective, "dev/selected_step": float(self.best.step)}

    # --- the run ----------------------------------------------------------------------------------------

    def train(
        self,
        *,
        report: Reporter | None = None,
        checkpoint: Checkpointing | None = None,
        resume_from: str | Path | None = None,
    ) -> PromptResult:
        """Train to ``config.steps`` and return the result.

        ``checkpoint`` (the tuner protocol's): its ``save`` gets ``state_dict()`` every ``checkpoint.every``
        steps, after that step's report, and a run given ``checkpoint.state`` continues from it. ``resume_from``
        is a checkpoint file or folder written through ``config.checkpoint_dir`` (saved before the report, so a
        report that stops the run loses nothing). A resumed run ends as the uninterrupted one would.
        """
        config = self.config
        if checkpoint is not None and checkpoint.state is not None:
            if resume_from is not None:
                raise ConfigError("give either a checkpoint state or resume_from, not both")
            self.load_state_dict(checkpoint.state)
            logger.info("resumed rlprompt from a checkpoint state at step %d", self.step)
        elif resume_from is not None:
            self.load(resume_from)
            logger.info("resumed rlprompt from %s at step %d", resume_from, self.step)
        logger.info("rlprompt config: %s", config_dict(config))
        started = time.perf_counter()
        elapsed_before = self.elapsed_s
        if self.untrained_acc is None:
            self.untrained_acc = self._score_greedy()[1]
        # A pause (``checkpoint.until``, a scheduler's rung) ends this call early; the state saved there continues.
        last = checkpoint.last_step(config.steps) if checkpoint is not None else config.steps
        for step in range(self.step + 1, last + 1):
            due = step % config.eval_every == 0 or step == config.steps or step == last
            # Host numbers on reporting steps only: a step that reports nothing never waits for its metrics.
            on_device = self._step(measure_ppl=due, report=due)
            if due:
                assert on_device is not None
                metrics = {name: float(value) for name, value in on_device.items()}
                metrics = {**metrics, **self.evaluate_dev()}
                self.history.append((step, metrics))
                logger.info("step %d: %s", step, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
            self.elapsed_s = elapsed_before + time.perf_counter() - started
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                assert config.checkpoint_dir is not None  # checked by RLPromptConfig
                self.save(Path(config.checkpoint_dir) / CHECKPOINT_NAME)
            if due and report is not None:
                report(step, metrics)
            if checkpoint is not None and (checkpoint.due(step) or (step == last and step < config.steps)):
                checkpoint.save(self.state_dict())
        if self.best.payload is None:  # resumed at or past the end without an evaluation: score the policy now
            self.evaluate_dev()
        return self.result(wall_s=elapsed_before + time.perf_counter() - started)

    def result(self, *, wall_s: float) -> PromptResult:
        """The ``PromptResult`` of the best prompt so far, with the final metrics of ``evaluate``."""
        assert self.best.payload is not None and self.untrained_acc is not None and self.last_acc is not None
        ids = torch.tensor(self.best.payload, device=self.problem.lm.device)
        metrics = evaluate(self.problem, ids)
        metrics["learn/acc_dev_untrained"] = self.untrained_acc
        metrics["learn/acc_dev_gain"] = self.last_acc - self.untrained_acc
        return PromptResult(
            tuner=self.name,
            prompt_text=self.problem.lm.tokenizer.decode(self.best.payload),
            prompt_ids=list(self.best.payload),
            metrics=metrics,
            steps=self.step,
            seed=self.config.seed,
            wall_s=wall_s,
            config=config_dict(self.config),
            history=list(self.history),
        )

    # --- checkpoints ------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly: MLPs, optimiser, step, RNG, best prompt, history.

        A copy: a caller may keep it while the run goes on (the live parameters and Adam moments change in
        place). Tensors, numbers, strings and lists only, so ``torch.load(weights_only=True)`` reads it back.
        """
        return copy.deepcopy(
            {
                "version": STATE_VERSION,
                "config": config_dict(self.config),
                "step": self.step,
                "mlp": self.mlp.state_dict(),
                "target_mlp": self.target.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(),
                "best": self.best.state(),
                "untrained_acc": self.untrained_acc,
                "last_acc": self.last_acc,
                "history": [[step, dict(metrics)] for step, metrics in self.history],
                "elapsed_s": self.elapsed_s,
            }
        )

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a ``state_dict`` written by a run of the same configuration (``steps`` may differ)."""
        if state.get("version") != STATE_VERSION:
            raise ConfigError(f"checkpoint version {state.get('version')!r} is not {STATE_VERSION}; cannot resume")
        ours = config_dict(self.config)
        for key in sorted(set(ours) | set(state["config"])):
            if key in RESUMABLE_CHANGES:
                continue
            theirs = state["config"].get(key)
            if theirs != ours.get(key):
                raise ConfigError(
                    f"the checkpoint was written with {key}={theirs!r} but this run has {key}={ours.get(key)!r}; "
                    "resume with the configuration the checkpoint was written with"
                )
        # The sweep loads checkpoints onto the CPU; every restored tensor follows the policy's device, except
        # the generator's state (a CPU byte tensor: the generator is a CPU one on every device) and the
        # optimiser's, which Adam places by its own rules (step counters stay on the CPU: no device reads).
        state = to_device(state, self.policy.lm.device, keep=frozenset({"generator", "optimizer"}))
        self.mlp.load_state_dict(state["mlp"])
        self.target.load_state_dict(state["target_mlp"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.step = int(state["step"])
        self.best = Selection.from_state(state["best"])
        self.untrained_acc, self.last_acc = state["untrained_acc"], state["last_acc"]
        self.history = [(int(step), dict(metrics)) for step, metrics in state["history"]]
        self.elapsed_s = float(state["elapsed_s"])

    def save(self, path: str | Path) -> Path:
        """Write ``state_dict()`` to ``path`` atomically (a temporary file in the same folder, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                torch.save(self.state_dict(), handle)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        logger.info("saved rlprompt checkpoint at step %d to %s", self.step, path)
        return path

    def load(self, path: str | Path) -> None:
        """``load_state_dict`` from a file written by ``save``, or from the checkpoint inside a folder."""
        path = Path(path)
        if path.is_dir():
            path = path / CHECKPOINT_NAME
        if not path.is_file():
            raise ConfigError(f"resume_from={str(path)!r}: no such checkpoint file")
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def _shared_vocabulary(config: RLPromptConfig, task_lm: LanguageModel, policy_lm: LanguageModel) -> int:
    """The number of token ids both LMs share; an error unless their tokenizers are the same.

    The policy's tokens go straight into the task LM as ids, so the two must mean the same by every id.
    """
    if policy_lm is task_lm:
        return min(len(task_lm.tokenizer), task_lm.vocab_size)
    ours, theirs = policy_lm.tokenizer.get_vocab(), task_lm.tokenizer.get_vocab()
    if ours != theirs:
        differ = sum(1 for tok, i in ours.items() if theirs.get(tok) != i)
        raise ConfigError(
            f"policy_model={config.policy_model!r} ({len(ours)} tokens) and model={config.model!r} "
            f"({len(theirs)} tokens) have different vocabularies ({differ} tokens differ): RLPrompt feeds the "
            "policy's token ids to the task LM, so choose a policy_model with the task LM's tokenizer"
        )
    return min(len(task_lm.tokenizer), task_lm.vocab_size, policy_lm.vocab_size)
