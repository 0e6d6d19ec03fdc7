"""RLPrompt (Deng et al. 2022): discrete prompts from a policy trained by soft Q-learning on a task reward,
with the interpretability term of the README (``reward = r_task - lambda_ppl · log_ppl``) and the optional
fluent restriction to the task LM's own top-k next tokens.

- ``config``: ``RLPromptConfig``.
- ``policy``: the frozen LM + trainable MLP policy, decoding and Q-values.
- ``sql``: the reward (gap, z-score, shaping) and the soft Q-learning losses, as pure functions.
- ``trainer``: ``RLPrompt``, one checkpointable training run.

The registered tuner ``rlprompt`` runs ``RLPrompt(config).train(...)``.
"""

from __future__ import annotations

from objectives.memory import out_of_memory_fails_the_trial
from tuners.base import Checkpointing, PromptResult, Reporter, register
from tuners.rlprompt.config import RLPromptConfig
from tuners.rlprompt.trainer import CHECKPOINT_NAME, RLPrompt

__all__ = ["CHECKPOINT_NAME", "RLPrompt", "RLPromptConfig", "RLPromptTuner"]


class RLPromptTuner:
    """The ``rlprompt`` tuner: each ``run`` is a fresh ``RLPrompt`` run, so the tuner itself holds no state."""

    name = "rlprompt"
    config_cls = RLPromptConfig

    def run(
        self, config: RLPromptConfig, *, report: Reporter | None = None, checkpoint: Checkpointing | None = None
    ) -> PromptResult:
        """Train ``config`` and return the selected prompt.

        With ``checkpoint``, the run's state goes to ``checkpoint.save`` every ``checkpoint.every`` steps and a
        given ``checkpoint.state`` is continued from. Raises ``objectives.errors.DivergedError`` at the first
        step whose loss or reward is not finite, and ``objectives.memory.DeviceMemoryError`` (a ``UserError``
        naming the sizes and the fixes) when the run does not fit its device's memory.
        """
        with out_of_memory_fails_the_trial(config):
            return RLPrompt(config).train(report=report, checkpoint=checkpoint)

    def __repr__(self) -> str:
        return "RLPromptTuner()"


register(RLPromptTuner())
