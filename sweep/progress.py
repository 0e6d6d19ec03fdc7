"""One progress line per change for a whole sweep, in place of Tune's per-trial tables (``-v`` brings those back)."""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback

from sweep import failpoints
from sweep.search import AT_RUNG


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class SweepProgress(Callback):
    """Prints ``done/total``, running, failed, elapsed and a naive ETA each time a trial starts or ends.

    A trial that failed by itself ends like any other (its last result carries ``error``); one whose worker
    died is retried, and only counts as failed when Tune gives up on it.
    """

    def __init__(self, total: int, *, already_done: int = 0) -> None:
        self.total = total
        self.done = already_done
        self.failed = 0
        self.running: set[str] = set()
        self.started = time.time()
        self._before = already_done
        self._printed = self.started

    # Long trials (minutes each on a CPU) would leave the console silent: a heartbeat line at most this often.
    HEARTBEAT_S = 60.0

    def _line(self, event: str) -> None:
        elapsed = time.time() - self.started
        new = self.done - self._before
        eta = f", ETA {_clock(elapsed / new * (self.total - self.done))}" if new and self.done < self.total else ""
        print(
            f"[sweep] {self.done}/{self.total} done, {len(self.running)} running, {self.failed} failed; "
            f"{_clock(elapsed)} elapsed{eta}  ({event})",
            flush=True,
        )
        self._printed = time.time()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if time.time() - self._printed >= self.HEARTBEAT_S:
            self._line("running")

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.add(trial.trial_id)
        self._line(f"started {_name(trial)}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.discard(trial.trial_id)
        self.done += 1
        last = trial.last_result or {}
        error = last.get("error")
        if error:
            self.failed += 1
            self._line(f"{_name(trial)} failed: {str(error)[:120]}")
        elif last.get(AT_RUNG):
            self._line(f"{_name(trial)} stopped at step {last.get('steps')}: dominated at its rung")
        else:
            self._line(f"{_name(trial)} finished")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.discard(trial.trial_id)
        self.done += 1
        self.failed += 1
        self._line(f"{_name(trial)} failed (see its MLflow run and Ray's log)")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(f"{_name(trial)} lost its worker; retrying from its last checkpoint")

    def get_state(self) -> dict[str, Any] | None:
        # Tune asks its callbacks for their state while it writes its experiment state: the moment a fault
        # test kills the sweep at (a resume never reads that state; see sweep/ledger.py).
        failpoints.hit("tune_state")
        return None


def _name(trial: Any) -> str:
    config = trial.config or {}
    knobs = {k: v for k, v in (config.get("params") or {}).items()}
    fixed = config.get("fixed") or {}
    detail = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v!r}" for k, v in {**fixed, **knobs}.items())
    return f"{config.get('tuner', '?')}[{detail}]" if detail else f"{config.get('tuner', '?')}"
