"""The sweep driver's plumbing: where a sweep records itself, its lock, signals, Ray, and what stopped it.

``sweep/run.py`` reads top to bottom through these, ``sweep/tune_run.py`` (the Tune run) and
``sweep/finish.py`` (the end). What a sweep's end must be, whatever stops it:

- every trial that can still run is resumable by rerunning the same command (the ledger of
  ``sweep/ledger.py`` rebuilds the sweep from MLflow and the Optuna studies);
- ``sweep.json`` and the MLflow parent say what happened: ``FINISHED`` (exit 0), ``FAILED`` (exit 1: some
  trial failed by itself; a rerun will not change that), ``INTERRUPTED`` (exit 130: a signal, Ray lost under
  the driver, a full disk, a driver error; a rerun resumes), with the reason;
- the counts add up: finished + failed + unfinished = the trials planned.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from objectives.errors import ConfigError, ResourceError
from sweep import supervise
from sweep.config import SweepConfig

_ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("sweep.run")

# 0 only when every trial finished; an interrupted sweep (resumable) is not a success either.
EXIT_CODES = {"FINISHED": 0, "FAILED": 1, "INTERRUPTED": 130}
# The MLflow run status of a sweep's parent for each sweep status (MLflow has no INTERRUPTED).
PARENT_STATUS = {"FINISHED": "FINISHED", "FAILED": "FAILED", "INTERRUPTED": "KILLED"}
STATUS_TAG = "promptsweep.status"
RESUME_HINT = "rerun the same command (same --out) to resume"
# Space held back in ``out`` while trials run and given up when the sweep ends, so that a disk filled
# mid-sweep still leaves room to close the MLflow runs and write the record (and, most often, the exports).
RESERVE_FILE = ".sweep.reserve"
RESERVE_BYTES = 16 * 2**20
# The mo_asha scheduler's decisions, written whole with each one (sweep/tune_run.py).
SCHEDULER_STATE = "scheduler.json"


# ----- the record ------------------------------------------------------------------------------------------


def write_json(path: Path, data: Any) -> None:
    """Write ``path`` whole or not at all: a kill or a full disk mid-write leaves the previous file."""
    write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def write_atomic(path: Path, text: str) -> None:
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class Plan:
    """Where a sweep records itself: the MLflow store, experiment and parent run (new, or the one resumed)."""

    tracking_uri: str
    experiment_id: str
    parent: str
    resumed: bool
    attempt: int = 1  # drivers that have run this sweep, this one included
    tags: dict[str, str] = field(default_factory=dict)


def plan(config: SweepConfig, out: Path, *, fresh: bool) -> Plan:
    """Start the sweep's parent run, or reopen the one of the same sweep in ``out`` to continue it.

    ``sweep.json`` is written at once (status RUNNING), so a driver that is lost later leaves what a rerun needs.
    """
    from sweep import mlflow_log

    tracking_uri = config.tracking_uri or mlflow_log.default_tracking_uri(out)
    path = out / "sweep.json"
    previous = _read_record(path, config, tracking_uri)
    ours = json.loads(json.dumps(config.to_dict()))
    tags = source_tags()
    if previous is not None and not fresh:
        differ = sorted(k for k in set(ours) | set(previous["config"]) if ours.get(k) != previous["config"].get(k))
        if differ:
            raise ConfigError(
                f"--out {str(out)!r} holds another sweep (its config differs in {differ}): rerun it with its own "
                "settings to resume it, pass --fresh to start over in this folder, or choose another --out"
            )
        experiment_id, parent = previous["experiment_id"], previous["parent_run_id"]
        closed = mlflow_log.close_running_children(
            tracking_uri, parent, reason="its attempt stopped with the sweep's driver; the resumed sweep continues it"
        )
        mlflow_log.reopen_parent(tracking_uri, parent)
        logger.info("resuming sweep %s in %s (%d interrupted trial runs closed)", parent, out, closed)
        result = Plan(tracking_uri, experiment_id, parent, True, int(previous.get("attempt", 1)) + 1, tags)
    else:
        if previous is not None:
            mlflow_log.close_parent(previous["tracking_uri"], previous["parent_run_id"], reason="superseded by --fresh")
            shutil.rmtree(out / "ray", ignore_errors=True)  # Tune's logs only; MLflow keeps the runs
            (out / SCHEDULER_STATE).unlink(missing_ok=True)
        experiment_id, parent = mlflow_log.start_parent(
            tracking_uri,
            config.name,
            params=config.to_dict(),
            objectives=config.objectives,
            artifact_root=out / "mlartifacts",
            labels=config.axis_labels,
            tags=tags,
        )
        result = Plan(tracking_uri, experiment_id, parent, False, 1, tags)
    logger.info("MLflow: %s experiment %r parent run %s", tracking_uri, config.name, parent)
    write_json(path, {**record(config, out, result, status="RUNNING"), "trials_planned": config.total_trials()})
    supervise.announce(out)
    _reserve(out)
    return result


def _reserve(out: Path) -> None:
    path = out / RESERVE_FILE
    try:
        with path.open("wb") as f:
            os.posix_fallocate(f.fileno(), 0, RESERVE_BYTES)
    except OSError as err:  # preflight checked the space; a store without fallocate just has no reserve
        logger.debug("no space reserved in %s: %s", out, err)
        with contextlib.suppress(OSError):
            path.unlink()


def release_reserve(out: Path) -> None:
    with contextlib.suppress(OSError):
        (out / RESERVE_FILE).unlink()


def _read_record(path: Path, config: SweepConfig, tracking_uri: str) -> dict[str, Any] | None:
    """The sweep recorded in ``out``: ``sweep.json``, or, where that file is damaged (it is written whole, but
    a disk can still lose it), the newest parent run of the sweep's experiment in MLflow."""
    from sweep import mlflow_log

    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        damage = err
    try:
        parent = mlflow_log.latest_parent(tracking_uri, config.name)
        found = mlflow_log.parent_record(tracking_uri, parent)
    except Exception as err:
        raise ConfigError(
            f"{str(path)!r} cannot be read ({damage}) and MLflow at {tracking_uri} holds no sweep named "
            f"{config.name!r} to resume ({err}). Pass --fresh to start over in this folder, or choose another --out"
        ) from err
    logger.warning("%s cannot be read (%s); resuming the newest sweep MLflow holds: %s", path, damage, parent)
    return {**found, "config": json.loads(json.dumps(config.to_dict()))}


def record(config: SweepConfig, out: Path, plan: Plan, *, status: str) -> dict[str, Any]:
    return {
        "config": config.to_dict(),
        "tracking_uri": plan.tracking_uri,
        "experiment": config.name,
        "experiment_id": plan.experiment_id,
        "parent_run_id": plan.parent,
        "ray_storage_path": str(out / "ray"),
        "optuna_storage": f"sqlite:///{out / 'optuna.db'}",
        "status": status,
        "attempt": plan.attempt,
        "git_commit": plan.tags.get("mlflow.source.git.commit"),
        "versions": versions(),
    }


def source_tags() -> dict[str, str]:
    """MLflow's source tags for this sweep's runs: user, entry point, and the git commit of the checkout."""
    import getpass

    tags = {"mlflow.user": getpass.getuser(), "mlflow.source.name": "sweep/run.py", "mlflow.source.type": "JOB"}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=_ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return tags  # not a git checkout (a `ray job submit` working dir, an installed package)
    tags["mlflow.source.git.commit"] = commit
    tags["promptsweep.git_dirty"] = "true" if dirty else "false"
    return tags


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "ray", "optuna", "mlflow", "pyarrow"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "missing"
    return out


# ----- lock and signals ------------------------------------------------------------------------------------


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold ``out/.sweep.lock`` for the block: a second sweep on the same folder is refused."""
    import fcntl

    handle = (out / ".sweep.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        handle.close()
        raise ResourceError(
            f"--out {str(out)!r} is held by another sweep that is still running; wait for it, or use another --out"
        ) from err
    try:
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()


# The signals ``interrupts`` has received in this process (the first one counts); read by ``Outcome``.
_SIGNALS: list[str] = []


class Interrupted(BaseException):  # as KeyboardInterrupt: no `except Exception` swallows it
    """A signal stopped the sweep; raised in the driver's main thread by ``interrupts``."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.signal = name


@contextlib.contextmanager
def interrupts() -> Iterator[None]:
    """SIGINT (Ctrl-C) and SIGTERM (what ``timeout``, Kubernetes and spot reclaims send) stop the sweep at once.

    The first one raises ``Interrupted`` in the main thread; later ones are ignored while the sweep ends
    honestly. Tune's own graceful stop is not used: it saves Tune's state (which a resume does not need) and
    waits on Ray, which a SIGTERM sent to the whole process group has already stopped (Ray's processes share
    the driver's group and, unlike SIGINT, do not block SIGTERM), so it hung for a minute.
    """
    fired = _SIGNALS
    fired.clear()

    def handler(signum: int, frame: object) -> None:
        if fired:
            return
        fired.append(signal.Signals(signum).name)
        raise Interrupted(fired[0])

    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread (a notebook, a test runner thread): leave signals alone
        yield
        return
    try:
        yield
    finally:
        for sig, old in previous.items():
            # None: the handler was not set from Python (Ray's, in C++); it cannot be put back from here.
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


# ----- Ray -------------------------------------------------------------------------------------------------


def init_ray(config: SweepConfig, *, verbose: bool = True) -> bool:
    """Join the cluster of ``RAY_ADDRESS`` or start an embedded one; True when this call started Ray."""
    if not os.environ.get("RAY_ADDRESS"):
        # The embedded Ray is one node: keep it on loopback (Ray otherwise swaps 127.0.0.1 for the machine's
        # interface address). Ray reads this when it is imported.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        # ... and sends no usage statistics out (a cluster's own `ray start` decides for itself).
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from objectives.models import DETERMINISTIC_ENV

    if ray.is_initialized():
        return False
    quiet = {} if verbose else {"log_to_driver": False, "logging_level": logging.WARNING}
    if os.environ.get("RAY_ADDRESS"):
        # On a cluster the trials run on other nodes: the determinism switch travels with the job.
        extra = {DETERMINISTIC_ENV: os.environ[DETERMINISTIC_ENV]} if DETERMINISTIC_ENV in os.environ else {}
        ray.init(**quiet, **({"runtime_env": {"env_vars": extra}} if extra else {}))
        return False

    # Embedded: workers get the project root on their path, so a plain checkout works without installing.
    pythonpath = os.pathsep.join(p for p in (str(_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env_vars = {"PYTHONPATH": pythonpath}
    if DETERMINISTIC_ENV in os.environ:
        env_vars[DETERMINISTIC_ENV] = os.environ[DETERMINISTIC_ENV]
    ray.init(
        num_cpus=config.ray_num_cpus,
        include_dashboard=False,
        runtime_env={"env_vars": env_vars},
        _node_ip_address="127.0.0.1",
        **quiet,
    )
    return True


def check_resources(config: SweepConfig) -> dict[str, float]:
    """Fail in seconds when no node can hold one trial (Tune would keep it PENDING forever); returns the
    cluster's resources for the record."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    best_cpu = max((n["Resources"].get("CPU", 0.0) for n in nodes), default=0.0)
    best_gpu = max((n["Resources"].get("GPU", 0.0) for n in nodes), default=0.0)
    total_gpu = sum(n["Resources"].get("GPU", 0.0) for n in nodes)
    if config.gpus_per_trial > best_gpu:
        raise ResourceError(
            f"each trial asks for gpus_per_trial={config.gpus_per_trial:g} GPU(s), but the largest node of this Ray "
            f"cluster has {best_gpu:g} (cluster total {total_gpu:g}); lower gpus_per_trial (0 runs on CPU) or add "
            "GPU nodes"
        )
    if config.cpus_per_trial > best_cpu:
        raise ResourceError(
            f"each trial asks for cpus_per_trial={config.cpus_per_trial:g} CPUs, but the largest node of this Ray "
            f"cluster has {best_cpu:g}; lower cpus_per_trial"
        )
    return {k: float(v) for k, v in ray.cluster_resources().items() if not k.startswith("node:")}


def ray_alive() -> bool:
    """Whether the Ray this driver uses still answers (its head's processes; a cluster's GCS)."""
    import ray

    try:
        node = ray._private.worker._global_node
        if node is not None and node.head:
            return not node.dead_processes()
        return bool(ray.nodes())
    except Exception:
        return False


def shutdown_ray() -> None:
    import ray

    try:
        ray.shutdown()
    except Exception as err:  # Ray already gone under the driver
        logger.debug("ray.shutdown: %s", err)


# ----- the outcome -----------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What the Tune run ended with: the trials planned, those the search could not draw (an exhausted
    space), the errors of trials Tune gave up on, and the fault that stopped the driver, if one did."""

    expected: int = 0
    dropped: int = 0
    errors: list[str] = field(default_factory=list)
    signal: str | None = None
    fault: str | None = None  # what stopped the driver: a sentence for the user, with what to do

    def stopped_by(self, err: BaseException, out: Path) -> None:
        """Record why the Tune run ended early; a driver error's traceback goes to ``out/driver_error.txt``."""
        # A signal handler's exception raised inside a Ray call (Cython) reaches here wrapped in a SystemError.
        interrupted = _in_chain(err, Interrupted)
        if interrupted is not None or _SIGNALS:
            self.signal = interrupted.signal if isinstance(interrupted, Interrupted) else _SIGNALS[0]
            self.fault = f"stopped by {self.signal}"
        elif isinstance(err, KeyboardInterrupt):
            self.signal = "SIGINT"
            self.fault = "stopped by SIGINT"
        elif is_disk_full(err):
            self.fault = f"the disk of {out} is full ({_free_mb(out)} MB free): free space, then {RESUME_HINT}"
        elif not ray_alive():
            self.fault = f"Ray stopped under the driver ({type(err).__name__}: {str(err)[:200]}); {RESUME_HINT}"
        else:
            path = out / "driver_error.txt"
            with contextlib.suppress(OSError):
                path.write_text("".join(traceback.format_exception(err)))
            self.fault = f"the driver failed: {type(err).__name__}: {str(err)[:300]} (traceback in {path})"


def _in_chain(err: BaseException, kind: type[BaseException]) -> BaseException | None:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def is_disk_full(err: BaseException) -> bool:
    """A full disk, as the OS, SQLite (through SQLAlchemy and MLflow) or torch report it."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(current)
        if "database or disk is full" in text or "No space left on device" in text:
            return True
        current = current.__cause__ or current.__context__
    return False


def _free_mb(out: Path) -> int:
    try:
        return shutil.disk_usage(out).free // 2**20
    except OSError:
        return -1
