"""Replicate plans (LM-BFF folder families, k-shot resamples) and their aggregation."""

from __future__ import annotations

import pytest

from objectives.errors import ConfigError
from tests.conftest import NEGATIVE, POSITIVE, write_tsv
from tuners import get_tuner, preset_config
from tuners.base import Checkpointing
from tuners.replicates import lmbff_family, replicate_configs, run_replicates


@pytest.fixture
def family(tmp_path):
    rows = [(s, 1) for s in POSITIVE] + [(s, 0) for s in NEGATIVE]
    for seed in (100, 13, 42):
        folder = tmp_path / "sst-2" / f"16-{seed}"
        folder.mkdir(parents=True)
        for name in ("train.tsv", "dev.tsv", "test.tsv"):
            write_tsv(folder / name, rows)
    (tmp_path / "sst-2" / "32-13").mkdir()  # another k: not of the family
    (tmp_path / "sst-2" / "16-7").mkdir()  # no TSV files: not a split
    return tmp_path / "sst-2"


def test_family_is_the_given_split_then_the_siblings_by_seed(family):
    assert lmbff_family(str(family / "16-42")) == [str(family / s) for s in ("16-42", "16-13", "16-100")]
    assert lmbff_family(str(family / "32-13")) is None
    assert lmbff_family("rotten-tomatoes") is None


def test_replicates_walk_the_family_with_their_own_init_seeds(family):
    config = preset_config("pez", "smoke", {"task": str(family / "16-100"), "k_shot": None, "seed": 5})
    plan = replicate_configs(config, 4)
    assert [c.task for c in plan] == [str(family / s) for s in ("16-100", "16-13", "16-42", "16-100")]
    assert [c.seed for c in plan] == [5, 6, 7, 8]
    assert plan[0] == config


def test_other_sources_resample_with_the_seed():
    config = preset_config("pez", "smoke", {})
    plan = replicate_configs(config, 3)
    assert {c.task for c in plan} == {"rotten-tomatoes"} and [c.seed for c in plan] == [0, 1, 2]
    with pytest.raises(ConfigError, match="replicates=0 must be >= 1"):
        replicate_configs(config, 0)


def test_run_replicates_aggregates_what_each_replicate_measured(task_dir):
    config = preset_config("pez", "smoke", {"task": str(task_dir), "k_shot": None, "device": "cpu", "steps": 2})
    seen = []
    out = run_replicates(get_tuner("pez"), config, 2, report=lambda r, step, m: seen.append((r, step)))
    single = [get_tuner("pez").run(c) for c in replicate_configs(config, 2)]
    for key in ("task/acc_test", "interp/log_ppl"):
        values = [r.metrics[key] for r in single]
        assert out.metrics[key] == pytest.approx(sum(values) / 2)
        assert [out.metrics[f"{key}.r{i}"] for i in range(2)] == pytest.approx(values)
        assert out.metrics[f"{key}.std"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
    assert [r.prompt_ids for r in out.results] == [r.prompt_ids for r in single]
    assert {r for r, _ in seen} == {0, 1}
    dev = [r.metrics["task/acc_dev"] for r in single]
    assert dev[out.representative] == max(dev)
    assert out.to_json()["replicates"][1]["seed"] == 1


@pytest.mark.parametrize("name", ["pez", "soft", "rlprompt"])
def test_replicates_in_lockstep_to_rungs_end_where_a_run_without_rungs_ends(task_dir, name):
    """Rungs at evaluation steps pause each replicate there and continue it from its own state: the trial's
    result is the same as without rungs, and the scheduler is asked with every replicate at the rung."""
    config = preset_config(name, "smoke", {"task": str(task_dir), "k_shot": None, "device": "cpu", "steps": 6})
    tuner = get_tuner(name)
    plain = run_replicates(tuner, config, 2)
    asked = []

    def at_rung(step, partial):
        asked.append((step, [r.steps for r in partial.results], partial.metrics["task/acc_dev"]))
        return True

    paused = run_replicates(tuner, config, 2, rungs=[2, 4], at_rung=at_rung)
    assert [r.prompt_ids for r in paused.results] == [r.prompt_ids for r in plain.results]
    assert paused.metrics == pytest.approx(plain.metrics)
    assert [(step, steps) for step, steps, _ in asked] == [(2, [2, 2]), (4, [4, 4])]


def test_a_trial_stopped_at_a_rung_returns_its_result_there_and_resumes_from_a_checkpoint(task_dir):
    config = preset_config("pez", "smoke", {"task": str(task_dir), "k_shot": None, "device": "cpu", "steps": 6})
    tuner = get_tuner("pez")
    stopped = run_replicates(tuner, config, 2, rungs=[2, 4], at_rung=lambda step, partial: step < 4)
    assert [r.steps for r in stopped.results] == [4, 4]

    # A trial killed after its first rung resumes every replicate from the state saved there.
    saved = []

    def killed_after_rung(state):
        saved.append(state)
        if all(r is not None and r["steps"] >= 2 for r in state["results"]):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_replicates(tuner, config, 2, rungs=[2, 4], checkpoint=Checkpointing(every=100, save=killed_after_rung))
    resumed = run_replicates(
        tuner, config, 2, rungs=[2, 4], checkpoint=Checkpointing(every=100, save=lambda s: None, state=saved[-1])
    )
    plain = run_replicates(tuner, config, 2)
    assert [r.prompt_ids for r in resumed.results] == [r.prompt_ids for r in plain.results]
    assert resumed.metrics == pytest.approx(plain.metrics)
