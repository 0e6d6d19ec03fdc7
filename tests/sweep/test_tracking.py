"""The tracking server of ``clusters/tracking.py`` (``make tracking``): PostgreSQL and MLflow with basic
authentication on loopback, a sweep logging to it with its credentials from the environment, a wrong password
stopped before any trial, and the sweep's experiment opened on its runs by MLflow's UI in a real headless browser.

Marked ``cluster`` (it starts servers of its own, in a temp folder, and stops only them).
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from clusters import tracking
from sweep import mlflow_log

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
# A synthetic sweep: what is checked here is the tracking, not the prompts (seconds, no model).
SYNTHETIC = [
    "--preset",
    "smoke",
    "--set",
    "tuners=[synthetic]",
    "--set",
    "baselines=[]",
    "--set",
    "replicates=1",
    "--set",
    "num_samples=3",
    "--set",
    "search.synthetic.lambda_ppl=[0.01, 10]",
    "--set",
    "tuner_config.synthetic={steps: 4, step_s: 0.05}",
]


def _get(url: str, user: tuple[str, str] | None = None) -> int:
    headers = {}
    if user is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def _listening(port: int) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp writes them) listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def _sweep(out: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **env}
    environment.pop("RAY_ADDRESS", None)
    command = [sys.executable, "sweep/run.py", *SYNTHETIC, "--out", str(out), *extra]
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600)


def test_the_server_is_loopback_only_authenticated_and_keeps_secrets_off_command_lines(tracking_folder):
    state = tracking.read_state(tracking_folder)
    assert state is not None and tracking.status(tracking_folder)["server"] == "up"
    probe = f"{state.uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _get(probe) == 401
    assert _get(probe, ("sweep", "not-the-password")) == 401
    assert _get(probe, tracking.credentials(tracking_folder)) == 200
    assert _get(probe, tracking.credentials(tracking_folder, "admin")) == 200
    for port in (state.port, state.db_port):
        assert _listening(port) == {"0100007F"}, f"port {port} listens beyond 127.0.0.1"
    secrets = [path.read_text().strip() for path in (tracking_folder / "secrets").glob("*.password")]
    assert len(secrets) >= 5
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        assert not any(secret in cmdline for secret in secrets), f"a secret on the command line of {entry.name}"
    assert (tracking_folder / "secrets").stat().st_mode & 0o777 == 0o700
    assert all(path.stat().st_mode & 0o777 == 0o600 for path in (tracking_folder / "secrets").iterdir())
    assert (tracking_folder / "env").stat().st_mode & 0o777 == 0o600


def test_a_wrong_password_stops_the_sweep_before_any_trial(tracking_folder, tmp_path):
    env = {**tracking.client_env(tracking_folder), "MLFLOW_TRACKING_PASSWORD": "wrong-password-0123"}
    done = _sweep(tmp_path / "out", env)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "refused this sweep (401" in done.stderr and "MLFLOW_TRACKING_PASSWORD" in done.stderr
    assert not (tmp_path / "out").exists(), "the sweep wrote something before failing"
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking.client_env(tracking_folder)["MLFLOW_TRACKING_URI"])
    os.environ.update(tracking.client_env(tracking_folder))
    try:
        assert client.get_experiment_by_name("smoke") is None, "the sweep reached MLflow"
    finally:
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(name, None)


@pytest.fixture(scope="module")
def swept(tracking_folder, tmp_path_factory) -> dict:
    """A synthetic sweep logged to the server, its URI and credentials from the environment only."""
    out = tmp_path_factory.mktemp("swept")
    done = _sweep(out, tracking.client_env(tracking_folder))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "sweep.json").read_text())


def test_a_sweep_logs_to_the_server_through_its_artifact_proxy(tracking_folder, swept, tmp_path, monkeypatch):
    import mlflow
    import pyarrow.parquet as pq

    env = tracking.client_env(tracking_folder)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert swept["tracking_uri"] == env["MLFLOW_TRACKING_URI"] and swept["status"] == "FINISHED"
    client = mlflow.tracking.MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment(swept["experiment_id"])
    assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development"
    assert experiment.artifact_location.startswith("mlflow-artifacts:"), experiment.artifact_location
    runs = client.search_runs([swept["experiment_id"]], f"tags.`mlflow.parentRunId` = '{swept['parent_run_id']}'")
    assert len(runs) == 3 and {run.info.status for run in runs} == {"FINISHED"}
    for run in runs:  # each prompt went up through the server and sits in its artifact tracking_folder
        local = client.download_artifacts(run.info.run_id, "prompt.txt", str(tmp_path))
        assert Path(local).read_text() == run.data.tags["prompt_text"]
    stored = {p.name for p in (tracking_folder / "artifacts").rglob("*") if p.is_file()}
    assert {"prompt.txt", "result.json", "sweep.json"} <= stored
    # The exports rebuilt from the server alone (credentials from the environment).
    export = subprocess.run(
        [
            sys.executable,
            "-m",
            "sweep.export",
            "--tracking-uri",
            env["MLFLOW_TRACKING_URI"],
            "--experiment",
            "smoke",
            "--out",
            str(tmp_path / "export"),
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert export.returncode == 0, export.stderr[-3000:]
    assert pq.read_table(tmp_path / "export" / "trials.parquet").num_rows == 3
    # The learning curves come through the server's bulk history endpoint, a hundred runs a request, and equal
    # what one request per run and metric reads (answers that may be cut are asked again in halves, then per run).
    answers: list[bool] = []
    bulk = mlflow_log._bulk

    def spy(*args: object) -> object:
        found = bulk(*args)
        answers.append(found is not None)
        return found

    monkeypatch.setattr(mlflow_log, "_bulk", spy)
    ids = [run.info.run_id for run in runs]
    curves = mlflow_log.collect_curves(env["MLFLOW_TRACKING_URI"], ids)
    assert answers and all(answers) and all(curves[i] for i in ids)
    monkeypatch.setattr(mlflow_log, "_BULK_POINTS", 3)
    assert mlflow_log.collect_curves(env["MLFLOW_TRACKING_URI"], ids) == curves


class _Proxy(http.server.ThreadingHTTPServer):
    """A loopback proxy that adds the sweep user's Authorization header: a browser cannot be given basic-auth
    credentials in the URL (its page's own requests then fail: "Request cannot be constructed from a URL that
    includes credentials"), and putting them on chromium's command line would show them to ``ps``."""

    daemon_threads = True

    def __init__(self, upstream: str, user: tuple[str, str]) -> None:
        token = "Basic " + base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                skip = {"host", "authorization", "connection", "accept-encoding"}
                headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                request = urllib.request.Request(
                    upstream + self.path, data=body, method=self.command, headers={**headers, "Authorization": token}
                )
                try:
                    answer = urllib.request.urlopen(request, timeout=60)
                except urllib.error.HTTPError as err:
                    answer = err
                data = answer.read()
                self.send_response(answer.status if hasattr(answer, "status") else answer.code)
                for key, value in answer.headers.items():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length", "content-encoding"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _forward

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


def _page(url: str, profile: Path) -> str:
    """The DOM of ``url`` after its scripts ran, in headless chromium (network: loopback only)."""
    command = [
        "chromium",
        "--headless",
        "--no-sandbox",  # CI runs as root, where chromium refuses its sandbox
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1400,1000",
        "--virtual-time-budget=20000",
        "--dump-dom",
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_sweeps_experiment_opens_on_its_runs_in_mlflows_ui(tracking_folder, swept, tmp_path):
    """MLflow 3.17's UI opens an experiment on the GenAI "Overview" by default; the sweep's link (its experiment
    tagged as model training, ``?workflowType=machine_learning``) opens on the runs: the parent and its trials."""
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not on PATH: install Debian's chromium (apt-get install chromium), as .ci/run does")
    from sweep.mlflow_log import experiment_url

    state = tracking.read_state(tracking_folder)
    assert state is not None
    proxy = _Proxy(state.uri, tracking.credentials(tracking_folder))
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{proxy.server_address[1]}"
        url = experiment_url(base, swept["experiment_id"])
        assert url is not None and url.endswith("?workflowType=machine_learning")
        dom = _page(url, tmp_path / "profile")
        plain = _page(f"{base}/#/experiments/{swept['experiment_id']}", tmp_path / "profile-plain")
    finally:
        proxy.shutdown()
    title = re.search(r"<title>(.*?)</title>", dom)
    assert title and title.group(1).startswith("Runs"), title and title.group(1)
    text = re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style)\b.*?</\1>", "", dom, flags=re.S))
    parent_name = re.compile(r"smoke-\d{8}-\d{6}")
    assert parent_name.search(text), "the sweep's parent run is not listed"
    assert "Token Usage" not in text  # the GenAI overview's panels
    # Without the switch in the link, MLflow 3.17 still opens on its GenAI overview: what the link is for.
    plain_title = re.search(r"<title>(.*?)</title>", plain)
    assert plain_title and plain_title.group(1).startswith("Overview"), plain_title and plain_title.group(1)


def test_a_restart_of_server_and_database_keeps_the_runs(tracking_folder, swept):
    import mlflow

    env = tracking.client_env(tracking_folder)
    tracking.stop(tracking_folder)  # server and database
    state = tracking.start(tracking_folder)
    assert state.uri == env["MLFLOW_TRACKING_URI"] and tracking.client_env(tracking_folder) == env
    os.environ.update(env)
    try:
        client = mlflow.tracking.MlflowClient(env["MLFLOW_TRACKING_URI"])
        runs = client.search_runs([swept["experiment_id"]])
        assert len(runs) == 4  # the parent and its three trials
    finally:
        for name in env:
            os.environ.pop(name, None)
