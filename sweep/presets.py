"""Sweep presets: smoke (every code path in a minute), demo (a real LM on 2 CPU cores), paper (a GPU cluster).

Each tuner's trials start from the tuner preset of the same name (``tuners/presets.py``) plus
``tuner_config``; Optuna searches the weights in ``search`` on a log scale, with 0 always reachable and
the all-zero (unregularised) trial evaluated first, so every front has the accuracy end anchored.
"""

from __future__ import annotations

from typing import Any

_WEIGHTS = {"lambda_ppl": [0.01, 10.0], "lambda_dist": [0.01, 10.0]}
# The readability knobs: the fluency weight and the fluent projection's / policy's
# top-k next tokens (an integer knob, log scale; 0, reachable as "off", is plain PEZ / an unrestricted policy).
_FLUENCY = {"lambda_ppl": [0.05, 5.0], "fluent_top_k": [8, 512]}

SWEEP_PRESETS: dict[str, dict[str, Any]] = {
    # Tiny random GPT-2, every code path (Ray, Optuna multi-objective, MLflow, exports) in about a minute.
    "smoke": {
        "name": "smoke",
        "preset": "smoke",
        "tuners": ["pez", "soft", "rlprompt"],
        "search": {"pez": {**_WEIGHTS, **_FLUENCY}, "soft": dict(_WEIGHTS), "rlprompt": dict(_FLUENCY)},
        "num_samples": 4,
        "replicates": 2,
        "checkpoint_every": 2,
        "max_concurrent": 2,
        "cpus_per_trial": 1,
        "ray_num_cpus": 2,
    },
    # Real SmolLM2-135M on real reviews: PEZ and RLPrompt side by side with the baselines in under 10 minutes
    # on 2 cores. Both search their fluency knobs (lambda_ppl and the fluent top-k, 0 = unrestricted). The
    # budget is a demo's, not a study's: 3 trials per tuner (the unregularised one included), 3 replicates each.
    # fifo, not mo_asha: at 3 full trials' compute early stopping loses (benchmarks/search_efficiency.py), and 9
    # configurations reaching 100 PEZ / 48 RLPrompt steps took 30 min here (benchmarks/demo_mo_asha.yaml).
    "demo": {
        "name": "demo",
        "preset": "demo",
        "tuners": ["pez", "rlprompt"],
        "search": {"pez": dict(_FLUENCY), "rlprompt": dict(_FLUENCY)},
        "num_samples": 3,
        "replicates": 3,
        "max_concurrent": 2,
        "cpus_per_trial": 1,
        "ray_num_cpus": 2,
    },
    # The originals' setting on a GPU cluster: GPT-2, SST-2 16-shot, four trials per GPU. Early stopping
    # (mo_asha, three rungs at steps / 27, 9 and 3) lets 256 configurations per tuner cost about what 32 full
    # trials did (successive halving spends ~ 1/9 of a full trial per configuration at eta 3 with three rungs;
    # benchmarks/search_efficiency.py --section multi sizes 275 for equal compute). Measured on its synthetic
    # problem: ends level with fifo+tpe at 32, reaches fifo+random's hypervolume at 67-71 % of the steps.
    "paper": {
        "name": "paper",
        "preset": "paper",
        "tuners": ["pez", "soft", "rlprompt"],
        "search": {
            "pez": {**_WEIGHTS, "fluent_top_k": [8, 4096]},
            "soft": {**_WEIGHTS, "fluent_top_k": [8, 4096]},
            "rlprompt": {"lambda_ppl": [0.01, 10.0], "fluent_top_k": [8, 1024]},
        },
        "num_samples": 256,
        "scheduler": "mo_asha",
        "reduction_factor": 3,
        "replicates": 5,
        "max_concurrent": 16,
        "cpus_per_trial": 2,
        "gpus_per_trial": 0.25,
        "sampler": "tpe",
    },
}
