"""``RLPromptConfig``: RLPrompt's policy, soft Q-learning, reward and checkpoint settings.

Defaults are those of the original's few-shot classification runs (Deng et al. 2022, ``rl-prompt``):
16 prompts per step, Adam at 5e-5, top-256 sampling, Polyak rate 0.001, a 2048-wide MLP, gap-reward
coefficients 200/180, z-scored rewards shaped from [0, 1] onto [0, 5], gradient norm clipped at 5.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from objectives.errors import ConfigError
from objectives.problem import ProblemConfig


@dataclass(frozen=True, kw_only=True)
class RLPromptConfig(ProblemConfig):
    """RLPrompt's budget, policy, optimiser, reward and interpretability weight (``lambda_ppl`` is searched)."""

    policy_model: str = field(
        default="tiny-gpt2",
        metadata={"help": "frozen LM under the policy MLP; must share the task LM's tokenizer (may be the same LM)"},
    )
    steps: int = field(default=1000, metadata={"help": "soft Q-learning steps (one batch of sampled prompts each)"})
    prompts_per_step: int = field(default=16, metadata={"help": "prompts sampled per step; rewards z-scored across"})
    batch_size: int = field(
        default=32, metadata={"help": "training examples per reward evaluation (all train examples when larger)"}
    )
    lr: float = field(default=5e-5, metadata={"help": "Adam learning rate of the policy MLP"})
    top_k: int = field(default=256, metadata={"help": "sample each training token from the policy's top-k"})
    polyak: float = field(default=0.001, metadata={"help": "target network update rate: θ' ← (1-rate)·θ' + rate·θ"})
    mlp_hidden: int = field(default=2048, metadata={"help": "hidden width of the policy MLP (hidden→this→hidden)"})
    reward_correct: float = field(default=200.0, metadata={"help": "gap-reward coefficient when the label wins"})
    reward_incorrect: float = field(default=180.0, metadata={"help": "gap-reward coefficient when it does not"})
    shaping_old_min: float = field(
        default=0.0, metadata={"help": "shaping: the z-scored reward old_min maps to new_min (affine, unclipped)"}
    )
    shaping_old_max: float = field(
        default=1.0, metadata={"help": "shaping: the z-scored reward old_max maps to new_max"}
    )
    shaping_new_min: float = field(default=0.0, metadata={"help": "shaping: the shaped reward at old_min"})
    shaping_new_max: float = field(
        default=5.0, metadata={"help": "shaping: the shaped reward at old_max (RLPrompt few-shot: [0,1] -> [0,5])"}
    )
    lambda_ppl: float = field(
        default=0.0, metadata={"help": "weight of interp/log_ppl subtracted from the gap reward before z-scoring"}
    )
    fluent_top_k: int = field(
        default=0, metadata={"help": "restrict each token to the task LM's top-k next tokens (0: no restriction)"}
    )
    updates_per_step: int = field(
        default=1,
        metadata={
            "help": "soft Q-learning updates on each step's rewarded prompts (>1 reuses the costly rewards; SQL's "
            "targets hold for off-policy paths, so the repeats stay valid as the policy moves)"
        },
    )
    include_greedy: bool = field(
        default=False,
        metadata={
            "help": "make one of each step's prompts the policy's greedy prompt, rewarded against the samples: a "
            "greedy prompt worse than what the policy samples is pushed down directly (self-critical)"
        },
    )
    eval_every: int = field(default=10, metadata={"help": "steps between dev evaluations of the greedy prompt"})
    grad_clip: float = field(default=5.0, metadata={"help": "max gradient norm of the MLP (0 turns clipping off)"})
    checkpoint_dir: str | None = field(default=None, metadata={"help": "folder for resumable checkpoints"})
    checkpoint_every: int = field(default=0, metadata={"help": "steps between checkpoints (0: none)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("steps", "batch_size", "top_k", "mlp_hidden", "updates_per_step", "eval_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        if self.fluent_top_k < 0:
            raise ConfigError(f"fluent_top_k={self.fluent_top_k} must be >= 0 (0: no fluent restriction)")
        if self.prompts_per_step < 2:
            raise ConfigError(
                f"prompts_per_step={self.prompts_per_step} must be >= 2: rewards are z-scored across the prompts "
                "of a step, so a single prompt carries no learning signal"
            )
        if not self.lr > 0:
            raise ConfigError(f"lr={self.lr} must be > 0")
        if not 0 < self.polyak <= 1:
            raise ConfigError(f"polyak={self.polyak} must be in (0, 1] (1 copies the online MLP every step)")
        for name in ("reward_correct", "reward_incorrect"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be > 0")
        if not self.shaping_old_max > self.shaping_old_min:
            raise ConfigError(
                f"shaping_old_max={self.shaping_old_max} must be > shaping_old_min={self.shaping_old_min}"
            )
        if not self.shaping_new_max > self.shaping_new_min:
            raise ConfigError(
                f"shaping_new_max={self.shaping_new_max} must be > shaping_new_min={self.shaping_new_min} "
                "(a reversed range would reward wrong answers)"
            )
        for name in ("lambda_ppl", "grad_clip"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 0")
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every={self.checkpoint_every} must be >= 0 (0: no checkpoints)")
        if self.checkpoint_every > 0 and not self.checkpoint_dir:
            raise ConfigError(f"checkpoint_every={self.checkpoint_every} needs checkpoint_dir; set checkpoint_dir=PATH")
