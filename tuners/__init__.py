"""Prompt tuners behind one protocol: ``get_tuner(name).run(config, report=...) -> PromptResult``.

Where things live: ``base.py`` (the protocol, ``PromptResult``, ``Checkpointing``, the registry), ``configs.py``
(configs from plain values: ``make_config``, the ``key=value`` override parser, strict YAML), ``selection.py``
(which candidate a run returns), ``pez.py`` and ``soft.py`` (PEZ and plain soft prompt tuning), ``rlprompt/``
(the RLPrompt policy, soft Q-learning and its trainer), ``baselines.py`` (the tuners that train nothing: no
prompt, hand-written, LM-sampled), ``replicates.py`` (one configuration over its replicates, in lockstep to a
scheduler's rungs), ``presets.py`` (each tuner's sizes at smoke, demo and paper), ``__main__.py``
(``python -m tuners run``: one run, in process).
"""

from __future__ import annotations

from tuners.base import PromptResult, Reporter, Tuner, available, get_tuner, register
from tuners.configs import make_config
from tuners.presets import TUNER_PRESETS, preset_config

__all__ = [
    "TUNER_PRESETS",
    "PromptResult",
    "Reporter",
    "Tuner",
    "available",
    "get_tuner",
    "make_config",
    "preset_config",
    "register",
]
