"""Run a sweep: Ray Tune trials of prompt tuners, Optuna multi-objective search, MLflow, Pareto exports.

    python sweep/run.py --preset demo [--config FILE.yaml] [--set key=value ...] [--out DIR]
    ray job submit --working-dir . -- python sweep/run.py --preset paper --out /shared/runs/paper

With ``RAY_ADDRESS`` set (as ``ray job submit`` does) it joins that cluster; otherwise it starts an
embedded local Ray. Reads top to bottom: config, Ray, MLflow parent run, one Tune run per tuner, exports.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    # Run as a script (``python sweep/run.py``, as ``ray job submit`` does), Python puts ``sweep/`` itself
    # first on the path, where its modules (config, search, ...) would shadow top-level names.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from objectives.errors import ConfigError, ResourceError, UserError
from sweep.config import SweepConfig, load_sweep_config

_ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("sweep.run")
# Libraries whose INFO lines are noise at the console (one line per glyph table per PDF, per Ray start, ...).
_QUIET = ("fontTools", "matplotlib", "ray", "mlflow", "alembic", "optuna", "urllib3", "filelock", "transformers")


def fields_help() -> str:
    """Every ``SweepConfig`` field with its default and help text, for ``--help``."""
    lines = ["sweep fields (--set KEY=VALUE, or keys of --config FILE.yaml; the preset sets many of them):"]
    for f in dataclasses.fields(SweepConfig):
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "(from the preset)"
        lines.append(f"  {f.name:<16} {f.metadata.get('help', '')}  [default: {default}]")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sweep/run.py",
        description=__doc__.split("\n")[0],
        epilog=fields_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--preset", default="smoke", help="smoke, demo or paper (default smoke)")
    parser.add_argument("--config", help="YAML file of sweep fields, applied on top of the preset")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a sweep field; dotted keys reach the tables (problem.task=PATH, tuner_config.pez.steps=30)",
    )
    parser.add_argument("--out", help="output folder (default runs/<name>); rerunning on it resumes the sweep")
    parser.add_argument("--fresh", action="store_true", help="start over in --out instead of resuming the sweep there")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="Tune's per-trial tables, worker logs and every INFO line"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        for name in _QUIET:
            logging.getLogger(name).setLevel(logging.WARNING)
        # These configure their own loggers or printers when imported or run, so a level set here is not
        # enough: MLflow's store-migration lines, Optuna's "new study" lines, Tune's experiment box and its
        # TensorBoard hint (the legacy reporter at verbose 0 prints nothing).
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        # One snapshot per trial checkpoint is by design here; Tune warns about it every few seconds.
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)

    from tuners.base import parse_overrides

    try:
        config = load_sweep_config(args.preset, config_file=args.config, overrides=parse_overrides(args.overrides))
        if os.environ.get("RAY_ADDRESS") and not (args.out and Path(args.out).is_absolute()):
            logger.warning(
                "--out %r is relative on a cluster: under `ray job submit` that is the job's temporary working "
                "directory, deleted with the job. Pass an absolute --out on storage you keep.",
                args.out or f"runs/{config.name}",
            )
        out = Path(args.out or Path("runs") / config.name).resolve()
        summary = run_sweep(config, out, fresh=args.fresh, verbose=args.verbose)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return EXIT_CODES[summary["status"]]


__all__ = ["EXIT_CODES", "ResourceError", "main", "run_sweep"]
# 0 only when every trial finished; an interrupted sweep (resumable) is not a success either.
EXIT_CODES = {"FINISHED": 0, "FAILED": 1, "KILLED": 130}


def run_sweep(config: SweepConfig, out: Path, *, fresh: bool = False, verbose: bool = True) -> dict[str, Any]:
    """Plan, run every trial in one Tune run, then export. Returns what ``sweep.json`` holds.

    A sweep whose ``out`` already holds the same sweep continues it (finished trials are kept, unfinished
    ones resume from their checkpoints); ``fresh`` starts over in the same folder instead. Without
    ``verbose`` the console gets one progress line per trial event instead of Tune's tables and worker logs.
    """
    import ray

    from sweep.preflight import preflight

    started = time.time()
    preflight(config, out, local=not os.environ.get("RAY_ADDRESS"))
    out.mkdir(parents=True, exist_ok=True)
    lock = _lock(out)
    try:
        plan = _plan(config, out, fresh=fresh)
        started_ray = _init_ray(config, verbose=verbose)
        try:
            check_resources(config)
            timings: dict[str, float] = {}
            outcome = Outcome(expected=config.total_trials())
            with _sigterm_interrupts() as signals:
                try:
                    t0 = time.time()
                    outcome = _tune(config, out, plan, verbose=verbose)
                    timings["tune_s"] = time.time() - t0
                except Exception as err:
                    outcome.errors.append(f"{type(err).__name__}: {err}")
                    raise
                finally:
                    # Whatever happened, the trials already in MLflow are exported: nothing that ran is lost.
                    outcome.signal = outcome.signal or signals.received
                    summary = _finish(config, out, plan, outcome, timings, started)
            return summary
        finally:
            if started_ray:
                ray.shutdown()
    finally:
        lock.close()


@dataclass(frozen=True)
class Plan:
    """Where a sweep records itself: the MLflow store, experiment and parent run (new, or the one resumed)."""

    tracking_uri: str
    experiment_id: str
    parent: str
    resumed: bool
    tags: dict[str, str] = field(default_factory=dict)


def _plan(config: SweepConfig, out: Path, *, fresh: bool) -> Plan:
    """Start the sweep's parent run, or reopen the one of the same sweep in ``out`` to continue it.

    ``sweep.json`` is written at once (status RUNNING), so a driver that is lost later leaves what a rerun needs.
    """
    from sweep import mlflow_log

    tracking_uri = config.tracking_uri or mlflow_log.default_tracking_uri(out)
    record = out / "sweep.json"
    previous = json.loads(record.read_text()) if record.is_file() else None
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
        killed = mlflow_log.close_running_children(
            tracking_uri, parent, reason="its attempt stopped with the sweep's driver; the resumed sweep continues it"
        )
        mlflow_log.reopen_parent(tracking_uri, parent)
        logger.info("resuming sweep %s in %s (%d interrupted trial runs closed)", parent, out, killed)
        plan = Plan(tracking_uri, experiment_id, parent, resumed=True, tags=tags)
    else:
        if previous is not None:
            mlflow_log.close_parent(previous["tracking_uri"], previous["parent_run_id"], reason="superseded by --fresh")
            shutil.rmtree(out / "ray" / config.name, ignore_errors=True)  # resumable state only; MLflow keeps runs
        experiment_id, parent = mlflow_log.start_parent(
            tracking_uri,
            config.name,
            params=config.to_dict(),
            objectives=config.objectives,
            artifact_root=out / "mlartifacts",
            labels=config.axis_labels,
            tags=tags,
        )
        plan = Plan(tracking_uri, experiment_id, parent, resumed=False, tags=tags)
    logger.info("MLflow: %s experiment %r parent run %s", tracking_uri, config.name, parent)
    record.write_text(json.dumps(_record(config, out, plan, status="RUNNING"), indent=2, default=str) + "\n")
    return plan


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


def _record(config: SweepConfig, out: Path, plan: Plan, *, status: str) -> dict[str, Any]:
    return {
        "config": config.to_dict(),
        "tracking_uri": plan.tracking_uri,
        "experiment": config.name,
        "experiment_id": plan.experiment_id,
        "parent_run_id": plan.parent,
        "ray_storage_path": str(out / "ray"),
        "optuna_storage": f"sqlite:///{out / 'optuna.db'}",
        "status": status,
        "git_commit": plan.tags.get("mlflow.source.git.commit"),
        "versions": _versions(),
    }


class _Signals:
    received: str | None = None


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[_Signals]:
    """SIGTERM (what Kubernetes and spot reclaims send) stops the sweep as Ctrl-C does: Tune saves its state,
    the exports are written, the runs are closed, the exit code says the sweep is incomplete."""
    signals = _Signals()

    def handler(signum: int, frame: object) -> None:
        signals.received = signal.Signals(signum).name
        os.kill(os.getpid(), signal.SIGINT)  # Tune's own graceful stop

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (a notebook, a test runner thread): leave signals alone
        yield signals
        return
    try:
        yield signals
    finally:
        signal.signal(signal.SIGTERM, previous)


def _lock(out: Path) -> Any:
    """Hold ``out/.sweep.lock`` for this sweep's life: a second sweep on the same folder is refused."""
    import fcntl

    handle = (out / ".sweep.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        handle.close()
        raise ResourceError(
            f"--out {str(out)!r} is held by another sweep that is still running; wait for it, or use another --out"
        ) from err
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


@dataclass
class Outcome:
    """What the Tune run ended with: the trials it was to run, the errors of trials that failed with their
    worker, and the signal that interrupted it, if one did."""

    expected: int = 0
    errors: list[str] = field(default_factory=list)
    signal: str | None = None


def _tune(config: SweepConfig, out: Path, plan: Plan, *, verbose: bool = True) -> Outcome:
    """One Tune run for every tuner and baseline: fixed trials first, then each tuner's Optuna search.

    A resumed sweep restores Tune's experiment (its trials and the searcher's state) from ``out/ray``.
    """
    # Tune saves its experiment state this often (seconds); a lost driver loses at most this much of the
    # record of which trials finished (and those are found again in MLflow by the trainable).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    from ray import tune

    from sweep.progress import SweepProgress
    from sweep.search import MultiTunerSearch, integer_knobs_of, make_searcher, sampled_budget
    from sweep.trainable import TrialContext, run_trial
    from tuners import get_tuner

    fixed = config.fixed_trials()
    knobs = {tuner: tuple(config.search.get(tuner, {})) for tuner in config.runs()}
    integers = {tuner: integer_knobs_of(get_tuner(tuner).config_cls, knobs[tuner]) for tuner in config.runs()}
    contexts = {
        tuner: TrialContext(
            tuner=tuner,
            values=config.trial_values(tuner),
            weights=knobs[tuner],
            integer_knobs=integers[tuner],
            tracking_uri=plan.tracking_uri,
            experiment_id=plan.experiment_id,
            parent_run_id=plan.parent,
            objectives=config.objectives,
            replicates=config.replicates,
            checkpoint_every=config.checkpoint_every,
            tags=plan.tags,
        )
        for tuner in config.runs()
    }
    searchers = {
        tuner: make_searcher(
            ranges=config.search[tuner],
            objectives=config.objectives,
            sampler=config.sampler,
            seed=config.seed,
            budget=sampled_budget(config.num_samples, fixed[tuner]),
            storage_path=out / "optuna.db",
            study_name=f"{config.name}-{tuner}-{plan.parent[:8]}",
            integer_knobs=integers[tuner],
        )
        for tuner in config.tuners
        if config.search.get(tuner)
    }
    search = MultiTunerSearch(searchers, fixed=fixed, knobs=knobs, num_samples=config.num_samples, seed=config.seed)
    resources = {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial}
    trainable = tune.with_resources(tune.with_parameters(run_trial, contexts=contexts), resources)
    path = out / "ray" / config.name
    if plan.resumed and tune.Tuner.can_restore(str(path)):
        logger.info("restoring Tune's experiment from %s", path)
        tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True)
        # A restored run keeps its RunConfig: the progress line is only for fresh runs, Tune's own output here.
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=search,
                num_samples=search.total_trials,
                max_concurrent_trials=config.max_concurrent,
                # Trials share an actor process one after another, so the model and data loaded by the
                # first (cached per process) serve the rest.
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=config.name,
                storage_path=str(out / "ray"),
                verbose=1 if verbose else 0,
                callbacks=[] if verbose else [SweepProgress(search.total_trials)],
                # A trial whose worker died is retried from its checkpoint; one that failed by itself reports
                # its failure instead of raising (sweep/trainable.py), so it is not retried blindly.
                failure_config=tune.FailureConfig(max_failures=config.max_retries, fail_fast=False),
                # Only the latest checkpoint of a trial is ever resumed from.
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )
    grid = tuner.fit()
    errors = [f"{type(r.error).__name__}: {r.error}" for r in grid if r.error is not None]
    if errors:
        logger.warning("%d of %d trials failed; first error: %s", len(errors), len(grid), errors[0])
    assert search.total_trials == config.total_trials()
    return Outcome(expected=search.total_trials, errors=errors)


def _finish(
    config: SweepConfig, out: Path, plan: Plan, outcome: Outcome, timings: dict[str, float], started: float
) -> dict[str, Any]:
    """Exports from MLflow, ``sweep.json``, the parent run's metrics and artifacts, the console summary.

    The sweep FINISHED only when every trial it was to run finished (MLflow is the record). Otherwise it
    was KILLED (interrupted: rerun the command to resume) or FAILED (some trial failed), and the summary says
    how many trials did not finish and why the first failed.
    """
    import ray

    from sweep import mlflow_log
    from sweep.compare import LEARN_METRIC, learning_text
    from sweep.exports import front_table_text, write_exports
    from sweep.report import collect_curves

    interrupted = mlflow_log.close_running_children(
        plan.tracking_uri,
        plan.parent,
        reason="the sweep was interrupted while this trial ran; rerun the same command (same --out) to resume it",
    )
    table = mlflow_log.trials_table(plan.tracking_uri, plan.parent)
    counts = mlflow_log.child_status_counts(plan.tracking_uri, plan.parent)
    finished, failed = counts.get("FINISHED", 0), counts.get("FAILED", 0)
    first_error = mlflow_log.first_failure(plan.tracking_uri, plan.parent) or (
        outcome.errors[0] if outcome.errors else None
    )
    if finished >= outcome.expected and not outcome.errors:
        status = "FINISHED"
    elif failed or outcome.errors:
        status = "FAILED"
    else:
        status = "KILLED"
    record = {
        **_record(config, out, plan, status=status),
        "resumed": plan.resumed,
        "interrupted_by": outcome.signal,
        "cluster_resources": ray.cluster_resources(),
        "trials_expected": outcome.expected,
        "trials_finished": finished,
        "trials_failed": failed,
        "trials_killed": counts.get("KILLED", 0),
        "trials_retried": counts.get("retried", 0),
        "trials_interrupted_now": interrupted,
        "first_error": first_error,
    }
    exported = write_exports(
        table,
        out,
        config.objectives,
        labels=config.axis_labels,
        curves=collect_curves(plan.tracking_uri, table["mlflow_run_id"].tolist() if len(table) else []),
        # total_s is known only after the exports; the report shows the time up to them.
        header={**record, "timings": {**timings, "before_exports_s": time.time() - started}},
    )
    timings["total_s"] = time.time() - started
    summary = {**record, "summary_metrics": exported.summary_metrics, "timings": timings}
    (out / "sweep.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    mlflow_log.finish_parent(
        plan.tracking_uri,
        plan.parent,
        files=[out / name for name in exported.files + ["sweep.json"]],
        metrics=exported.summary_metrics,
        status=status,
    )
    print(front_table_text(exported.table, exported.fronts))
    hypervolumes = "  ".join(
        f"{key.split('/', 1)[1]} {value:.4g}"
        for key, value in exported.summary_metrics.items()
        if key.startswith("hypervolume/")
    )
    print(
        f"\nsweep {status} in {_duration(timings['total_s'])}: {finished} of {outcome.expected} trials finished, "
        f"{failed} failed, {counts.get('retried', 0)} retried" + (", resumed" if plan.resumed else "")
    )
    if hypervolumes:
        print(f"hypervolume: {hypervolumes}")
    for key in exported.summary_metrics:
        if key.startswith(LEARN_METRIC + "/") and "." not in key:
            tuner = key.rsplit("/", 1)[1]
            n = int(exported.summary_metrics.get(key + ".n", 0))
            trials = int(exported.summary_metrics.get(key + ".trials", 0))
            print(
                f"{tuner} learning (trained minus untrained greedy prompt, dev accuracy; mean ± 95 % over {n} "
                f"replicates, each averaged over {trials} trials): {learning_text(exported.summary_metrics, tuner)}"
            )
    if first_error:
        print(f"first failure: {first_error}")
    if status == "KILLED":
        print("interrupted: rerun the same command with the same --out to resume")
    print(f"\nwrote {out}: {', '.join(exported.files)}, sweep.json")
    if "report.html" in exported.files:
        print(f"  report:           open {out / 'report.html'}")
    print(f"  MLflow UI:        mlflow ui --backend-store-uri {plan.tracking_uri}")
    print(f"  optuna-dashboard: optuna-dashboard sqlite:///{out / 'optuna.db'}   (pip install -e '.[dashboard]')")
    return summary


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _init_ray(config: SweepConfig, *, verbose: bool = True) -> bool:
    """Join the cluster of ``RAY_ADDRESS`` or start an embedded one; True when this call started Ray."""
    if not os.environ.get("RAY_ADDRESS"):
        # The embedded Ray is one node: keep it on loopback (Ray otherwise swaps 127.0.0.1 for the machine's
        # interface address). Ray reads this when it is imported.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return False
    quiet = {} if verbose else {"log_to_driver": False, "logging_level": logging.WARNING}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**quiet)
        return False

    # Embedded: workers get the project root on their path, so a plain checkout works without installing.
    pythonpath = os.pathsep.join(p for p in (str(_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(
        num_cpus=config.ray_num_cpus,
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
        _node_ip_address="127.0.0.1",
        **quiet,
    )
    return True


def check_resources(config: SweepConfig) -> None:
    """Fail in seconds when no node can hold one trial (Tune would keep it PENDING forever)."""
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


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "ray", "optuna", "mlflow", "pyarrow"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "missing"
    return out


if __name__ == "__main__":
    sys.exit(main())
