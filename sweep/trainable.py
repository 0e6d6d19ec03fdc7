"""The Ray Tune trainable: one trial = one tuner run with the weights Optuna chose.

The tuner knows nothing of Ray or MLflow; its ``report`` callback is adapted here to the trial's MLflow
child run. Tune is told once, at the end, with the final metrics: Optuna only learns a trial's last result,
so that result must carry the final objectives.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

from sweep.mlflow_log import TrialRun
from sweep.search import weights_from_params
from tuners import get_tuner, make_config

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialContext:
    """What every trial of one tuner shares; passed with ``tune.with_parameters`` (pickled once per run)."""

    tuner: str
    values: dict[str, Any]
    weights: tuple[str, ...]
    tracking_uri: str
    experiment_id: str
    parent_run_id: str


def run_trial(config: dict[str, Any], contexts: dict[str, TrialContext]) -> None:
    """``config`` is ``{"tuner": name, "params": {...Optuna's sample...}}`` (see ``MultiTunerSearch``)."""
    import ray
    from ray import tune

    context = contexts[config["tuner"]]
    tuner = get_tuner(context.tuner)
    weights = weights_from_params(config["params"], context.weights)
    tuner_config = make_config(tuner.config_cls, {**context.values, **weights})
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
    try:
        result = tuner.run(tuner_config, report=lambda step, metrics: run.log_metrics(metrics, step))
    except BaseException as err:
        run.fail(err)
        raise
    run.log_metrics(result.metrics, result.steps)
    run.finish(prompt_text=result.prompt_text, prompt_ids=result.prompt_ids, result=result.to_json())
    tune.report(
        {
            **result.metrics,
            **{f"param/{w}": v for w, v in weights.items()},
            "prompt_text": result.prompt_text,
            "mlflow_run_id": run.run_id,
            "wall_s": result.wall_s,
        }
    )
