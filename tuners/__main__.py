"""Run one tuner once, in process, without Ray or MLflow: for debugging a configuration before a sweep.

python -m tuners run pez --preset demo --set lambda_ppl=0.5 --json out/pez.json
python -m tuners list
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Mapping

from tqdm import tqdm

from objectives.assets import AssetError
from objectives.models import ModelSpecError
from objectives.problem import ConfigError
from objectives.tasks import TaskError
from tuners import PRESETS, available, get_tuner, preset_config
from tuners.base import parse_overrides

USER_ERRORS = (ConfigError, TaskError, ModelSpecError, AssetError, KeyError)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuners", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one tuner once")
    run.add_argument("name", help=f"tuner: {', '.join(available())}")
    run.add_argument("--preset", default="smoke", help=f"one of {', '.join(PRESETS)} (default smoke)")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field (value read as YAML); repeatable",
    )
    run.add_argument("--json", dest="json_path", help="write the PromptResult here as JSON")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    sub.add_parser("list", help="list tuners, presets and their config fields")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if args.command == "list":
        _list()
        return 0
    try:
        tuner = get_tuner(args.name)
        config = preset_config(args.name, args.preset, parse_overrides(args.overrides))
    except USER_ERRORS as err:
        return _fail(err)

    bar = tqdm(total=config.steps, desc=f"{tuner.name}/{args.preset}", unit="step", disable=args.quiet)

    def report(step: int, metrics: Mapping[str, float]) -> None:
        bar.update(step - bar.n)
        bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in metrics.items()})

    try:
        result = tuner.run(config, report=report)
    except USER_ERRORS as err:
        bar.close()
        return _fail(err)
    bar.close()
    print(f"prompt: {result.prompt_text!r}  ids={result.prompt_ids}")
    for key, value in sorted(result.metrics.items()):
        print(f"  {key:<22} {value:.4f}")
    print(f"steps={result.steps} seed={result.seed} wall={result.wall_s:.1f}s")
    if args.json_path:
        result.write_json(args.json_path)
        print(f"wrote {args.json_path}")
    return 0


def _fail(err: Exception) -> int:
    message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    print(f"error: {message}", file=sys.stderr)
    return 2


def _list() -> None:
    print("presets:", ", ".join(PRESETS))
    for name in available():
        tuner = get_tuner(name)
        print(f"\n{name} ({tuner.config_cls.__name__})")
        for f in dataclasses.fields(tuner.config_cls):
            default = f.default if f.default is not dataclasses.MISSING else None
            print(f"  {f.name:<14} = {default!r:<22} {f.metadata.get('help', '')}")


if __name__ == "__main__":
    sys.exit(main())
