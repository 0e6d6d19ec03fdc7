"""The errors a user can fix, in one place.

Every value a user gives (a config field, a task folder, a model name, an output path, a cluster's
resources) that cannot work raises a :class:`UserError` subclass whose message names the bad value and says
how to fix it. The command-line entry points catch ``UserError`` only, print its message and exit with 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable


class UserError(Exception):
    """A value the user gave cannot work; the message names it and says how to fix it."""


class ConfigError(UserError, ValueError):
    """A configuration value that cannot work."""


class ResourceError(UserError, RuntimeError):
    """The cluster cannot place a trial, or a resource the sweep needs (a server, a folder) is unusable."""


class DivergedError(FloatingPointError):
    """A loss or reward became NaN or infinite: the configuration fails by itself (a learning rate too large,
    say), so the run stops at that step and a retry would only fail the same way."""


def check_finite(step: int, **values: float) -> None:
    """Raise :class:`DivergedError` naming the step and the first non-finite value among ``values``."""
    for name, value in values.items():
        if not math.isfinite(float(value)):
            raise DivergedError(f"{name} became {float(value)} at step {step}; lower the learning rate or the weights")


def did_you_mean(kind: str, name: str, known: Iterable[str]) -> str:
    """``unknown <kind> 'nme'. Did you mean 'name'? Known: a, b, c`` — the one wording of an unknown name."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {name!r}.{hint} Known: {', '.join(known)}"
