"""Single-run presets: sizes for each tuner at the three scales (smoke, demo, paper; README "Sweeps").

``common`` applies to every tuner of a preset, then the tuner's own entry. The sweep presets
(``sweep/presets.py``) start from these.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from objectives.errors import ConfigError, did_you_mean
from objectives.problem import ProblemConfig
from tuners.base import get_tuner
from tuners.configs import make_config

TUNER_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # Tiny random GPT-2 with the real GPT-2 tokenizer: seconds on 2 cores, every code path exercised.
    "smoke": {
        "common": {
            "model": "tiny-gpt2",
            "task": "rotten-tomatoes",
            "k_shot": 4,
            "n_test": 16,
            "prompt_len": 3,
        },
        "pez": {"steps": 4, "batch_size": 8, "eval_every": 2},
        "soft": {"steps": 4, "batch_size": 8, "eval_every": 2},
        # A large lr so that a single step visibly moves the near-zero-initialised policy (seeds then differ).
        "rlprompt": {
            "policy_model": "tiny-gpt2",
            "steps": 4,
            "prompts_per_step": 4,
            "batch_size": 8,
            "lr": 0.1,
            "mlp_hidden": 256,
            "eval_every": 2,
        },
    },
    # A real pretrained LM (SmolLM2-135M) on real reviews, sized for a 2-core CPU.
    "demo": {
        "common": {
            "model": "smollm2-135m",
            "task": "rotten-tomatoes",
            "k_shot": 16,
            # 100 test reviews: the frozen pass over them (built once per worker) and each replicate's final
            # evaluation are what a demo trial spends most of its time on besides the steps.
            "n_test": 100,
            "prompt_len": 5,
        },
        "pez": {"steps": 20, "batch_size": 8, "lr": 0.03, "eval_every": 5},
        "soft": {"steps": 20, "batch_size": 8, "lr": 0.01, "eval_every": 5},
        # 32 candidates took 170 s of a 12-minute demo; 12 keep the baseline's idea at a third of the cost.
        "lm_sample": {"n_candidates": 12},
        # Policy and task LM share SmolLM2. A reward evaluation costs prompts x examples x L positions (about
        # 2-4 s a step on one core at 8 x 8 x 5), so the demo's RLPrompt is a short run: 12 steps of 6 prompts
        # on 8 examples, each step's costly rewards reused for 2 updates, the greedy prompt rewarded among the
        # samples. Not a higher lr: at 1e-3 the policy collapsed onto one prompt within 10 steps (train/distinct
        # 1/8); on SST-2 seed 1 it did so at 5e-4 within 25 steps.
        "rlprompt": {
            "policy_model": "smollm2-135m",
            "steps": 12,
            "prompts_per_step": 6,
            "batch_size": 8,
            "lr": 3e-4,
            "updates_per_step": 2,
            "include_greedy": True,
            "eval_every": 5,
        },
    },
    # The originals' setting: GPT-2 on the LM-BFF SST-2 16-shot splits (hub access and a GPU expected).
    "paper": {
        "common": {
            "model": "gpt2",
            "task": "data/fewshot/sst-2/16-100",
            "k_shot": None,
            "n_test": None,
            "prompt_len": 5,
        },
        "pez": {"steps": 1000, "batch_size": 32, "lr": 0.03, "eval_every": 50},
        "soft": {"steps": 1000, "batch_size": 32, "lr": 0.3, "eval_every": 50},
        # The original's few-shot classification run: distilgpt2 policy, 12,000 steps of 16 prompts each
        # rewarded on all 32 training examples.
        "rlprompt": {
            "policy_model": "distilgpt2",
            "steps": 12000,
            "prompts_per_step": 16,
            "batch_size": 32,
            "lr": 5e-5,
            "top_k": 256,
            "eval_every": 10,
        },
    },
}


def preset_values(preset: str, tuner: str) -> dict[str, Any]:
    if preset not in TUNER_PRESETS:
        raise ConfigError(did_you_mean("preset", preset, sorted(TUNER_PRESETS)))
    entry = TUNER_PRESETS[preset]
    return {**entry.get("common", {}), **entry.get(tuner, {})}


def preset_config(tuner: str, preset: str, overrides: Mapping[str, Any] | None = None) -> ProblemConfig:
    """The config of ``tuner`` at ``preset`` with ``overrides`` applied on top, validated."""
    cls = get_tuner(tuner).config_cls
    return make_config(cls, {**preset_values(preset, tuner), **(overrides or {})})
