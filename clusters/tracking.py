"""A throwaway MLflow tracking server on PostgreSQL, on loopback, with basic authentication (``make tracking``).

    python clusters/tracking.py start [--dir runs/tracking] [--port 5000] [--install]
    . runs/tracking/env                  # MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD
    python sweep/run.py --preset smoke   # logs to the server: the URI and credentials come from the environment
    python clusters/tracking.py status
    python clusters/tracking.py stop [--server-only | --db-only] [--wipe]
    python clusters/tracking.py add-user --uri URL   # a recipe's node: admin's and new user's credentials from env

What it starts, all in one folder (``--dir``) and on 127.0.0.1 only:

- a PostgreSQL cluster of its own (Debian's ``postgresql`` package, ``initdb`` into the folder; run as the
  ``postgres`` user when this is root, which PostgreSQL requires), listening on TCP 127.0.0.1 only, no Unix
  socket, password (SCRAM) authentication; databases ``mlflow`` (runs), ``mlflow_auth`` (MLflow's users) and
  ``optuna`` (for benchmarks of Optuna's RDB storage), owned by a role ``mlflow``;
- ``mlflow server --app-name basic-auth`` on it, artifacts proxied through the server (``--serve-artifacts``,
  stored in ``<dir>/artifacts``), its Host header limited to the loopback names, with an ``admin`` user and a
  ``sweep`` user for the sweeps (MLflow's ``default_permission = READ``: every user reads every sweep, only the
  one that created an experiment writes to it).

Secrets never go on a command line (where ``ps`` shows them): passwords are generated here, kept in
``<dir>/secrets`` (mode 0700, files 0600) and handed over in environment variables (the server's admin, its
Flask secret) and libpq's password file (``PGPASSFILE``) for the database. ``<dir>/env`` is the sweep user's
client environment, to be sourced. ``stop`` stops only what ``start`` started, found by what it recorded in
``<dir>/state.json`` (the server's process group, checked to still name this folder; the database through
``pg_ctl -D`` on its own data folder).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("clusters.tracking")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = ROOT / "runs" / "tracking"
HOST = "127.0.0.1"
PG_VERSION = "15"  # what Debian 12 ships; another installed major version is used when 15 is not there
ADMIN_USER = "admin"
SWEEP_USER = "sweep"
DB_ROLE = "mlflow"
DATABASES = ("mlflow", "mlflow_auth", "optuna")
# Uvicorn workers of the server: each holds a database pool (5 + 10 overflow) for runs and one for users.
DEFAULT_WORKERS = 2
START_TIMEOUT_S = 90.0


class TrackingError(RuntimeError):
    """A step of starting or stopping the tracking server failed; the message says which and what to do."""


@dataclass
class State:
    """What ``start`` recorded in ``<dir>/state.json``: enough for ``stop`` and for clients."""

    dir: str
    port: int
    db_port: int
    pgdata: str
    pg_bin: str
    workers: int = DEFAULT_WORKERS
    server_pid: int | None = None  # the leader of the server's process group (``mlflow server`` and its workers)

    @property
    def uri(self) -> str:
        return f"http://{HOST}:{self.port}"

    def database_uri(self, database: str) -> str:
        """A SQLAlchemy URI without a password: libpq reads it from ``PGPASSFILE``."""
        return f"postgresql+psycopg2://{DB_ROLE}@{HOST}:{self.db_port}/{database}"


# ----- paths and secrets -----------------------------------------------------------------------------------


def _secrets(folder: Path) -> Path:
    return folder / "secrets"


def _state_path(folder: Path) -> Path:
    return folder / "state.json"


def read_state(folder: Path) -> State | None:
    path = _state_path(folder)
    if not path.is_file():
        return None
    return State(**json.loads(path.read_text()))


def _write_state(folder: Path, state: State) -> None:
    tmp = _state_path(folder).with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2) + "\n")
    os.replace(tmp, _state_path(folder))


def _write_secret(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600 from the start (never readable by others, not even for a moment)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(handle, "w") as f:
        f.write(text)


def _password(folder: Path, name: str) -> str:
    """The password kept in ``secrets/<name>.password``, generated on first use (MLflow wants >= 12 characters)."""
    path = _secrets(folder) / f"{name}.password"
    if not path.is_file():
        _write_secret(path, secrets.token_urlsafe(24))
    return path.read_text().strip()


def credentials(folder: Path, user: str = SWEEP_USER) -> tuple[str, str]:
    """The (username, password) of an MLflow user of the server in ``folder`` (``sweep`` or ``admin``)."""
    return user, _password(folder, f"mlflow-{user}")


def client_env(folder: Path, user: str = SWEEP_USER) -> dict[str, str]:
    """The environment a sweep (or any MLflow client) needs to log to the server in ``folder``."""
    state = read_state(folder)
    if state is None:
        raise TrackingError(f"no tracking server was started in {folder}; run `python clusters/tracking.py start`")
    name, password = credentials(folder, user)
    return {"MLFLOW_TRACKING_URI": state.uri, "MLFLOW_TRACKING_USERNAME": name, "MLFLOW_TRACKING_PASSWORD": password}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


# ----- PostgreSQL ------------------------------------------------------------------------------------------


def find_pg_bin() -> Path | None:
    """The folder of Debian's PostgreSQL server binaries (``initdb``, ``pg_ctl``): version 15, else the newest."""
    base = Path("/usr/lib/postgresql")
    preferred = base / PG_VERSION / "bin"
    if (preferred / "initdb").is_file():
        return preferred
    found = sorted(
        (p for p in base.glob("*/bin") if (p / "initdb").is_file()), key=lambda p: int(p.parent.name), reverse=True
    )
    return found[0] if found else None


def install_postgres() -> Path:
    """``apt-get install postgresql`` (as root, on Debian) without the package's own ``main`` cluster: nothing is
    started that this script did not start."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise TrackingError(
            "PostgreSQL's server is not installed (no /usr/lib/postgresql/*/bin/initdb) and this is not root on "
            "Debian: install it with `sudo apt-get install -y postgresql`"
        )
    conf = Path("/etc/postgresql-common/createcluster.d/promptsweep.conf")
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text("# promptsweep's tracking server runs clusters of its own\ncreate_main_cluster = false\n")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "postgresql"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise TrackingError(f"`{' '.join(command)}` failed: {done.stderr[-2000:]}")
    found = find_pg_bin()
    if found is None:
        raise TrackingError("apt-get installed postgresql but no /usr/lib/postgresql/*/bin/initdb was found")
    return found


def _as_postgres() -> list[str]:
    """PostgreSQL refuses to run as root: as root its programs run as the ``postgres`` user."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _pg(state: State, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    command = [*_as_postgres(), str(Path(state.pg_bin) / program), *args]
    # cwd: runuser keeps the caller's folder, which the postgres user may not be allowed to enter.
    done = subprocess.run(command, capture_output=True, text=True, cwd="/", timeout=120)
    if check and done.returncode != 0:
        raise TrackingError(f"{program} {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done


def _pgdata_for(folder: Path) -> Path:
    """Where the database's files go: ``<dir>/pgdata`` when the postgres user can reach it, else (root with a
    private folder, such as pytest's 0700 temp dirs) a folder of its own in /tmp named after ``dir``."""
    inside = folder / "pgdata"
    if os.geteuid() != 0:
        return inside
    reach = subprocess.run([*_as_postgres(), "test", "-x", str(folder)], cwd="/")
    if reach.returncode == 0:
        return inside
    digest = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:12]
    return Path("/tmp") / f"promptsweep-pg-{digest}"


def _init_db(folder: Path, state: State) -> None:
    """``initdb`` a fresh cluster, listening on 127.0.0.1 only, with SCRAM passwords for every connection."""
    pgdata = Path(state.pgdata)
    outside = pgdata.parent.name.startswith("promptsweep-pg-")
    pgdata.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    pgdata.mkdir(mode=0o700, exist_ok=True)
    superuser_password = _password(folder, "postgres")
    # initdb reads the superuser's password from a file the postgres user can read: written beside pgdata for a
    # moment, 0600 and owned by that user, then deleted.
    pwfile = pgdata.parent / f".{pgdata.name}.pw"
    _write_secret(pwfile, superuser_password + "\n")
    try:
        if os.geteuid() == 0:
            for path in (pgdata, pwfile, *([pgdata.parent] if outside else [])):
                shutil.chown(path, "postgres", "postgres")
        _pg(
            state,
            "initdb",
            "-D",
            str(pgdata),
            "-U",
            "postgres",
            "-A",
            "scram-sha-256",
            f"--pwfile={pwfile}",
            "-E",
            "UTF8",
        )
    finally:
        pwfile.unlink(missing_ok=True)
    settings = {
        "listen_addresses": f"'{HOST}'",
        "port": str(state.db_port),
        "unix_socket_directories": "''",  # TCP on loopback only: no socket file for anyone on this machine
        "max_connections": "200",  # each server worker pools up to 15 connections per database
        "logging_collector": "off",
    }
    with (pgdata / "postgresql.conf").open("a") as f:
        f.write("\n# promptsweep tracking server\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))


def db_running(state: State) -> bool:
    return _pg(state, "pg_ctl", "-D", state.pgdata, "status", check=False).returncode == 0


def start_db(folder: Path, state: State) -> None:
    if db_running(state):
        return
    log = Path(state.pgdata) / "server.log"  # written by the postgres user, so inside its folder
    _pg(state, "pg_ctl", "-D", state.pgdata, "-l", str(log), "-w", "-t", "60", "start")


def stop_db(state: State) -> None:
    """Stop this folder's PostgreSQL (``-m fast``: open transactions are rolled back, clients disconnected)."""
    if Path(state.pgdata, "PG_VERSION").is_file() and db_running(state):
        _pg(state, "pg_ctl", "-D", state.pgdata, "-w", "-t", "60", "-m", "fast", "stop")


def restart_db(state: State) -> None:
    _pg(state, "pg_ctl", "-D", state.pgdata, "-w", "-t", "60", "-m", "fast", "restart")


def _connect(folder: Path, state: State, database: str = "postgres", user: str = "postgres") -> Any:
    import psycopg2

    password = _password(folder, "postgres" if user == "postgres" else "db-" + DB_ROLE)
    return psycopg2.connect(host=HOST, port=state.db_port, user=user, password=password, dbname=database)


def _create_databases(folder: Path, state: State) -> None:
    """The role and databases MLflow and the benchmarks use (kept when they exist: a restart keeps the runs)."""
    role_password = _password(folder, "db-" + DB_ROLE)
    connection = _connect(folder, state)
    connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (DB_ROLE,))
            if cursor.fetchone() is None:
                # psycopg2 quotes the password as a literal on the client; it never reaches a command line.
                cursor.execute(f"CREATE ROLE {DB_ROLE} LOGIN PASSWORD %s", (role_password,))
            for database in DATABASES:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
                if cursor.fetchone() is None:
                    cursor.execute(f"CREATE DATABASE {database} OWNER {DB_ROLE}")
    finally:
        connection.close()
    _write_secret(_secrets(folder) / "pgpass", f"{HOST}:{state.db_port}:*:{DB_ROLE}:{role_password}\n")


def optuna_storage_uri(folder: Path) -> str:
    """A SQLAlchemy URI of the ``optuna`` database with its password (for the benchmark's in-process use only)."""
    state = read_state(folder)
    if state is None:
        raise TrackingError(f"no tracking server in {folder}")
    password = _password(folder, "db-" + DB_ROLE)
    return f"postgresql+psycopg2://{DB_ROLE}:{password}@{HOST}:{state.db_port}/optuna"


# ----- the MLflow server -----------------------------------------------------------------------------------


def _auth_config(folder: Path, state: State) -> Path:
    path = _secrets(folder) / "basic_auth.ini"
    _write_secret(
        path,
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {state.database_uri('mlflow_auth')}\n"
        f"admin_username = {ADMIN_USER}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # A sweep's trials call the server thousands of times with one credential: checking it once a minute
        # instead of hashing it (PBKDF2) on every request.
        "auth_cache_ttl_seconds = 60\n",
    )
    return path


def _server_alive(state: State) -> bool:
    """Whether the server this folder started still runs (its process group leader, naming this folder)."""
    if state.server_pid is None:
        return False
    try:
        cmdline = Path(f"/proc/{state.server_pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return "mlflow" in cmdline and state.dir in cmdline


def _server_command(state: State, artifacts: Path) -> list[str]:
    """``mlflow server`` with basic authentication, on PostgreSQL, proxying the artifacts in ``artifacts``."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--app-name",
        "basic-auth",
        "--backend-store-uri",
        state.database_uri("mlflow"),
        "--serve-artifacts",
        "--artifacts-destination",
        str(artifacts),
        "--host",
        HOST,
        "--port",
        str(state.port),
        "--workers",
        str(state.workers),
        # Clients reach it as 127.0.0.1 or localhost; any other Host header (DNS rebinding) is refused.
        "--allowed-hosts",
        f"{HOST}:{state.port},localhost:{state.port}",
        # A stop waits for requests in flight, not for idle keep-alive connections (uvicorn would wait forever).
        "--uvicorn-opts",
        "--timeout-graceful-shutdown 5",
    ]


def start_server(folder: Path, state: State) -> State:
    if _server_alive(state):
        return state
    if _port_open(state.port):
        raise TrackingError(
            f"port {state.port} on {HOST} is taken by another process; choose another with --port (or stop it)"
        )
    artifacts = folder / "artifacts"
    artifacts.mkdir(mode=0o700, exist_ok=True)
    logs = folder / "logs"
    logs.mkdir(mode=0o700, exist_ok=True)
    env = {
        **os.environ,
        "PGPASSFILE": str(_secrets(folder) / "pgpass"),
        "MLFLOW_AUTH_CONFIG_PATH": str(_auth_config(folder, state)),
        "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN_USER,
        "MLFLOW_AUTH_ADMIN_PASSWORD": credentials(folder, ADMIN_USER)[1],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": _password(folder, "flask-secret"),
        "MLFLOW_DISABLE_TELEMETRY": "true",  # a loopback server sends nothing anywhere else
    }
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(name, None)
    command = _server_command(state, artifacts)
    with (logs / "mlflow.log").open("ab") as log:
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    state.server_pid = process.pid
    _write_state(folder, state)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = (logs / "mlflow.log").read_text(errors="replace")[-3000:]
            raise TrackingError(f"mlflow server exited with {process.returncode}; its log ends:\n{tail}")
        if _healthy(state):
            return state
        time.sleep(0.5)
    raise TrackingError(f"mlflow server did not answer {state.uri}/health within {START_TIMEOUT_S:g} s")


def _healthy(state: State) -> bool:
    try:
        with urllib.request.urlopen(f"{state.uri}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def stop_server(state: State, *, grace_s: float = 20.0) -> None:
    """SIGTERM the server's process group (uvicorn lets requests in flight finish), then SIGKILL."""
    if not _server_alive(state):
        return
    pgid = state.server_pid
    assert pgid is not None
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _group_alive(pgid):
                return
            time.sleep(0.2)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # A zombie leader (our child, not reaped when another process started it) still counts as the group.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pgid, os.WNOHANG)
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _api(
    state: State, path: str, payload: dict[str, Any], user: tuple[str, str], *, base: str | None = None
) -> tuple[int, str]:
    token = base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
    request = urllib.request.Request(
        f"{(base or state.uri).rstrip('/')}{path}",
        data=json.dumps(payload).encode(),
        headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def _create_sweep_user(folder: Path, state: State) -> None:
    """The non-admin user sweeps log as (an admin's password need not travel to every node)."""
    name, password = credentials(folder, SWEEP_USER)
    code, body = _api(
        state, "/api/2.0/mlflow/users/create", {"username": name, "password": password}, credentials(folder, ADMIN_USER)
    )
    if code != 200 and "already exists" not in body and "RESOURCE_ALREADY_EXISTS" not in body:
        raise TrackingError(f"creating MLflow user {name!r} failed: {code} {body[:500]}")


def add_user(uri: str) -> str:
    """Create the MLflow user of ``MLFLOW_TRACKING_USERNAME``/``_PASSWORD`` on the basic-auth server at ``uri``,
    as the admin of ``MLFLOW_AUTH_ADMIN_USERNAME``/``_PASSWORD`` (a recipe's node, which has both in its
    environment); an existing user is left as it is. Returns what was done."""
    names = (
        "MLFLOW_AUTH_ADMIN_USERNAME",
        "MLFLOW_AUTH_ADMIN_PASSWORD",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
    )
    missing = [name for name in names if not os.environ.get(name)]
    if missing:
        raise TrackingError(f"add-user reads the admin's and the new user's credentials from {missing}: set them")
    admin = (os.environ[names[0]], os.environ[names[1]])
    user = {"username": os.environ[names[2]], "password": os.environ[names[3]]}
    state = State(dir="", port=0, db_port=0, pgdata="", pg_bin="")
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:  # the server may still be starting
        try:
            code, body = _api(state, "/api/2.0/mlflow/users/create", user, admin, base=uri)
            break
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                raise TrackingError(f"no MLflow server answered at {uri} within {START_TIMEOUT_S:g} s") from None
            time.sleep(2)
    if code == 200:
        return f"created MLflow user {user['username']!r}"
    if "RESOURCE_ALREADY_EXISTS" in body or "already exists" in body:
        return f"MLflow user {user['username']!r} exists"
    raise TrackingError(f"creating MLflow user {user['username']!r} at {uri} failed: {code} {body[:500]}")


def _write_env(folder: Path, state: State) -> None:
    lines = [f"export {k}={v}\n" for k, v in client_env(folder).items()]
    _write_secret(
        folder / "env",
        "# The sweep user's MLflow client environment: `. THIS_FILE` (never put the password on a command line)\n"
        + "".join(lines),
    )


# ----- start / stop ----------------------------------------------------------------------------------------


def start(
    folder: Path = DEFAULT_DIR,
    *,
    port: int | None = None,
    db_port: int | None = None,
    workers: int = DEFAULT_WORKERS,
    install: bool = False,
) -> State:
    """Start what is not running of the database and the server in ``folder`` (created on first use); returns
    the recorded state. Starting again after ``stop`` keeps every run: the database stays in the folder."""
    folder = folder.resolve()
    # 0711: the postgres user may pass through to pgdata, no one else may list what is here.
    folder.mkdir(mode=0o711, parents=True, exist_ok=True)
    _secrets(folder).mkdir(mode=0o700, exist_ok=True)
    state = read_state(folder)
    if state is None:
        pg_bin = find_pg_bin() or (install_postgres() if install else None)
        if pg_bin is None:
            raise TrackingError(
                "PostgreSQL's server is not installed (no /usr/lib/postgresql/*/bin/initdb): "
                "`apt-get install -y postgresql` (or pass --install as root)"
            )
        state = State(
            dir=str(folder),
            port=port or 5000,
            db_port=db_port or _free_port(),
            pgdata=str(_pgdata_for(folder)),
            pg_bin=str(pg_bin),
            workers=workers,
        )
        _write_state(folder, state)
    if not Path(state.pgdata, "PG_VERSION").is_file():
        _init_db(folder, state)
    start_db(folder, state)
    _create_databases(folder, state)
    state = start_server(folder, state)
    _create_sweep_user(folder, state)
    _write_env(folder, state)
    return state


def stop(folder: Path = DEFAULT_DIR, *, server: bool = True, db: bool = True, wipe: bool = False) -> None:
    """Stop the server and/or the database ``start`` started in ``folder``; ``wipe`` also deletes their data."""
    folder = folder.resolve()
    state = read_state(folder)
    if state is None:
        return
    if server:
        stop_server(state)
    if db:
        stop_db(state)
    if wipe:
        pgdata = Path(state.pgdata)
        if pgdata.parent.name.startswith("promptsweep-pg-"):
            shutil.rmtree(pgdata.parent, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)


def missing() -> str | None:
    """Why a tracking server cannot start on this machine (a test skips with it), or None when it can."""
    import importlib.util

    if find_pg_bin() is None:
        return "PostgreSQL's server is not installed: apt-get install -y postgresql (as .ci/run does)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: PostgreSQL refuses to run as root"
    for module, package in (("psycopg2", "psycopg2-binary"), ("flask_wtf", "Flask-WTF")):
        if importlib.util.find_spec(module) is None:
            return f"{package} is not installed in this Python (make tracking-deps, or make test, installs it)"
    return None


@contextlib.contextmanager
def running(folder: Path, **options: Any) -> Iterator[State]:
    """A server started in ``folder`` for the block, stopped and wiped after it whatever happened (tests)."""
    try:
        yield start(folder, **options)
    finally:
        stop(folder, wipe=True)


def status(folder: Path = DEFAULT_DIR) -> dict[str, Any]:
    state = read_state(folder.resolve())
    if state is None:
        return {"dir": str(folder), "started": False}
    return {
        "dir": state.dir,
        "uri": state.uri,
        "server": "up" if _server_alive(state) and _healthy(state) else "down",
        "database": f"{HOST}:{state.db_port} " + ("up" if db_running(state) else "down"),
        "pgdata": state.pgdata,
        "env": str(Path(state.dir) / "env"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clusters/tracking.py", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("start", "stop", "status", "add-user"))
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"where it all lives (default {DEFAULT_DIR})")
    parser.add_argument("--port", type=int, help="the MLflow server's port on 127.0.0.1 (default 5000, first start)")
    parser.add_argument("--db-port", type=int, help="PostgreSQL's port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="server worker processes")
    parser.add_argument("--install", action="store_true", help="apt-get install postgresql if missing (root)")
    parser.add_argument("--server-only", action="store_true", help="stop: the MLflow server only")
    parser.add_argument("--db-only", action="store_true", help="stop: the database only")
    parser.add_argument("--wipe", action="store_true", help="stop: also delete the runs, users and artifacts")
    parser.add_argument("--uri", help="add-user: the server (credentials from the environment, see add_user)")
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            state = start(args.dir, port=args.port, db_port=args.db_port, workers=args.workers, install=args.install)
            print(f"MLflow tracking server on PostgreSQL: {state.uri} (data in {state.dir})")
            print(f"  UI: {state.uri}/#/experiments   (user {ADMIN_USER}: password in {_secrets(args.dir.resolve())})")
            print(f"  for sweeps:  . {Path(state.dir) / 'env'}   then python sweep/run.py --preset smoke")
            print(
                "  stop:        python clusters/tracking.py stop"
                + (f" --dir {args.dir}" if args.dir != DEFAULT_DIR else "")
            )
        elif args.command == "add-user":
            if not args.uri:
                raise TrackingError("add-user needs --uri http://HOST:PORT of the server")
            print(add_user(args.uri))
        elif args.command == "stop":
            stop(args.dir, server=not args.db_only, db=not args.server_only, wipe=args.wipe)
        else:
            print(json.dumps(status(args.dir), indent=2))
    except TrackingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
