"""Real Ray clusters on loopback: ``ray job submit`` of the smoke sweep, and a two-node cluster with GPUs.

These start their own Ray nodes with ``ray start`` (each cluster in a temp dir of its own) and stop exactly those
nodes' processes at the end, found by that temp dir: never ``ray stop``, which stops every Ray process of the
user (a sweep running beside the tests included). The Makefile runs them in a pytest session of their own
(``-m cluster``).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

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


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        # Loopback only, and a throwaway cluster without token authentication (Ray 2.59+ enables it).
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_AUTH_MODE="disabled",
        HF_HUB_OFFLINE="1",
        RAY_USAGE_STATS_ENABLED="0",
    )
    env.pop("RAY_ADDRESS", None)
    env.update(extra)
    return env


def _cluster_env(ip: str) -> dict[str, str]:
    """Ray swaps 127.0.0.1 for the machine's interface address unless multi-node clusters are off, and refuses
    a second node when they are off. Other loopback addresses (127.0.0.2, 127.0.0.3) are kept as given, so
    a two-node cluster stays on loopback with multi-node on."""
    return {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0" if ip == "127.0.0.1" else "1"}


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


_WORKER_PORT_BLOCKS = itertools.count()


def _node_ports() -> list[str]:
    (node, obj, client, agent, agent_grpc, metrics, runtime_env) = _free_ports(7)
    # Worker ports come from a band below Linux's ephemeral range (32768+), where the ports above are
    # drawn, so the two can never collide; each node of a session gets its own block.
    base = 11000 + 400 * next(_WORKER_PORT_BLOCKS)
    return [
        f"--node-manager-port={node}",
        f"--object-manager-port={obj}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--min-worker-port={base}",
        f"--max-worker-port={base + 200}",
    ]


def _run(cmd: list[str], *, timeout: float, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=_env(**env), capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cluster(tmp_path_factory) -> Iterator[dict]:
    """Start Ray heads/workers with ``ray start``; their processes stopped at the end, whatever happened."""
    temp = tmp_path_factory.mktemp("ray")
    started: dict = {"temp": temp}

    def head(num_cpus: int = 2, num_gpus: int = 0, dashboard: bool = False, ip: str = "127.0.0.1") -> dict:
        port, dash = _free_ports(2)
        started["env"] = _cluster_env(ip)
        cmd = [
            str(BIN / "ray"),
            "start",
            "--head",
            f"--node-ip-address={ip}",
            f"--port={port}",
            f"--num-cpus={num_cpus}",
            f"--num-gpus={num_gpus}",
            f"--temp-dir={temp}",
            "--disable-usage-stats",
            *_node_ports(),
        ]
        if dashboard:
            cmd += ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}"]
        else:
            cmd += ["--include-dashboard=false"]
        done = _run(cmd, timeout=120, **started["env"])
        assert done.returncode == 0, done.stdout + done.stderr
        started.update(address=f"{ip}:{port}", dashboard=f"http://{ip}:{dash}")
        return started

    def worker(num_cpus: int = 2, num_gpus: int = 0, ip: str = "127.0.0.3") -> None:
        cmd = [
            str(BIN / "ray"),
            "start",
            f"--address={started['address']}",
            f"--node-ip-address={ip}",
            f"--num-cpus={num_cpus}",
            f"--num-gpus={num_gpus}",
            "--disable-usage-stats",
            *_node_ports(),
        ]
        done = _run(cmd, timeout=120, **started["env"])
        assert done.returncode == 0, done.stdout + done.stderr

    started["head"], started["worker"] = head, worker
    try:
        yield started
    finally:
        stop_cluster(temp)
        shutil.rmtree(temp, ignore_errors=True)


def stop_cluster(temp: Path, *, grace_s: float = 10.0) -> None:
    """Stop every process of the Ray cluster whose temp dir is ``temp`` (each names it on its command line: the
    head's, and the workers' that took it from the head), and nothing else: SIGTERM, then SIGKILL."""

    def pids() -> list[int]:
        found = subprocess.run(["pgrep", "-f", str(temp)], capture_output=True, text=True).stdout.split()
        return [int(p) for p in found if int(p) != os.getpid()]

    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for pid in pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait
        while pids() and time.time() < deadline:
            time.sleep(0.2)


def _outputs_ok(out: Path, trials: int) -> dict:
    import pyarrow.parquet as pq

    for name in ("trials.parquet", "pareto.pdf", "pareto.svg", "pareto.png", "front.tex", "sweep.json"):
        assert (out / name).stat().st_size > 0, name
    table = pq.read_table(out / "trials.parquet").to_pandas()
    assert len(table) == trials
    return json.loads((out / "sweep.json").read_text())


def test_smoke_sweep_through_ray_job_submit(cluster, tmp_path):
    if shutil.which("ray", path=str(BIN)) is None:
        pytest.skip("the ray CLI is not installed in this environment")
    cluster["head"](num_cpus=2, dashboard=True)
    out = tmp_path / "job-out"
    done = _run(
        [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            cluster["dashboard"],
            "--working-dir",
            str(ROOT),
            "--",
            "python",
            "sweep/run.py",
            "--preset",
            "smoke",
            "--out",
            str(out),
            *SMOKE_FAST,
        ],
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout
    summary = _outputs_ok(out, trials=4)
    # The driver joined the submitted-to cluster instead of starting its own.
    assert summary["cluster_resources"]["CPU"] == 2


def test_two_node_cluster_spreads_fractional_gpu_trials(cluster, tmp_path):
    import mlflow

    cluster["head"](num_cpus=2, num_gpus=1, ip="127.0.0.2")
    cluster["worker"](num_cpus=2, num_gpus=1, ip="127.0.0.3")
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
        RAY_ADDRESS=cluster["address"],
        **cluster["env"],
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = _outputs_ok(out, trials=8)
    assert summary["cluster_resources"]["GPU"] == 2

    mlflow.set_tracking_uri(summary["tracking_uri"])
    runs = mlflow.search_runs(experiment_names=["smoke"])
    trials = runs[runs["tags.mlflow.parentRunId"] == summary["parent_run_id"]]
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
