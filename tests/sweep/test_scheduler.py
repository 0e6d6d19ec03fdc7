"""MO-ASHA (sweep/scheduler.py): rungs, non-dominated sorting with directions, the hypervolume tie-break, the
fewer-than-η rule, protected trials, stable keys, and a state that survives pickling, JSON and a driver kill.

Every rung decision below is worked by hand in its comment: values, fronts, the reference point (the rung's
nadir less 10 % of each range) and each front member's exclusive hypervolume.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from ray.tune.schedulers import TrialScheduler

from sweep.results.pareto import (
    hv_contributions,
    hypervolume,
    hypervolume_2d,
    nadir_reference,
    nondominated_ranks,
    select_top,
)
from sweep.scheduler import MOASHA, n_admitted, rung_decision, rung_steps

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP
OBJ = ("task/acc_dev", "interp/scrutability")  # both maximised
MAXMAX = ("max", "max")


@dataclass
class FakeTrial:
    """What the scheduler reads of a Tune trial: its id, config and status."""

    trial_id: str
    config: dict[str, Any] = field(default_factory=dict)
    status: str = "PENDING"


def _trial(trial_id: str, tuner: str = "pez", params: dict | None = None) -> FakeTrial:
    return FakeTrial(
        trial_id, {"tuner": tuner, "params": {"lambda_ppl": 0.1} if params is None else params, "fixed": {}}
    )


def _sched(**kwargs: Any) -> MOASHA:
    args: dict[str, Any] = {
        "objectives": OBJ,
        "modes": MAXMAX,
        "max_steps": {"pez": 100},
        "grace_steps": 4,
        "reduction_factor": 3,
    }
    args.update(kwargs)
    return MOASHA(**args)


def _report(s: MOASHA, trial: FakeTrial, steps: int, values: tuple[float, ...] | None, **extra: Any) -> str:
    result: dict[str, Any] = {"steps": steps, **extra}
    if values is not None:
        result.update(zip(s.objectives, values, strict=True))
    return s.on_trial_result(None, trial, result)


def _n_records(s: MOASHA, group: str = "pez") -> int:
    return sum(len(entries) for entries in s.state()["groups"][group].values())


# ----- the math --------------------------------------------------------------------------------------------


def test_rung_steps_are_grace_times_eta_powers_below_the_full_budget():
    assert rung_steps(4, 3, 100) == [4, 12, 36]
    assert rung_steps(1, 3, 27) == [1, 3, 9]  # 27 is the full budget, not a rung
    assert rung_steps(2, 2, 17) == [2, 4, 8, 16]
    assert rung_steps(30, 3, 20) == []  # grace past the budget: never stopped
    assert rung_steps(1, 1.5, 5) == [1, 2, 3]  # 1.5**2 rounds onto the rung at 2 and is kept once
    with pytest.raises(ValueError, match="reduction_factor"):
        rung_steps(1, 1.0, 10)
    with pytest.raises(ValueError, match="grace_steps"):
        rung_steps(0, 3, 10)


def test_nondominated_ranks_peel_fronts_and_keep_equal_rows_together():
    # (3,1), (1,3) and its duplicate are front 0; (2,1) is beaten by (3,1) only: front 1; (1,1) by everyone.
    points = np.array([[3, 1], [1, 3], [2, 1], [1, 1], [1, 3]], dtype=float)
    assert nondominated_ranks(points).tolist() == [0, 0, 1, 2, 0]


def test_nondominated_ranks_agree_with_peeling_by_definition():
    rng = np.random.default_rng(1)
    for k in (2, 3):
        points = rng.integers(0, 6, size=(40, k)).astype(float)  # small integers: many ties and duplicates
        ranks, left, front = nondominated_ranks(points), np.arange(40), 0
        while left.size:
            sub = points[left]
            dominated = ((sub[None] >= sub[:, None]).all(-1) & (sub[None] > sub[:, None]).any(-1)).any(1)
            assert (ranks[left[~dominated]] == front).all()
            left, front = left[dominated], front + 1
        assert ranks.max() == front - 1


def test_hypervolume_closed_forms_2d_3d_and_the_sweep_implementation():
    # Staircase (i, n+1-i), i = 1..n, against (0, 0): the steps add n, n-1, ..., 1.
    n = 7
    stairs = np.array([[i, n + 1 - i] for i in range(1, n + 1)], dtype=float)
    assert hypervolume(stairs, (0, 0)) == pytest.approx(n * (n + 1) / 2)
    # Three unit-axis points against (-1,-1,-1): boxes of 2 each, pairwise overlaps 1, triple overlap 1.
    axes = np.eye(3)
    assert hypervolume(axes, (-1, -1, -1)) == pytest.approx(3 * 2 - 3 * 1 + 1)
    # The slicing recursion agrees with sweep.results.pareto's 2-D sweep (a constant 3rd objective of height 1).
    rng = np.random.default_rng(0)
    for _ in range(20):
        pts = rng.normal(size=(12, 2))
        ref = pts.min(axis=0) - 0.3
        flat = hypervolume_2d(pts, ref)
        assert hypervolume(pts, ref) == pytest.approx(flat)
        assert hypervolume(np.c_[pts, np.ones(12)], (*ref, 0.0)) == pytest.approx(flat)
    assert hypervolume(np.array([[0.0, 5.0]]), (0.0, 0.0)) == 0.0  # not strictly above the reference


def test_hv_contributions_and_reference_by_hand():
    front = np.array([[0.85, -9.0], [0.8, -8.0], [0.75, -7.0]])
    ref = nadir_reference(np.vstack([front, [[0.6, -9.0]]]))
    assert ref.tolist() == pytest.approx([0.575, -9.2])  # 0.6 - 0.1 * 0.25, -9 - 0.1 * 2
    # (0.85,-9): x 0.80..0.85 × y -9.2..-9.0 = 0.01; (0.8,-8): 0.75..0.80 × -9..-8 = 0.05;
    # (0.75,-7): 0.575..0.75 × -8..-7 = 0.175.
    assert hv_contributions(front, ref).tolist() == pytest.approx([0.01, 0.05, 0.175])


def test_n_admitted_is_floor_n_over_eta_and_everyone_below_eta():
    assert [n_admitted(n, 3) for n in range(1, 10)] == [1, 2, 1, 1, 1, 2, 2, 2, 3]
    assert [n_admitted(n, 4) for n in range(1, 9)] == [1, 2, 3, 1, 1, 1, 1, 2]
    assert [n_admitted(n, 2.5) for n in (2, 3, 5, 7)] == [2, 1, 2, 2]


def test_select_top_fills_fronts_then_drops_least_hypervolume():
    # Fronts: 0 = {(3,1), (1,3)}, 1 = {(2,0.5)}, 2 = {(0,0)}. Keep 3: both of front 0 and front 1's only row.
    points = np.array([[3, 1], [0, 0], [1, 3], [2, 0.5]], dtype=float)
    assert select_top(points, 3).tolist() == [True, False, True, True]
    assert select_top(points, 4).all() and not select_top(points, 0).any()
    # Keep 1 out of front 0: reference (-0.3, -0.3). (3,1): 1..3 × -0.3..1 = 2.6; (1,3): -0.3..1 × 1..3 = 2.6.
    # Equal: the row listed first wins.
    assert select_top(points, 1).tolist() == [True, False, False, False]
    assert select_top(points[[2, 1, 0, 3]], 1).tolist() == [True, False, False, False]


# ----- rung decisions on hand-worked examples --------------------------------------------------------------

# (acc, scrutability), recorded in this order at one rung, η = 3. Expected decisions and why:
SEQUENCE = [
    ("A", (0.80, -8.0), CONTINUE),  # n=1 < η: too few to rank
    ("B", (0.70, -7.5), CONTINUE),  # n=2 < η
    # n=3, keep 1. Front 0 = {A, B}, C (beaten by A) is front 1: C out.
    ("C", (0.60, -9.0), STOP),
    # n=4, keep 1. D beats B; front 0 = {A, D}. Reference (0.58, -9.2): A adds 0.75..0.8 × -9.2..-8 = 0.06,
    # D adds 0.58..0.75 × -8..-7 = 0.17: D kept.
    ("D", (0.75, -7.0), CONTINUE),
    ("E", (0.65, -8.5), STOP),  # n=5, keep 1: beaten by A
    # n=6, keep 2. Front 0 = {F, A, D}; reference (0.575, -9.2): F adds 0.01, A 0.05, D 0.175: F dropped,
    # though F is the front's accuracy end (crowding distance would have kept it for that).
    ("F", (0.85, -9.0), STOP),
    # n=7, keep 2. G beats D: front 0 = {F, A, G}; reference (0.575, -9.22): F adds 0.8..0.85 × -9.22..-9 =
    # 0.011, A adds 0.78..0.8 × -9..-8 = 0.02, G adds 0.575..0.78 × -8..-6.8 = 0.246: F out, G kept.
    ("G", (0.78, -6.8), CONTINUE),
]


def _play(s: MOASHA, sequence: list, transform=lambda v: v, rung: int = 4) -> list[str]:
    return [_report(s, _trial(key), rung, transform(values)) for key, values, _ in sequence]


def test_rung_decisions_match_the_hand_worked_sequence():
    s = _sched()
    assert _play(s, SEQUENCE) == [d for _, _, d in SEQUENCE]
    assert [s.stopped_at(k) for k in "ABCDEFG"] == [None, None, 4, None, 4, 4, None]


def test_directions_min_objectives_give_the_same_decisions():
    # log_ppl = -scrutability (minimised), and error = 1 - acc (minimised): every ranking is unchanged.
    s = _sched(objectives=("task/acc_dev", "interp/log_ppl"), modes=("max", "min"))
    assert _play(s, SEQUENCE, lambda v: (v[0], -v[1])) == [d for _, _, d in SEQUENCE]
    s = _sched(objectives=("task/error", "interp/log_ppl"), modes=("min", "min"))
    assert _play(s, SEQUENCE, lambda v: (1 - v[0], -v[1])) == [d for _, _, d in SEQUENCE]
    # Getting a direction wrong changes the answer. P (0.8,-9), Q (0.6,-6), then R (0.7,-8), η = 3, keep 1.
    # Both maximised: one front {P, R, Q}; reference (0.58, -9.3); P adds 0.1 × 0.3 = 0.03, R 0.1 × 1 = 0.1,
    # Q 0.02 × 2 = 0.04: P out; then R adds 0.1 × 1.3 = 0.13, Q 0.04: Q out, R stays.
    rows = np.array([[0.8, -9.0], [0.6, -6.0], [0.7, -8.0]])
    assert rung_decision(rows, ("max", "max"), 3) is True
    assert rung_decision(rows * [1, -1], ("max", "min"), 3) is True  # log_ppl = -scrutability, minimised
    # Scrutability wrongly minimised: P (0.8, 9 after the flip) beats both, R stops.
    assert rung_decision(rows, ("max", "min"), 3) is False


def test_exact_ties_go_to_the_trial_recorded_first():
    # (1,0) and (0,1) against the reference (-0.1,-0.1) add 0.1 each; (0,0) is dominated by both.
    s = _sched()
    assert _play(s, [("A", (1.0, 0.0), None), ("C", (0.0, 0.0), None), ("B", (0.0, 1.0), None)]) == [
        CONTINUE,
        CONTINUE,
        STOP,
    ]
    s = _sched()
    assert _play(s, [("B", (0.0, 1.0), None), ("C", (0.0, 0.0), None), ("A", (1.0, 0.0), None)]) == [
        CONTINUE,
        CONTINUE,
        STOP,
    ]
    # A duplicate of the front's only point adds nothing and comes later: out.
    s = _sched()
    assert _play(s, [("A", (1.0, 1.0), None), ("C", (0.0, 0.0), None), ("A2", (1.0, 1.0), None)])[-1] == STOP


def test_fewer_than_eta_recorded_continue_even_when_dominated():
    s = _sched(reduction_factor=4)
    # The 2nd and 3rd are dominated by the 1st, but n < η = 4: they go on. The 4th (n=4, keep 1) stops.
    decisions = _play(
        s, [("a", (0.9, -5.0), None), ("b", (0.5, -9.0), None), ("c", (0.6, -8.0), None), ("d", (0.7, -7.0), None)]
    )
    assert decisions == [CONTINUE, CONTINUE, CONTINUE, STOP]


def test_each_rung_and_group_is_judged_on_its_own_records():
    s = _sched(max_steps={"pez": 100, "rlprompt": 50})
    # pez: at rung 4 the 3rd trial is beaten; rlprompt's first trials meet an empty rung of their own.
    assert _play(s, SEQUENCE[:3]) == [CONTINUE, CONTINUE, STOP]
    assert [_report(s, _trial(f"r{i}", "rlprompt"), 4, (0.1, -9.9)) for i in range(2)] == [CONTINUE, CONTINUE]
    # A at rung 12 is alone there: continues, whatever rung 4 held.
    assert _report(s, _trial("A"), 12, (0.1, -9.9)) == CONTINUE
    assert s.rungs("pez") == [4, 12, 36] and s.rungs("rlprompt") == [4, 12, 36] and s.rungs("soft") == []


def test_a_result_past_skipped_rungs_is_judged_at_the_highest_only():
    s = _sched()
    _play(s, SEQUENCE[:2])  # A, B at rung 4
    assert _report(s, _trial("X"), 13, (0.1, -9.9)) == CONTINUE  # judged at 12 (alone there), not at 4
    assert s.decision("pez", "X", 12) == CONTINUE and s.decision("pez", "X", 4) is None
    # Later results below the next rung repeat the decision; 4 is never judged with values from 13+ steps.
    assert _report(s, _trial("X"), 20, (0.1, -9.9)) == CONTINUE
    assert s.decision("pez", "X", 4) is None and _n_records(s) == 3


def test_results_without_finite_objectives_or_at_the_full_budget_continue_unrecorded():
    s = _sched()
    _play(s, SEQUENCE[:2])
    trial = _trial("C")
    assert _report(s, trial, 4, None) == CONTINUE  # no objectives
    assert _report(s, trial, 4, (float("nan"), -9.0)) == CONTINUE
    assert _report(s, trial, 4, (0.6, float("inf"))) == CONTINUE
    assert s.on_trial_result(None, trial, {"task/acc_dev": 0.6, "interp/scrutability": -9.0}) == CONTINUE  # no steps
    assert _report(s, trial, 3, (0.6, -9.0)) == CONTINUE  # before the first rung
    assert _report(s, trial, 100, (0.0, -99.0)) == CONTINUE  # the full budget is not a rung
    assert _n_records(s) == 2
    assert _report(s, trial, 4, (0.6, -9.0)) == STOP  # the first usable report at the rung is judged


def test_protected_trials_are_never_stopped_but_are_recorded():
    s = _sched()
    _play(s, SEQUENCE[:2])
    anchor = FakeTrial("anchor", {"tuner": "pez", "params": {}, "fixed": {}})
    baseline = FakeTrial("base", {"tuner": "pez", "fixed": {"prompt_text": " It was"}})  # no params at all
    assert _report(s, anchor, 4, (0.0, -99.0)) == CONTINUE  # dominated by everyone: still on
    assert _report(s, baseline, 4, (0.0, -99.0)) == CONTINUE
    assert _n_records(s) == 4  # recorded: later trials are compared with them
    for steps in (12, 36, 99):
        assert _report(s, anchor, steps, (0.0, -99.0)) == CONTINUE
    # A group without max_steps is never stopped, and nothing is recorded for it.
    for i in range(6):
        assert _report(s, _trial(f"s{i}", "soft"), 4, (0.1 * i, -9.0)) == CONTINUE
    assert "soft" not in s.state()["groups"]


def test_a_judged_key_and_rung_gives_the_same_decision_without_a_second_record():
    s = _sched()
    decisions = _play(s, SEQUENCE)
    before = s.state()
    # Every trial re-reports rung 4 (resumed from a checkpoint before it), with other values and new Tune ids:
    # same answers, no record added, nothing re-judged.
    again = [
        _report(s, FakeTrial(f"new-{k}", {"tuner": "pez", "params": {"x": 1}}), 4, (0.99, 0.0), trial_key=k)
        for k, _, _ in SEQUENCE
    ]
    # Without a trial_key the Tune id is the key: the trials above were all keyed by their ids "A".."G".
    assert again == decisions
    assert s.state() == before
    # A stopped key is stopped again on any later result; a kept one goes on to the next rung.
    assert _report(s, _trial("C"), 12, (0.99, 0.0)) == STOP
    assert _report(s, _trial("A"), 12, (0.5, -9.0)) == CONTINUE


def test_trial_key_in_results_is_the_identity_not_the_tune_id():
    s = _sched()
    for i, (key, values, _) in enumerate(SEQUENCE[:3]):
        _report(s, _trial(f"tune-{i}"), 4, values, trial_key=key)
    assert s.stopped_at("C") == 4 and s.stopped_at("tune-2") is None
    assert s.key_of(_trial("tune-2")) == "C"  # remembered for calls without a result
    s.on_trial_complete(None, _trial("tune-2"), {})
    assert s.key_of(_trial("tune-2")) == "tune-2"


# ----- state -----------------------------------------------------------------------------------------------


def _continuation(s: MOASHA) -> list[str]:
    """Decisions for a fixed set of newcomers at rungs 4 and 12 (after SEQUENCE at rung 4)."""
    out = [_report(s, _trial(k), 4, v) for k, v in [("H", (0.79, -7.9)), ("I", (0.9, -6.0)), ("J", (0.5, -9.5))]]
    out += [_report(s, _trial(k), 12, v) for k, v in [("A", (0.8, -7.0)), ("D", (0.82, -6.5)), ("G", (0.7, -8.0))]]
    return out


def test_state_round_trip_gives_the_same_decisions():
    original = _sched()
    _play(original, SEQUENCE)
    state = json.loads(json.dumps(original.state()))  # JSON all the way
    copy = MOASHA.from_state(state)
    loaded = _sched()
    loaded.load_state(state)
    assert [copy.stopped_at(k) for k in "ABCDEFG"] == [None, None, 4, None, 4, 4, None]
    expected = _continuation(original)
    assert _continuation(copy) == expected == _continuation(loaded)
    assert STOP in expected and CONTINUE in expected
    assert copy.state() == original.state() == loaded.state()
    with pytest.raises(ValueError, match="objectives"):
        _sched(modes=("max", "min")).load_state(state)


def test_pickling_and_tune_save_restore_keep_the_records(tmp_path):
    s = _sched()
    _play(s, SEQUENCE)
    clone = pickle.loads(pickle.dumps(s))
    path = tmp_path / "sched.json"
    s.save(str(path))
    restored = _sched()
    restored.restore(str(path))
    expected = _continuation(s)
    assert _continuation(clone) == expected == _continuation(restored)


def test_record_seeds_from_outside_idempotently():
    s = _sched()
    for key, values, decision in SEQUENCE:
        s.record("pez", key, 4, values, decision)
    s.record("pez", "C", 4, (0.6, -9.0), "STOP")  # again: no-op
    assert _n_records(s) == len(SEQUENCE) and s.stopped_at("C") == 4
    assert _report(s, _trial("C"), 4, (0.99, 0.0)) == STOP  # seeded decisions are replayed, not re-judged
    assert _continuation(s) == _continuation(MOASHA.from_state(_played_state()))
    with pytest.raises(ValueError, match="refusing"):
        s.record("pez", "C", 4, (0.6, -9.0), CONTINUE)
    with pytest.raises(ValueError, match="not a rung"):
        s.record("pez", "Z", 5, (0.6, -9.0), CONTINUE)
    with pytest.raises(ValueError, match="finite"):
        s.record("pez", "Z", 4, (0.6,), CONTINUE)


def _played_state() -> dict:
    s = _sched()
    _play(s, SEQUENCE)
    return s.state()


def test_state_path_survives_a_driver_kill_between_two_rung_decisions(tmp_path):
    path = tmp_path / "scheduler.json"
    # Tuner.restore unpickles the scheduler as pickled when the Tuner was built: before any decision.
    first = _sched(state_path=path)
    pickled_at_start = pickle.dumps(first)
    _play(first, SEQUENCE[:4])  # A..D decided, written whole after each record
    assert json.loads(path.read_text())["groups"]["pez"]["4"][2]["decision"] == STOP
    # "Kill": the driver is gone. The restored scheduler reads the file before its first decision.
    second = pickle.loads(pickled_at_start)
    # Trials resumed from checkpoints before rung 4 re-report it under new Tune ids: nothing is re-judged
    # or promoted twice, C stays stopped, and the next decisions are those of an uninterrupted run.
    assert [_report(second, _trial(f"x{k}"), 4, (0.0, -99.0), trial_key=k) for k in "ABCD"] == [
        CONTINUE,
        CONTINUE,
        STOP,
        CONTINUE,
    ]
    assert [_report(second, _trial(k), 4, v) for k, v, _ in SEQUENCE[4:]] == [d for _, _, d in SEQUENCE[4:]]
    assert second.state()["groups"] == _played_state()["groups"]
    # A fresh scheduler on the same path agrees too; a path written for other objectives is refused.
    assert MOASHA(**{**_kwargs(), "state_path": path}).stopped_at("F") == 4
    with pytest.raises(ValueError, match="objectives"):
        MOASHA(**{**_kwargs(), "modes": ("max", "min"), "state_path": path}).stopped_at("F")


def _kwargs() -> dict[str, Any]:
    return {"objectives": OBJ, "modes": MAXMAX, "max_steps": {"pez": 100}, "grace_steps": 4}


# ----- Tune's API ------------------------------------------------------------------------------------------


class _Controller:
    def __init__(self, trials: list[FakeTrial]) -> None:
        self._trials = trials

    def get_trials(self) -> list[FakeTrial]:
        return self._trials


def test_tune_api_fifo_metric_mode_and_debug_string():
    s = _sched(max_steps={"pez": 100, "rlprompt": 1200}, grace_steps={"pez": 4, "rlprompt": 40})
    assert s.rungs("rlprompt") == [40, 120, 360, 1080]
    assert s.set_search_properties("task/acc_dev", "max") is True and s.metric is None
    trials = [FakeTrial("1", status="RUNNING"), FakeTrial("2", status="PAUSED"), FakeTrial("3", status="PENDING")]
    assert s.choose_trial_to_run(_Controller(trials)).trial_id == "3"
    assert s.choose_trial_to_run(_Controller(trials[:2])).trial_id == "2"
    assert s.choose_trial_to_run(_Controller(trials[:1])) is None
    s.on_trial_add(None, trials[0])
    s.on_trial_error(None, trials[0])
    s.on_trial_remove(None, trials[1])
    _play(s, SEQUENCE[:3])
    text = s.debug_string()
    assert "MOASHA" in text and "4: 3 recorded, 1 stopped" in text
    with pytest.raises(ValueError, match="grace_steps has no entry"):
        _sched(max_steps={"pez": 100, "rlprompt": 1200}, grace_steps={"pez": 4})
    with pytest.raises(ValueError, match="one mode per objective"):
        _sched(modes=("max",))
    with pytest.raises(ValueError, match="'max' or 'min'"):
        _sched(modes=("max", "maximize"))


def test_a_sweeps_rung_plan_covers_its_searched_learned_tuners_with_the_default_grace():
    from sweep.config import load_sweep_config

    fifo = load_sweep_config("smoke", config_file=None, overrides={})
    assert fifo.rung_plan() == {}
    config = load_sweep_config(
        "smoke", config_file=None, overrides={"scheduler": "mo_asha", "tuner_config.pez.steps": 100}
    )
    plan = config.rung_plan()
    assert set(plan) == {"pez", "soft", "rlprompt"}  # the baselines train nothing: never stopped
    assert plan["pez"] == (4, 100)  # ceil(100 / 3**3): three rungs below the full budget
    assert rung_steps(*plan["pez"][:1], 3, plan["pez"][1]) == [4, 12, 36]
    fixed = load_sweep_config("smoke", config_file=None, overrides={"scheduler": "mo_asha", "grace_steps": 2})
    assert {grace for grace, _ in fixed.rung_plan().values()} == {2}
