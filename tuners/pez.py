"""PEZ (Wen et al. 2023, "Hard Prompts Made Easy"): projected-gradient discrete prompts, with the
interpretability terms of ``objectives/metrics.py``.

Each step projects the continuous prompt ``P̄`` onto its nearest vocabulary embeddings (cosine), computes
the loss at the projection ``P``, and applies that gradient to ``P̄``:

    loss = ce(P) + λ_ppl · log_ppl(P) + λ_dist · faith_dist(P̄)

(the ``faith_dist`` term is a function of ``P̄`` itself, so its gradient is taken there; :func:`objective` is
this sum, the one the step differentiates, the finite check reads and ``dev/objective`` reports). This is the
paper's algorithm: ``P̄`` is carried across steps. The original code's LM loop copies the prompt after the
previous step's projection at the top of each iteration, which turns it into plain projected gradient
descent; we follow the paper, not that copy. With ``fluency_form='convex'`` the loss is PEZ's own
``w·log_ppl + (1−w)·ce`` with ``w = lambda_ppl``.

Fluent projection (``fluent_top_k = k > 0``): the projection of position ``i`` is the nearest token among the
task LM's top-``k`` next tokens given the start token and the projected tokens before it
(``objectives.fluent.fluent_projection``), instead of among the whole vocabulary. A fluency gradient taken at
an unconstrained projection hardly moves that projection toward fluent tokens (the demo's prompts stayed at
log_ppl 11.5-15.9 for every λ_ppl); with the constraint every prompt the loss sees, the dev candidates and the
returned prompt are fluent by construction. All three go through :func:`project`, so they always agree. The
``log_ppl`` term still applies on top.

Initialisation (``init``): ``random`` vocabulary tokens from the seed (the original), ``text`` (the tokens of
``init_text``, exactly ``prompt_len`` of them) or ``lm`` (a prompt sampled from the task LM, within its
top-``fluent_top_k`` when that is set).

The shared loop also runs the ``soft`` tuner (``tuners/soft.py``), whose loss is taken at ``P̄``.

Determinism: on the CPU a run is bitwise reproducible for its configuration (its seed draws the init and the
batches; same torch and thread count), and a run resumed from a checkpoint ends where the uninterrupted one
does. On CUDA it is reproducible only up to float noise: fused attention backward and atomics-based reductions
vary run to run unless ``PROMPTSWEEP_DETERMINISTIC=1`` (``objectives/models.py``) switches torch to
deterministic algorithms, and CPU and GPU results differ (other kernels, other reduction orders, a bf16 body).

Host reads: a step reads the device once for its training rows (the scorer groups them on the host), once for
the projection (the fluent projection's memo of host token ids, per LM pass) and once for a flag saying
whether the loss and the prompt are finite; its loss values become numbers on reporting steps only.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from objectives.errors import ConfigError, check_finite
from objectives.evaluation import evaluate, log_ppl
from objectives.fluent import CandidateMemo, fluent_projection, sample_prompts
from objectives.memory import out_of_memory_fails_the_trial
from objectives.metrics import accuracy, faith_dist, task_ce, token_nll
from objectives.models import start_token_id, to_device
from objectives.problem import Problem, ProblemConfig, build_problem
from objectives.scoring import prompt_logits
from tuners.base import Checkpointing, PromptResult, Reporter, register
from tuners.configs import config_dict
from tuners.selection import Selection

logger = logging.getLogger(__name__)

FLUENCY_FORMS = ("additive", "convex")
DIST_METRICS = ("cosine", "l2")
INITS = ("random", "text", "lm")


@dataclass(frozen=True, kw_only=True)
class PEZConfig(ProblemConfig):
    """PEZ's budget, optimiser and interpretability weights (the weights are what sweeps search)."""

    steps: int = field(default=100, metadata={"help": "optimisation steps"})
    batch_size: int = field(default=16, metadata={"help": "training examples per step"})
    lr: float = field(default=0.1, metadata={"help": "AdamW learning rate on the continuous prompt"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    lambda_ppl: float = field(default=0.0, metadata={"help": "weight of interp/log_ppl in the loss (>= 0)"})
    lambda_dist: float = field(default=0.0, metadata={"help": "weight of faith/dist in the loss (>= 0)"})
    fluency_form: str = field(default="additive", metadata={"help": "'additive' or PEZ's 'convex' w·ppl+(1-w)·ce"})
    dist_metric: str = field(default="cosine", metadata={"help": "distance D of faith/dist: 'cosine' or 'l2'"})
    eval_every: int = field(default=10, metadata={"help": "steps between dev evaluations and reports"})
    fluent_top_k: int = field(
        default=0,
        metadata={
            "help": "project each position onto the nearest of the task LM's top-k next tokens given the prompt "
            "before it (0: the whole vocabulary, plain PEZ)"
        },
    )
    init: str = field(
        default="random",
        metadata={
            "help": "initial prompt: 'random' vocabulary tokens, 'text' (init_text), or 'lm' (sampled from the task "
            "LM, within its top fluent_top_k when set)"
        },
    )
    init_text: str | None = field(
        default=None, metadata={"help": "with init=text: the initial prompt, exactly prompt_len tokens"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("steps", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("lr", "weight_decay", "lambda_ppl", "lambda_dist"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 0")
        if self.fluency_form not in FLUENCY_FORMS:
            raise ConfigError(f"fluency_form={self.fluency_form!r} is not one of {FLUENCY_FORMS}")
        if self.fluency_form == "convex" and self.lambda_ppl > 1:
            raise ConfigError(f"lambda_ppl={self.lambda_ppl} must be in [0, 1] with fluency_form='convex'")
        if self.dist_metric not in DIST_METRICS:
            raise ConfigError(f"dist_metric={self.dist_metric!r} is not one of {DIST_METRICS}")
        if self.fluent_top_k < 0:
            raise ConfigError(
                f"fluent_top_k={self.fluent_top_k} must be >= 0 (0: no restriction; k: the task LM's top-k next tokens)"
            )
        if self.init not in INITS:
            raise ConfigError(f"init={self.init!r} is not one of {INITS}")
        if self.init == "text" and not self.init_text:
            raise ConfigError("init='text' needs init_text: set init_text to a prompt of prompt_len tokens")
        if self.init != "text" and self.init_text is not None:
            # Silently ignoring a given text would train from another start than the one asked for.
            raise ConfigError(f"init_text={self.init_text!r} is only read with init='text', but init={self.init!r}")


def train_prompt(
    config: PEZConfig,
    *,
    mode: str,
    name: str,
    report: Reporter | None = None,
    checkpoint: Checkpointing | None = None,
) -> PromptResult:
    """The loop PEZ and the soft tuner share. ``mode`` is ``pez`` (loss at the projection) or ``soft``.

    With ``checkpoint``, the whole state (continuous prompt, optimiser, RNG, selection, history, step) is
    saved every ``checkpoint.every`` steps, and a run given a saved state continues to the result an
    uninterrupted run would have reached, on whatever device its model is now. A loss that is not finite stops
    the run at its step (``DivergedError``); running out of device memory fails it with
    ``objectives.memory.DeviceMemoryError``, which names the sizes and the fixes.
    """
    with out_of_memory_fails_the_trial(config):
        return _train_prompt(config, mode=mode, name=name, report=report, checkpoint=checkpoint)


def _train_prompt(
    config: PEZConfig,
    *,
    mode: str,
    name: str,
    report: Reporter | None,
    checkpoint: Checkpointing | None,
) -> PromptResult:
    start = time.perf_counter()
    problem = build_problem(config)
    run = _Run.start(problem, config)
    if checkpoint is not None and checkpoint.state is not None:
        run.restore(checkpoint.state, problem.lm.device)
        logger.info("%s resumes at step %d of %d", name, run.resumed_at, config.steps)
    # The fluent projection's candidates per prefix, for this run only: later steps mostly revisit prefixes.
    memo: CandidateMemo = {}
    # A pause (``checkpoint.until``, a scheduler's rung) ends this call early; the state saved there continues.
    last = checkpoint.last_step(config.steps) if checkpoint is not None else config.steps
    for step in range(run.resumed_at + 1, last + 1):
        loss = _train_step(problem, config, run, step, mode=mode, memo=memo)
        if step % config.eval_every == 0 or step == config.steps or step == last:
            metrics = _offer_candidate(problem, config, run.soft, mode, step, run.best, memo)
            metrics.update({"train/ce": float(loss.ce), "train/log_ppl": float(loss.nll)})
            run.history.append((step, metrics))
            if report is not None:
                report(step, metrics)
        if checkpoint is not None and (checkpoint.due(step) or step == last) and step < config.steps:
            checkpoint.save(run.state(step, start))

    if memo:
        # One LM pass per prefix met (and one per position of the first projection): what fluency cost this run.
        logger.info("fluent projection: %d LM passes over %d steps", len(memo), config.steps)
    return run.result(problem, config, name, steps=max(run.resumed_at, last), start=start)


@dataclass
class _Run:
    """A PEZ or soft run between steps: what a checkpoint saves, and the run's result at its end."""

    soft: torch.Tensor  # P̄: (L, d_model), the leaf the optimiser moves
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    best: Selection
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    resumed_at: int = 0
    elapsed_s: float = 0.0

    @classmethod
    def start(cls, problem: Problem, config: PEZConfig) -> _Run:
        generator = torch.Generator().manual_seed(config.seed)
        init_ids = initial_ids(problem, config, generator)
        soft = problem.lm.embeddings[init_ids].detach().clone().float().requires_grad_(True)
        optimizer = torch.optim.AdamW([soft], lr=config.lr, weight_decay=config.weight_decay)
        return cls(soft, optimizer, generator, Selection(config.select))

    def restore(self, saved: dict[str, Any], device: torch.device) -> None:
        # The sweep loads checkpoints onto the CPU (map_location="cpu"): every restored tensor (the prompt, the
        # kept candidate's ids and prompt) follows the model's device, or evaluate() would mix devices when no
        # later candidate replaces the restored one. The generator's state stays a CPU byte tensor (the
        # generator is a CPU one on every device), and the optimiser places its own state (its step counters
        # stay on the CPU, where reading them costs no device round trip).
        state = to_device(saved, device, keep=frozenset({"generator", "optimizer"}))
        with torch.no_grad():
            self.soft.copy_(state["soft"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.best = Selection.from_state(state["best"])
        self.history = [(int(step), dict(metrics)) for step, metrics in state["history"]]
        self.resumed_at, self.elapsed_s = int(state["step"]), float(state["elapsed_s"])

    def state(self, step: int, start: float) -> dict[str, Any]:
        return {
            "step": step,
            "soft": self.soft.detach().clone(),
            # A copy: the state dict holds the optimiser's live tensors, which later steps change.
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "generator": self.generator.get_state(),
            "best": self.best.state(),
            "history": [[s, dict(m)] for s, m in self.history],
            "elapsed_s": self.elapsed_s + time.perf_counter() - start,
        }

    def result(self, problem: Problem, config: PEZConfig, name: str, *, steps: int, start: float) -> PromptResult:
        """The kept candidate, evaluated: the run's ``PromptResult``."""
        assert self.best.payload is not None
        ids, kept = self.best.payload
        return PromptResult(
            tuner=name,
            prompt_text=problem.lm.tokenizer.decode(ids.tolist()),
            prompt_ids=ids.tolist(),
            metrics=evaluate(problem, ids, soft=kept),
            steps=steps,
            seed=config.seed,
            wall_s=self.elapsed_s + time.perf_counter() - start,
            config=config_dict(config),
            soft_prompt=kept.cpu().tolist(),
            history=self.history,
        )


def _train_step(
    problem: Problem, config: PEZConfig, run: _Run, step: int, *, mode: str, memo: CandidateMemo
) -> StepLoss:
    """One optimiser step on a fresh batch; stops the run (``DivergedError``) when its loss or ``P̄`` is not finite."""
    rows = problem.train_batch(config.batch_size, run.generator)
    run.optimizer.zero_grad(set_to_none=True)
    loss = step_gradient(problem, config, run.soft, rows, mode=mode, memo=memo)
    run.optimizer.step()
    # PEZ's loss is taken at a vocabulary row and stays finite; what diverges first is P̄ itself. One flag
    # read per step; the values only when one is not finite.
    norm = run.soft.detach().norm()
    if not bool(torch.isfinite(loss.loss) & torch.isfinite(norm)):
        check_finite(step, loss=float(loss.loss), prompt_norm=float(norm))
    return loss


def initial_ids(problem: Problem, config: PEZConfig, generator: torch.Generator) -> torch.Tensor:
    """The token ids ``(L,)`` the continuous prompt starts at, per ``config.init``; random draws use ``generator``."""
    lm = problem.lm
    if config.init == "random":
        return torch.randint(lm.vocab_size, (config.prompt_len,), generator=generator).to(lm.device)
    if config.init == "lm":
        top_k = config.fluent_top_k or None
        start_id = start_token_id(lm.tokenizer)
        return sample_prompts(lm, 1, config.prompt_len, generator=generator, top_k=top_k, start_id=start_id)[0]
    ids = lm.tokenizer.encode(config.init_text, add_special_tokens=False)  # as the scorer encodes texts
    if len(ids) != config.prompt_len:
        split = [lm.tokenizer.decode([i]) for i in ids]
        raise ConfigError(
            f"init_text={config.init_text!r} is {len(ids)} tokens under the tokenizer of {config.model!r} "
            f"({split}), but prompt_len={config.prompt_len}; set prompt_len={len(ids)} or change init_text"
        )
    return torch.tensor(ids, dtype=torch.long, device=lm.device)


def project(problem: Problem, config: PEZConfig, soft: torch.Tensor, memo: CandidateMemo | None = None) -> torch.Tensor:
    """The discrete prompt ``P`` ``(L,)`` of the continuous prompt ``P̄`` ``(L, d_model)``.

    The one projection of the run: training steps, dev candidates and the returned prompt all use it. With
    ``fluent_top_k`` each position after the first is restricted to the task LM's top-k next tokens given the
    prompt tokens before it;
    ``memo`` (one per run) remembers those candidates per prefix.
    """
    # The prompt alone is the context (start_id=None), as interp/log_ppl reads it: see objectives/fluent.py.
    return fluent_projection(problem.lm, soft.detach(), config.fluent_top_k, start_id=None, memo=memo)


class StepLoss(NamedTuple):
    """One step's :func:`objective` and its two terms, detached 0-d tensors on the model's device."""

    loss: torch.Tensor
    ce: torch.Tensor
    nll: torch.Tensor


def step_gradient(
    problem: Problem,
    config: PEZConfig,
    soft: torch.Tensor,
    rows: torch.Tensor,
    *,
    mode: str,
    memo: CandidateMemo | None = None,
) -> StepLoss:
    """Accumulate one step's gradient of :func:`objective` into ``soft.grad``; returns the step's loss and
    terms (numbers only where someone reads them).

    ``soft`` is the continuous prompt ``P̄`` ``(L, d_model)``, ``rows`` the training examples ``(B,)``, ``memo``
    the run's fluent candidates (see :func:`project`).
    """
    embeds = problem.lm.embeddings
    labels = problem.labels["train"][rows]
    ids = project(problem, config, soft, memo)
    if mode == "pez":
        # Straight-through as PEZ does it: a leaf at the projection P collects the gradient of the loss,
        # which is then handed to P̄ (tests/tuners/test_pez.py fails if it were taken at P̄ instead).
        at = embeds[ids].detach().clone().float().requires_grad_(True)
        ce = task_ce(problem.scorers["train"].logits(at, rows), labels)
        nll = _nll(problem, at, ids, grad=config.lambda_ppl > 0)
        loss = objective(config, problem, ce, nll, soft)
        at_grad, soft_grad = torch.autograd.grad(loss, (at, soft), allow_unused=True)
        # The faith_dist term's gradient (taken at P̄ itself) first, then the one handed over from P.
        for grad in (soft_grad, at_grad):
            if grad is not None:
                soft.grad = grad if soft.grad is None else soft.grad + grad
    else:
        # Soft prompt tuning: the task loss at P̄; the fluency term at the projection, passed straight
        # through to P̄ (its value is the projection's, its gradient lands on P̄ unchanged).
        through = soft + (embeds[ids].float() - soft).detach()
        ce = task_ce(problem.scorers["train"].logits(soft, rows), labels)
        nll = _nll(problem, through, ids, grad=config.lambda_ppl > 0)
        loss = objective(config, problem, ce, nll, soft)
        loss.backward()
    return StepLoss(loss.detach(), ce.detach(), nll.detach())


def objective(
    config: PEZConfig, problem: Problem, ce: torch.Tensor, nll: torch.Tensor, soft: torch.Tensor
) -> torch.Tensor:
    """The loss PEZ and soft minimise, a 0-d tensor: the one place its terms are weighted.

        loss = ce + λ_ppl·nll + λ_dist·faith_dist(P̄)    (convex form: (1 − λ_ppl)·ce + λ_ppl·nll + λ_dist·faith_dist(P̄))

    ``ce`` is the task cross-entropy and ``nll`` the projection's ``interp/log_ppl`` (each taken where the mode
    takes it), ``soft`` the continuous prompt ``P̄`` ``(L, d_model)``. A training step differentiates it and
    checks that it is finite; ``dev/objective`` is :func:`objective_value` of the same terms on dev.
    """
    loss = _weighted_fit(config, ce, nll)
    dist = _dist(config, problem, soft)
    return loss if dist is None else loss + config.lambda_dist * dist


def objective_value(
    config: PEZConfig, problem: Problem, ce: torch.Tensor, nll: torch.Tensor, soft: torch.Tensor
) -> float:
    """:func:`objective` as a number, for ``dev/objective``: the same terms and weights, with the faith_dist term
    weighted and added in double precision (as ``dev/objective`` has always been summed, so its values and the
    ``dev_objective`` selections they drive stay as they were)."""
    value = float(_weighted_fit(config, ce, nll))
    dist = _dist(config, problem, soft.detach())
    return value if dist is None else value + config.lambda_dist * float(dist)


def _nll(problem: Problem, prompt: torch.Tensor, ids: torch.Tensor, *, grad: bool) -> torch.Tensor:
    """``interp/log_ppl`` of the prompt ``(L, d)`` whose tokens are ``ids``; no graph when its weight is 0."""
    with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
        return token_nll(prompt_logits(problem.lm, prompt[None]), ids[None])[0]


def _weighted_fit(config: PEZConfig, ce: torch.Tensor, nll: torch.Tensor) -> torch.Tensor:
    """The objective's ce and log_ppl part; ``ce`` itself when ``λ_ppl = 0`` in the additive form."""
    if config.fluency_form == "convex":
        return (1 - config.lambda_ppl) * ce + config.lambda_ppl * nll
    if config.lambda_ppl == 0:
        return ce
    return ce + config.lambda_ppl * nll


def _dist(config: PEZConfig, problem: Problem, soft: torch.Tensor) -> torch.Tensor | None:
    """``faith_dist(P̄)``, unweighted; None when its weight is 0 (no graph, no cost)."""
    if config.lambda_dist == 0:
        return None
    return faith_dist(soft, problem.lm.embeddings, metric=config.dist_metric)


@torch.no_grad()
def _offer_candidate(
    problem: Problem,
    config: PEZConfig,
    soft: torch.Tensor,
    mode: str,
    step: int,
    best: Selection,
    memo: CandidateMemo | None = None,
) -> dict[str, float]:
    """Score the current prompt on dev and offer it to the run's ``Selection`` (``config.select``).

    PEZ is judged on its discrete prompt, the soft tuner on its soft prompt (what each optimises). The dev
    objective is the training loss on dev (:func:`objective_value`).
    """
    embeds = problem.lm.embeddings
    ids = project(problem, config, soft, memo)
    candidate = embeds[ids].float() if mode == "pez" else soft.detach()
    logits = problem.scorers["dev"].logits(candidate)
    labels = problem.labels["dev"]
    acc = float(accuracy(logits, labels))
    ce = task_ce(logits, labels)
    nll = log_ppl(problem, ids[None])[0] if config.lambda_ppl > 0 else torch.zeros(())
    value = objective_value(config, problem, ce, nll, soft)
    best.offer(step, acc=acc, ce=float(ce), objective=value, payload=(ids.clone(), soft.detach().clone()))
    return {"dev/acc": acc, "dev/ce": float(ce), "dev/objective": value, "dev/selected_step": float(best.step)}


class PEZ:
    """PEZ discrete prompt tuning."""

    name = "pez"
    config_cls = PEZConfig

    def run(
        self, config: PEZConfig, *, report: Reporter | None = None, checkpoint: Checkpointing | None = None
    ) -> PromptResult:
        return train_prompt(config, mode="pez", name=self.name, report=report, checkpoint=checkpoint)

    def __repr__(self) -> str:
        return "PEZ()"


register(PEZ())
