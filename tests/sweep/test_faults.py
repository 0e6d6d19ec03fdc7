"""Fault injection: a smoke sweep whose driver is killed again and again, whose worker dies mid-trial, which is
sent SIGTERM, or whose trials diverge, still ends with every configuration measured exactly once.

Each case runs ``sweep/run.py`` in its own process group (the driver and the embedded Ray it starts), so a
"lost machine" is a SIGKILL of the whole group. Marked ``faults``: run with ``pytest -m faults``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[2]
# One learned tuner keeps each attempt short; the baselines ride along as in every sweep.
BASE = ["--preset", "smoke", "--set", "tuners=[pez]", "--set", "num_samples=4", "--set", "max_retries=2"]


def _command(out: Path, task_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "sweep" / "run.py"),
        *BASE,
        "--set",
        f"problem.task={task_dir}",
        "--set",
        "problem.k_shot=null",
        "--out",
        str(out),
        *extra,
    ]


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PYTHONPATH=str(ROOT))
    env.pop("RAY_ADDRESS", None)
    return env


def _start(command: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        command, cwd=ROOT, env=_env(), stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True
    )


def _kill_group(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
    process.wait(timeout=120)


def _finished_children(out: Path) -> int:
    import sqlite3

    db = out / "mlflow.db"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            rows = conn.execute(
                "select count(*) from runs r join tags t on t.run_uuid = r.run_uuid "
                "where t.key = 'promptsweep.role' and t.value = 'trial' and r.status = 'FINISHED'"
            ).fetchone()
        return int(rows[0])
    except sqlite3.Error:
        return 0


def _check_complete(out: Path) -> dict:
    """One parent, one FINISHED child per trial, none RUNNING; Optuna and trials.parquet agree."""
    import mlflow
    import optuna
    import pyarrow.parquet as pq

    summary = json.loads((out / "sweep.json").read_text())
    assert summary["status"] == "FINISHED", summary
    expected = summary["trials_expected"]
    client = mlflow.MlflowClient(summary["tracking_uri"])
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("promptsweep.role") == "parent"]
    assert [p.info.run_id for p in parents] == [summary["parent_run_id"]]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == summary["parent_run_id"]]
    trial_ids = [r.data.tags["trial_id"] for r in children]
    assert len(trial_ids) == len(set(trial_ids)) == expected, "one child run per trial"
    assert {r.info.status for r in children} == {"FINISHED"}
    table = pq.read_table(out / "trials.parquet").to_pandas()
    assert len(table) == expected
    learned = table[table["tuner"] == "pez"]
    configurations = list(
        zip(learned["param/lambda_ppl"].round(12), learned["param/lambda_dist"].round(12), strict=True)
    )
    assert len(configurations) == len(set(configurations)) == 4, "every configuration measured exactly once"
    storage = f"sqlite:///{out / 'optuna.db'}"
    study = optuna.load_study(study_name=f"smoke-pez-{summary['parent_run_id'][:8]}", storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == len(learned), "the study counts every pez trial once"
    return summary


def test_driver_killed_five_times_then_resumed(tmp_path, task_dir):
    out, log = tmp_path / "out", tmp_path / "driver.log"
    rng = random.Random(0)
    command = _command(out, task_dir, "--set", "replicates=2", "--set", "tuner_config.pez.steps=40")
    kills = 0
    for _ in range(12):
        seen = log.stat().st_size if log.exists() else 0
        process = _start(command, log)
        before = _finished_children(out)
        # Killed a random moment after this attempt started a trial, not at a fixed time: on a fast machine a
        # whole attempt takes under 20 s, and a clock-based kill can come after the sweep has finished.
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None and "started " not in _tail(log, seen):
            time.sleep(0.2)
        time.sleep(rng.uniform(0.5, 4.0))
        if process.poll() is not None:
            break
        _kill_group(process)
        kills += 1
        if kills >= 5 and _finished_children(out) > before:
            break
    assert kills >= 5, log.read_text()[-3000:]
    final = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    summary = _check_complete(out)
    assert summary["resumed"] is True


def test_a_worker_killed_mid_trial_resumes_from_its_checkpoint(tmp_path, task_dir):
    out, log = tmp_path / "out", tmp_path / "driver.log"
    steps = ["--set", "tuner_config.pez.steps=300", "--set", "tuner_config.pez.eval_every=10"]
    command = _command(out, task_dir, "--set", "replicates=1", "--set", "checkpoint_every=20", *steps)
    process = _start(command, log)
    deadline = time.time() + 300
    killed = None
    while time.time() < deadline and process.poll() is None and killed is None:
        time.sleep(0.5)
        checkpoints = list((out / "ray").glob("smoke/*/checkpoint_*"))
        if checkpoints:
            trial_dir = checkpoints[0].parent
            killed = _kill_trial_worker(trial_dir.name)
    assert killed, "no trial worker found to kill: " + log.read_text()[-3000:]
    assert process.wait(timeout=900) == 0, log.read_text()[-3000:]
    _check_complete(out)
    import mlflow

    summary = json.loads((out / "sweep.json").read_text())
    assert summary["trials_retried"] >= 1
    client = mlflow.MlflowClient(summary["tracking_uri"])
    retried = [
        r
        for r in client.search_runs([summary["experiment_id"]], max_results=1000)
        if int(r.data.tags.get("attempts", "1")) > 1
    ]
    assert retried
    history = client.get_metric_history(retried[0].info.run_id, "rep0/dev/acc")
    steps_logged = [m.step for m in history]
    # Resumed from a checkpoint at step >= 20: the first steps were not run (nor logged) again.
    assert steps_logged.count(10) == 1 and steps_logged.count(20) == 1, steps_logged


def _tail(log: Path, offset: int) -> str:
    """What ``log`` got after its first ``offset`` bytes."""
    with log.open("rb") as handle:
        handle.seek(offset)
        return handle.read().decode(errors="replace")


def _kill_trial_worker(trial_dir_name: str) -> bool:
    """SIGKILL the Ray worker process that runs the trial of ``trial_dir_name``.

    Tune runs each function trial in a worker whose working directory is ``.../working_dirs/<trial dir
    name>``; any other worker may be running a different trial (a baseline, which has no checkpoint).
    """
    found = subprocess.run(["pgrep", "-f", "ray::"], capture_output=True, text=True).stdout.split()
    for pid in found:
        try:
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:
            continue
        if cwd.name == trial_dir_name:
            os.kill(int(pid), signal.SIGKILL)
            return True
    return False


def test_sigterm_stops_cleanly_then_the_same_command_resumes(tmp_path, task_dir):
    out, log = tmp_path / "out", tmp_path / "driver.log"
    command = _command(out, task_dir, "--set", "replicates=2", "--set", "tuner_config.pez.steps=40")
    process = _start(command, log)
    deadline = time.time() + 300
    while time.time() < deadline and _finished_children(out) < 2 and process.poll() is None:
        time.sleep(0.5)
    os.kill(process.pid, signal.SIGTERM)
    assert process.wait(timeout=180) == 130, log.read_text()[-3000:]
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["status"] == "KILLED" and summary["interrupted_by"] == "SIGTERM"
    assert (out / "trials.parquet").exists() and (out / "pareto.png").exists()
    import mlflow

    client = mlflow.MlflowClient(summary["tracking_uri"])
    statuses = {r.info.status for r in client.search_runs([summary["experiment_id"]], max_results=1000)}
    assert "RUNNING" not in statuses
    _kill_group(process)  # whatever Ray left behind
    final = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    _check_complete(out)


def test_a_trial_that_diverges_stops_with_its_reason_and_the_sweep_goes_on(tmp_path, task_dir):
    out = tmp_path / "out"
    command = _command(out, task_dir, "--set", "replicates=1", "--set", "tuner_config.pez.lr=1.0e+30")
    done = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["status"] == "FAILED" and summary["trials_failed"] == 4
    assert "became inf at step 1" in summary["first_error"]
    assert summary["trials_finished"] == summary["trials_expected"] - 4  # the baselines finished
    assert "first failure: " in done.stdout and (out / "pareto.png").exists()
