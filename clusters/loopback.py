"""A Ray cluster of several nodes on one machine, on loopback addresses (127.0.0.x): the tests' and benchmarks' rig.

Each node is a real ``ray start`` (its own raylet, object store and agents) on an address of its own, with ports
of its own, declaring as many logical CPUs and GPUs as asked: a 64-GPU cluster's scheduling, placement and node
failures, without a GPU. Everything lives under one temp dir and is stopped by it: never ``ray stop``, which
stops every Ray process of the user (a sweep running beside it included).

    with LoopbackCluster(temp) as cluster:
        cluster.head("127.0.0.2", num_cpus=4)
        for i in range(4):
            cluster.worker(f"127.0.0.{3 + i}", num_cpus=16, num_gpus=16)
        ...  # RAY_ADDRESS=cluster.address
        cluster.kill_node("127.0.0.4")    # a lost machine: its raylet and every process under it, SIGKILL

Ray keeps 127.0.0.1 only with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which also refuses a second node; other
loopback addresses are kept as given with multi-node on, so the nodes live on 127.0.0.2 and up.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

BIN = Path(sys.executable).parent
# Worker ports come from a band below Linux's ephemeral range (32768+), where the other ports are drawn, so the
# two can never collide; each node of a process gets its own block.
_WORKER_PORT_BLOCKS = itertools.count()
_WORKER_PORT_BASE = 11000
_WORKER_PORTS_PER_NODE = 400


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def node_ports(max_workers: int = 200) -> list[str]:
    """``ray start`` options that give a node ports of its own (several nodes share one machine)."""
    (node, obj, client, agent, agent_grpc, metrics, runtime_env) = free_ports(7)
    base = _WORKER_PORT_BASE + _WORKER_PORTS_PER_NODE * next(_WORKER_PORT_BLOCKS)
    return [
        f"--node-manager-port={node}",
        f"--object-manager-port={obj}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--min-worker-port={base}",
        f"--max-worker-port={base + min(max_workers, _WORKER_PORTS_PER_NODE - 1)}",
    ]


def node_env(ip: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0" if ip == "127.0.0.1" else "1",
        # A throwaway cluster: without token authentication (Ray 2.59+ turns it on when ~/.ray/auth_token exists).
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        MLFLOW_DISABLE_TELEMETRY="true",
        HF_HUB_OFFLINE="1",
    )
    env.pop("RAY_ADDRESS", None)
    env.update(extra)
    return env


class LoopbackCluster:
    """Ray nodes started with ``ray start`` under ``temp``; ``stop`` (or leaving the ``with``) stops exactly them.

    ``env`` is added to every node's environment: what its workers (the trials) inherit, such as MLflow
    credentials, exactly as a real node gets them from the environment of its ``ray start``.
    """

    def __init__(self, temp: Path, *, env: dict[str, str] | None = None) -> None:
        self.temp = Path(temp)
        self.temp.mkdir(parents=True, exist_ok=True)
        self.env = dict(env or {})
        self.address: str | None = None
        self.dashboard: str | None = None
        self.nodes: dict[str, dict[str, float]] = {}

    def __enter__(self) -> LoopbackCluster:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def _start(self, ip: str, args: list[str]) -> None:
        command = [str(BIN / "ray"), "start", f"--node-ip-address={ip}", "--disable-usage-stats", *args]
        done = subprocess.run(command, env=node_env(ip, **self.env), capture_output=True, text=True, timeout=180)
        if done.returncode != 0:
            raise RuntimeError(f"`ray start` of node {ip} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")

    def head(self, ip: str = "127.0.0.2", *, num_cpus: float = 2, num_gpus: float = 0, dashboard: bool = False) -> str:
        """Start the head node; returns its GCS address (``RAY_ADDRESS`` for a driver on this machine)."""
        port, dash = free_ports(2)
        args = [
            "--head",
            f"--port={port}",
            f"--num-cpus={num_cpus:g}",
            f"--num-gpus={num_gpus:g}",
            f"--temp-dir={self.temp}",
            *node_ports(),
        ]
        if dashboard:
            args += ["--include-dashboard=true", f"--dashboard-host={ip}", f"--dashboard-port={dash}"]
            self.dashboard = f"http://{ip}:{dash}"
        else:
            args += ["--include-dashboard=false"]
        self._start(ip, args)
        self.address = f"{ip}:{port}"
        self.nodes[ip] = {"CPU": num_cpus, "GPU": num_gpus}
        return self.address

    def worker(self, ip: str, *, num_cpus: float = 2, num_gpus: float = 0, max_workers: int = 200) -> None:
        """Join a worker node (it takes the head's temp dir, so ``stop`` finds it)."""
        if self.address is None:
            raise RuntimeError("start the head first")
        self._start(
            ip,
            [
                f"--address={self.address}",
                f"--num-cpus={num_cpus:g}",
                f"--num-gpus={num_gpus:g}",
                *node_ports(max_workers),
            ],
        )
        self.nodes[ip] = {"CPU": num_cpus, "GPU": num_gpus}

    # ----- finding and stopping processes ---------------------------------------------------------------------

    def _our_pids(self) -> set[int]:
        """Every process of this cluster: those naming its temp dir (raylets, GCS, agents, log monitors) and
        everything under them (workers, whose process titles Ray rewrites to ``ray::...``)."""
        roots = {pid for pid, cmdline in _processes() if str(self.temp) in cmdline}
        return _with_descendants(roots) - {os.getpid()}

    def node_pids(self, ip: str) -> set[int]:
        """The processes of the node at ``ip``: its raylet and everything under it (its workers, its agents), and
        the node's own daemons started beside the raylet (the log monitor)."""
        roots = set()
        for pid, cmdline in _processes():
            if str(self.temp) not in cmdline:
                continue
            if f"--node_ip_address={ip} " in cmdline + " " or f"--node-ip-address={ip} " in cmdline + " ":
                roots.add(pid)
        return _with_descendants(roots) - {os.getpid()}

    def kill_node(self, ip: str) -> int:
        """SIGKILL every process of the node at ``ip`` (a machine lost at once); returns how many there were."""
        pids = self.node_pids(ip)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.nodes.pop(ip, None)
        return len(pids)

    def stop(self, *, grace_s: float = 10.0) -> None:
        """SIGTERM every process of this cluster, then SIGKILL what is left; then delete its temp dir."""
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            for pid in self._our_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.time() + wait
            while self._our_pids() and time.time() < deadline:
                time.sleep(0.2)
        shutil.rmtree(self.temp, ignore_errors=True)


def _processes() -> list[tuple[int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found.append((int(entry.name), cmdline))
    return found


def _parents() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name in parentheses may hold spaces: the fields after its last ')' are fixed.
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def _with_descendants(roots: set[int]) -> set[int]:
    parents = _parents()
    found = set(roots)
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in found and pid not in found:
                found.add(pid)
                grew = True
    return found
