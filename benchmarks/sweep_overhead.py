"""Sweep overhead: N smoke trials through the whole sweep against the same N tuner runs in one process.

    python benchmarks/sweep_overhead.py [--trials 8] [--concurrent 1]

Both sides run the same tuner configurations (the smoke preset's PEZ with the weights the sweep sampled),
so the difference is what Ray Tune, Optuna, MLflow and the exports add: Ray start-up, actor processes and
their imports, the per-process model load, MLflow writes, and the Pareto exports. With ``--concurrent 1``
the sweep gets no parallelism, which isolates the overhead; with 2 it shows what parallel trials win back.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--concurrent", type=int, default=1)
    args = parser.parse_args()

    import os

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import pyarrow.parquet as pq

    from sweep.config import load_sweep_config
    from sweep.run import run_sweep
    from tuners import get_tuner, make_config

    out = Path(tempfile.mkdtemp(prefix="sweep-overhead-"))
    config = load_sweep_config(
        "smoke",
        config_file=None,
        overrides={"tuners": ["pez"], "num_samples": args.trials, "max_concurrent": args.concurrent},
    )
    start = time.perf_counter()
    run_sweep(config, out)
    sweep_s = time.perf_counter() - start

    table = pq.read_table(out / "trials.parquet").to_pandas()
    weights = [
        {c.removeprefix("param/"): float(row[c]) for c in table.columns if c.startswith("param/")}
        for _, row in table.iterrows()
    ]
    tuner = get_tuner("pez")
    start = time.perf_counter()
    for w in weights:  # includes the one-time model/data load, as the sweep's first trial does
        tuner.run(make_config(tuner.config_cls, {**config.trial_values("pez"), **w}))
    direct_s = time.perf_counter() - start

    summary = json.loads((out / "sweep.json").read_text())
    print(f"{len(weights)} smoke PEZ trials, max_concurrent={args.concurrent}")
    print(
        f"through the sweep (Ray Tune + Optuna + MLflow + exports): {sweep_s:7.1f} s "
        f"(Tune part {summary['timings']['tune_s']:.1f} s)"
    )
    print(f"the same runs called directly in one process:             {direct_s:7.1f} s")
    print(f"overhead ratio sweep / direct:                            {sweep_s / direct_s:7.2f}x")


if __name__ == "__main__":
    main()
