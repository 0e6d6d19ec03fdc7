"""Where a sweep stops scaling: the real sweep (``sweep.run.run_sweep``, its driver in this process) on a loopback Ray
cluster of 4 worker nodes declaring 64 logical GPUs (``clusters/loopback.py``), with the synthetic tuner's trials,
logging to SQLite (a file every loopback node happens to see) or to the tracking server (``clusters/tracking.py``:
PostgreSQL, basic authentication, artifacts proxied), side by side.

    python benchmarks/cluster_scale.py                       # 16, 64 and 128 concurrent trials, both stores
    python benchmarks/cluster_scale.py --concurrency 16,32 --trial-s 30 --waves 3 --trials 1000

Per store and concurrency C (a column is skipped, saying so, where the machine has not the memory for C trial
processes: each trial is a Ray worker of about ``--worker-mb``):

- occupancy: ``waves x C`` trials of ``--trial-s`` seconds (a report, so an MLflow write, every second):
  busy trial-seconds (each trial's MLflow run, start to end) / (C slots x the span from the first start to the
  last end); the driver's CPU per trial over the Tune run (its process, all threads); the scheduling latency (a
  slot freed -> the next trial's run started: the k-th start after the first C against the (k-C)-th end);
  Tune's experiment-state saves (``TuneController.save_to_dir``);
- 1,000 trials: ``--trials`` short trials at the first concurrency: every configuration in MLflow once, Optuna's
  suggest time early and late in the study (the first and last 100 suggestions), the exports' time
  (``sweep.finish.finish``: reading the trials back and writing every export);
- the store alone: MLflow ``log_batch`` writes per second sustained by C client processes for ``--load-s``
  seconds, with their p95 latency (what the trials' reports cost the store).

Every server and node is on 127.0.0.x and stopped at the end; nothing else on the machine is touched.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clusters import tracking  # noqa: E402
from clusters.loopback import LoopbackCluster, free_ports  # noqa: E402

HEAD = "127.0.0.2"
WORKERS = 4
GPUS_PER_WORKER = 16  # 64 logical GPUs in all
STEP_S = 1.0  # one report (an MLflow write) per trial-second


# ----- measuring inside the driver -------------------------------------------------------------------------


class Probes:
    """Wraps the driver's functions to time them (this process is the driver)."""

    def __init__(self) -> None:
        self.saves: list[float] = []
        self.suggests: list[float] = []
        self.tells: list[float] = []
        self.tune_cpu_s = 0.0
        self.tune_wall_s = 0.0
        self.finish_s = 0.0
        self._undo: list[Callable[[], None]] = []

    def _wrap(self, owner: Any, name: str, record: Callable[[float, float], None]) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                record(time.perf_counter() - wall, time.process_time() - cpu)

        setattr(owner, name, timed)
        self._undo.append(lambda: setattr(owner, name, original))

    def __enter__(self) -> Probes:
        from ray.tune.execution.tune_controller import TuneController

        from sweep import finish, search, tune_run

        self._wrap(TuneController, "save_to_dir", lambda wall, cpu: self.saves.append(wall))
        self._wrap(search.TunerSearch, "suggest", lambda wall, cpu: self.suggests.append(wall))
        self._wrap(search.TunerSearch, "on_trial_complete", lambda wall, cpu: self.tells.append(wall))
        # run_sweep imports these when called: the wrapped functions are the ones it runs.
        self._wrap(tune_run, "run_trials", self._tune)
        self._wrap(finish, "finish", self._finish)
        return self

    def _tune(self, wall: float, cpu: float) -> None:
        self.tune_wall_s, self.tune_cpu_s = wall, cpu

    def _finish(self, wall: float, cpu: float) -> None:
        self.finish_s = wall

    def __exit__(self, *exc: object) -> None:
        for undo in reversed(self._undo):
            undo()


def _sweep(
    out: Path, *, trials: int, concurrent: int, trial_s: float, tracking_uri: str | None, address: str
) -> tuple[dict, Probes]:
    from sweep.config import load_sweep_config
    from sweep.run import run_sweep

    steps = max(1, round(trial_s / STEP_S))
    overrides = {
        "name": f"scale-{concurrent}-{trials}",
        "tuners": ["synthetic"],
        "baselines": [],
        "replicates": 1,
        "num_samples": trials,
        "max_concurrent": concurrent,
        # 128 trials on 64 GPUs share them by two; a trial's CPU share is nominal (its steps sleep).
        "gpus_per_trial": min(1.0, WORKERS * GPUS_PER_WORKER / concurrent),
        "cpus_per_trial": 0.25,
        "max_retries": 1,
        "checkpoint_every": 10,
        "search": {"synthetic": {"lambda_ppl": [0.01, 10.0]}},
        "tuner_config": {"synthetic": {"steps": steps, "step_s": trial_s / steps, "eval_every": 1}},
    }
    if tracking_uri:
        overrides["tracking_uri"] = tracking_uri
    config = load_sweep_config("smoke", config_file=None, overrides=overrides)
    os.environ["RAY_ADDRESS"] = address
    with Probes() as probes:
        summary = run_sweep(config, out, verbose=False)
    return summary, probes


def _trial_runs(summary: dict) -> list[Any]:
    from sweep import mlflow_log

    return mlflow_log.trial_runs(summary["tracking_uri"], summary["parent_run_id"])


def _occupancy(runs: list[Any], slots: int) -> tuple[float, list[float]]:
    """Busy trial-seconds over slot-seconds, and the scheduling latencies (seconds)."""
    spans = [(r.info.start_time / 1000, r.info.end_time / 1000) for r in runs if r.info.end_time]
    if not spans:
        return float("nan"), []
    first, last = min(s for s, _ in spans), max(e for _, e in spans)
    busy = sum(e - s for s, e in spans)
    starts, ends = sorted(s for s, _ in spans), sorted(e for _, e in spans)
    latencies = [max(0.0, starts[k] - ends[k - slots]) for k in range(slots, len(starts))]
    return busy / (slots * (last - first)), latencies


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ----- the store alone ---------------------------------------------------------------------------------------


def _load_client(uri: str, experiment_id: str, seconds: float, env: dict[str, str], queue: Any) -> None:
    os.environ.update(env)
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    run = client.create_run(experiment_id).info.run_id
    latencies = []
    step, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        now = int(time.time() * 1000)
        client.log_batch(
            run, metrics=[Metric("rep0/dev/acc", 0.5, now, step), Metric("rep0/dev/log_ppl", 7.0, now, step)]
        )
        latencies.append(time.perf_counter() - t0)
        step += 1
    queue.put(latencies)


def _store_load(uri: str, clients: int, seconds: float, env: dict[str, str]) -> tuple[float, float]:
    """MLflow log_batch writes per second sustained by ``clients`` processes, and their p95 latency (ms)."""
    from mlflow.tracking import MlflowClient

    os.environ.update(env)
    experiment = f"load-{clients}-{time.time_ns()}"
    experiment_id = MlflowClient(uri).create_experiment(experiment)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [
        context.Process(target=_load_client, args=(uri, experiment_id, seconds, env, queue)) for _ in range(clients)
    ]
    for worker in workers:
        worker.start()
    latencies: list[float] = []
    for _ in workers:
        latencies += queue.get(timeout=seconds + 120)
    for worker in workers:
        worker.join()
    return len(latencies) / seconds, 1000 * _pct(latencies, 0.95)


# ----- Optuna's storage ---------------------------------------------------------------------------------------


def _optuna_growth(storage_uri: str, trials: int, concurrent: int) -> dict[str, float]:
    """A study as the sweep runs one (its TPE sampler, two objectives, ``concurrent`` trials in flight) on
    ``storage_uri``: the median ask and tell time (ms) over the first and the last 100 trials."""
    import optuna

    from sweep.space import make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=optuna.storages.RDBStorage(storage_uri),
        study_name=f"growth-{time.time_ns()}",
        directions=["maximize", "maximize"],
        sampler=make_sampler("tpe", 0, trials),
    )
    asks: list[float] = []
    tells: list[float] = []
    flying: list[optuna.trial.Trial] = []
    for _ in range(trials):
        t0 = time.perf_counter()
        trial = study.ask()
        trial.suggest_float("lambda_ppl", 0.01, 10.0, log=True)
        trial.suggest_float("lambda_dist", 0.01, 10.0, log=True)
        asks.append(time.perf_counter() - t0)
        flying.append(trial)
        if len(flying) >= concurrent:
            done = flying.pop(0)
            x = done.params["lambda_ppl"]
            t0 = time.perf_counter()
            study.tell(done, [0.9 - 0.05 * x, -8 + x])
            tells.append(time.perf_counter() - t0)
    return {
        "ask_first100_ms": 1000 * statistics.median(asks[:100]),
        "ask_last100_ms": 1000 * statistics.median(asks[-100:]),
        "tell_last100_ms": 1000 * statistics.median(tells[-100:]),
    }


# ----- the table -----------------------------------------------------------------------------------------


def _available_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", default="16,64,128", help="concurrent trials, comma-separated")
    parser.add_argument("--stores", default="sqlite,server", help="sqlite and/or server")
    parser.add_argument("--trial-s", type=float, default=30.0, help="seconds of each occupancy trial")
    parser.add_argument("--waves", type=int, default=3, help="occupancy trials = waves x concurrency")
    parser.add_argument("--trials", type=int, default=1000, help="trials of the long sweep (0: skip it)")
    parser.add_argument("--short-trial-s", type=float, default=2.0, help="seconds of each of those trials")
    parser.add_argument("--load-s", type=float, default=15.0, help="seconds of each store load test")
    # Measured: a synthetic trial's Ray worker holds ~450 MB resident (Ray's core worker, Tune and the MLflow
    # client; no torch), so 64 trials need ~30 GB: a 24 GB machine runs 32 (with 64, Ray's memory monitor kills
    # workers and the sweep stalls).
    parser.add_argument("--worker-mb", type=int, default=460, help="memory of one trial's Ray worker process")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    stores = args.stores.split(",")
    results: dict[str, dict[str, Any]] = {}
    workdir = Path(tempfile.mkdtemp(prefix="promptsweep-scale-"))
    reason = tracking.missing() if "server" in stores else None
    if reason is not None:
        print(f"the tracking server cannot start here ({reason}): SQLite only")
        stores = [s for s in stores if s != "server"]
    port, db_port = free_ports(2)
    server_dir = workdir / "tracking"
    try:
        env: dict[str, str] = {}
        if "server" in stores:
            tracking.start(server_dir, port=port, db_port=db_port, workers=2)
            env = tracking.client_env(server_dir)
            os.environ.update({k: v for k, v in env.items() if k != "MLFLOW_TRACKING_URI"})
        credentials = {k: v for k, v in env.items() if k != "MLFLOW_TRACKING_URI"}
        with LoopbackCluster(workdir / "ray", env=credentials) as cluster:
            address = cluster.head(HEAD, num_cpus=1, num_gpus=0)
            for i in range(WORKERS):
                cluster.worker(f"127.0.0.{3 + i}", num_cpus=64, num_gpus=GPUS_PER_WORKER, max_workers=390)
            for store in stores:
                uri = env.get("MLFLOW_TRACKING_URI") if store == "server" else None
                for level in levels:
                    key = f"{store}/{level}"
                    need = level * args.worker_mb + 3000
                    if need > _available_mb():
                        results[key] = {"skipped": f"needs ~{need / 1024:.0f} GiB, {_available_mb() / 1024:.0f} free"}
                        print(f"{key}: skipped ({results[key]['skipped']})", flush=True)
                        continue
                    out = workdir / f"occupancy-{store}-{level}"
                    summary, probes = _sweep(
                        out,
                        trials=args.waves * level,
                        concurrent=level,
                        trial_s=args.trial_s,
                        tracking_uri=uri,
                        address=address,
                    )
                    runs = _trial_runs(summary)
                    occupancy, latencies = _occupancy(runs, level)
                    results[key] = {
                        "status": summary["status"],
                        "trials": len(runs),
                        "occupancy": occupancy,
                        "driver_cpu_ms_per_trial": 1000 * probes.tune_cpu_s / max(1, len(runs)),
                        "latency_median_s": statistics.median(latencies) if latencies else float("nan"),
                        "latency_p95_s": _pct(latencies, 0.95),
                        "tune_save_median_ms": 1000 * statistics.median(probes.saves) if probes.saves else float("nan"),
                        "tune_save_max_ms": 1000 * max(probes.saves, default=float("nan")),
                        "tune_saves": len(probes.saves),
                    }
                    print(f"{key}: {json.dumps(results[key])}", flush=True)
                if args.trials:
                    level = levels[0]
                    out = workdir / f"long-{store}"
                    summary, probes = _sweep(
                        out,
                        trials=args.trials,
                        concurrent=level,
                        trial_s=args.short_trial_s,
                        tracking_uri=uri,
                        address=address,
                    )
                    runs = _trial_runs(summary)
                    keys = [r.data.tags.get("promptsweep.trial_key") for r in runs]
                    finished = {r.data.tags.get("promptsweep.trial_key") for r in runs if r.info.status == "FINISHED"}
                    results[f"{store}/long"] = {
                        "status": summary["status"],
                        "concurrency": level,
                        "trials_planned": summary.get("trials_planned"),
                        "runs": len(runs),
                        "finished_once": len(finished) == len(keys) == args.trials,
                        "suggest_first100_ms": 1000 * statistics.median(probes.suggests[:100]),
                        "suggest_last100_ms": 1000 * statistics.median(probes.suggests[-100:]),
                        "tell_last100_ms": 1000 * statistics.median(probes.tells[-100:]) if probes.tells else 0.0,
                        "tune_wall_s": probes.tune_wall_s,
                        "trials_per_min": 60 * len(runs) / probes.tune_wall_s,
                        "driver_cpu_ms_per_trial": 1000 * probes.tune_cpu_s / max(1, len(runs)),
                        "exports_s": probes.finish_s,
                        "tune_save_median_ms": 1000 * statistics.median(probes.saves) if probes.saves else float("nan"),
                        "tune_save_max_ms": 1000 * max(probes.saves, default=float("nan")),
                    }
                    print(f"{store}/long: {json.dumps(results[f'{store}/long'])}", flush=True)
            # Disconnect before the cluster stops: Ray's core worker ends a process whose cluster is gone (a
            # minute later, with no Python exception), which lost the store and Optuna measurements below.
            import ray

            ray.shutdown()
            os.environ.pop("RAY_ADDRESS", None)
        for store in stores:
            uri = env["MLFLOW_TRACKING_URI"] if store == "server" else f"sqlite:///{workdir / 'load.db'}"
            for clients in sorted({4, levels[0]}):
                writes, p95 = _store_load(uri, clients, args.load_s, env if store == "server" else {})
                results[f"{store}/load{clients}"] = {"writes_per_s": writes, "p95_ms": p95}
                print(f"{store}/load{clients}: {writes:.0f} writes/s, p95 {p95:.0f} ms", flush=True)
        if args.trials:  # the study alone, on the driver's SQLite file and on the server's PostgreSQL
            storages = {"sqlite": f"sqlite:///{workdir / 'optuna.db'}"}
            if "server" in stores:
                storages["server"] = tracking.optuna_storage_uri(server_dir)
            for store, storage in storages.items():
                results[f"{store}/optuna"] = _optuna_growth(storage, args.trials, levels[0])
                print(f"{store}/optuna: {json.dumps(results[f'{store}/optuna'])}", flush=True)
    finally:
        if "server" in stores:
            tracking.stop(server_dir, wipe=True)
    _print_table(results, levels, stores)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _print_table(results: dict[str, dict[str, Any]], levels: list[int], stores: list[str]) -> None:
    def cell(key: str, field: str, form: str) -> str:
        row = results.get(key, {})
        if "skipped" in row:
            return "skipped"
        value = row.get(field)
        return "-" if value is None else form.format(value)

    columns = [f"{store}/{level}" for level in levels for store in stores]
    rows = [
        ("slot occupancy", "occupancy", "{:.1%}"),
        ("driver CPU per trial (ms)", "driver_cpu_ms_per_trial", "{:.0f}"),
        ("scheduling latency median (s)", "latency_median_s", "{:.2f}"),
        ("scheduling latency p95 (s)", "latency_p95_s", "{:.2f}"),
        ("Tune state save median (ms)", "tune_save_median_ms", "{:.0f}"),
        ("Tune state save max (ms)", "tune_save_max_ms", "{:.0f}"),
    ]
    width = max(16, *(len(c) + 2 for c in columns))
    print("\noccupancy sweeps (concurrent trials of --trial-s)")
    print(f"{'':32}" + "".join(f"{c:>{width}}" for c in columns))
    for label, field, form in rows:
        print(f"{label:32}" + "".join(f"{cell(c, field, form):>{width}}" for c in columns))
    for key in columns:
        if "skipped" in results.get(key, {}):
            print(f"  {key}: {results[key]['skipped']}")
    long_rows = [
        ("trials in MLflow once", "finished_once", "{}"),
        ("trials per minute", "trials_per_min", "{:.0f}"),
        ("Optuna suggest, first 100 (ms)", "suggest_first100_ms", "{:.1f}"),
        ("Optuna suggest, last 100 (ms)", "suggest_last100_ms", "{:.1f}"),
        ("Optuna tell, last 100 (ms)", "tell_last100_ms", "{:.1f}"),
        ("driver CPU per trial (ms)", "driver_cpu_ms_per_trial", "{:.0f}"),
        ("Tune state save max (ms)", "tune_save_max_ms", "{:.0f}"),
        ("exports after the sweep (s)", "exports_s", "{:.1f}"),
    ]
    long_columns = [f"{store}/long" for store in stores if f"{store}/long" in results]
    if long_columns:
        print("\nthe long sweep (--trials short trials at the first concurrency)")
        print(f"{'':32}" + "".join(f"{c:>{width}}" for c in long_columns))
        for label, field, form in long_rows:
            print(f"{label:32}" + "".join(f"{cell(c, field, form):>{width}}" for c in long_columns))
    studies = [k for k in results if k.endswith("/optuna")]
    if studies:
        print("\nOptuna's study alone (the sweep's TPE, --trials trials, the first concurrency in flight)")
        for key in studies:
            row = results[key]
            print(
                f"  {key:24} ask {row['ask_first100_ms']:6.1f} ms (first 100) -> {row['ask_last100_ms']:6.1f} ms "
                f"(last 100)   tell {row['tell_last100_ms']:6.1f} ms"
            )
    load = sorted(k for k in results if "/load" in k)
    if load:
        print("\nthe store alone (MLflow log_batch from N client processes)")
        for key in load:
            print(f"  {key:24} {results[key]['writes_per_s']:8.0f} writes/s   p95 {results[key]['p95_ms']:6.0f} ms")


if __name__ == "__main__":
    sys.exit(main())
