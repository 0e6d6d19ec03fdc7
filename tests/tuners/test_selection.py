"""The three selection rules a run may pick its prompt by, and that test data never takes part."""

from __future__ import annotations

import pytest

from objectives.errors import ConfigError
from tuners.selection import Selection, best_index, selection_key

# (step, dev acc, dev ce, dev objective): acc peaks early, the objective at step 3, the last is step 4.
OFFERS = [(1, 0.75, 0.60, 2.0), (2, 0.75, 0.50, 1.5), (3, 0.50, 0.70, 1.0), (4, 0.625, 0.65, 1.2)]


@pytest.mark.parametrize(("rule", "kept"), [("dev_acc", 2), ("dev_objective", 3), ("last", 4)])
def test_each_rule_keeps_its_candidate(rule, kept):
    selection = Selection(rule)
    for step, acc, ce, objective in OFFERS:
        selection.offer(step, acc=acc, ce=ce, objective=objective, payload=f"prompt@{step}")
    assert selection.step == kept and selection.payload == f"prompt@{kept}"
    restored = Selection.from_state(selection.state())
    assert restored == selection


def test_ties_keep_the_earlier_candidate():
    selection = Selection("dev_acc")
    assert selection.offer(1, acc=0.5, ce=0.7, objective=1.0, payload="a")
    assert not selection.offer(2, acc=0.5, ce=0.7, objective=1.0, payload="b")
    assert selection.payload == "a"


def test_unknown_rule_is_a_clear_error_where_the_config_enters():
    from tuners import preset_config

    with pytest.raises(ConfigError, match="select='best' is not one of"):
        preset_config("pez", "smoke", {"select": "best"})


@pytest.mark.parametrize(
    ("keys", "best"),
    [([(0.5, -0.7), (0.5, -0.7)], 0), ([(0.5,), (0.75,), (0.75,)], 1), ([(1.0, -0.2), (1.0, -0.1), (0.5, 0.0)], 1)],
)
def test_the_first_greatest_key_wins(keys, best):
    assert best_index(keys) == best


@pytest.mark.parametrize("rule", ["dev_acc", "dev_objective", "last"])
def test_offering_one_by_one_keeps_what_best_index_picks(rule):
    selection = Selection(rule)
    for step, acc, ce, objective in OFFERS:
        selection.offer(step, acc=acc, ce=ce, objective=objective, payload=None)
    keys = [selection_key(rule, step=step, acc=acc, ce=ce, objective=objective) for step, acc, ce, objective in OFFERS]
    assert selection.step == OFFERS[best_index(keys)][0]


def test_selection_keys():
    assert selection_key("dev_acc", step=3, acc=0.5, ce=0.25) == (0.5, -0.25)
    assert selection_key("dev_acc", step=3, acc=0.5) == (0.5,)
    assert selection_key("dev_objective", step=3, acc=0.5, ce=0.25, objective=1.5) == (-1.5, 0.5)
    assert selection_key("last", step=3, acc=0.5, ce=0.25, objective=1.5) == (3.0,)


@pytest.mark.parametrize("tuner", ["pez", "rlprompt"])
def test_test_labels_never_reach_selection(tuner, task_dir, tmp_path):
    """Flipping every test label changes test accuracy and nothing that was selected or reported on dev."""
    from tuners import get_tuner, preset_config

    flipped = tmp_path / "flipped"
    flipped.mkdir()
    for name in ("train.tsv", "dev.tsv"):
        (flipped / name).write_text((task_dir / name).read_text())
    header, *rows = (task_dir / "test.tsv").read_text().splitlines()
    (flipped / "test.tsv").write_text(
        "\n".join([header] + [f"{r.rsplit(chr(9), 1)[0]}\t{1 - int(r.rsplit(chr(9), 1)[1])}" for r in rows]) + "\n"
    )
    results = []
    for folder in (task_dir, flipped):
        config = preset_config(tuner, "smoke", {"task": str(folder), "k_shot": None, "device": "cpu", "steps": 4})
        history = []
        result = get_tuner(tuner).run(config, report=lambda step, metrics, h=history: h.append((step, dict(metrics))))
        results.append((result, history))
    (a, history_a), (b, history_b) = results
    assert a.prompt_ids == b.prompt_ids and history_a == history_b
    assert a.metrics["task/acc_dev"] == b.metrics["task/acc_dev"]
    assert a.metrics["task/acc_test"] == pytest.approx(1 - b.metrics["task/acc_test"])
