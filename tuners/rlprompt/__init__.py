"""RLPrompt (Deng et al. 2022): discrete prompts from a policy trained by soft Q-learning on a task reward,
with the interpretability term of DESIGN.md (``reward = r_task - lambda_ppl · log_ppl``) and the optional
fluent restriction to the task LM's own top-k next tokens.

- ``config``: ``RLPromptConfig``.
- ``policy``: the frozen LM + trainable MLP policy, decoding and Q-values.
- ``sql``: the reward (gap, z-score, shaping) and the soft Q-learning losses, as pure functions.
- ``trainer``: ``RLPrompt``, one checkpointable training run.

The registered tuner ``rlprompt`` runs ``RLPrompt(config).train(...)``.
"""

from __future__ import annotations

from pathlib import Path

from tuners.base import PromptResult, Reporter, register
from tuners.rlprompt.config import RLPromptConfig
from tuners.rlprompt.trainer import CHECKPOINT_NAME, RLPrompt

__all__ = ["CHECKPOINT_NAME", "RLPrompt", "RLPromptConfig", "RLPromptTuner"]


class RLPromptTuner:
    """The ``rlprompt`` tuner: each ``run`` is a fresh ``RLPrompt`` run, so the tuner itself holds no state."""

    name = "rlprompt"
    config_cls = RLPromptConfig

    def run(
        self, config: RLPromptConfig, *, report: Reporter | None = None, resume_from: str | Path | None = None
    ) -> PromptResult:
        """Train ``config`` (from the checkpoint ``resume_from`` when given) and return the best prompt."""
        return RLPrompt(config).train(report=report, resume_from=resume_from)

    def __repr__(self) -> str:
        return "RLPromptTuner()"


register(RLPromptTuner())
