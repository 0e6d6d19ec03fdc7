"""The end of a sweep, whatever stopped it: runs closed, exports, ``sweep.json`` and the MLflow parent.

Each step that fails (MLflow away, a full disk) turns the sweep INTERRUPTED with the reason instead of
raising: the rerun redoes what is missing.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweep import failpoints
from sweep.config import SweepConfig
from sweep.driver import (
    PARENT_STATUS,
    RESUME_HINT,
    STATUS_TAG,
    Outcome,
    Plan,
    is_disk_full,
    record,
    release_reserve,
    write_json,
)

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger("sweep.run")


def finish(
    config: SweepConfig,
    out: Path,
    plan: Plan,
    outcome: Outcome,
    *,
    timings: dict[str, float],
    started: float,
    resources: dict[str, float],
) -> dict[str, Any]:
    """Close what is left RUNNING, write the exports and ``sweep.json``, close the MLflow parent.

    Each step that fails (MLflow away, a full disk) turns the sweep INTERRUPTED with the reason instead of
    raising: the rerun redoes what is missing. Returns what ``sweep.json`` holds (also when it could not be
    written), with ``exported`` (the exports) for the console summary.
    """
    from sweep import mlflow_log
    from sweep.mlflow_log import collect_curves
    from sweep.results.exports import write_exports

    release_reserve(out)
    summary: dict[str, Any] = {**record(config, out, plan, status="INTERRUPTED"), "resumed": plan.resumed}
    summary.update(interrupted_by=outcome.signal, cluster_resources=resources, trials_expected=outcome.expected)
    try:
        closed, counts, first_error, table, runs = _read_back(plan)
    except Exception as err:
        return _fail_finish(summary, outcome, out, plan, "reading the trials back from MLflow", err)
    summary.update(_counts(config, out, outcome, counts, closed, first_error))
    try:
        exported = write_exports(
            table,
            out,
            config.objectives,
            labels=config.axis_labels,
            curves=collect_curves(plan.tracking_uri, table["mlflow_run_id"].tolist() if len(table) else [], runs=runs),
            # total_s is known only after the exports; the report shows the time up to them.
            header={**summary, "timings": {**timings, "before_exports_s": time.time() - started}},
        )
    except Exception as err:
        return _fail_finish(summary, outcome, out, plan, "writing the exports", err)
    failpoints.hit("exports")
    timings["total_s"] = time.time() - started
    summary.update(summary_metrics=exported.summary_metrics, timings=timings)
    files = [out / name for name in exported.files]
    try:
        write_json(out / "sweep.json", summary)
        mlflow_log.finish_parent(
            plan.tracking_uri,
            plan.parent,
            files=[*files, out / "sweep.json"],
            metrics=exported.summary_metrics,
            status=PARENT_STATUS[summary["status"]],
            tags={STATUS_TAG: summary["status"], "promptsweep.reason": str(summary["reason"] or "")[:5000]},
        )
    except Exception as err:
        return _fail_finish(summary, outcome, out, plan, "closing the sweep's record", err, exported=exported)
    return {**summary, "exported": exported}


def _read_back(plan: Plan) -> tuple[int, dict[str, int], str | None, pd.DataFrame, list[Any]]:
    """From MLflow: how many trial runs were closed as KILLED (left RUNNING by the end), the children's status
    counts, the first failure's message, the trials table and the trial runs they were read from."""
    from sweep import mlflow_log

    closed = mlflow_log.close_running_children(
        plan.tracking_uri, plan.parent, reason=f"the sweep was interrupted while this trial ran; {RESUME_HINT}"
    )
    runs = mlflow_log.trial_runs(plan.tracking_uri, plan.parent)  # read once: counted, tabled, curves named
    counts = mlflow_log.child_status_counts(plan.tracking_uri, plan.parent, runs=runs)
    first_error = mlflow_log.first_failure(plan.tracking_uri, plan.parent)
    table = mlflow_log.trials_table(plan.tracking_uri, plan.parent, runs=runs)
    return closed, counts, first_error, table, runs


def _counts(
    config: SweepConfig,
    out: Path,
    outcome: Outcome,
    counts: dict[str, int],
    closed: int,
    first_error: str | None,
) -> dict[str, Any]:
    """The status, its reason and the trial counts (they add up: finished + failed + unfinished = planned)."""
    finished, failed = counts.get("FINISHED", 0), counts.get("FAILED", 0)
    planned = outcome.expected - outcome.dropped
    unfinished = max(0, planned - finished - failed)
    if outcome.fault is None and outcome.errors and unfinished:
        if any("disk is full" in e or "No space left" in e for e in outcome.errors):
            outcome.fault = f"the disk of {out} filled up under the trials: free space, then {RESUME_HINT}"
        else:
            outcome.fault = f"{len(outcome.errors)} trials gave up after {config.max_retries} retries; {RESUME_HINT}"
    if outcome.fault is not None or unfinished:
        status = "INTERRUPTED"
    else:
        status = "FAILED" if failed else "FINISHED"
    return {
        "status": status,
        "reason": outcome.fault or (f"{failed} trials failed by themselves (not retried)" if failed else None),
        "trials_planned": planned,
        "trials_dropped": outcome.dropped,
        "trials_finished": finished,
        "trials_stopped": counts.get("stopped", 0),
        "trials_failed": failed,
        "trials_unfinished": unfinished,
        "trials_killed": counts.get("KILLED", 0),
        "trials_retried": counts.get("retried", 0),
        "trials_interrupted_now": closed,
        "first_error": first_error or (outcome.errors[0] if outcome.errors else None),
    }


def _fail_finish(
    summary: dict[str, Any],
    outcome: Outcome,
    out: Path,
    plan: Plan,
    step: str,
    err: Exception,
    *,
    exported: Any = None,
) -> dict[str, Any]:
    """The end when the end itself fails: INTERRUPTED with what failed, recorded wherever it still can be."""
    from sweep import mlflow_log

    where = "the disk is full" if is_disk_full(err) else f"{type(err).__name__}: {str(err)[:300]}"
    reason = f"{step} failed ({where}); " + ("free space, then " if is_disk_full(err) else "") + RESUME_HINT
    if outcome.fault:
        reason = f"{outcome.fault}; then {reason}"
    logger.error("%s", reason)
    summary.update(status="INTERRUPTED", reason=reason)
    with contextlib.suppress(Exception):
        write_json(out / "sweep.json", summary)
    with contextlib.suppress(Exception):
        mlflow_log.finish_parent(
            plan.tracking_uri, plan.parent, files=[], status="KILLED", tags={STATUS_TAG: "INTERRUPTED"}
        )
    return {**summary, "exported": exported}
