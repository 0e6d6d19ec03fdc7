"""Faults a cluster has, on the loopback rig (``clusters/loopback.py``) logging to the tracking server
(``clusters/tracking.py``: PostgreSQL, basic authentication), with the synthetic tuner's trials:

- a worker node lost mid-sweep (its raylet and every process under it SIGKILLed): its trials are retried on the
  other nodes from their checkpoints, none lost or duplicated;
- the tracking server stopped and started again mid-sweep: trials keep training, their MLflow writes wait and are
  retried (MLflow's client retries with backoff), nothing is lost, the sweep ends 0;
- the database stopped and started again mid-sweep: likewise (the server answers 500 meanwhile, which the client
  retries);
- the head's driver killed (SIGKILL of its process group): the rerun of the same command resumes and ends 0.

After each sweep the counts are printed (``pytest -s`` shows them): configurations planned, finished, lost
(planned but without a FINISHED run), duplicated (a configuration with more than one run), runs left RUNNING,
retried (a run with a second attempt) and how many retries resumed from a checkpoint.

``-m cluster`` runs the fast variant: every fault once, in order, in one small sweep (6 GPU slots on three workers
and a fourth to lose). The scale variants, one fault each on a rig of four 16-GPU workers (64 logical GPUs, more
trials), run with ``PROMPTSWEEP_SCALE=1 pytest -m cluster tests/sweep/test_scale.py -s`` (minutes each; the
concurrency is ``PROMPTSWEEP_SCALE_CONCURRENCY``, 16 by default: each trial is a Ray worker process of about
350 MB, which a 24 GiB machine shared with others holds only so many of).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from clusters import tracking
from clusters.loopback import LoopbackCluster, node_env

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SCALE = os.environ.get("PROMPTSWEEP_SCALE") == "1"
HEAD = "127.0.0.2"
VICTIM = "127.0.0.9"  # the node a test loses: joined for that sweep only


@dataclass(frozen=True)
class Size:
    workers: int
    gpus_per_worker: int
    trials: int
    concurrent: int
    steps: int
    step_s: float


FAST = Size(workers=3, gpus_per_worker=2, trials=24, concurrent=8, steps=20, step_s=0.5)
BIG = Size(
    workers=4,
    gpus_per_worker=16,
    trials=96,
    concurrent=int(os.environ.get("PROMPTSWEEP_SCALE_CONCURRENCY", "16")),
    steps=30,
    step_s=0.5,
)


def _credentials(folder: Path) -> dict[str, str]:
    return {k: v for k, v in tracking.client_env(folder).items() if k != "MLFLOW_TRACKING_URI"}


@pytest.fixture
def rig(tmp_path_factory, tracking_folder) -> Iterator[tuple[LoopbackCluster, Size]]:
    size = BIG if SCALE else FAST
    with LoopbackCluster(tmp_path_factory.mktemp("ray"), env=_credentials(tracking_folder)) as cluster:
        cluster.head(HEAD, num_cpus=2, num_gpus=0)  # the driver's node: no trial runs here
        for i in range(size.workers):
            cluster.worker(f"127.0.0.{3 + i}", num_cpus=size.gpus_per_worker, num_gpus=size.gpus_per_worker)
        yield cluster, size


def _command(out: Path, server: Path, size: Size) -> list[str]:
    uri = tracking.client_env(server)["MLFLOW_TRACKING_URI"]
    return [
        sys.executable,
        str(ROOT / "sweep" / "run.py"),
        "--preset",
        "smoke",
        "--out",
        str(out),
        "--set",
        "name=faults",
        "--set",
        f"tracking_uri={uri}",
        "--set",
        "tuners=[synthetic]",
        "--set",
        "baselines=[]",
        "--set",
        "replicates=1",
        "--set",
        f"num_samples={size.trials}",
        "--set",
        f"max_concurrent={size.concurrent}",
        "--set",
        "gpus_per_trial=1",
        "--set",
        "cpus_per_trial=1",
        "--set",
        "max_retries=3",
        "--set",
        "checkpoint_every=2",
        "--set",
        "search.synthetic.lambda_ppl=[0.01, 10]",
        "--set",
        f"tuner_config.synthetic={{steps: {size.steps}, step_s: {size.step_s}}}",
    ]


def _start(command: list[str], log: Path, cluster: LoopbackCluster, server: Path) -> subprocess.Popen:
    """The sweep's driver, as on the head of a cluster: its own session (a SIGKILL of its group is a lost driver)."""
    env = node_env(HEAD, RAY_ADDRESS=str(cluster.address), **_credentials(server))
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True
    )


def _client(server: Path) -> Any:
    import mlflow

    os.environ.update(tracking.client_env(server))
    return mlflow.tracking.MlflowClient(tracking.client_env(server)["MLFLOW_TRACKING_URI"])


def _runs(server: Path, out: Path) -> list:
    record = out / "sweep.json"
    if not record.is_file():
        return []
    summary = json.loads(record.read_text())
    try:
        return _client(server).search_runs(
            [summary["experiment_id"]],
            f"tags.`mlflow.parentRunId` = '{summary['parent_run_id']}'",
            max_results=5000,
        )
    except Exception:  # the server is away (the test stopped it): no runs to look at now
        return []


def _wait(what: str, ready: Callable[[], bool], driver: subprocess.Popen, log: Path, timeout: float = 420) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert driver.poll() is None, f"the sweep ended (exit {driver.returncode}) before {what}:\n{_tail(log)}"
        assert time.monotonic() < deadline, f"waited {timeout:g} s for {what}:\n{_tail(log)}"
        time.sleep(1)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:]


def _mid_sweep(server: Path, out: Path, node: str | None = None) -> Callable[[], bool]:
    """Some trials done, some running (on ``node``) with a checkpoint: the moment to strike."""

    def ready() -> bool:
        runs = _runs(server, out)
        finished = [r for r in runs if r.info.status == "FINISHED"]
        running = [
            r
            for r in runs
            if r.info.status == "RUNNING"
            and "promptsweep.checkpoint" in r.data.tags
            and (node is None or r.data.tags.get("ray.node_ip") == node)
        ]
        return bool(running) and (node is not None or bool(finished))

    return ready


def _counts(server: Path, out: Path) -> dict[str, int]:
    """Configurations planned, finished, lost and duplicated, runs left RUNNING, retried, resumed from a checkpoint."""
    summary = json.loads((out / "sweep.json").read_text())
    client = _client(server)
    runs = _runs(server, out)
    by_key: dict[str, list] = {}
    for run in runs:
        by_key.setdefault(run.data.tags["promptsweep.trial_key"], []).append(run)
    finished = {k for k, rs in by_key.items() if any(r.info.status == "FINISHED" for r in rs)}
    retried = [r for r in runs if int(r.data.tags.get("attempts", "1")) > 1]
    # A retry that resumed from its checkpoint logged the steps up to it once; one from scratch logged step 1 twice.
    from_checkpoint = sum(
        1 for r in retried if [m.step for m in client.get_metric_history(r.info.run_id, "rep0/dev/acc")].count(1) == 1
    )
    planned = int(summary.get("trials_planned", 0))
    return {
        "planned": planned,
        "finished": len(finished),
        "lost": planned - len(finished),
        "duplicated": sum(len(rs) - 1 for rs in by_key.values()),
        "running": sum(1 for r in runs if r.info.status == "RUNNING"),
        "retried": len(retried),
        "from_checkpoint": from_checkpoint,
    }


def _fault_sweep(rig: tuple[LoopbackCluster, Size], server: Path, tmp_path: Path, faults: list[str]) -> dict:
    """Run one sweep and strike it with ``faults`` in order (rerunning it after a lost driver); the counts."""
    cluster, size = rig
    if "node" in faults:
        cluster.worker(VICTIM, num_cpus=2, num_gpus=2)
    out, log = tmp_path / "out", tmp_path / "sweep.log"
    command = _command(out, server, size)
    driver = _start(command, log, cluster, server)
    codes, done = [], []
    try:
        for fault in faults:
            if fault == "server":
                _wait("trials mid-sweep", _mid_sweep(server, out), driver, log)
                tracking.stop(server, db=False)
                time.sleep(8)  # an outage: every trial's writes fail and are retried meanwhile
                tracking.start(server)
            elif fault == "database":
                _wait("trials mid-sweep", _mid_sweep(server, out), driver, log)
                state = tracking.read_state(server)
                assert state is not None
                tracking.stop_db(state)
                time.sleep(8)
                tracking.start_db(server, state)
            elif fault == "node":
                _wait(f"a checkpointed trial on {VICTIM}", _mid_sweep(server, out, VICTIM), driver, log)
                assert cluster.kill_node(VICTIM) > 0
            elif fault == "driver":
                _wait("trials mid-sweep", _mid_sweep(server, out), driver, log)
                os.killpg(driver.pid, signal.SIGKILL)
                codes.append(driver.wait(timeout=60))
                driver = _start(command, log, cluster, server)  # the same command: it resumes
            done.append(fault)
        codes.append(driver.wait(timeout=900))
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    counts = _counts(server, out)
    summary = json.loads((out / "sweep.json").read_text())
    print(f"\nfaults {faults}: exit codes {codes}, status {summary['status']}, counts {counts}")
    assert done == faults
    assert codes[-1] == 0, _tail(log)
    assert summary["status"] == "FINISHED", summary.get("reason")
    assert counts["lost"] == 0 and counts["duplicated"] == 0 and counts["running"] == 0, counts
    assert counts["finished"] == counts["planned"] == size.trials, counts
    return counts


@pytest.mark.skipif(SCALE, reason="PROMPTSWEEP_SCALE=1 runs the scale variants instead")
def test_every_cluster_fault_in_one_sweep(rig, tracking_folder, tmp_path):
    """The fast variant: server restarted, database restarted, a worker node lost, the driver killed and rerun."""
    counts = _fault_sweep(rig, tracking_folder, tmp_path, ["server", "database", "node", "driver"])
    # Retried: the lost node's trials and those the lost driver left; a trial struck before its first checkpoint
    # restarts from scratch, as it must, so only "at least the one waited for" is certain.
    assert counts["retried"] >= 1 and counts["from_checkpoint"] >= 1, counts


scale = pytest.mark.skipif(
    not SCALE, reason="the scale rig: PROMPTSWEEP_SCALE=1 pytest -m cluster -s tests/sweep/test_scale.py"
)


@scale
def test_a_worker_node_lost_mid_sweep(rig, tracking_folder, tmp_path):
    counts = _fault_sweep(rig, tracking_folder, tmp_path, ["node"])
    assert counts["retried"] >= 1 and counts["from_checkpoint"] >= 1, counts


@scale
def test_the_tracking_server_restarted_mid_sweep(rig, tracking_folder, tmp_path):
    _fault_sweep(rig, tracking_folder, tmp_path, ["server"])


@scale
def test_the_database_restarted_mid_sweep(rig, tracking_folder, tmp_path):
    _fault_sweep(rig, tracking_folder, tmp_path, ["database"])


@scale
def test_the_drivers_head_killed_then_rerun(rig, tracking_folder, tmp_path):
    counts = _fault_sweep(rig, tracking_folder, tmp_path, ["driver"])
    assert counts["retried"] >= 1 and counts["from_checkpoint"] >= 1, counts
