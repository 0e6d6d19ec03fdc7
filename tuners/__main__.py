"""Run one tuner once, in process, without Ray or MLflow: for debugging a configuration before a sweep.

python -m tuners run pez --preset demo --set lambda_ppl=0.5 --json out/pez.json
python -m tuners run pez --preset demo --replicates 3   # the sweep's replicates: mean ± 95 % interval
python -m tuners list
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from tqdm import tqdm

from objectives.errors import ConfigError, UserError
from objectives.stats import CI95
from tuners import TUNER_PRESETS, available, get_tuner, preset_config
from tuners.configs import parse_overrides
from tuners.replicates import ReplicatedResult, run_replicates


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if args.command == "list":
        _list()
        return 0
    try:
        tuner = get_tuner(args.name)
        config = preset_config(args.name, args.preset, parse_overrides(args.overrides))
        if args.replicates < 1:
            raise ConfigError(f"--replicates {args.replicates} must be >= 1")
        if args.json_path:
            _check_writable(args.json_path)
    except UserError as err:
        return _fail(err)

    steps = getattr(config, "steps", 0) * args.replicates
    bar = tqdm(total=steps or None, desc=f"{tuner.name}/{args.preset}", unit="step", disable=args.quiet)
    done = [0] * args.replicates

    def report(replicate: int, step: int, metrics: Mapping[str, float]) -> None:
        done[replicate] = step
        bar.update(sum(done) - bar.n)
        bar.set_postfix({"rep": replicate, **{k.split("/")[-1]: f"{v:.3g}" for k, v in metrics.items()}})

    try:
        result = run_replicates(tuner, config, args.replicates, report=report)
    except UserError as err:
        bar.close()
        return _fail(err)
    bar.close()
    _print_result(result, args.json_path)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tuners", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one tuner once")
    run.add_argument("name", help=f"tuner: {', '.join(available())}")
    run.add_argument("--preset", default="smoke", help=f"one of {', '.join(TUNER_PRESETS)} (default smoke)")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field (value read as YAML); repeatable",
    )
    run.add_argument("--json", dest="json_path", help="write the PromptResult here as JSON")
    run.add_argument(
        "--replicates",
        type=int,
        default=1,
        help="run the sweep's replicate plan (data seeds x init seeds) and report means with 95%% intervals",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    sub.add_parser("list", help="list tuners, presets and their config fields")
    return parser


def _print_result(result: ReplicatedResult, json_path: str | None) -> None:
    """One replicate: its prompt and metrics; several: each one's prompt, then the means with their intervals."""
    if len(result.results) == 1:
        single = result.prompt
        print(f"prompt: {single.prompt_text!r}  ids={single.prompt_ids}")
        for key, value in sorted(single.metrics.items()):
            print(f"  {key:<24} {value:.4f}")
        print(f"steps={single.steps} seed={single.seed} wall={single.wall_s:.1f}s")
        if json_path:
            single.write_json(json_path)
    else:
        for index, (task, replicate) in enumerate(zip(result.tasks, result.results, strict=True)):
            print(f"replicate {index} ({task}, seed {replicate.seed}): {replicate.prompt_text!r}")
        print(f"mean ± 95% interval over {len(result.results)} replicates:")
        for key in sorted(k for k in result.metrics if "." not in k):
            print(f"  {key:<24} {result.metrics[key]:.4f} ± {result.metrics[key + CI95]:.4f}")
        print(f"wall={result.wall_s:.1f}s")
        if json_path:
            Path(json_path).parent.mkdir(parents=True, exist_ok=True)
            Path(json_path).write_text(json.dumps(result.to_json(), indent=2) + "\n")
    if json_path:
        print(f"wrote {json_path}")


def _check_writable(path: str) -> None:
    """Fail before training, not after it, when the result could not be written."""
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"--json {path!r} is a folder; give a file path")
    folder = target.parent
    while not folder.exists():  # the folders still to create must be creatable: check the first that exists
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise ConfigError(f"--json {path!r}: cannot write into {str(folder)!r}; choose a writable location")


def _fail(err: UserError) -> int:
    print(f"error: {err}", file=sys.stderr)
    return 2


def _list() -> None:
    print("presets:", ", ".join(TUNER_PRESETS))
    for name in available():
        tuner = get_tuner(name)
        print(f"\n{name} ({tuner.config_cls.__name__})")
        for f in dataclasses.fields(tuner.config_cls):
            default = f.default if f.default is not dataclasses.MISSING else None
            print(f"  {f.name:<14} = {default!r:<22} {f.metadata.get('help', '')}")


if __name__ == "__main__":
    sys.exit(main())
