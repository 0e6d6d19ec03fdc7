"""The synthetic tuner of the scale rig: fast, deterministic, a real trade-off, and checkpoints like the real tuners."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sweep.presets import SWEEP_PRESETS
from tuners import get_tuner, make_config
from tuners.base import Checkpointing
from tuners.synthetic import SyntheticConfig

ROOT = Path(__file__).resolve().parents[2]
FAST = {"steps": 12, "eval_every": 2, "step_s": 0.0}


def _config(**values: object) -> SyntheticConfig:
    return make_config(SyntheticConfig, {**FAST, **values})


def test_a_checkpointed_run_resumed_from_any_save_ends_as_an_uninterrupted_one():
    tuner = get_tuner("synthetic")
    config = _config(seed=3, lambda_ppl=0.5)
    whole = tuner.run(config)
    saved: list[dict] = []
    tuner.run(config, checkpoint=Checkpointing(every=3, save=saved.append))
    assert [state["step"] for state in saved] == [3, 6, 9]
    for state in saved:
        resumed = tuner.run(config, checkpoint=Checkpointing(every=3, save=lambda s: None, state=state))
        assert resumed.prompt_ids == whole.prompt_ids
        assert resumed.metrics == whole.metrics
        assert resumed.steps == config.steps


def test_until_pauses_at_a_rung_and_continues_from_its_state():
    tuner = get_tuner("synthetic")
    config = _config(seed=1)
    saved: list[dict] = []
    paused = tuner.run(config, checkpoint=Checkpointing(every=100, save=saved.append, until=5))
    assert paused.steps == 5 and saved[-1]["step"] == 5
    reports: list[int] = []
    rest = tuner.run(
        config,
        report=lambda step, metrics: reports.append(step),
        checkpoint=Checkpointing(every=100, save=lambda s: None, state=saved[-1]),
    )
    assert rest.steps == config.steps and reports == [6, 8, 10, 12]


def test_the_fluency_weight_trades_accuracy_for_readability():
    tuner = get_tuner("synthetic")
    plain = [tuner.run(_config(seed=s)).metrics for s in range(5)]
    fluent = [tuner.run(_config(seed=s, lambda_ppl=10.0)).metrics for s in range(5)]

    def mean(rows: list[dict], key: str) -> float:
        return sum(r[key] for r in rows) / len(rows)

    assert mean(fluent, "task/acc_dev") < mean(plain, "task/acc_dev") - 0.05
    assert mean(fluent, "interp/scrutability") > mean(plain, "interp/scrutability") + 0.5


def test_diverge_at_fails_the_run_by_itself():
    from objectives.errors import DivergedError

    with pytest.raises(DivergedError, match="step 4"):
        get_tuner("synthetic").run(_config(diverge_at=4))


def test_no_sweep_preset_offers_it():
    assert all("synthetic" not in preset["tuners"] for preset in SWEEP_PRESETS.values())


def test_its_trial_imports_no_torch():
    """A Ray worker running a synthetic trial imports the sweep's trainable and this tuner, runs its replicates,
    and never loads torch or transformers (each would cost the rig's 64 workers seconds and 200 MB apiece)."""
    code = (
        "import sys\n"
        "import sweep.trainable\n"
        "from tuners import get_tuner, make_config\n"
        "from tuners.replicates import run_replicates\n"
        "tuner = get_tuner('synthetic')\n"
        "assert tuner.uses_device is False\n"  # the trainable resolves no device for it (no CUDA probe)
        "config = make_config(tuner.config_cls, {'steps': 4, 'step_s': 0.0})\n"
        "result = run_replicates(tuner, config, 2, report=lambda *args: None)\n"
        "assert len(result.results) == 2\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
        "assert not heavy, heavy[:5]\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
