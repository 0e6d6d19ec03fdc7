"""Fixtures of the sweep tests: the smoke sweep, run once per session and shared by every test that reads it."""

from __future__ import annotations

import time

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
