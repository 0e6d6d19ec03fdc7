"""The smoke sweep end to end: Ray Tune × Optuna × MLflow, the output contract, and export from MLflow.

The sweep itself is the session fixture ``smoke_sweep`` of tests/sweep/conftest.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from objectives.errors import ConfigError
from sweep.config import load_sweep_config

ROOT = Path(__file__).resolve().parents[2]
TUNERS = ("pez", "soft", "rlprompt")
BASELINES = ("no_prompt", "manual", "lm_sample")
# 3 trials per learned tuner (the unregularised one included), 1 no-prompt, 3 hand-written, 1 LM-sampled.
N_TRIALS = 3 * 3 + 1 + 3 + 1
CONTRACT = (
    "trials.parquet",
    "pareto.pdf",
    "pareto.svg",
    "pareto.png",
    "pareto_dev.png",
    "front.tex",
    "report.html",
    "sweep.json",
)


def _brute_force_front(values: np.ndarray) -> np.ndarray:
    """Non-dominated rows (maximisation), written independently of sweep.results.pareto."""
    keep = []
    for i, a in enumerate(values):
        dominated = any(np.all(b >= a) and np.any(b > a) for j, b in enumerate(values) if j != i)
        keep.append(not dominated)
    return np.array(keep, dtype=bool)


def test_writes_every_file_of_the_contract(smoke_sweep):
    out, summary, config, _ = smoke_sweep
    for name in CONTRACT:
        assert (out / name).stat().st_size > 0, name
    assert (out / "pareto.pdf").read_bytes().startswith(b"%PDF")
    saved = json.loads((out / "sweep.json").read_text())
    assert saved["experiment"] == "smoke" and saved["tracking_uri"].startswith("sqlite:///")
    assert saved["config"]["tuners"] == list(TUNERS) and saved["status"] == "FINISHED"
    assert saved["trials_finished"] == N_TRIALS
    assert saved["summary_metrics"]["hypervolume/all"] > 0


def test_trials_table_columns_and_front(smoke_sweep):
    out, _, config, _ = smoke_sweep
    table = pq.read_table(out / "trials.parquet").to_pandas()
    assert len(table) == N_TRIALS and sorted(table["tuner"].unique()) == sorted(TUNERS + BASELINES)
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
    assert unregularised.groupby(table["tuner"]).any()[list(TUNERS)].all()
    assert table.loc[table["tuner"].isin(BASELINES), "param/lambda_ppl"].isna().all()
    assert table.loc[table["tuner"] == "rlprompt", "param/lambda_dist"].isna().all()
    values = table[["task/acc_dev", "interp/scrutability"]].to_numpy()  # both maximised
    for tuner, rows in table.groupby("tuner"):
        if tuner in BASELINES:
            continue
        expected = _brute_force_front(values[rows.index])
        assert list(rows["is_pareto"]) == list(expected), tuner
    learned = ~table["tuner"].isin(BASELINES).to_numpy()
    expected_all = np.zeros(len(table), dtype=bool)
    expected_all[learned] = _brute_force_front(values[learned])  # baselines are references, never on it
    assert list(table["is_pareto_all"]) == list(expected_all)


def test_mlflow_holds_one_parent_and_one_child_per_trial(smoke_sweep):
    import mlflow

    out, summary, _, _ = smoke_sweep
    mlflow.set_tracking_uri(summary["tracking_uri"])
    runs = mlflow.search_runs(experiment_names=["smoke"])
    parents = runs[runs["tags.promptsweep.role"] == "parent"]
    children = runs[runs["tags.mlflow.parentRunId"] == summary["parent_run_id"]]
    assert len(parents) == 1 and len(children) == N_TRIALS
    assert set(children["tags.tuner"]) == set(TUNERS + BASELINES)
    assert set(children.loc[children["tags.tuner"] == "manual", "tags.prompt_text"]) == {
        " It was",
        " All in all, the movie was",
        " My rating: the film is",
    }
    parent = mlflow.MlflowClient(summary["tracking_uri"]).get_run(summary["parent_run_id"])
    assert parent.data.metrics["hypervolume/all"] == summary["summary_metrics"]["hypervolume/all"]
    assert (children["status"] == "FINISHED").all()
    assert children["tags.ray.node_id"].notna().all()
    client = mlflow.MlflowClient(summary["tracking_uri"])
    child = children[children["tags.tuner"] == "pez"].iloc[0]
    for replicate in (0, 1):  # per-step metrics of every replicate, not only the final ones
        assert len(client.get_metric_history(child["run_id"], f"rep{replicate}/dev/acc")) >= 2


def test_runs_carry_source_user_and_commit_tags(smoke_sweep):
    import subprocess

    import mlflow

    out, summary, _, _ = smoke_sweep
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    runs = mlflow.search_runs(experiment_names=["smoke"], output_format="list")
    assert runs and all(run.data.tags.get("mlflow.source.git.commit") == commit for run in runs)
    assert all(run.data.tags.get("mlflow.user") and run.data.tags.get("mlflow.source.name") for run in runs)
    assert json.loads((out / "sweep.json").read_text())["git_commit"] == commit


def test_every_trial_carries_its_replicates_and_the_baseline_comparisons(smoke_sweep):
    out, _, _, _ = smoke_sweep
    table = pq.read_table(out / "trials.parquet").to_pandas()
    for key in ("task/acc_test", "task/acc_dev", "interp/scrutability"):
        per_replicate = table[[f"{key}.r0", f"{key}.r1"]].to_numpy()
        assert np.allclose(table[key], per_replicate.mean(axis=1))
        assert np.allclose(table[f"{key}.std"], per_replicate.std(axis=1, ddof=1))
        assert (table[f"{key}.ci95"] >= 0).all()
    assert table["replicate_prompts"].map(len).eq(2).all()
    for baseline in BASELINES:
        assert table[f"beats/{baseline}"].dtype == bool
        assert table.loc[table["tuner"] == baseline, f"vs/{baseline}/diff"].isna().all()
    no_prompt = table[table["tuner"] == "no_prompt"].iloc[0]
    assert no_prompt["prompt_text"] == "" and no_prompt["task/acc_test"] == no_prompt["baseline/acc_test"]


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


def test_test_metrics_never_steer_the_search():
    with pytest.raises(ConfigError, match="measured on test data, which must never steer the search"):
        load_sweep_config("smoke", config_file=None, overrides={"objectives": ["task/acc_test", "interp/scrutability"]})


def test_tuners_and_baselines_must_share_one_problem(task_dir):
    with pytest.raises(ConfigError, match=r"soft has task=.* but pez has .*--set problem.task=VALUE"):
        load_sweep_config("smoke", config_file=None, overrides={"tuner_config.pez.task": str(task_dir)})
    config = load_sweep_config("smoke", config_file=None, overrides={"problem.task": str(task_dir)})
    assert {config.trial_values(t)["task"] for t in config.runs()} == {str(task_dir)}


def test_a_relative_task_folder_reaches_the_trials_absolute(task_dir, monkeypatch):
    # Trials run in Tune's trial directories, where the driver's relative path would not resolve.
    monkeypatch.chdir(task_dir.parent)
    config = load_sweep_config("smoke", config_file=None, overrides={"problem.task": task_dir.name})
    assert {config.trial_values(t)["task"] for t in config.runs()} == {str(task_dir.resolve())}
    missing = load_sweep_config("smoke", config_file=None, overrides={"problem.task": "no/such/folder"})
    assert missing.trial_values("pez")["task"] == "no/such/folder"  # left as typed, for the error to name


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


def test_help_lists_every_sweep_field_without_importing_torch():
    import dataclasses
    import subprocess
    import sys

    from sweep.config import SweepConfig

    code = "import sys, runpy; sys.argv = ['sweep/run.py', '--help']\n"
    code += "try:\n    runpy.run_path('sweep/run.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
    code += "print('TORCH_LOADED' if 'torch' in sys.modules else 'TORCH_NOT_LOADED')"
    root = Path(__file__).resolve().parents[2]
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root).stdout
    for f in dataclasses.fields(SweepConfig):
        assert f"  {f.name} " in shown, f.name
    assert "TORCH_NOT_LOADED" in shown  # the reason --help answers in well under a second


def test_the_baseline_names_are_the_registered_baselines():
    from tuners import get_tuner

    assert all(not getattr(get_tuner(name), "trains", True) for name in BASELINES)


def test_smoke_is_the_demos_twin_with_rlprompt_and_the_fluency_knobs():
    from sweep.presets import SWEEP_PRESETS

    demo, smoke = SWEEP_PRESETS["demo"], SWEEP_PRESETS["smoke"]
    assert "rlprompt" in demo["tuners"] and set(demo["tuners"]) <= set(smoke["tuners"])
    for tuner in demo["tuners"]:
        assert {"lambda_ppl", "fluent_top_k"} <= set(demo["search"][tuner]) <= set(smoke["search"][tuner])
    config = load_sweep_config("demo", config_file=None, overrides={})
    assert config.replicates >= 3


def test_mlflows_telemetry_is_off_in_a_sweeps_processes():
    """Importing the sweep (the driver, every Ray worker) turns MLflow's usage telemetry off unless the user set
    it: nothing is sent out, and its thread no longer races other threads' requests over os.environ."""
    code = (
        "import sweep, mlflow\n"
        "from mlflow.telemetry.client import get_telemetry_client\n"
        "assert get_telemetry_client() is None, get_telemetry_client()\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
