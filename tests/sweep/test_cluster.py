"""Real Ray clusters on loopback against a real tracking server: ``ray job submit`` of the smoke sweep, and a
two-node cluster with GPUs, both logging to MLflow on PostgreSQL with basic authentication (``clusters/tracking.py``).

The clusters are ``ray start`` nodes on 127.0.0.x (``clusters/loopback.py``), each in a temp dir of its own and
stopped by it: never ``ray stop``, which stops every Ray process of the user (a sweep running beside the tests
included). The tracking server's URI and the sweep user's credentials reach the sweep only through the environment,
as on a real cluster: the nodes' (what the trials and a submitted job's driver inherit) and the driver's; nothing
secret is on a command line. The Makefile runs these in a pytest session of their own (``-m cluster``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from clusters import tracking
from clusters.loopback import LoopbackCluster, node_env

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SMOKE_FAST = [
    "--set",
    "tuners=[pez, soft]",
    "--set",
    "num_samples=2",
    "--set",
    "tuner_config.pez.steps=2",
    "--set",
    "tuner_config.soft.steps=2",
    # Placement is what these tests check: no baselines, one replicate.
    "--set",
    "baselines=[]",
    "--set",
    "replicates=1",
]


@pytest.fixture(scope="module")
def server(tracking_folder) -> dict[str, str]:
    """The sweep user's client environment: the server's URI and credentials."""
    return tracking.client_env(tracking_folder)


@pytest.fixture
def cluster(tmp_path_factory, server) -> Iterator[LoopbackCluster]:
    """Ray nodes with the sweep user's MLflow credentials in their environment (not its URI: the sweep's driver
    passes that to its trials)."""
    credentials = {k: v for k, v in server.items() if k != "MLFLOW_TRACKING_URI"}
    with LoopbackCluster(tmp_path_factory.mktemp("ray"), env=credentials) as rig:
        yield rig


def _run(cmd: list[str], *, timeout: float, ip: str = "127.0.0.2", **env: str) -> subprocess.CompletedProcess:
    environment = node_env(ip, **env)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        if name not in env:
            environment.pop(name, None)
    return subprocess.run(cmd, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=timeout)


def _outputs_ok(out: Path, trials: int) -> dict:
    import pyarrow.parquet as pq

    for name in ("trials.parquet", "pareto.pdf", "pareto.svg", "pareto.png", "front.tex", "sweep.json"):
        assert (out / name).stat().st_size > 0, name
    table = pq.read_table(out / "trials.parquet").to_pandas()
    assert len(table) == trials
    return json.loads((out / "sweep.json").read_text())


def _trial_runs(server: dict[str, str], summary: dict, monkeypatch: pytest.MonkeyPatch):
    import mlflow

    for name, value in server.items():
        monkeypatch.setenv(name, value)
    mlflow.set_tracking_uri(summary["tracking_uri"])
    runs = mlflow.search_runs(experiment_ids=[summary["experiment_id"]])
    return runs[runs["tags.mlflow.parentRunId"] == summary["parent_run_id"]]


def test_smoke_sweep_through_ray_job_submit(cluster, server, tmp_path, monkeypatch):
    if shutil.which("ray", path=str(BIN)) is None:
        pytest.skip("the ray CLI is not installed in this environment")
    cluster.head(num_cpus=2, dashboard=True)
    out = tmp_path / "job-out"
    # The submitting side holds no MLflow credential: the job's driver runs on the head, in its node's environment.
    done = _run(
        [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            str(cluster.dashboard),
            "--working-dir",
            str(ROOT),
            "--",
            "python",
            "sweep/run.py",
            "--preset",
            "smoke",
            "--out",
            str(out),
            "--set",
            f"tracking_uri={server['MLFLOW_TRACKING_URI']}",
            *SMOKE_FAST,
        ],
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout
    summary = _outputs_ok(out, trials=4)
    # The driver joined the submitted-to cluster instead of starting its own, and logged to the server.
    assert summary["cluster_resources"]["CPU"] == 2
    assert summary["tracking_uri"] == server["MLFLOW_TRACKING_URI"]
    trials = _trial_runs(server, summary, monkeypatch)
    assert len(trials) == 4 and (trials["status"] == "FINISHED").all()


def test_two_node_cluster_spreads_fractional_gpu_trials(cluster, server, tracking_folder, tmp_path, monkeypatch):
    cluster.head("127.0.0.2", num_cpus=2, num_gpus=1)
    cluster.worker("127.0.0.3", num_cpus=2, num_gpus=1)
    out = tmp_path / "two-node"
    done = _run(
        [
            sys.executable,
            "sweep/run.py",
            "--preset",
            "smoke",
            "--out",
            str(out),
            "--set",
            "num_samples=4",
            "--set",
            "gpus_per_trial=0.5",
            "--set",
            "cpus_per_trial=0.5",
            "--set",
            "max_concurrent=4",
            "--set",
            "tuner_config.pez.steps=2",
            "--set",
            "tuners=[pez, soft]",
            "--set",
            "tuner_config.soft.steps=2",
            "--set",
            "baselines=[]",
            "--set",
            "replicates=1",
        ],
        timeout=600,
        RAY_ADDRESS=str(cluster.address),
        **server,  # the driver's URI and credentials: from the environment
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = _outputs_ok(out, trials=8)
    assert summary["cluster_resources"]["GPU"] == 2
    assert summary["tracking_uri"] == server["MLFLOW_TRACKING_URI"]

    trials = _trial_runs(server, summary, monkeypatch)
    assert len(trials) == 8
    assert trials["tags.ray.node_id"].nunique() == 2, "trials ran on one node only"
    assert set(trials["tags.ray.node_ip"]) == {"127.0.0.2", "127.0.0.3"}
    assert (trials["tags.gpu_ids"] != "").all()
    # No GPU ever held more trials at once than 1 / gpus_per_trial = 2.
    events = []
    for _, row in trials.iterrows():
        gpu = (row["tags.ray.node_id"], row["tags.gpu_ids"])
        events += [(row["start_time"], 1, gpu), (row["end_time"], -1, gpu)]
    load: dict = {}
    peak: dict = {}
    for _, delta, gpu in sorted(events, key=lambda e: (e[0], e[1])):
        load[gpu] = load.get(gpu, 0) + delta
        peak[gpu] = max(peak.get(gpu, 0), load[gpu])
    assert max(peak.values()) <= 2, peak
    # Checkpoints went through the server's artifact proxy and were dropped when each trial finished.
    stored = [p.relative_to(tracking_folder) for p in (tracking_folder / "artifacts").rglob("*") if p.is_file()]
    assert any(p.name == "prompt.txt" for p in stored), stored
    left = [str(p) for p in stored if "checkpoint" in p.parts]
    assert not left, left
