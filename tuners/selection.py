"""Which candidate is best: one rule for a run's returned prompt, a baseline's sampled prompt and a trial's
representative replicate.

The rule: every candidate has a key, a tuple of floats compared element by element, greater is better; the
best candidate is the first one with the greatest key, so a later candidate must be strictly better to win a
tie. ``selection_key`` says what a candidate is ranked by, ``best_index`` picks among keys, and ``Selection``
does the same one candidate at a time, as a training run offers them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from objectives.problem import SELECTIONS


def selection_key(
    rule: str, *, step: int, acc: float, ce: float | None = None, objective: float | None = None
) -> tuple[float, ...]:
    """What ``rule`` (one of ``objectives.problem.SELECTIONS``) ranks a candidate by; greater is better.

    - ``dev_acc``: ``(acc, -ce)``, the better accuracy, ties to the lower cross-entropy. With ``ce=None`` the
      key is ``(acc,)``: accuracy alone, ties to the earlier candidate. A trial's representative replicate is
      picked so, on its final dev accuracy; a run and the ``lm_sample`` baseline pass their cross-entropy.
    - ``dev_objective``: ``(-objective, acc)``, the lower value of the trained objective (a loss, or a negated
      reward), ties to the better accuracy.
    - ``last``: ``(step,)``, the latest candidate.

    The rule comes from a validated ``ProblemConfig.select``; any other value is a bug in the caller.
    """
    if rule == "dev_acc":
        return (acc,) if ce is None else (acc, -ce)
    if rule == "dev_objective":
        assert objective is not None, "the dev_objective rule ranks by the objective: pass it"
        return (-objective, acc)
    if rule == "last":
        return (float(step),)
    raise ValueError(f"select={rule!r} is not one of {SELECTIONS}; ProblemConfig should have refused it")


def best_index(keys: Sequence[tuple[float, ...]]) -> int:
    """The index of the greatest key; ties keep the earliest."""
    return max(range(len(keys)), key=keys.__getitem__)


@dataclass
class Selection:
    """The candidate a run returns, kept by one of the rules of ``objectives.problem.SELECTIONS``.

    Each dev evaluation ``offer``s its candidate with its dev accuracy, dev cross-entropy and dev value of the
    trained objective (lower is better: a loss, or a negated reward). The kept candidate is the one
    ``best_index`` would pick among all offered so far. ``payload`` is whatever the tuner needs to rebuild the
    prompt.
    """

    rule: str
    key: tuple[float, ...] | None = None
    step: int = 0
    acc: float = float("nan")
    payload: Any = None

    def offer(self, step: int, *, acc: float, ce: float, objective: float, payload: Any) -> bool:
        """Keep ``payload`` if it beats the kept candidate under the rule; True when it was kept."""
        key = selection_key(self.rule, step=step, acc=acc, ce=ce, objective=objective)
        if self.key is not None and best_index([self.key, key]) == 0:
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
