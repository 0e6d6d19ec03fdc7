"""Plain soft prompt tuning (Lester et al. 2021): the baseline whose projection shows where faithfulness fails.

It optimises the continuous prompt ``P̄`` directly, with the same optional interpretability terms as PEZ,
and is evaluated both as ``P̄`` (``task/acc_*_soft``) and as its nearest-token projection ``P``
(``task/acc_*``); the ``faith/*`` metrics measure the gap between the two.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuners.base import PromptResult, Reporter, register
from tuners.pez import PEZConfig, train_prompt


@dataclass(frozen=True, kw_only=True)
class SoftConfig(PEZConfig):
    """The same fields as PEZ: budget, optimiser, and the weights of the interpretability terms."""


class SoftPrompt:
    """Soft prompt tuning, selected on the soft prompt's dev accuracy."""

    name = "soft"
    config_cls = SoftConfig

    def run(self, config: SoftConfig, *, report: Reporter | None = None) -> PromptResult:
        return train_prompt(config, mode="soft", name=self.name, report=report)

    def __repr__(self) -> str:
        return "SoftPrompt()"


register(SoftPrompt())
