"""Fault injection: a smoke sweep whose driver is killed at random moments and at the moments that matter, whose
worker dies mid-trial, whose Ray dies under it, which is sent SIGTERM, whose disk fills up, or whose trials fail
by themselves, still ends with every configuration measured exactly once.

Each case runs ``sweep/run.py`` in its own process group (the driver and the embedded Ray it starts), so a
"lost machine" is a SIGKILL of the whole group; a test stops only that group, never other Ray processes.
``PROMPTSWEEP_FAILPOINT`` (``sweep/failpoints.py``) kills the group at a named moment. After each case
``_check_complete`` counts configurations finished, lost and duplicated and runs left RUNNING; the counts are
printed (``pytest -s`` shows them). Marked ``faults``: run with ``pytest -m faults``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[2]
# One learned tuner keeps each attempt short; the baselines ride along as in every sweep (4 pez configurations
# + no prompt + 3 hand-written + 1 LM-sampled = 9 trials).
BASE = ["--preset", "smoke", "--set", "tuners=[pez]", "--set", "num_samples=4", "--set", "max_retries=2"]
EXPECTED = 9


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


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PYTHONPATH=str(ROOT))
    env.pop("RAY_ADDRESS", None)
    env.pop("PROMPTSWEEP_FAILPOINT", None)
    env.update(extra)
    return env


def _start(command: list[str], log: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env=_env(**env),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _run(command: list[str], log: Path, *, timeout: float = 600, **env: str) -> int:
    """Run one driver to its end (or its failpoint); whatever it left of its group is killed after."""
    process = _start(command, log, **env)
    try:
        return process.wait(timeout=timeout)
    finally:
        _kill_group(process)


def _kill_group(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal everything the driver started: its session (it is the leader), Ray's workers included, which
    run in process groups of their own."""
    for pid in [process.pid, *_session_pids(process.pid, "")]:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    process.wait(timeout=120)


def _session_pids(sid: int, pattern: str) -> list[int]:
    """The processes of session ``sid`` whose command line matches ``pattern`` ("" for all)."""
    command = ["pgrep", "-s", str(sid)] + (["-f", pattern] if pattern else [])
    found = subprocess.run(command, capture_output=True, text=True).stdout
    return [int(p) for p in found.split() if int(p) != sid]


def _query(out: Path, sql: str) -> list[tuple]:
    db = out / "mlflow.db"
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return conn.execute(sql).fetchall()
    except sqlite3.Error:
        return []


def _finished_children(out: Path) -> int:
    rows = _query(
        out,
        "select count(*) from runs r join tags t on t.run_uuid = r.run_uuid "
        "where t.key = 'promptsweep.role' and t.value = 'trial' and r.status = 'FINISHED'",
    )
    return int(rows[0][0]) if rows else 0


def _finished_runs(out: Path) -> dict[str, tuple[str, int]]:
    """run id -> (attempts tag, end time) of every FINISHED trial run."""
    rows = _query(
        out,
        "select r.run_uuid, a.value, r.end_time from runs r join tags t on t.run_uuid = r.run_uuid "
        "join tags a on a.run_uuid = r.run_uuid where t.key = 'promptsweep.role' and t.value = 'trial' "
        "and a.key = 'attempts' and r.status = 'FINISHED'",
    )
    return {run: (attempts, end) for run, attempts, end in rows}


def _tail(log: Path, offset: int = 0) -> str:
    with log.open("rb") as handle:
        handle.seek(offset)
        return handle.read().decode(errors="replace")


def _check_complete(out: Path, *, expected: int = EXPECTED) -> dict[str, int]:
    """One parent, one FINISHED child per configuration, none RUNNING; the study and trials.parquet agree.

    Returns the counts the issue asks for: configurations finished, lost, duplicated, runs left RUNNING.
    """
    import mlflow
    import optuna
    import pyarrow.parquet as pq

    summary = json.loads((out / "sweep.json").read_text())
    client = mlflow.MlflowClient(summary["tracking_uri"])
    runs = client.search_runs([summary["experiment_id"]], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("promptsweep.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == summary["parent_run_id"]]
    keys = [r.data.tags["promptsweep.trial_key"] for r in children]
    finished = {r.data.tags["promptsweep.trial_key"] for r in children if r.info.status == "FINISHED"}
    counts = {
        "finished": len(finished),
        "lost": expected - len(finished),
        "duplicated": len(keys) - len(set(keys)),
        "running": sum(r.info.status == "RUNNING" for r in runs),
    }
    assert summary["status"] == "FINISHED", summary
    assert (
        summary["trials_finished"] + summary["trials_failed"] + summary["trials_unfinished"]
        == summary["trials_planned"]
    )
    assert [p.info.run_id for p in parents] == [summary["parent_run_id"]]
    assert parents[0].info.status == "FINISHED"
    assert counts == {"finished": expected, "lost": 0, "duplicated": 0, "running": 0}, counts
    assert {r.info.status for r in children} == {"FINISHED"}
    table = pq.read_table(out / "trials.parquet").to_pandas()
    assert len(table) == expected and table["mlflow_run_id"].is_unique
    learned = table[(table["tuner"] == "pez") & table["stopped_at_step"].isna()]
    stopped = table[table["stopped_at_step"].notna()]
    counts["stopped"] = len(stopped)
    storage = f"sqlite:///{out / 'optuna.db'}"
    study = optuna.load_study(study_name=f"smoke-pez-{summary['parent_run_id'][:8]}", storage=storage)
    states = [t.state for t in study.trials]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert len(complete) == len(learned), "the study counts every full-budget pez configuration once"
    assert len(pruned) == len(stopped), "a trial stopped at a rung is PRUNED in its study, never COMPLETE"
    assert not stopped["is_pareto"].any()
    running = [(t.number, t.params, t.user_attrs) for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    assert not running, f"study trials left RUNNING: {running}; all: {states}"
    print(f"\n{out.parent.name}: {counts}")
    return counts


# ----- the driver killed ------------------------------------------------------------------------------------


def test_driver_killed_five_times_at_random_moments_then_resumed(tmp_path, task_dir):
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
    assert kills >= 5, _tail(log)[-3000:]
    assert _run(command, log) == 0, _tail(log)[-3000:]
    _check_complete(out)
    assert json.loads((out / "sweep.json").read_text())["resumed"] is True


def test_driver_killed_at_each_moment_that_matters_then_resumed(tmp_path, task_dir):
    """Killed just after a checkpoint, just after a trial finished (before Tune knew), while Tune writes its
    state, while a resumed sweep starts, and between the exports and the record: each rerun goes on, no finished
    trial runs again, and the last rerun (with sweep.json damaged) ends with every configuration measured once."""
    out, log = tmp_path / "out", tmp_path / "driver.log"
    command = _command(out, task_dir, "--set", "replicates=2", "--set", "tuner_config.pez.steps=12")
    finished_before: dict[str, tuple[str, int]] = {}
    # Tune writes its state every 10 s or more (its own throttle): a rerun left with little work after two kills
    # ended (on a fast machine) before the third write. Unthrottled, Tune writes at every pass of its loop (one
    # at least every 0.1 s), so the 20th write comes about two seconds in, while trials run, on any machine.
    unthrottled = {"TUNE_GLOBAL_CHECKPOINT_S": "0"}
    for point in ("checkpoint_saved", "trial_finished", "tune_state@20", "resumed", "exports"):
        env = unthrottled if point.startswith("tune_state") else {}
        code = _run(command, log, PROMPTSWEEP_FAILPOINT=point, **env)
        assert code == -signal.SIGKILL, f"{point}: the failpoint did not fire (exit {code}): " + _tail(log)[-3000:]
        assert json.loads((out / "sweep.json").read_text())["status"] == "RUNNING"
        now = _finished_runs(out)
        # A trial that had finished is never reopened: its attempts and end time are as they were.
        assert {run: now[run] for run in finished_before} == finished_before, point
        finished_before = now
    assert finished_before, "no trial had finished before the last kill"
    # A record damaged anyway (written whole, but disks lose files): the sweep is found again in MLflow.
    (out / "sweep.json").write_text('{"config": {"tuners": ["pe')
    assert _run(command, log) == 0, _tail(log)[-3000:]
    _check_complete(out)
    final = _finished_runs(out)
    assert {run: final[run] for run in finished_before} == finished_before


def test_driver_killed_between_rung_decisions_then_resumed_promotes_nothing_twice(tmp_path, task_dir):
    """Under mo_asha: killed right after the scheduler decided a trial's fate at a rung (decision written, Tune
    not yet acting on it), twice; the reruns judge no (trial, rung) twice and stop each stopped trial once."""
    out, log = tmp_path / "out", tmp_path / "driver.log"
    command = _command(
        out,
        task_dir,
        *("--set", "replicates=1", "--set", "tuner_config.pez.steps=12", "--set", "num_samples=6"),
        *("--set", "scheduler=mo_asha", "--set", "grace_steps=2", "--set", "baselines=[no_prompt]"),
    )
    for point in ("rung_decided@2", "rung_decided@3"):
        assert _run(command, log, PROMPTSWEEP_FAILPOINT=point) == -signal.SIGKILL, _tail(log)[-3000:]
    assert _run(command, log) == 0, _tail(log)[-3000:]
    counts = _check_complete(out, expected=7)
    state = json.loads((out / "scheduler.json").read_text())
    records = [(r["key"], rung) for group in state["groups"].values() for rung, rows in group.items() for r in rows]
    assert len(records) == len(set(records)), "a (trial, rung) judged twice"
    assert counts["stopped"] >= 1, "nothing was stopped: the test did not exercise a stop"


# ----- a worker, Ray, signals, the disk ----------------------------------------------------------------------


def test_a_worker_killed_mid_trial_resumes_from_its_checkpoint(tmp_path, task_dir):
    out, log = tmp_path / "out", tmp_path / "driver.log"
    steps = ["--set", "tuner_config.pez.steps=300", "--set", "tuner_config.pez.eval_every=10"]
    command = _command(out, task_dir, "--set", "replicates=1", "--set", "checkpoint_every=20", *steps)
    process = _start(command, log)
    deadline = time.time() + 300
    killed = None
    while time.time() < deadline and process.poll() is None and killed is None:
        time.sleep(0.5)
        # A running trial that has saved a checkpoint (its MLflow run names the slot); its worker runs in a
        # directory named after its Tune trial id.
        rows = _query(
            out,
            "select i.value from runs r join tags c on c.run_uuid = r.run_uuid join tags i on i.run_uuid = r.run_uuid "
            "where c.key = 'promptsweep.checkpoint' and i.key = 'trial_id' and r.status = 'RUNNING'",
        )
        for (trial_id,) in rows:
            killed = killed or _kill_trial_worker(process.pid, trial_id)
    try:
        assert killed, "no trial worker found to kill: " + _tail(log)[-3000:]
        assert process.wait(timeout=900) == 0, _tail(log)[-3000:]
    finally:
        _kill_group(process)
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
    assert "Traceback" not in _tail(log), "a handled fault reached the console as a traceback"


def _kill_trial_worker(sid: int, trial_id: str) -> bool:
    """SIGKILL the Ray worker (of this test's driver's session only) that runs Tune trial ``trial_id``: Tune
    runs each function trial in a worker whose working directory is ``.../working_dirs/<trial dir name>``."""
    for pid in _session_pids(sid, "ray::"):
        try:
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:
            continue
        if trial_id in cwd.name:
            os.kill(pid, signal.SIGKILL)
            return True
    return False


def _wait_for_finished(out: Path, process: subprocess.Popen, n: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and _finished_children(out) < n and process.poll() is None:
        time.sleep(0.5)


def _check_interrupted(out: Path, **expect: str) -> dict:
    """Stopped honestly: sweep.json INTERRUPTED with a reason, the parent closed, no run left RUNNING."""
    import mlflow

    summary = json.loads((out / "sweep.json").read_text())
    assert summary["status"] == "INTERRUPTED" and summary["reason"], summary
    for key, value in expect.items():
        assert summary[key] == value, (key, summary[key])
    assert (
        summary["trials_finished"] + summary["trials_failed"] + summary["trials_unfinished"]
        == summary["trials_planned"]
    )
    client = mlflow.MlflowClient(summary["tracking_uri"])
    runs = client.search_runs([summary["experiment_id"]], max_results=1000)
    assert "RUNNING" not in {r.info.status for r in runs}
    parent = client.get_run(summary["parent_run_id"])
    assert parent.data.tags["promptsweep.status"] == "INTERRUPTED"
    return summary


def test_sigterm_stops_cleanly_then_the_same_command_resumes(tmp_path, task_dir):
    out, log = tmp_path / "out", tmp_path / "driver.log"
    command = _command(out, task_dir, "--set", "replicates=2", "--set", "tuner_config.pez.steps=40")
    process = _start(command, log)
    _wait_for_finished(out, process, 2)
    os.kill(process.pid, signal.SIGTERM)
    assert process.wait(timeout=180) == 130, _tail(log)[-3000:]
    _kill_group(process)  # whatever Ray left behind
    _check_interrupted(out, interrupted_by="SIGTERM")
    assert (out / "trials.parquet").exists() and (out / "pareto.png").exists()
    assert _run(command, log) == 0, _tail(log)[-3000:]
    _check_complete(out)


def test_sigterm_to_the_whole_process_group_stops_in_seconds_then_resumes(tmp_path, task_dir):
    """What ``timeout`` and a shell's job control send: Ray's processes get it too and stop at once."""
    out, log = tmp_path / "out", tmp_path / "driver.log"
    command = _command(out, task_dir, "--set", "replicates=2", "--set", "tuner_config.pez.steps=40")
    process = _start(command, log)
    _wait_for_finished(out, process, 2)
    os.killpg(process.pid, signal.SIGTERM)
    start = time.time()
    assert process.wait(timeout=180) == 130, _tail(log)[-3000:]
    took = time.time() - start
    _kill_group(process)
    _check_interrupted(out, interrupted_by="SIGTERM")
    assert took < 45, f"the driver took {took:.0f} s to stop"
    assert _run(command, log) == 0, _tail(log)[-3000:]
    _check_complete(out)


def test_ray_dying_under_the_driver_is_an_interruption_then_resumes(tmp_path, task_dir):
    out, log = tmp_path / "out", tmp_path / "driver.log"
    command = _command(out, task_dir, "--set", "replicates=2", "--set", "tuner_config.pez.steps=40")
    process = _start(command, log)
    _wait_for_finished(out, process, 2)
    raylets = _session_pids(process.pid, "raylet")
    assert raylets, "no raylet in the sweep's session"
    for pid in raylets:
        os.kill(pid, signal.SIGKILL)
    try:
        assert process.wait(timeout=300) == 130, _tail(log)[-3000:]
    finally:
        _kill_group(process)
    summary = _check_interrupted(out)
    assert "Ray" in summary["reason"], summary["reason"]
    assert _run(command, log) == 0, _tail(log)[-3000:]
    _check_complete(out)


@pytest.fixture
def small_disk(tmp_path):
    """A 96 MB tmpfs (root only: CI and these machines run as root), unmounted after the test."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_disk_filled_mid_sweep_interrupts_then_resumes_once_freed(tmp_path, task_dir, small_disk):
    out, log = small_disk / "out", tmp_path / "driver.log"
    command = _command(out, task_dir, "--set", "replicates=2", "--set", "tuner_config.pez.steps=40")
    process = _start(command, log)
    _wait_for_finished(out, process, 2)
    filler = small_disk / "filler"
    with filler.open("wb") as f:  # what another job writing to the same disk does
        chunk = b"\0" * 2**20
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError:
            pass
    try:
        assert process.wait(timeout=600) == 130, _tail(log)[-3000:]
    finally:
        _kill_group(process)
    summary = _check_interrupted(out)
    assert "disk" in summary["reason"] and "free space" in summary["reason"], summary["reason"]
    filler.unlink()
    assert _run(command, log) == 0, _tail(log)[-3000:]
    _check_complete(out)


# ----- trials that fail by themselves ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lr", "message"),
    [("1.0e+30", "became inf at step 1"), ("1.0e+300", "RuntimeError")],
    ids=["diverges", "overflows"],
)
def test_a_trial_that_fails_by_itself_is_recorded_not_retried(tmp_path, task_dir, lr, message):
    import optuna

    out = tmp_path / "out"
    command = _command(out, task_dir, "--set", "replicates=1", "--set", f"tuner_config.pez.lr={lr}")
    done = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["status"] == "FAILED" and summary["trials_failed"] == 4, summary
    assert message in summary["first_error"], summary["first_error"]
    assert summary["trials_finished"] == summary["trials_planned"] - 4  # the baselines finished
    assert summary["trials_retried"] == 0, "a trial's own fault was retried"
    assert "first failure: " in done.stdout and (out / "pareto.png").exists()
    name = f"smoke-pez-{summary['parent_run_id'][:8]}"
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{out}/optuna.db")
    assert [t.state.name for t in study.trials].count("FAIL") == 4, "every failed configuration reaches the study"
    assert "Traceback" not in done.stdout
