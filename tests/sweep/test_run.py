"""The smoke sweep end to end: Ray Tune × Optuna × MLflow, the output contract, and export from MLflow."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from objectives.problem import ConfigError
from sweep.config import load_sweep_config

TUNERS = ("pez", "soft", "rlprompt")
CONTRACT = ("trials.parquet", "pareto.pdf", "pareto.svg", "pareto.png", "front.tex", "sweep.json")


def _brute_force_front(values: np.ndarray) -> np.ndarray:
    """Non-dominated rows (maximisation), written independently of sweep.pareto."""
    keep = []
    for i, a in enumerate(values):
        dominated = any(np.all(b >= a) and np.any(b > a) for j, b in enumerate(values) if j != i)
        keep.append(not dominated)
    return np.array(keep, dtype=bool)


@pytest.fixture(scope="module")
def smoke_sweep(local_ray, tmp_path_factory, task_dir):
    from sweep.run import run_sweep

    out = tmp_path_factory.mktemp("smoke")
    config = load_sweep_config(
        "smoke",
        config_file=None,
        overrides={
            "num_samples": 3,
            "tuner_config.pez.task": str(task_dir),
            "tuner_config.pez.k_shot": None,
            "tuner_config.soft.task": str(task_dir),
            "tuner_config.soft.k_shot": None,
        },
    )
    start = time.time()
    summary = run_sweep(config, out)
    return out, summary, config, time.time() - start


def test_writes_every_file_of_the_contract(smoke_sweep):
    out, summary, config, _ = smoke_sweep
    for name in CONTRACT:
        assert (out / name).stat().st_size > 0, name
    assert (out / "pareto.pdf").read_bytes().startswith(b"%PDF")
    saved = json.loads((out / "sweep.json").read_text())
    assert saved["experiment"] == "smoke" and saved["tracking_uri"].startswith("sqlite:///")
    assert saved["config"]["tuners"] == list(TUNERS) and saved["status"] == "FINISHED"
    assert saved["trials_finished"] == 9


def test_trials_table_columns_and_front(smoke_sweep):
    out, _, config, _ = smoke_sweep
    table = pq.read_table(out / "trials.parquet").to_pandas()
    assert len(table) == 9 and sorted(table["tuner"].unique()) == sorted(TUNERS)
    for column in (
        "param/lambda_ppl",
        "param/lambda_dist",
        "task/acc_dev",
        "interp/scrutability",
        "interp/log_ppl",
        "prompt_text",
        "prompt_ids",
        "is_pareto",
        "is_pareto_all",
        "mlflow_run_id",
    ):
        assert column in table.columns, column
    # The all-zero (unregularised) configuration is evaluated for each tuner; rlprompt has no lambda_dist.
    unregularised = (table["param/lambda_ppl"] == 0) & (table["param/lambda_dist"].fillna(0) == 0)
    assert unregularised.groupby(table["tuner"]).any().all()
    assert table.loc[table["tuner"] == "rlprompt", "param/lambda_dist"].isna().all()
    values = table[["task/acc_dev", "interp/scrutability"]].to_numpy()  # both maximised
    for tuner, rows in table.groupby("tuner"):
        expected = _brute_force_front(values[rows.index])
        assert list(rows["is_pareto"]) == list(expected), tuner
    assert list(table["is_pareto_all"]) == list(_brute_force_front(values))


def test_mlflow_holds_one_parent_and_one_child_per_trial(smoke_sweep):
    import mlflow

    out, summary, _, _ = smoke_sweep
    mlflow.set_tracking_uri(summary["tracking_uri"])
    runs = mlflow.search_runs(experiment_names=["smoke"])
    parents = runs[runs["tags.promptsweep.role"] == "parent"]
    children = runs[runs["tags.mlflow.parentRunId"] == summary["parent_run_id"]]
    assert len(parents) == 1 and len(children) == 9
    assert set(children["tags.tuner"]) == set(TUNERS)
    assert (children["status"] == "FINISHED").all()
    assert children["tags.ray.node_id"].notna().all()
    child = children.iloc[0]
    history = mlflow.MlflowClient(summary["tracking_uri"]).get_metric_history(child["run_id"], "dev/acc")
    assert len(history) >= 2  # per-step metrics, not only the final ones


def test_export_from_mlflow_gives_the_same_front(smoke_sweep, tmp_path):
    from sweep.export import main

    out, summary, _, _ = smoke_sweep
    assert main(["--tracking-uri", summary["tracking_uri"], "--experiment", "smoke", "--out", str(tmp_path)]) == 0
    original = pq.read_table(out / "trials.parquet").to_pandas()
    rebuilt = pq.read_table(tmp_path / "trials.parquet").to_pandas()
    pd.testing.assert_frame_equal(original, rebuilt)
    assert (tmp_path / "front.tex").read_text() == (out / "front.tex").read_text()


def test_too_many_gpus_fails_in_seconds_naming_both_numbers(local_ray, tmp_path):
    from sweep.run import ResourceError, run_sweep

    config = load_sweep_config("smoke", config_file=None, overrides={"gpus_per_trial": 2})
    start = time.time()
    with pytest.raises(ResourceError, match=r"gpus_per_trial=2 GPU\(s\), but the largest node .* has 0"):
        run_sweep(config, tmp_path)
    assert time.time() - start < 10


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_sample": 3}, "Did you mean 'num_samples'?"),
        ({"objectives": ["task/acc_dev", "interp/scrutabilty"]}, "Did you mean 'interp/scrutability'?"),
        ({"tuners": ["pez", "rlpromt"]}, "unknown tuner 'rlpromt'"),
        ({"search.pez.lambda_pl": [0.1, 1]}, "Did you mean 'lambda_ppl'?"),
        ({"search.pez.lambda_ppl": [0, 1]}, "0 < low < high"),
        ({"tuner_config.pez.stepz": 3}, "Did you mean 'steps'?"),
        ({"sampler": "cmaes"}, "sampler='cmaes' is not one of"),
        ({"objectives": ["task/acc_dev"]}, "at least 2 metrics"),
        ({"gpus_per_trial": 1.5}, "whole number"),
        ({"search.pzz.lambda_ppl": [0.1, 1]}, "unknown tuner 'pzz'. Did you mean 'pez'?"),
    ],
)
def test_bad_sweep_config_is_a_clear_error(overrides, message):
    with pytest.raises((ConfigError, KeyError), match=message.replace("(", r"\(").replace("?", r"\?")):
        load_sweep_config("smoke", config_file=None, overrides=overrides)


def test_a_subset_of_the_presets_tuners():
    config = load_sweep_config("smoke", config_file=None, overrides={"tuners": ["pez"]})
    assert config.tuners == ("pez",) and "soft" in config.search


def test_unknown_preset_and_yaml_config(tmp_path):
    with pytest.raises(ConfigError, match="Did you mean 'demo'"):
        load_sweep_config("dmo", config_file=None, overrides={})
    path = tmp_path / "sweep.yaml"
    path.write_text("num_samples: 5\ntuner_config:\n  pez:\n    steps: 7\n")
    config = load_sweep_config("smoke", config_file=str(path), overrides={"tuner_config.pez.lr": 0.5})
    assert config.num_samples == 5 and config.trial_values("pez")["steps"] == 7
    assert config.trial_values("pez")["lr"] == 0.5
