"""Replicate plans (LM-BFF folder families, k-shot resamples) and their aggregation."""

from __future__ import annotations

import pytest

from objectives.problem import ConfigError
from tests.conftest import NEGATIVE, POSITIVE, write_tsv
from tuners import get_tuner, preset_config
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
