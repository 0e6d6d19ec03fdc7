"""Run a sweep: Ray Tune trials of prompt tuners, Optuna multi-objective search, MLflow, Pareto exports.

    python sweep/run.py --preset demo [--config FILE.yaml] [--set key=value ...] [--out DIR]
    ray job submit --working-dir . -- python sweep/run.py --preset paper --out /shared/runs/paper

With ``RAY_ADDRESS`` set (as ``ray job submit`` does) it joins that cluster; otherwise it starts an
embedded local Ray. Reads top to bottom: config, checks, Ray, the MLflow parent run (new or resumed), one
Tune run for every tuner and baseline, the exports and the record, the console summary. The plumbing of
each step is in ``sweep/driver.py``, the console summary in ``sweep/summary.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    # Run as a script (``python sweep/run.py``, as ``ray job submit`` does), Python puts ``sweep/`` itself
    # first on the path, where its modules (config, search, ...) would shadow top-level names.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import dataclasses
import logging
import os
import time
from typing import Any

from objectives.errors import ConfigError, ResourceError, UserError
from sweep.config import SweepConfig, load_sweep_config
from sweep.driver import EXIT_CODES, Interrupted

__all__ = ["EXIT_CODES", "ResourceError", "cli", "main", "run_sweep"]

logger = logging.getLogger("sweep.run")
# Libraries whose INFO lines are noise at the console (one line per glyph table per PDF, per Ray start, ...).
_QUIET = ("fontTools", "matplotlib", "ray", "mlflow", "alembic", "optuna", "urllib3", "filelock", "transformers")
# Tune logs a trial whose worker died with the whole traceback; the progress line says it (and the retry)
# in one line, and the summary names the first failure.
_TRACEBACKS = ("ray.tune.execution.tune_controller", "ray.tune.execution.experiment_state")


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
        for name in _TRACEBACKS:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        # These configure their own loggers or printers when imported or run, so a level set here is not
        # enough: MLflow's store-migration lines, Optuna's "new study" lines, Tune's experiment box and its
        # TensorBoard hint (the legacy reporter at verbose 0 prints nothing).
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)

    from tuners.configs import parse_overrides

    try:
        config = load_sweep_config(args.preset, config_file=args.config, overrides=parse_overrides(args.overrides))
        if os.environ.get("RAY_ADDRESS") and not (args.out and Path(args.out).is_absolute()):
            logger.warning(
                "--out %r is relative on a cluster: under `ray job submit` that is the job's temporary working "
                "directory, deleted with the job. Pass an absolute --out on storage you keep.",
                args.out or f"runs/{config.name}",
            )
        if args.out is not None and not args.out.strip():
            raise ConfigError("--out '' is empty; give a folder, or leave --out out for runs/<name>")
        out = Path(args.out or Path("runs") / config.name).resolve()
        summary = run_sweep(config, out, fresh=args.fresh, verbose=args.verbose)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Interrupted as err:  # before the sweep had anything to record
        print(f"interrupted by {err.signal} before the sweep started", file=sys.stderr)
        return EXIT_CODES["INTERRUPTED"]
    return EXIT_CODES[summary["status"]]


def run_sweep(config: SweepConfig, out: Path, *, fresh: bool = False, verbose: bool = True) -> dict[str, Any]:
    """Plan, run every trial in one Tune run, then export. Returns what ``sweep.json`` holds.

    A sweep whose ``out`` already holds the same sweep continues it (configurations with an outcome are kept,
    unfinished ones resume from their checkpoints); ``fresh`` starts over in the same folder instead. Without
    ``verbose`` the console gets one progress line per trial event instead of Tune's tables and worker logs.
    Whatever stops the Tune run (a signal, Ray lost, a full disk) the sweep ends with its record written and
    its status saying so (``sweep/driver.py``).
    """
    from sweep import driver
    from sweep.finish import finish
    from sweep.preflight import preflight
    from sweep.summary import print_summary
    from sweep.tune_run import run_trials

    started = time.time()
    preflight(config, out, local=not os.environ.get("RAY_ADDRESS"))
    out.mkdir(parents=True, exist_ok=True)
    with driver.locked(out):
        started_ray = driver.init_ray(config, verbose=verbose)
        try:
            # Installed after Ray's start: ray.init sets a SIGTERM handler of its own in the driver process.
            with driver.interrupts():
                resources = driver.check_resources(config)
                plan = driver.plan(config, out, fresh=fresh)
                outcome = driver.Outcome(expected=config.total_trials())
                timings: dict[str, float] = {}
                t0 = time.time()
                try:
                    run_trials(config, out, plan, outcome, verbose=verbose)
                except (driver.Interrupted, KeyboardInterrupt, Exception) as err:
                    outcome.stopped_by(err, out)
                timings["tune_s"] = time.time() - t0
                summary = finish(config, out, plan, outcome, timings=timings, started=started, resources=resources)
        finally:
            if started_ray:
                driver.shutdown_ray()
    print_summary(summary, out)
    summary.pop("exported", None)
    return summary


def cli() -> int:
    """The command line: the driver in a child process watched by ``sweep/supervise.py`` (Ray can end the
    driver's process from C++; the parent then records the end the driver could not)."""
    from sweep import supervise

    argv = sys.argv[1:]
    if os.environ.get(supervise.ENV) or any(a in ("-h", "--help") for a in argv):
        return main(argv)
    return supervise.supervise(argv)


if __name__ == "__main__":
    sys.exit(cli())
