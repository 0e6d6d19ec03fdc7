"""Which candidate a run returns: the selection rules of ``objectives.problem.SELECTIONS``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from objectives.errors import ConfigError
from objectives.problem import SELECTIONS


@dataclass
class Selection:
    """The candidate a run returns, kept by one of the rules of ``objectives.problem.SELECTIONS``.

    Each dev evaluation ``offer``s its candidate with its dev accuracy, dev cross-entropy and dev value of the
    trained objective (lower is better: a loss, or a negated reward). A strictly better candidate replaces the
    kept one, so ties keep the earlier. ``payload`` is whatever the tuner needs to rebuild the prompt.
    """

    rule: str
    key: tuple[float, ...] | None = None
    step: int = 0
    acc: float = float("nan")
    payload: Any = None

    def __post_init__(self) -> None:
        if self.rule not in SELECTIONS:
            raise ConfigError(f"select={self.rule!r} is not one of {SELECTIONS}")

    def offer(self, step: int, *, acc: float, ce: float, objective: float, payload: Any) -> bool:
        """Keep ``payload`` if it beats the kept candidate under the rule; True when it was kept."""
        if self.rule == "dev_acc":
            key: tuple[float, ...] = (acc, -ce)
        elif self.rule == "dev_objective":
            key = (-objective, acc)
        else:
            key = (float(step),)
        if self.key is not None and not key > self.key:
            return False
        self.key, self.step, self.acc, self.payload = key, step, acc, payload
        return True

    def state(self) -> dict[str, Any]:
        """JSON-able state, for checkpoints (``payload`` must be JSON-able itself)."""
        return {
            "rule": self.rule,
            "key": list(self.key or []),
            "step": self.step,
            "acc": self.acc,
            "payload": self.payload,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Selection:
        key = tuple(float(k) for k in state["key"]) or None
        return cls(state["rule"], key, int(state["step"]), float(state["acc"]), state["payload"])
