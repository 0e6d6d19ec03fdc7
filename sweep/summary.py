"""The console summary at the end of a sweep: the fronts, what happened, and where to look next."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sweep.mlflow_log import experiment_url
from sweep.results.columns import LEARN_METRIC, duration


def print_summary(summary: dict[str, Any], out: Path) -> None:
    from sweep.results.compare import learning_text
    from sweep.results.tables import front_table_text

    exported = summary.get("exported")
    metrics = exported.summary_metrics if exported is not None else {}
    if exported is not None:
        print(front_table_text(exported.table, exported.fronts))
    total = summary.get("timings", {}).get("total_s")
    took = f" in {duration(total)}" if total is not None else ""
    if "trials_finished" in summary:
        dropped = summary.get("trials_dropped", 0)
        print(
            f"\nsweep {summary['status']}{took}: {summary['trials_finished']} of {summary['trials_planned']} trials "
            "finished"
            + (f" ({summary['trials_stopped']} stopped at a rung)" if summary.get("trials_stopped") else "")
            + f", {summary['trials_failed']} failed, {summary['trials_unfinished']} unfinished "
            f"({summary['trials_retried']} retried)"
            + (f", {dropped} not drawn (the search space ran out)" if dropped else "")
            + (", resumed" if summary.get("resumed") else "")
        )
    else:
        print(f"\nsweep {summary['status']}{took}")
    hypervolumes = "  ".join(
        f"{key.split('/', 1)[1]} {value:.4g}" for key, value in metrics.items() if key.startswith("hypervolume/")
    )
    if hypervolumes:
        print(f"hypervolume: {hypervolumes}")
    for key in metrics:
        if key.startswith(LEARN_METRIC + "/") and "." not in key:
            tuner = key.rsplit("/", 1)[1]
            n = int(metrics.get(key + ".n", 0))
            trials = int(metrics.get(key + ".trials", 0))
            print(
                f"{tuner} learning (trained minus untrained greedy prompt, dev accuracy; mean ± 95 % over {n} "
                f"replicates, each averaged over {trials} trials): {learning_text(metrics, tuner)}"
            )
    if summary.get("first_error"):
        print(f"first failure: {summary['first_error']}")
    if summary["status"] == "INTERRUPTED":
        print(f"interrupted: {summary.get('reason') or 'rerun the same command (same --out) to resume'}")
    if exported is not None:
        print(f"\nwrote {out}: {', '.join(exported.files)}, sweep.json")
        if "report.html" in exported.files:
            print(f"  report:           open {out / 'report.html'}")
    # A tracking server serves its own UI: its page of the sweep, not a local `mlflow ui` (which cannot read it).
    page = experiment_url(summary["tracking_uri"], str(summary.get("experiment_id", "")))
    print(f"  MLflow UI:        {page or 'mlflow ui --backend-store-uri ' + summary['tracking_uri']}")
    print(f"  optuna-dashboard: optuna-dashboard {summary['optuna_storage']}   (pip install -e '.[dashboard]')")
