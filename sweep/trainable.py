"""The Ray Tune trainable: one trial = one configuration (a fixed one, or the knobs Optuna chose), measured
on the sweep's replicates.

The tuner knows nothing of Ray or MLflow; its ``report`` callback is adapted here to the trial's MLflow
child run (per-step metrics under ``rep<i>/``). Tune is told once, at the end, with the replicate means
(and their spreads): Optuna only learns a trial's last result, so that result must carry the final
objectives.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sweep.mlflow_log import TrialRun
from sweep.search import knobs_from_params
from tuners import get_tuner, make_config
from tuners.replicates import run_replicates

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialContext:
    """What every trial of one tuner shares; passed with ``tune.with_parameters`` (pickled once per run)."""

    tuner: str
    values: dict[str, Any]
    weights: tuple[str, ...]
    integer_knobs: frozenset[str]
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    replicates: int = 1


def run_trial(config: dict[str, Any], contexts: dict[str, TrialContext]) -> None:
    """``config`` is ``{"tuner": name, "params": {...Optuna's sample...}, "fixed": {...config values...}}``
    (see ``MultiTunerSearch``): a fixed trial has no params, a sampled one no fixed values."""
    import ray
    from ray import tune

    context = contexts[config["tuner"]]
    tuner = get_tuner(context.tuner)
    weights = knobs_from_params(config.get("params", {}), context.weights, context.integer_knobs)
    tuner_config = make_config(tuner.config_cls, {**context.values, **config.get("fixed", {}), **weights})
    trial_id = tune.get_context().get_trial_id() or "local"
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    run = TrialRun(
        tracking_uri=context.tracking_uri,
        experiment_id=context.experiment_id,
        parent_run_id=context.parent_run_id,
        tuner=context.tuner,
        trial_id=trial_id,
        params={k: list(v) if isinstance(v, tuple) else v for k, v in vars(tuner_config).items()},
        searched=context.weights,
        tags={
            "ray.node_id": ray.get_runtime_context().get_node_id(),
            "ray.node_ip": ray.util.get_node_ip_address(),
            "host": socket.gethostname(),
            "gpu_ids": ",".join(gpu_ids),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        },
    )

    def report(replicate: int, step: int, metrics: Mapping[str, float]) -> None:
        run.log_metrics({f"rep{replicate}/{k}": v for k, v in metrics.items()}, step)

    try:
        result = run_replicates(tuner, tuner_config, context.replicates, report=report)
    except BaseException as err:
        run.fail(err)
        raise
    prompt = result.prompt
    run.log_metrics(result.metrics, max(r.steps for r in result.results))
    run.finish(
        prompt_text=prompt.prompt_text,
        prompt_ids=prompt.prompt_ids,
        result=result.to_json(),
        replicate_prompts=result.prompt_texts,
    )
    tune.report(
        {
            **result.metrics,
            **{f"param/{w}": v for w, v in weights.items()},
            "prompt_text": prompt.prompt_text,
            "mlflow_run_id": run.run_id,
            "wall_s": result.wall_s,
        }
    )
