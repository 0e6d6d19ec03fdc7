"""The sweep engine: Ray Tune trials of the tuners, Optuna multi-objective search, MLflow, Pareto exports.

Where things live:

- ``run.py``: the entry point (``main``, ``run_sweep``), read top to bottom; ``driver.py`` its plumbing (the
  record, lock, signals, Ray, the Tune run, the honest end), ``summary.py`` the console summary,
  ``supervise.py`` the parent process that records the end when Ray takes the driver down;
- ``config.py`` / ``presets.py``: the ``SweepConfig`` fields and the smoke, demo and paper sweeps;
  ``preflight.py``: what the driver checks before any cluster starts;
- ``space.py``: the search space over the knobs, a configuration's key, samplers sized to their budget;
  ``search.py``: the Tune searcher over one Optuna study per tuner; ``scheduler.py``: MO-ASHA early
  stopping (its ranking of a rung in ``results/pareto.py``); ``ledger.py``: what a resumed sweep already
  holds, from MLflow and the studies;
- ``trainable.py``: one trial in a Ray worker; ``devices.py``: which device it runs on;
  ``mlflow_log.py``: every read and write of MLflow; ``failpoints.py``: where fault tests kill a sweep;
- ``results/``: fronts, comparisons with baselines, the figure, the tables and the report page
  (``results/__init__.py`` has its own map); ``export.py``: ``python -m sweep.export``.
"""

import os

# MLflow's usage telemetry stays off in every process of a sweep (the driver, Ray's workers: they import this
# package before MLflow), unless a user turns it on: sweeps run where there may be no route out, and its thread
# unsets an environment variable while other threads' HTTP requests read os.environ, which failed trials'
# MLflow calls with KeyError('_MLFLOW_TELEMETRY_SESSION_ID') on the scale rig.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
