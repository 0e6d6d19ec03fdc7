"""Every registered tuner: runs a 2-step budget, returns a valid PromptResult, is deterministic, pickles."""

from __future__ import annotations

import json
import math
import pickle

import pytest

from objectives.metrics import METRICS
from tuners import available, get_tuner, preset_config

REQUIRED = {
    "task/ce",
    "task/acc_train",
    "task/acc_dev",
    "task/acc_test",
    "interp/log_ppl",
    "interp/scrutability",
    "interp/repeat_frac",
    "interp/special_frac",
    "interp/word_frac",
    "faith/dist",
    "faith/output",
    "faith/perf",
}


def _trains(tuner):
    return getattr(tuner, "trains", True)


def _config(name, task_dir, **extra):
    values = {"task": str(task_dir), "k_shot": None, "device": "cpu", **extra}
    if _trains(get_tuner(name)):
        values.update(steps=2, eval_every=1)
    return preset_config(name, "smoke", values)


@pytest.fixture(scope="module", params=available())
def run_twice(request, task_dir):
    tuner = get_tuner(request.param)
    config = _config(request.param, task_dir)
    reports = []
    first = tuner.run(config, report=lambda step, metrics: reports.append((step, dict(metrics))))
    second = tuner.run(config)
    return tuner, config, first, second, reports


def test_result_is_valid(run_twice):
    tuner, config, result, _, reports = run_twice
    assert result.tuner == tuner.name
    if tuner.name in ("pez", "soft", "rlprompt", "lm_sample"):
        assert len(result.prompt_ids) == config.prompt_len
    if tuner.name != "no_prompt":
        assert isinstance(result.prompt_text, str) and result.prompt_text
    assert REQUIRED <= set(result.metrics)
    assert set(result.metrics) <= set(METRICS), set(result.metrics) - set(METRICS)
    assert all(isinstance(v, float) and math.isfinite(v) for v in result.metrics.values())
    assert result.metrics["interp/scrutability"] == -result.metrics["interp/log_ppl"]
    for key in ("task/acc_train", "task/acc_dev", "task/acc_test", "interp/word_frac"):
        assert 0.0 <= result.metrics[key] <= 1.0
    assert result.seed == config.seed and result.wall_s > 0
    if _trains(tuner):
        assert result.steps == 2 and [step for step, _ in reports] == [1, 2]
    assert json.loads(json.dumps(result.to_json()))["prompt_ids"] == result.prompt_ids


def test_deterministic_for_a_seed(run_twice):
    _, _, first, second, _ = run_twice
    assert first.prompt_ids == second.prompt_ids
    assert first.metrics == pytest.approx(second.metrics, abs=1e-6)


def test_pickles(run_twice):
    tuner, config, result, _, _ = run_twice
    for obj in (tuner, config, result):
        clone = pickle.loads(pickle.dumps(obj))
        assert clone == obj or type(clone) is type(obj)
    assert pickle.loads(pickle.dumps(result)) == result
    assert pickle.loads(pickle.dumps(config)) == config


def test_other_seed_gives_other_prompt(run_twice, task_dir):
    tuner, _, first, _, _ = run_twice
    if tuner.name in ("no_prompt", "manual"):
        pytest.skip("a fixed prompt does not depend on the seed")
    other = tuner.run(_config(tuner.name, task_dir, seed=1))
    assert other.prompt_ids != first.prompt_ids
