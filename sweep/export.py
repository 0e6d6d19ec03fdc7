"""Rebuild a sweep's exports from MLflow alone (no Ray state needed).

    python -m sweep.export --tracking-uri sqlite:///abs/path/mlflow.db --experiment demo --out DIR

Writes the same ``trials.parquet``, ``pareto.pdf/svg/png``, ``front.tex`` and ``report.html`` as
``sweep/run.py``, from the newest sweep (parent run) of the experiment, or the one named by
``--parent-run-id``. The report's learning curves come from MLflow; its header from the sweep's
``sweep.json`` when one is found (in ``--out``, or beside a ``sqlite:///`` store) and belongs to that sweep,
else from the parent run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from objectives.errors import did_you_mean
from sweep import mlflow_log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweep.export", description=__doc__.split("\n")[0])
    parser.add_argument("--tracking-uri", required=True, help="MLflow tracking URI, e.g. sqlite:///abs/mlflow.db")
    parser.add_argument("--experiment", required=True, help="experiment name (the sweep's name)")
    parser.add_argument("--out", required=True, help="folder to write the exports into")
    parser.add_argument("--parent-run-id", help="a specific sweep's parent run (default: the newest)")
    parser.add_argument("--objectives", help="comma-separated objective metrics (default: the sweep's own)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from objectives.errors import ConfigError, UserError
    from objectives.metrics import METRICS
    from sweep.preflight import check_out, check_tracking_uri
    from sweep.results.exports import write_exports
    from sweep.results.tables import front_table_text

    tracking_uri = args.tracking_uri
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_absolute():
        # Exports run here, in this directory: a relative store path means the file beside it (a sweep needs an
        # absolute one only because its trials run elsewhere).
        tracking_uri = f"sqlite:///{Path(tracking_uri.removeprefix('sqlite:///')).resolve()}"
    try:
        # must_exist: a mistyped path is an error, not a new empty store that MLflow creates on first contact.
        check_tracking_uri(tracking_uri, must_exist=True)
        out = Path(args.out).resolve()
        check_out(out)
        parent = args.parent_run_id or mlflow_log.latest_parent(tracking_uri, args.experiment)
        if args.objectives:
            objectives = [o.strip() for o in args.objectives.split(",") if o.strip()]
            for name in objectives:
                if name not in METRICS:
                    raise ConfigError(f"--objectives: {did_you_mean('metric', name, METRICS)}")
            if len(objectives) < 2:
                raise ConfigError(f"--objectives {args.objectives!r} needs at least 2 metrics for a Pareto front")
        else:
            objectives = mlflow_log.parent_objectives(tracking_uri, parent)
        runs = mlflow_log.trial_runs(tracking_uri, parent)
        table = mlflow_log.trials_table(tracking_uri, parent, runs=runs)
        labels = mlflow_log.parent_labels(tracking_uri, parent)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    curves = mlflow_log.collect_curves(tracking_uri, table["mlflow_run_id"].tolist(), runs=runs) if len(table) else {}
    header = _sweep_record(tracking_uri, parent, out)
    exported = write_exports(table, out, objectives, labels=labels, curves=curves, header=header)
    print(front_table_text(exported.table, exported.fronts))
    print(f"\nwrote {out}: {len(exported.table)} trials of sweep {parent}")
    return 0


def _sweep_record(tracking_uri: str, parent: str, out: Path) -> dict[str, Any]:
    """The sweep's ``sweep.json`` if one is found for this parent run, else what its MLflow parent run holds.

    Looked for in ``out`` (rebuilding into the sweep's own folder) and beside a ``sqlite:///`` store (the
    sweep's default layout); one of another sweep, or unreadable, is passed over.
    """
    candidates = [out / "sweep.json"]
    if tracking_uri.startswith("sqlite:///"):
        candidates.append(Path(tracking_uri.removeprefix("sqlite:///")).parent / "sweep.json")
    for path in dict.fromkeys(candidates):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("parent_run_id") == parent:
            return record
    return mlflow_log.parent_record(tracking_uri, parent)


if __name__ == "__main__":
    sys.exit(main())
