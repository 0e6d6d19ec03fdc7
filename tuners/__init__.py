"""Prompt tuners behind one protocol: ``get_tuner(name).run(config, report=...) -> PromptResult``."""

from __future__ import annotations

from tuners import baselines, pez, rlprompt, soft  # noqa: F401  (importing registers the tuners)
from tuners.base import PromptResult, Reporter, Tuner, available, get_tuner, make_config, register
from tuners.presets import PRESETS, preset_config

__all__ = [
    "PRESETS",
    "PromptResult",
    "Reporter",
    "Tuner",
    "available",
    "get_tuner",
    "make_config",
    "preset_config",
    "register",
]
