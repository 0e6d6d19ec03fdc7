"""Run a sweep: Ray Tune trials of prompt tuners, Optuna multi-objective search, MLflow, Pareto exports.

    python sweep/run.py --preset demo [--config FILE.yaml] [--set key=value ...] [--out DIR]
    ray job submit --working-dir . -- python sweep/run.py --preset paper --out /shared/runs/paper

With ``RAY_ADDRESS`` set (as ``ray job submit`` does) it joins that cluster; otherwise it starts an
embedded local Ray. Reads top to bottom: config, Ray, MLflow parent run, one Tune run per tuner, exports.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Run as a script (``python sweep/run.py``), Python puts ``sweep/`` itself first on the path, where its
# modules (config, search, ...) would shadow top-level names; the project root belongs there instead.
_ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(_ROOT)
elif str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))
if not os.environ.get("RAY_ADDRESS"):
    # The embedded Ray is one node: keep it on loopback (Ray otherwise swaps 127.0.0.1 for the machine's
    # interface address). Ray reads this when it is imported, so it is set before anything imports Ray.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from objectives.problem import ConfigError  # noqa: E402
from sweep import mlflow_log  # noqa: E402
from sweep.config import SweepConfig, load_sweep_config  # noqa: E402
from tuners.base import parse_overrides  # noqa: E402

logger = logging.getLogger("sweep.run")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sweep/run.py", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="smoke", help="smoke, demo or paper (default smoke)")
    parser.add_argument("--config", help="YAML file of sweep fields, applied on top of the preset")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a sweep field; dotted keys reach per-tuner tables (tuner_config.pez.steps=30)",
    )
    parser.add_argument("--out", help="output folder (default runs/<name>)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        config = load_sweep_config(args.preset, config_file=args.config, overrides=parse_overrides(args.overrides))
    except (ConfigError, KeyError) as err:
        print(f"error: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr)
        return 2
    if os.environ.get("RAY_ADDRESS") and not (args.out and Path(args.out).is_absolute()):
        logger.warning(
            "--out %r is relative on a cluster: under `ray job submit` that is the job's temporary working "
            "directory, deleted with the job. Pass an absolute --out on storage you keep.",
            args.out or f"runs/{config.name}",
        )
    out = Path(args.out or Path("runs") / config.name).resolve()
    try:
        run_sweep(config, out)
    except ResourceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


class ResourceError(RuntimeError):
    """The cluster cannot place a trial; Tune would otherwise leave it pending forever."""


def run_sweep(config: SweepConfig, out: Path) -> dict[str, Any]:
    """Plan, run every trial in one Tune run, then export. Returns what ``sweep.json`` holds."""
    import ray

    started = time.time()
    out.mkdir(parents=True, exist_ok=True)
    tracking_uri = config.tracking_uri or mlflow_log.default_tracking_uri(out)
    started_ray = _init_ray(config)
    try:
        check_resources(config)
        experiment_id, parent = mlflow_log.start_parent(
            tracking_uri,
            config.name,
            params=config.to_dict(),
            objectives=config.objectives,
            artifact_root=out / "mlartifacts",
            labels=config.axis_labels,
        )
        logger.info("MLflow: %s experiment %r parent run %s", tracking_uri, config.name, parent)
        timings: dict[str, float] = {}
        status = "FAILED"
        try:
            t0 = time.time()
            _tune(config, out, tracking_uri, experiment_id, parent)
            timings["tune_s"] = time.time() - t0
            status = "FINISHED"
        finally:
            # Whatever happened, the trials already in MLflow are exported: nothing that ran is lost.
            summary = _finish(config, out, tracking_uri, experiment_id, parent, status, timings, started)
        return summary
    finally:
        if started_ray:
            ray.shutdown()


def _tune(config: SweepConfig, out: Path, tracking_uri: str, experiment_id: str, parent: str) -> None:
    """One Tune run for every tuner and baseline: fixed trials first, then each tuner's Optuna search."""
    from ray import tune

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
            tracking_uri=tracking_uri,
            experiment_id=experiment_id,
            parent_run_id=parent,
            replicates=config.replicates,
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
            study_name=f"{config.name}-{tuner}-{parent[:8]}",
            integer_knobs=integers[tuner],
        )
        for tuner in config.tuners
        if config.search.get(tuner)
    }
    search = MultiTunerSearch(searchers, fixed=fixed, knobs=knobs, num_samples=config.num_samples, seed=config.seed)
    resources = {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial}
    trainable = tune.with_resources(tune.with_parameters(run_trial, contexts=contexts), resources)
    grid = tune.Tuner(
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
            verbose=1,
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
        ),
    ).fit()
    errors = [r.error for r in grid if r.error is not None]
    if errors:
        logger.warning("%d of %d trials failed; first error: %s", len(errors), len(grid), errors[0])


def _finish(
    config: SweepConfig,
    out: Path,
    tracking_uri: str,
    experiment_id: str,
    parent: str,
    status: str,
    timings: dict[str, float],
    started: float,
) -> dict[str, Any]:
    """Exports from MLflow, ``sweep.json``, the parent run's metrics and artifacts, the console table."""
    import ray

    from sweep.exports import front_table_text, write_exports

    table = mlflow_log.trials_table(tracking_uri, parent)
    exported = write_exports(table, out, config.objectives, labels=config.axis_labels)
    timings["total_s"] = time.time() - started
    summary = {
        "config": config.to_dict(),
        "tracking_uri": tracking_uri,
        "experiment": config.name,
        "experiment_id": experiment_id,
        "parent_run_id": parent,
        "ray_storage_path": str(out / "ray"),
        "optuna_storage": f"sqlite:///{out / 'optuna.db'}",
        "cluster_resources": ray.cluster_resources(),
        "trials_finished": len(exported.table),
        "summary_metrics": exported.summary_metrics,
        "timings": timings,
        "status": status,
        "versions": _versions(),
    }
    (out / "sweep.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    mlflow_log.finish_parent(
        tracking_uri,
        parent,
        files=[out / name for name in exported.files + ["sweep.json"]],
        metrics=exported.summary_metrics,
        status=status,
    )
    print(front_table_text(exported.table, exported.fronts))
    print(f"\nwrote {out} ({', '.join(exported.files)}, sweep.json); MLflow: {tracking_uri}")
    return summary


def _init_ray(config: SweepConfig) -> bool:
    """Join the cluster of ``RAY_ADDRESS`` or start an embedded one; True when this call started Ray."""
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        return False

    # Embedded: workers get the project root on their path, so a plain checkout works without installing.
    pythonpath = os.pathsep.join(p for p in (str(_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(
        num_cpus=config.ray_num_cpus,
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
        _node_ip_address="127.0.0.1",
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
