"""Plain soft prompt tuning (Lester et al. 2021): the continuous prompt whose projection shows where faithfulness
fails.

It optimises the continuous prompt ``P̄`` directly, with the same optional interpretability terms as PEZ,
and is evaluated both as ``P̄`` (``task/acc_*_soft``) and as its nearest-token projection ``P``
(``task/acc_*``); the ``faith/*`` metrics measure the gap between the two. ``fluent_top_k`` and ``init`` work
as for PEZ: the projection (the fluency term's tokens, the discrete prompt) is then restricted to the task LM's
top-k next tokens, while the task loss stays at ``P̄``.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuners.base import Checkpointing, PromptResult, Reporter, register
from tuners.pez import PEZConfig, train_prompt


@dataclass(frozen=True, kw_only=True)
class SoftConfig(PEZConfig):
    """The same fields as PEZ: budget, optimiser, the weights of the interpretability terms, projection and init."""


class SoftPrompt:
    """Soft prompt tuning, selected on the soft prompt's dev accuracy."""

    name = "soft"
    config_cls = SoftConfig

    def run(
        self, config: SoftConfig, *, report: Reporter | None = None, checkpoint: Checkpointing | None = None
    ) -> PromptResult:
        return train_prompt(config, mode="soft", name=self.name, report=report, checkpoint=checkpoint)

    def __repr__(self) -> str:
        return "SoftPrompt()"


register(SoftPrompt())
