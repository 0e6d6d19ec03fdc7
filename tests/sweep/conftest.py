"""Fixtures of the sweep tests: the smoke sweep, run once per session and shared by every test that reads it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sweep.config import load_sweep_config


@pytest.fixture(scope="session")
def smoke_sweep(local_ray, tmp_path_factory, task_dir):
    """``(out, summary, config, seconds)`` of the smoke preset on the tiny task, 3 trials per learned tuner.

    Session scope: the sweep takes about a minute on 2 cores, and its tests (test_run.py, test_report.py)
    only read what it wrote.
    """
    from sweep.run import run_sweep

    out = tmp_path_factory.mktemp("smoke")
    config = load_sweep_config(
        "smoke",
        config_file=None,
        overrides={"num_samples": 3, "problem.task": str(task_dir), "problem.k_shot": None},
    )
    start = time.time()
    summary = run_sweep(config, out)
    return out, summary, config, time.time() - start


@pytest.fixture(scope="module")
def tracking_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tracking server (``clusters/tracking.py``: PostgreSQL, MLflow with basic authentication) for one test
    module, in the folder yielded, stopped at the module's end; skips where PostgreSQL is missing."""
    from clusters import tracking
    from clusters.loopback import free_ports

    reason = tracking.missing()
    if reason is not None:
        pytest.skip(f"no tracking server here: {reason}")
    port, db_port = free_ports(2)
    folder = tmp_path_factory.mktemp("tracking")
    with tracking.running(folder, port=port, db_port=db_port, workers=2):
        yield folder
