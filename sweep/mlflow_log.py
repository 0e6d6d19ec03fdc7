"""MLflow layout of a sweep: one experiment per sweep name, one parent run per sweep, one child per trial.

The experiment and the parent run are created on the driver before any trial starts (SQLite races on
concurrent experiment creation, and an experiment created inside a Ray worker would put its artifacts in
Ray's ephemeral working directory). Each trial logs its own child run as it goes, so a crashed trial or
driver loses nothing that was already reported. ``trials_table`` reads the trials back: it is the single
source of the exported tables, for ``sweep/run.py`` and ``python -m sweep.export`` alike.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from objectives.errors import ConfigError
from sweep.results.columns import PARAM_PREFIX, REPLICATE_PROMPTS, STEPS_DONE, STOPPED_AT

logger = logging.getLogger(__name__)

ROLE = "promptsweep.role"
SEARCHED = "promptsweep.searched"
OBJECTIVES = "promptsweep.objectives"
LABELS = "promptsweep.axis_labels"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
# A sweep's experiment is a model-training one: the tag and value MLflow 3's UI uses for an experiment's kind (its
# bundle's ExperimentKind.CUSTOM_MODEL_DEVELOPMENT, what its kind selector sets). MLflow 3.17's UI still opens every
# experiment on the GenAI "Overview" (traces, an assistant) unless its workflow switch is on "Model training", which
# it keeps per browser: a link with ?workflowType=machine_learning (``experiment_url``) opens on the runs, the
# sweep's parent and its trials (checked in headless chromium, tests/sweep/test_tracking.py).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
ATTEMPTS = "attempts"
ERROR = "error"
TUNE_RESULT = "tune_result.json"
# A trial's configuration: its stable key (``sweep.space.trial_key``), Optuna's params and a fixed trial's
# values, so a resumed sweep knows what each run measured without Tune's state.
TRIAL_KEY = "promptsweep.trial_key"
TRIAL_PARAMS = "promptsweep.params"
TRIAL_FIXED = "promptsweep.fixed"
# The checkpoint slot ("a" or "b") holding a trial's newest complete state; set only after the upload ends.
CHECKPOINT = "promptsweep.checkpoint"
_CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "trial_state.pt"
# Per-step metrics: ``rep<i>/dev/acc`` etc. (and the older unprefixed ``dev/``, ``train/``), and the replicate
# means a trial reported at each rung (``rung/<objective>``); not final metrics.
_HISTORY = re.compile(r"^((rep\d+/)?(dev|train)|rung)/")
RUNG_PREFIX = "rung/"
# Points kept per learning curve: enough to show its shape, few enough that a long sweep's page stays small.
CURVE_POINTS = 500
# What the tracking server's bulk history endpoint takes in one request: run ids, and points it answers.
_BULK_RUNS = 100
_BULK_POINTS = 25000
_BULK_REQUESTS = 4  # requests in flight
# MLflow run id -> per-step metric -> (step, value) pairs: what collect_curves reads for the report.
Curves = Mapping[str, Mapping[str, list[tuple[int, float]]]]


def is_history_metric(key: str) -> bool:
    """Whether ``key`` is a per-step metric (a learning curve), not one of a trial's final metrics."""
    return _HISTORY.match(key) is not None


def _client(tracking_uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def default_tracking_uri(out: Path) -> str:
    """Where a sweep without ``tracking_uri`` logs: the environment's ``MLFLOW_TRACKING_URI`` (a tracking server
    set up once per shell or node, its credentials in ``MLFLOW_TRACKING_USERNAME``/``_PASSWORD`` beside it), else
    a SQLite file in ``out``."""
    return os.environ.get(TRACKING_URI_ENV) or f"sqlite:///{out.resolve() / 'mlflow.db'}"


def experiment_url(tracking_uri: str, experiment_id: str) -> str | None:
    """The MLflow UI's page of an experiment on a tracking server, opening on its runs (None for a local store)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"


def start_parent(
    tracking_uri: str,
    experiment: str,
    *,
    params: Mapping[str, Any],
    objectives: Sequence[str],
    artifact_root: Path,
    labels: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
) -> tuple[str, str]:
    """Create (or reuse) the experiment and start the sweep's parent run; returns their ids."""
    client = _client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    kind = {EXPERIMENT_KIND[0]: EXPERIMENT_KIND[1]}
    if found is not None:
        experiment_id = found.experiment_id
        if found.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:  # created before sweeps were tagged
            client.set_experiment_tag(experiment_id, *EXPERIMENT_KIND)
    elif tracking_uri.startswith(("http://", "https://")):
        # A tracking server owns its artifact store; a local path would land on whichever node wrote it.
        experiment_id = client.create_experiment(experiment, tags=kind)
    else:
        experiment_id = client.create_experiment(
            experiment, artifact_location=artifact_root.resolve().as_uri(), tags=kind
        )
    run = client.create_run(
        experiment_id,
        run_name=f"{experiment}-{time.strftime('%Y%m%d-%H%M%S')}",
        tags={
            ROLE: "parent",
            OBJECTIVES: json.dumps(list(objectives)),
            LABELS: json.dumps(dict(labels or {})),
            **(tags or {}),
        },
    )
    log_params(client, run.info.run_id, params)
    return experiment_id, run.info.run_id


def log_params(client: Any, run_id: str, params: Mapping[str, Any], *, logged: Mapping[str, str] | None = None) -> None:
    """Log ``params`` (nested mappings flattened to dotted names), leaving out the names in ``logged``."""
    from mlflow.entities import Param

    flat = [Param(k, _param_value(v)) for k, v in _flatten(params).items() if k not in (logged or {})]
    for start in range(0, len(flat), 100):
        client.log_batch(run_id, params=flat[start : start + 100])


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict, tuple)) else str(value)
    return text[:6000]


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


class TrialRun:
    """A trial's child run, written from inside the Ray worker as the tuner reports.

    One child run per configuration, whatever befalls it: an attempt that resumes it (a retry on another
    worker, a resumed sweep's new Tune trial) reopens the run the first attempt created (found by its trial
    key) and counts itself in the ``attempts`` tag. The run also holds the trial's checkpoints (two artifact
    slots and a tag naming the newest complete one), so a retry on any node finds them through MLflow alone.
    """

    def __init__(
        self,
        *,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        tuner: str,
        trial_id: str,
        key: str,
        suggestion: Mapping[str, Any],
        params: Mapping[str, Any],
        searched: Sequence[str],
        tags: Mapping[str, str],
        existing: Any = None,
    ) -> None:
        self.client = _client(tracking_uri)
        if existing is not None:
            self.run_id = existing.info.run_id
            self.attempts = int(existing.data.tags.get(ATTEMPTS, "1")) + 1
            self.checkpoint_slot = existing.data.tags.get(CHECKPOINT)
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.set_tag(self.run_id, ATTEMPTS, str(self.attempts))
            for name, value in tags.items():
                self.client.set_tag(self.run_id, name, value)
            # The attempt that created the run may have died before its parameters were logged (the exports
            # read the searched weights from them).
            log_params(self.client, self.run_id, params, logged=existing.data.params)
            return
        run = self.client.create_run(
            experiment_id,
            run_name=f"{tuner}-{trial_id}",
            tags={
                "mlflow.parentRunId": parent_run_id,
                ROLE: "trial",
                "tuner": tuner,
                "trial_id": trial_id,
                TRIAL_KEY: key,
                TRIAL_PARAMS: json.dumps(dict(suggestion.get("params") or {}), sort_keys=True),
                TRIAL_FIXED: json.dumps(dict(suggestion.get("fixed") or {}), sort_keys=True),
                SEARCHED: json.dumps(list(searched)),
                ATTEMPTS: "1",
                **tags,
            },
        )
        self.run_id = run.info.run_id
        self.attempts = 1
        self.checkpoint_slot: str | None = None
        log_params(self.client, self.run_id, params)

    def save_checkpoint(self, path: Path) -> None:
        """Upload the state file ``path`` into the slot not holding the newest checkpoint, then point to it.

        The tag moves only once the upload is whole, so a kill at any moment leaves the previous checkpoint
        named and intact: no artifact store offers an atomic overwrite, two slots and a pointer give one.
        """
        slot = "b" if self.checkpoint_slot == "a" else "a"
        self.client.log_artifact(self.run_id, str(path), artifact_path=f"{_CHECKPOINT_DIR}/{slot}")
        self.client.set_tag(self.run_id, CHECKPOINT, slot)
        self.checkpoint_slot = slot

    def load_checkpoint(self, folder: Path) -> Path | None:
        """Download the newest checkpoint's state file into ``folder``; None when the trial has none."""
        if self.checkpoint_slot is None:
            return None
        local = self.client.download_artifacts(self.run_id, f"{_CHECKPOINT_DIR}/{self.checkpoint_slot}", str(folder))
        return Path(local) / STATE_FILE

    def drop_checkpoints(self) -> None:
        """Delete a finished trial's checkpoints (an RLPrompt policy is megabytes, a sweep has hundreds)."""
        _drop_checkpoints(self.client, self.run_id)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def finish(
        self,
        *,
        prompt_text: str,
        prompt_ids: list[int],
        result: Mapping[str, Any],
        tune_result: Mapping[str, Any],
        replicate_prompts: Sequence[str] = (),
        steps_done: int = 0,
    ) -> None:
        """Close the run: the representative prompt as tags and ``prompt.txt``, every replicate's prompt as a
        tag (JSON list), the whole result as ``result.json``, and what Tune was told as ``tune_result.json`` (a
        resumed sweep tells Tune the same again instead of re-running the trial)."""
        self.client.set_tag(self.run_id, "prompt_text", prompt_text[:5000])
        self.client.set_tag(self.run_id, "prompt_ids", json.dumps(prompt_ids))
        self.client.set_tag(self.run_id, REPLICATE_PROMPTS, json.dumps(list(replicate_prompts))[:5000])
        self.client.log_text(self.run_id, prompt_text, "prompt.txt")
        self.client.log_dict(self.run_id, dict(tune_result), TUNE_RESULT)
        self.client.log_dict(self.run_id, dict(result), "result.json")
        self.client.set_tag(self.run_id, STEPS_DONE, str(steps_done))
        self.client.set_terminated(self.run_id, "FINISHED")

    def fail(self, error: BaseException, *, status: str = "FAILED") -> None:
        """End the run: FAILED for a fault of the trial's own (final), KILLED for an interrupted attempt (a
        later attempt or a resumed sweep continues it)."""
        self.client.set_tag(self.run_id, ERROR, f"{type(error).__name__}: {error}"[:5000])
        self.client.set_terminated(self.run_id, status)


def _drop_checkpoints(client: Any, run_id: str) -> None:
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    try:
        # A tracking server's artifact URI (mlflow-artifacts:/...) names no host: it is resolved against the
        # tracking URI given here, else against the process's default, which a trial on a node never sets.
        artifact_uri = client.get_run(run_id).info.artifact_uri
        repository = get_artifact_repository(artifact_uri, tracking_uri=client.tracking_uri)
        repository.delete_artifacts(_CHECKPOINT_DIR)
    except Exception as err:  # the store may not support deletion; the result is kept either way
        logger.warning("could not delete the checkpoints of run %s: %s", run_id, err)


def find_trial_run(tracking_uri: str, experiment_id: str, parent_run_id: str, key: str) -> Any:
    """The child run of the configuration ``key`` in this sweep, or ``None`` when no attempt has started one."""
    runs = _client(tracking_uri).search_runs(
        [experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.`{TRIAL_KEY}` = '{key}'",
        max_results=1,
    )
    return runs[0] if runs else None


def tune_result(tracking_uri: str, run: Any) -> dict[str, Any]:
    """What a finished trial told Tune: its ``tune_result.json``, else rebuilt from the run's final metrics,
    searched params and tags (the artifact store may have lost the file; the run's record is enough)."""
    import tempfile

    try:
        with tempfile.TemporaryDirectory(prefix="promptsweep-result-") as folder:
            local = _client(tracking_uri).download_artifacts(run.info.run_id, TUNE_RESULT, folder)
            return dict(json.loads(Path(local).read_text()))
    except Exception as err:  # unreadable: rebuilt below from what the run records
        logger.warning("run %s: %s unreadable (%s); rebuilt from its metrics", run.info.run_id, TUNE_RESULT, err)
    tags, params = run.data.tags, run.data.params
    told: dict[str, Any] = {k: float(v) for k, v in run.data.metrics.items() if not is_history_metric(k)}
    for weight in json.loads(tags.get(SEARCHED, "[]")):
        if weight in params:
            told[PARAM_PREFIX + weight] = float(params[weight])
    told["prompt_text"] = tags.get("prompt_text", "")
    told["mlflow_run_id"] = run.info.run_id
    return told


def record_stop(tracking_uri: str, result: Mapping[str, Any]) -> None:
    """Close the run of a trial a scheduler stopped at a rung, from its last (rung) result: that result's
    metrics as the run's final ones, ``stopped_at_step`` and ``steps_done``, FINISHED. Written by the driver: the
    trial's own worker may be torn down the moment it is stopped."""
    from mlflow.entities import Metric, RunTag

    client = _client(tracking_uri)
    run_id, step = str(result["mlflow_run_id"]), int(result["steps"])
    now = int(time.time() * 1000)
    metrics = [
        Metric(k, float(v), now, step)
        for k, v in result.items()
        if "/" in k
        and not is_history_metric(k)
        and not k.startswith(PARAM_PREFIX)
        and isinstance(v, (int, float))
        and math.isfinite(v)
    ]
    tags = {
        STOPPED_AT: str(step),
        STEPS_DONE: str(step),
        "prompt_text": str(result.get("prompt_text", ""))[:5000],
        "prompt_ids": str(result.get("prompt_ids", "[]")),
        REPLICATE_PROMPTS: str(result.get(REPLICATE_PROMPTS, "[]"))[:5000],
    }
    for start in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[start : start + 500])
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    told = {k: v for k, v in result.items() if isinstance(v, (int, float, str, bool)) or v is None}
    client.log_dict(run_id, {**told, STOPPED_AT: step}, TUNE_RESULT)
    _drop_checkpoints(client, run_id)
    client.set_terminated(run_id, "FINISHED")


def trial_runs(tracking_uri: str, parent_run_id: str) -> list[Any]:
    """Every trial run of a sweep (any status)."""
    parent = _parent(tracking_uri, parent_run_id)
    return _client(tracking_uri).search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'", max_results=50000
    )


def close_running_children(tracking_uri: str, parent_run_id: str, *, reason: str) -> int:
    """Mark every still RUNNING trial run of a sweep KILLED with ``reason``; returns how many there were.

    A run is left RUNNING only by an attempt that died with its worker or driver; a later attempt of the same
    trial reopens it.
    """
    client = _client(tracking_uri)
    parent = _parent(tracking_uri, parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' and attributes.status = 'RUNNING'",
        max_results=50000,
    )
    for run in runs:
        client.set_tag(run.info.run_id, ERROR, reason)
        client.set_terminated(run.info.run_id, "KILLED")
    return len(runs)


def close_parent(tracking_uri: str, parent_run_id: str, *, reason: str) -> None:
    """End an earlier sweep's parent run (still RUNNING when its driver was lost) as KILLED with ``reason``."""
    client = _client(tracking_uri)
    if client.get_run(parent_run_id).info.status == "RUNNING":
        client.set_tag(parent_run_id, ERROR, reason)
        client.set_terminated(parent_run_id, "KILLED")
    close_running_children(tracking_uri, parent_run_id, reason=reason)


def reopen_parent(tracking_uri: str, parent_run_id: str) -> None:
    _client(tracking_uri).update_run(parent_run_id, status="RUNNING")


def finish_parent(
    tracking_uri: str,
    run_id: str,
    *,
    files: Sequence[Path],
    metrics: Mapping[str, float] | None = None,
    status: str = "FINISHED",
    tags: Mapping[str, str] | None = None,
) -> None:
    """Close the parent run with the sweep's exports as artifacts and its sweep-level metrics (hypervolumes,
    shares of front points beating each baseline), so sweeps can be compared in the MLflow UI."""
    from mlflow.entities import Metric, RunTag

    client = _client(tracking_uri)
    now = int(time.time() * 1000)
    finite = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items() if math.isfinite(float(v))]
    if finite or tags:
        client.log_batch(run_id, metrics=finite, tags=[RunTag(k, v) for k, v in (tags or {}).items()])
    for path in files:
        if path.exists():
            client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, status)


def child_status_counts(tracking_uri: str, parent_run_id: str, *, runs: Sequence[Any] | None = None) -> dict[str, int]:
    """How many of a sweep's trial runs ended in each MLflow status (FINISHED, FAILED, KILLED, RUNNING); ``runs``:
    its trial runs as ``trial_runs`` read them, when the caller has them already."""
    if runs is None:
        runs = trial_runs(tracking_uri, parent_run_id)
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.info.status] = counts.get(run.info.status, 0) + 1
        if int(run.data.tags.get(ATTEMPTS, "1")) > 1:
            counts["retried"] = counts.get("retried", 0) + 1
        if run.info.status == "FINISHED" and STOPPED_AT in run.data.tags:
            counts["stopped"] = counts.get("stopped", 0) + 1
    return counts


def first_failure(tracking_uri: str, parent_run_id: str) -> str | None:
    """The recorded reason of the earliest FAILED trial run of a sweep."""
    client = _client(tracking_uri)
    parent = _parent(tracking_uri, parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' and attributes.status = 'FAILED'",
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    return runs[0].data.tags.get(ERROR, "no reason recorded") if runs else None


def latest_parent(tracking_uri: str, experiment: str) -> str:
    """The newest parent run of an experiment (the sweep ``python -m sweep.export`` rebuilds by default)."""
    client = _client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = [e.name for e in client.search_experiments()]
        raise ConfigError(f"no MLflow experiment named {experiment!r} at {tracking_uri}; experiments there: {names}")
    runs = client.search_runs(
        [found.experiment_id], filter_string=f"tags.`{ROLE}` = 'parent'", order_by=["attributes.start_time DESC"]
    )
    if not runs:
        raise ConfigError(f"experiment {experiment!r} at {tracking_uri} holds no sweep (no parent run)")
    return runs[0].info.run_id


def _parent(tracking_uri: str, parent_run_id: str) -> Any:
    """The parent run, or a clear error when the id names no sweep of this store."""
    from mlflow.exceptions import MlflowException

    try:
        run = _client(tracking_uri).get_run(parent_run_id)
    except MlflowException as err:
        raise ConfigError(f"--parent-run-id {parent_run_id!r}: no such run at {tracking_uri}") from err
    if run.data.tags.get(ROLE) != "parent":
        raise ConfigError(f"--parent-run-id {parent_run_id!r} is not a sweep's parent run (it is a trial's)")
    return run


def parent_objectives(tracking_uri: str, parent_run_id: str) -> list[str]:
    return json.loads(_parent(tracking_uri, parent_run_id).data.tags[OBJECTIVES])


def parent_labels(tracking_uri: str, parent_run_id: str) -> dict[str, str]:
    """The axis labels a sweep was exported with (empty for sweeps recorded before labels were)."""
    return json.loads(_parent(tracking_uri, parent_run_id).data.tags.get(LABELS, "{}"))


def parent_record(tracking_uri: str, parent_run_id: str) -> dict[str, Any]:
    """What MLflow alone knows of a sweep, in ``sweep.json``'s keys: for a report rebuilt without that file.

    ``config`` holds the parent run's parameters as logged (flattened, dotted keys, values as text); the
    ``total_s`` timing is the parent run's wall time, and is absent while it is still running.
    """
    run = _parent(tracking_uri, parent_run_id)
    info, tags = run.info, run.data.tags
    record: dict[str, Any] = {
        "config": dict(sorted(run.data.params.items())),
        "tracking_uri": tracking_uri,
        "experiment": _client(tracking_uri).get_experiment(info.experiment_id).name,
        "experiment_id": info.experiment_id,
        "parent_run_id": parent_run_id,
        "status": info.status,
        "git_commit": tags.get("mlflow.source.git.commit"),
    }
    if info.start_time and info.end_time:
        record["timings"] = {"total_s": (info.end_time - info.start_time) / 1000}
    return record


def trials_table(tracking_uri: str, parent_run_id: str, *, runs: Sequence[Any] | None = None) -> pd.DataFrame:
    """One row per finished trial of a sweep, with the columns of the ``trials.parquet`` contract; ``runs``: its
    trial runs as ``trial_runs`` read them, when the caller has them already (a search of a thousand runs takes
    seconds on a tracking server).

    Rows are ordered by tuner and trial key so that two reads of the same store, and two runs of the same sweep,
    give identically ordered tables.
    """
    if runs is None:
        runs = trial_runs(tracking_uri, parent_run_id)
    rows = []
    for run in (r for r in runs if r.info.status == "FINISHED"):
        tags, params = run.data.tags, run.data.params
        row: dict[str, Any] = {
            "tuner": tags["tuner"],
            "trial_id": tags.get("trial_id", ""),
            "mlflow_run_id": run.info.run_id,
        }
        for weight in json.loads(tags.get(SEARCHED, "[]")):
            row[PARAM_PREFIX + weight] = float(params[weight])
        row.update({k: float(v) for k, v in run.data.metrics.items() if not is_history_metric(k)})
        row["prompt_text"] = tags.get("prompt_text", "")
        row["prompt_ids"] = json.loads(tags.get("prompt_ids", "[]"))
        row[REPLICATE_PROMPTS] = json.loads(tags.get(REPLICATE_PROMPTS, "[]"))
        row[STEPS_DONE] = float(tags[STEPS_DONE]) if STEPS_DONE in tags else math.nan
        row[STOPPED_AT] = float(tags[STOPPED_AT]) if STOPPED_AT in tags else math.nan
        rows.append((tags.get(TRIAL_KEY, row["trial_id"]), row))
    if not rows:
        return pd.DataFrame(columns=["tuner", "trial_id", "mlflow_run_id", "prompt_text", "prompt_ids"])
    # Ordered by tuner, then trial key (a hash of the configuration): the same sweep run twice, whose Tune trial
    # ids are random, lists its rows (and front.tex its baselines) in the same order.
    rows.sort(key=lambda item: (item[1]["tuner"], item[0]))
    return pd.DataFrame([row for _, row in rows])


def collect_curves(
    tracking_uri: str, run_ids: Iterable[Any], *, max_points: int = CURVE_POINTS, runs: Sequence[Any] = ()
) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Per MLflow run, each per-step metric (``rep<i>/dev/acc``, ``rep<i>/train/loss``, ...) as ``(step,
    value)`` pairs in step order, thinned evenly to at most ``max_points`` (first and last kept).

    Runs that do not exist and metrics that cannot be read are left out with a warning: a report with a
    missing curve is better than none. Empty or missing ids (NaN in a hand-made table) are skipped. The
    histories are read many runs a request (a tracking server answered 1,000 trials' curves one request per
    run and metric in minutes; see ``_histories``). ``runs``: MLflow runs the caller has read already (``trial_runs``),
    whose metric names then need no search.
    """
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2 (first and last step), got {max_points}")
    client = _client(tracking_uri)
    ids = list(dict.fromkeys(r for r in run_ids if isinstance(r, str) and r))
    keys = _history_keys(client, ids, known={run.info.run_id: run for run in runs})
    by_key: dict[str, list[str]] = {}
    for run_id, run_keys in keys.items():
        for key in run_keys:
            by_key.setdefault(key, []).append(run_id)
    jobs = [(key, runs[i : i + _BULK_RUNS]) for key, runs in by_key.items() for i in range(0, len(runs), _BULK_RUNS)]
    histories: dict[tuple[str, str], list[Any]] = {}
    # A few requests in flight: a tracking server checks each run's permission per request (a run read each),
    # which its workers do side by side.
    with ThreadPoolExecutor(max_workers=_BULK_REQUESTS) as pool:
        for found in pool.map(lambda job: _histories(client, job[1], job[0]), jobs):
            histories.update(found)
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for run_id, run_keys in keys.items():
        series: dict[str, list[tuple[int, float]]] = {}
        for key in run_keys:
            if (run_id, key) not in histories:
                continue
            # A resumed or retried trial logs some steps again: the value logged last at a step is the one kept.
            by_step: dict[int, float] = {}
            for metric in sorted(histories[run_id, key], key=lambda m: (m.step, m.timestamp)):
                by_step[int(metric.step)] = float(metric.value)
            series[key] = _thin(sorted(by_step.items()), max_points)
        curves[run_id] = series
    return curves


def _history_keys(client: Any, run_ids: list[str], *, known: Mapping[str, Any]) -> dict[str, list[str]]:
    """Per existing run (in the order given), its per-step metric keys, sorted: from the ``known`` runs, else a
    search a hundred runs a time."""
    from mlflow.entities import ViewType

    found = {r: sorted(k for k in known[r].data.metrics if is_history_metric(k)) for r in run_ids if r in known}
    missing = [r for r in run_ids if r not in found]
    experiments = (
        [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL, max_results=50000)]
        if missing
        else []
    )
    for start in range(0, len(missing), _BULK_RUNS):
        chunk = missing[start : start + _BULK_RUNS]
        quoted = ", ".join(f"'{r}'" for r in chunk if re.fullmatch(r"[0-9a-zA-Z_-]+", r))
        runs = (
            client.search_runs(
                experiments,
                filter_string=f"attributes.run_id IN ({quoted})",
                run_view_type=ViewType.ALL,
                max_results=len(chunk),
            )
            if quoted and experiments
            else []
        )
        for run in runs:
            found[run.info.run_id] = sorted(k for k in run.data.metrics if is_history_metric(k))
    for run_id in run_ids:
        if run_id not in found:
            logger.warning("no learning curves for MLflow run %s: no such run at this store", run_id)
    return {r: found[r] for r in run_ids if r in found}


def _histories(client: Any, run_ids: list[str], key: str) -> dict[tuple[str, str], list[Any]]:
    """Every logged value of metric ``key`` of each run (at most ``_BULK_RUNS``), by ``(run id, key)``.

    A SQL store (SQLite, PostgreSQL) answers in one query (``get_metric_history_bulk``); a tracking server
    through the bulk endpoint its own UI uses to draw many runs' charts (a hundred runs and 25,000 points a
    request: an answer that may have been cut there is asked again in halves). Any other store, or a server
    without that endpoint, is read one run a request, as ``MlflowClient.get_metric_history`` does.
    """
    from mlflow.exceptions import MlflowException

    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    try:
        metrics = _bulk(store, run_ids, key)
    except MlflowException as err:
        logger.debug("bulk read of %s failed (%s): one run a request", key, err)
        metrics = None
    if metrics is not None and len(metrics) >= _BULK_POINTS and len(run_ids) > 1:
        half = len(run_ids) // 2
        return {**_histories(client, run_ids[:half], key), **_histories(client, run_ids[half:], key)}
    out: dict[tuple[str, str], list[Any]] = {}
    if metrics is None or len(metrics) >= _BULK_POINTS:
        for run_id in run_ids:
            try:
                out[run_id, key] = client.get_metric_history(run_id, key)
            except MlflowException as err:
                logger.warning("no curve %s of MLflow run %s: %s", key, run_id, err)
        return out
    for run_id in run_ids:
        out[run_id, key] = []
    for run_id, metric in metrics:
        out[run_id, key].append(metric)
    return out


def _bulk(store: Any, run_ids: list[str], key: str) -> list[tuple[str, Any]] | None:
    """``(run id, Metric)`` of ``key`` for the runs, in one request; None where the store has no bulk read."""
    from mlflow.entities import Metric
    from mlflow.store.tracking.rest_store import RestStore

    if hasattr(store, "get_metric_history_bulk"):
        found = store.get_metric_history_bulk(run_ids, key, max_results=_BULK_POINTS)
        return [(m.run_id, m) for m in found]
    if isinstance(store, RestStore):
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        endpoint = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"
        params = {"run_id": run_ids, "metric_key": key, "max_results": _BULK_POINTS}
        response = verify_rest_response(http_request(store.get_host_creds(), endpoint, "GET", params=params), endpoint)
        return [
            (m["run_id"], Metric(m["key"], float(m["value"]), int(m["timestamp"]), int(m["step"])))
            for m in response.json().get("metrics", [])
        ]
    return None


def _thin(points: list[tuple[int, float]], limit: int) -> list[tuple[int, float]]:
    if len(points) <= limit:
        return points
    keep = np.unique(np.linspace(0, len(points) - 1, limit).round().astype(int))
    return [points[i] for i in keep.tolist()]
