"""Multi-objective asynchronous successive halving (MO-ASHA) as a Ray Tune ``TrialScheduler``.

**What it does.** Trials are grouped by tuner (``trial.config["tuner"]``); each group has its own rungs at
``grace_steps * reduction_factor**k`` steps, every one below the group's full budget (``max_steps[group]``;
the full budget itself is not a rung, see :func:`rung_steps`). A trial reports intermediate results whose
``time_attr`` (``"steps"``) is the steps *every* replicate has completed, with the sweep's objectives as
replicate means on dev. When a result reaches a rung (the highest rung at or below its steps) that the trial
has not been judged at, its objective values are recorded at that rung and it goes on only if it ranks among
the top ``1/η`` of the trials recorded at that rung so far, the new one included. No trial waits for a rung
to fill: this is asynchronous successive halving (Li et al., 2020), with non-dominated sorting in place of
a single metric, as Syne Tune's MOASHA (Schmucker et al., 2021; Salinas et al., 2021).

**Stopping, not pausing.** A trial that loses at a rung gets ``STOP``; one that wins simply runs on. There is
no pause/promote round trip: (1) promotion-based ASHA holds a trial until enough others have reached the
rung, which idles a worker or costs a checkpoint save, an actor teardown and a restore per promotion, where
our trials already carry their own checkpoints for resume and a Tune pause would be a second, competing
mechanism; (2) stopping-based is what Ray's ``ASHAScheduler`` and Syne Tune's ``MOASHA`` do; (3) a decision is
final the moment it is made, so it can be written down once and replayed after a driver kill (below). The
promotion-based variant was not built, so the two were not measured against each other.

**The rule at a rung** (:func:`rung_decision`). With ``n`` trials recorded at the rung (the new one
included), ``n_keep = floor(n / η)`` are admitted (:func:`n_admitted`). Values are signed to maximisation
per objective (``modes``); the trials are ranked by non-dominated sorting (front 0 first); whole fronts are
admitted while they fit, and in the first front that does not fit the trials adding least hypervolume are
dropped one at a time (``sweep.results.pareto.select_top``). The new trial continues if it is admitted.

- *Fewer than η recorded* (``n < η``): the trial continues. The top ``1/η`` of fewer than ``η`` trials is
  less than one trial, so a strict reading would stop every trial that is not first at a rung, on a
  comparison with one or two trials that happened to arrive first. Letting the first ``η - 1`` arrivals
  through (Syne Tune lets only the first through) costs at most ``η - 1`` extra rung segments per rung and
  group, and keeps a small demo sweep from deciding on noise.
- *Tie-break inside the last admitted front: hypervolume contribution*, removed greedily (drop the trial
  whose removal loses least hypervolume, recompute, repeat), as SMS-EMOA does and as Optuna's own
  multi-objective TPE splits its good/bad trials (hypervolume subset selection). Why this and not the others:
  the sweep's fronts are judged by hypervolume (reports, exports, the benchmark), so keeping the points that
  add most of it is the direct proxy; its ranking does not change when an objective is rescaled (accuracy and
  log-perplexity have unrelated units), where Syne Tune's ε-net takes Euclidean distances on raw values;
  crowding distance gives both ends of a 2-objective front an infinite distance, so the common case at small
  rungs (a front of 2 or 3 trials, one to keep) would fall through to a second, arbitrary rule; and the
  ε-net starts from a random or a fixed-objective seed, where a decision here must be reproducible to be
  replayed. The reference point is the rung's own nadir less 10 % of each objective's range over every trial
  recorded there (the rule of ``sweep.results.pareto.reference_point``), so both ends of a front count. Exactly equal
  contributions go to the trial recorded first: the incumbent's decision already stands. (Duplicates tie at 0;
  so do two trials that are alone at a rung and define its nadir themselves, Δx·0.1Δy each: the first stays.)
- A result without every objective, or with a non-finite one, is ``CONTINUE`` and not recorded: a failing
  trial is handled elsewhere (the searcher tells Optuna FAIL).
- A result at or past the group's full budget is ``CONTINUE`` and not recorded: a trial that finished is never
  "stopped". A result past a rung that skipped lower rungs is judged at the highest one only; the lower ones
  are never judged later with values from more steps (that would not be like for like). The trainable should
  report exactly at the rung steps (:meth:`MOASHA.rungs`).

**Measured** (``benchmarks/search_efficiency.py --section multi``, the paper preset's PEZ alone, 20 seeds,
η = 3): with crowding distance in place of the hypervolume tie-break the full-compute hypervolume over
``fifo+random`` fell from +0.109 ± 0.044 to -0.042 ± 0.048 (3 rungs, TPE) and from +0.036 ± 0.060 to
-0.004 ± 0.048 (2 rungs, random): crowding keeps the front's ends (the anchor-like and the collapsed prompts),
which add little area. Ranking below η too (admitting ``max(1, floor(n / η))``, so the second trial at a rung
must beat the first; 10 seeds, η 3 and 4, 1 or 2 rungs) moved the full-compute hypervolume within noise
(-0.07 to +0.06) and lowered it at half the compute by 0.02 to 0.41: fewer trials reach the full budget early.
On 50 seeds with 3 rungs (grace ``ceil(steps / 27)``) MO-ASHA reaches ``fifo+random``'s final hypervolume at a
median 67-79 % of its steps at the paper's compute (67-71 % with TPE), not at 50 %; at the demo's compute of 3
full trials per tuner it loses (the benchmark's module docstring has the numbers).

**Never stopped:** a trial with empty or missing ``config["params"]`` (the unregularised anchor and the
baselines: fixed trials), and any trial of a group without a ``max_steps`` entry. A protected trial of a
group with rungs is still *recorded* (decision ``CONTINUE``): the anchor is a real point of its tuner at
those steps, and the others are fairly compared with it.

**Identity and resume.** Records and decisions are keyed by ``result["trial_key"]`` when present, else by
Tune's trial id: a resumed sweep starts a fresh Tune run with new trial ids. A ``(key, rung)`` already judged
returns the same decision and records nothing (a trial resumed from a checkpoint before a rung re-reports that
rung: it is neither promoted twice nor re-judged), and a key stopped at any rung gets ``STOP`` again.
:meth:`MOASHA.state` is JSON (records and decisions per group and rung, in record order, which the tie-break
uses); :meth:`MOASHA.load_state` / :meth:`MOASHA.from_state` rebuild it and :meth:`MOASHA.record` seeds one
record from outside (the driver rebuilding from MLflow). With ``state_path`` every new record is also written
to that file whole or not at all (temporary file + ``os.replace``), and a scheduler constructed or unpickled
with that path reads it before its first decision. That matters because Ray 2.60 never calls a scheduler's
``save``/``restore`` (they exist on ``TrialScheduler`` but nothing in ``tune_controller`` calls them), and
``Tuner.restore`` unpickles the ``TuneConfig`` (and so the scheduler) as it was when the ``Tuner`` was built,
with no records.

**Tune's metric/mode.** Tune accepts only a single ``metric``/``mode`` for a scheduler; the objectives and
their directions live on this scheduler instead, ``set_search_properties`` accepts whatever Tune passes and
``metric`` stays ``None`` (Tune then checks no scheduler metric in results).

**What Optuna 5.1 does with a PRUNED trial** (a stopped trial must be told PRUNED, never COMPLETE with rung
values; read from ``optuna/samplers/_tpe/sampler.py``, ``optuna/samplers/_ga/_base.py``, ``study/_tell.py``):

- Telling PRUNED stores no values in a multi-objective study: ``_tell`` copies the last intermediate value
  only, and ``Trial.report`` does not exist for multi-objective studies (Ray's ``OptunaSearch`` skips it).
  ``best_trials`` and hypervolume counts use COMPLETE trials only.
- Multi-objective TPE reads COMPLETE and PRUNED trials (and RUNNING ones with ``constant_liar``). PRUNED trials
  count toward ``n_startup_trials`` and toward ``n`` in ``gamma(n) = ceil(0.1 n)``, the size of the "good"
  set. The good set is filled from COMPLETE trials first (non-dominated rank, then hypervolume subset
  selection); PRUNED trials are ranked by their last intermediate value, which a multi-objective study never
  has, so they all tie and fill any remaining good slots in trial-number order, then go to the "bad" set with
  the rest. In practice (``gamma(n)`` at most the number of COMPLETE trials, i.e. at least one in ten trials
  reaching the full budget) every PRUNED trial is a "bad" observation: TPE samples away from stopped
  configurations, which is what a stop means. Where fewer than one trial in ten completes, the earliest PRUNED
  trials would be counted as good, arbitrarily; the rungs here let at least ``1/η**K`` through.
- NSGA-II builds its generations from COMPLETE trials only (``_sync_generation_cache`` caches COMPLETE trials
  into generations; FAIL and PRUNED are finished and skipped): a PRUNED trial is never a parent, never in
  the elite selection, and does not count toward ``population_size``, so a generation fills only with
  full-budget trials. Stopping thus makes NSGA-II's generations slower to fill in trials drawn, not wrong.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from ray.tune.schedulers.trial_scheduler import FIFOScheduler, TrialScheduler

from sweep import failpoints
from sweep.results.pareto import select_top, signed

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

logger = logging.getLogger(__name__)

STATE_VERSION = 1
_DECISIONS = (TrialScheduler.CONTINUE, TrialScheduler.STOP)


# ----- the rungs (pure numpy; the Pareto math is in sweep/results/pareto.py) ---------------------------------


def rung_steps(grace_steps: int, reduction_factor: float, max_steps: int) -> list[int]:
    """Rung step counts ``round(grace_steps * reduction_factor**k)`` strictly below ``max_steps``, increasing.

    The full budget is not a rung (a trial there has finished). ``rung_steps(4, 3, 100) == [4, 12, 36]``;
    ``grace_steps >= max_steps`` gives no rungs (the group is never stopped).
    """
    if grace_steps < 1:
        raise ValueError(f"grace_steps={grace_steps} must be >= 1")
    if not reduction_factor > 1:
        raise ValueError(f"reduction_factor={reduction_factor} must be > 1")
    rungs: list[int] = []
    k = 0
    while (step := int(round(grace_steps * reduction_factor**k))) < max_steps:
        if not rungs or step > rungs[-1]:  # a factor close to 1 can round two rungs onto one step
            rungs.append(step)
        k += 1
    return rungs


def n_admitted(n: int, reduction_factor: float) -> int:
    """How many of ``n`` trials recorded at a rung go on: ``floor(n / η)``, or all ``n`` while ``n < η``
    (too few to rank: module docstring)."""
    if n < reduction_factor:
        return n
    return int(math.floor(n / reduction_factor + 1e-9))


def rung_decision(values: np.ndarray, modes: Sequence[str], reduction_factor: float, index: int = -1) -> bool:
    """Whether row ``index`` of ``values`` ``(n, k)`` (all trials recorded at a rung, in record order, the new
    one included; raw values, directions in ``modes``) continues: it is among :func:`n_admitted` rows of
    :func:`select_top`."""
    points = signed(values, modes)
    keep = select_top(points, n_admitted(points.shape[0], reduction_factor))
    return bool(keep[index])


# ----- the scheduler ---------------------------------------------------------------------------------------


class MOASHA(FIFOScheduler):
    """Multi-objective asynchronous successive halving, stopping-based (module docstring has the rules).

    Lifecycle (Tune's): ``on_trial_add`` when a trial is created; ``on_trial_result`` for every result while it
    runs, answering ``CONTINUE`` or ``STOP``; ``on_trial_complete`` / ``on_trial_error`` / ``on_trial_remove``
    when it ends; ``choose_trial_to_run`` is FIFO (pending first, then paused). ``grace_steps`` is one value
    for every group or a mapping per group (a tuner of 12,000 steps next to one of 1,000 wants its own).
    """

    def __init__(
        self,
        *,
        objectives: Sequence[str],
        modes: Sequence[str],
        max_steps: Mapping[str, int],
        grace_steps: int | Mapping[str, int],
        reduction_factor: float = 3,
        time_attr: str = "steps",
        state_path: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        if len(objectives) == 0 or len(objectives) != len(modes):
            raise ValueError(f"objectives {list(objectives)} and modes {list(modes)}: need one mode per objective")
        signed(np.zeros((0, len(modes))), modes)  # validates the modes
        if not reduction_factor > 1:
            raise ValueError(f"reduction_factor={reduction_factor} must be > 1 (3 keeps a third at each rung)")
        self.objectives = tuple(objectives)
        self.modes = tuple(modes)
        self.max_steps = {str(g): int(s) for g, s in max_steps.items()}
        if isinstance(grace_steps, Mapping):
            missing = sorted(set(self.max_steps) - set(grace_steps))
            if missing:
                raise ValueError(f"grace_steps has no entry for groups {missing} (max_steps has them)")
            self.grace_steps: int | dict[str, int] = {str(g): int(s) for g, s in grace_steps.items()}
        else:
            self.grace_steps = int(grace_steps)
        self.reduction_factor = float(reduction_factor)
        self.time_attr = time_attr
        self.state_path = None if state_path is None else str(state_path)
        self._rungs = {g: rung_steps(self._grace(g), self.reduction_factor, s) for g, s in self.max_steps.items()}
        # group -> rung -> key -> (values, decision); dicts keep record order, which the tie-break uses
        self._records: dict[str, dict[int, dict[str, tuple[tuple[float, ...], str]]]] = {
            g: {r: {} for r in rungs} for g, rungs in self._rungs.items()
        }
        self._stopped: dict[str, tuple[str, int]] = {}  # key -> (group, rung) it was stopped at
        self._keys: dict[str, str] = {}  # Tune trial id -> key (transient: a resumed run has new ids)
        self._loaded = False  # whether state_path has been read since construction or unpickling

    # --- what the driver and the trainable read ---

    def _grace(self, group: str) -> int:
        return self.grace_steps[group] if isinstance(self.grace_steps, dict) else self.grace_steps

    def rungs(self, group: str) -> list[int]:
        """The rung steps of ``group`` (where its trials should report); ``[]`` for a group never stopped."""
        return list(self._rungs.get(group, []))

    def stopped_at(self, key: str) -> int | None:
        """The rung (steps) the trial with ``key`` was stopped at, or None if it was not stopped."""
        self._ensure_loaded()
        hit = self._stopped.get(str(key))
        return None if hit is None else hit[1]

    def decision(self, group: str, key: str, rung: int) -> str | None:
        """The decision recorded for ``key`` at ``rung`` of ``group`` (``CONTINUE``/``STOP``), or None."""
        self._ensure_loaded()
        entry = self._records.get(group, {}).get(int(rung), {}).get(str(key))
        return None if entry is None else entry[1]

    def key_of(self, trial: Trial, result: Mapping[str, Any] | None = None) -> str:
        """The stable key of ``trial``: ``result["trial_key"]`` when present (remembered for later calls that
        carry no result), else Tune's trial id."""
        if result is not None and result.get("trial_key") not in (None, ""):
            self._keys[trial.trial_id] = str(result["trial_key"])
        return self._keys.get(trial.trial_id, str(trial.trial_id))

    @staticmethod
    def is_protected(trial: Trial) -> bool:
        """A fixed trial (no Optuna params: the anchor and the baselines) is never stopped."""
        config = trial.config or {}
        return not config.get("params")

    # --- decisions ---

    def _values(self, result: Mapping[str, Any]) -> tuple[float, ...] | None:
        values = []
        for name in self.objectives:
            value = result.get(name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                return None
            if not math.isfinite(float(value)):
                return None
            values.append(float(value))
        return tuple(values)

    def _judge(self, group: str, rung: int, key: str, values: tuple[float, ...], protected: bool) -> str:
        recorded = self._records[group][rung]
        if protected:
            return TrialScheduler.CONTINUE
        matrix = np.array([*(v for v, _ in recorded.values()), values])
        go_on = rung_decision(matrix, self.modes, self.reduction_factor, index=-1)
        return TrialScheduler.CONTINUE if go_on else TrialScheduler.STOP

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        self._ensure_loaded()
        key = self.key_of(trial, result)
        if key in self._stopped:
            return TrialScheduler.STOP  # a stopped trial that runs again (resumed) is stopped again
        group = str((trial.config or {}).get("tuner"))
        rungs = self._rungs.get(group)
        steps = result.get(self.time_attr)
        if not rungs or not isinstance(steps, (int, float)) or steps >= self.max_steps[group]:
            return TrialScheduler.CONTINUE
        reached = [r for r in rungs if r <= steps]
        if not reached:
            return TrialScheduler.CONTINUE
        rung = reached[-1]
        known = self._records[group][rung].get(key)
        if known is not None:
            return known[1]  # judged already (a resumed trial re-reporting): same answer, no second record
        values = self._values(result)
        if values is None:
            return TrialScheduler.CONTINUE
        protected = self.is_protected(trial)
        decision = self._judge(group, rung, key, values, protected)
        self._add(group, key, rung, values, decision)
        self._persist()
        failpoints.hit("rung_decided")
        if decision == TrialScheduler.STOP:
            logger.info(
                "MOASHA: stopped %s (%s) at %s %d: not in the top 1/%g of %d trials",
                key,
                group,
                self.time_attr,
                rung,
                self.reduction_factor,
                len(self._records[group][rung]),
            )
        return decision

    def _add(self, group: str, key: str, rung: int, values: tuple[float, ...], decision: str) -> None:
        self._records[group][rung][key] = (values, decision)
        if decision == TrialScheduler.STOP:
            self._stopped.setdefault(key, (group, rung))

    def record(
        self, group: str, key: str, rung: int, values: Sequence[float], decision: str, *, persist: bool = True
    ) -> None:
        """Seed one record from outside (the driver rebuilding the state from MLflow on resume).

        Idempotent: the same ``(group, key, rung)`` with the same decision is a no-op; a different decision
        raises, since one of the two sources is wrong.
        """
        self._ensure_loaded()
        self._record(group, key, rung, values, decision)
        if persist:
            self._persist()

    def _record(self, group: str, key: str, rung: int, values: Sequence[float], decision: str) -> None:
        group, key, rung, decision = str(group), str(key), int(rung), str(decision).upper()
        if decision not in _DECISIONS:
            raise ValueError(f"decision={decision!r} must be one of {_DECISIONS}")
        if rung not in self._rungs.get(group, []):
            raise ValueError(f"{rung} is not a rung of group {group!r}; its rungs are {self.rungs(group)}")
        values = tuple(float(v) for v in values)
        if len(values) != len(self.objectives) or not all(math.isfinite(v) for v in values):
            raise ValueError(f"values {list(values)} must be {len(self.objectives)} finite floats {self.objectives}")
        known = self._records[group][rung].get(key)
        if known is not None:
            if known[1] != decision:
                raise ValueError(f"{key} at {group}/{rung} was recorded with {known[1]}; refusing to record {decision}")
            return
        self._add(group, key, rung, values, decision)

    # --- Tune's lifecycle ---

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # the objectives and their directions live here (module docstring)

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        self._ensure_loaded()

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        # The final result went through on_trial_result already; nothing is judged at the full budget.
        self._keys.pop(trial.trial_id, None)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        self._keys.pop(trial.trial_id, None)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self._keys.pop(trial.trial_id, None)

    def debug_string(self) -> str:
        lines = [
            f"Using MOASHA (stopping, η={self.reduction_factor:g}, {self.time_attr}) on "
            + ", ".join(f"{o} ({m})" for o, m in zip(self.objectives, self.modes, strict=True))
            + f": {len(self._stopped)} stopped"
        ]
        for group, rungs in self._records.items():
            cells = [
                f"{r}: {len(rec)} recorded, {sum(d == TrialScheduler.STOP for _, d in rec.values())} stopped"
                for r, rec in rungs.items()
            ]
            lines.append(f"  {group} (max {self.max_steps[group]}): " + (" | ".join(cells) or "no rungs"))
        return "\n".join(lines)

    # --- state ---

    def state(self) -> dict[str, Any]:
        """JSON-serialisable settings and records (per group, per rung, in record order)."""
        self._ensure_loaded()
        return {
            "version": STATE_VERSION,
            "objectives": list(self.objectives),
            "modes": list(self.modes),
            "max_steps": dict(self.max_steps),
            "grace_steps": self.grace_steps if isinstance(self.grace_steps, int) else dict(self.grace_steps),
            "reduction_factor": self.reduction_factor,
            "time_attr": self.time_attr,
            "groups": {
                group: {
                    str(rung): [{"key": k, "values": list(v), "decision": d} for k, (v, d) in rec.items()]
                    for rung, rec in rungs.items()
                }
                for group, rungs in self._records.items()
            },
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Replace the records with those of ``state`` (from :meth:`state`); the objectives and their
        directions must match (records on other objectives cannot be compared)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"scheduler state version {state.get('version')!r}; this code reads {STATE_VERSION}")
        if tuple(state["objectives"]) != self.objectives or tuple(state["modes"]) != self.modes:
            raise ValueError(
                f"state is for objectives {state['objectives']} {state['modes']}, "
                f"this scheduler for {list(self.objectives)} {list(self.modes)}"
            )
        self._records = {g: {r: {} for r in rungs} for g, rungs in self._rungs.items()}
        self._stopped = {}
        self._loaded = True  # what is loaded replaces the file's content; do not merge the file in later
        for group, rungs in state["groups"].items():
            for rung, entries in rungs.items():
                for entry in entries:
                    self._record(group, entry["key"], int(rung), entry["values"], entry["decision"])

    @classmethod
    def from_state(cls, state: Mapping[str, Any], *, state_path: str | os.PathLike[str] | None = None) -> MOASHA:
        """A scheduler with the settings and records of ``state``."""
        scheduler = cls(
            objectives=state["objectives"],
            modes=state["modes"],
            max_steps=state["max_steps"],
            grace_steps=state["grace_steps"],
            reduction_factor=state["reduction_factor"],
            time_attr=state["time_attr"],
            state_path=state_path,
        )
        scheduler.load_state(state)
        return scheduler

    def save(self, checkpoint_path: str) -> None:
        _write_json(Path(checkpoint_path), self.state())

    def restore(self, checkpoint_path: str) -> None:
        self.load_state(json.loads(Path(checkpoint_path).read_text()))

    def _ensure_loaded(self) -> None:
        """Merge ``state_path``'s records in once, before the first decision after construction/unpickling."""
        if self._loaded:
            return
        self._loaded = True
        if self.state_path is None or not os.path.exists(self.state_path):
            return
        saved = json.loads(Path(self.state_path).read_text())
        if tuple(saved["objectives"]) != self.objectives or tuple(saved["modes"]) != self.modes:
            raise ValueError(
                f"{self.state_path} holds records for objectives {saved['objectives']} {saved['modes']}, "
                f"this scheduler is for {list(self.objectives)} {list(self.modes)}; remove it or use another path"
            )
        for group, rungs in saved["groups"].items():
            for rung, entries in rungs.items():
                for entry in entries:
                    if int(rung) in self._rungs.get(group, []):
                        self._record(group, entry["key"], int(rung), entry["values"], entry["decision"])
                    else:
                        logger.warning(
                            "%s: %s/%s is not a rung any more; its records are ignored", self.state_path, group, rung
                        )
        logger.info("MOASHA: read %d stopped trials from %s", len(self._stopped), self.state_path)

    def _persist(self) -> None:
        if self.state_path is not None:
            _write_json(Path(self.state_path), self.state())

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_keys"] = {}  # Tune trial ids mean nothing to another run
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._loaded = False  # an unpickled copy (Tuner.restore) reads state_path again before deciding


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` to ``path`` whole or not at all: a temporary file in the same folder, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
