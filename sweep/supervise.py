"""The command line's driver runs in a child process, watched by this small parent that never starts Ray.

Ray can end the driver's process itself: when the node's raylet dies (killed, out of memory, or stopped by a
signal sent to the whole process group, which Ray's processes share with the driver) the driver's Ray core
worker exits the process from C++, and no Python ``finally`` runs. The sweep would be left ``RUNNING`` in
``sweep.json`` and MLflow with no word on the console. This parent records the end the driver could not:
``INTERRUPTED`` with the reason and the counts, its trial runs closed, exit 130 (a rerun resumes).

Signals: SIGINT and SIGTERM that reach the parent are passed to the driver (which stops at the first one it
gets and ignores the rest, so a signal sent to the whole group is not doubled). A driver that has not ended
``STOP_GRACE_S`` after the first signal is killed and its end recorded here: with Ray's processes stopped by
the same signal, the driver can sit a minute in a Ray call waiting for the GCS, where no Python runs.
``sweep.run.main`` called in process (tests, notebooks) runs without this parent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENV = "PROMPTSWEEP_SUPERVISOR"  # set in the driver: the file where it says which --out it records into
_HONEST = (0, 1, 2, 130)  # exit codes of a driver that ended by itself (sweep/driver.py EXIT_CODES, 2: bad input)
# Seconds a signalled driver has to end by itself: its exports take a few seconds, Kubernetes allows 30.
STOP_GRACE_S = float(os.environ.get("PROMPTSWEEP_STOP_GRACE_S", "20"))


def supervise(argv: list[str]) -> int:
    """Run ``sweep/run.py argv`` as the driver, and record its end if it dies before it could."""
    with tempfile.NamedTemporaryFile(prefix="promptsweep-driver-", suffix=".json", delete=False) as handle:
        handshake = Path(handle.name)
    received: list[str] = []
    script = Path(__file__).resolve().parent / "run.py"
    child = subprocess.Popen([sys.executable, str(script), *argv], env={**os.environ, ENV: str(handshake)})

    def forward(signum: int, frame: object) -> None:
        received.append(signal.Signals(signum).name)
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    first: float | None = None
    try:
        while True:
            try:
                code = child.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                pass
            if received and first is None:
                first = time.monotonic()
            if first is not None and time.monotonic() - first > STOP_GRACE_S:
                late = f"the driver did not stop within {STOP_GRACE_S:g} s of {received[0]}; killing it"
                print(late, file=sys.stderr)
                child.kill()
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    try:
        out = json.loads(handshake.read_text() or "{}").get("out")
    except (OSError, ValueError):
        out = None
    finally:
        handshake.unlink(missing_ok=True)
    record = Path(out) / "sweep.json" if out else None
    if code in _HONEST and (record is None or _status(record) != "RUNNING"):
        return code
    if record is None:
        print(f"error: the sweep's driver ended abruptly (exit code {code}) before the sweep started", file=sys.stderr)
        return 1
    return _record_end(record, code, received[0] if received else None)


def announce(out: Path) -> None:
    """In the driver: tell the parent which ``--out`` this sweep records into (once its record exists)."""
    path = os.environ.get(ENV)
    if path:
        Path(path).write_text(json.dumps({"out": str(out)}))


def _status(record: Path) -> str | None:
    try:
        return json.loads(record.read_text()).get("status")
    except (OSError, ValueError):
        return None


def _record_end(record: Path, code: int, signal_name: str | None) -> int:
    """The driver died with its sweep RUNNING: close its runs and record INTERRUPTED, as it would have."""
    from sweep import mlflow_log
    from sweep.driver import EXIT_CODES, RESUME_HINT, STATUS_TAG, write_json

    summary = json.loads(record.read_text())
    how = f"exit code {code}" if code >= 0 else f"killed by {signal.Signals(-code).name}"
    reason = (
        f"the driver process ended before it recorded the sweep's end ({how}"
        + (f", after {signal_name}" if signal_name else "")
        + "): Ray stopped under it (its raylet died or was signalled), a kill, or a Python error (its traceback "
        + "is above); "
        + RESUME_HINT
    )
    summary.update(status="INTERRUPTED", reason=reason, interrupted_by=signal_name)
    uri, parent = summary["tracking_uri"], summary["parent_run_id"]
    try:
        closed = mlflow_log.close_running_children(uri, parent, reason=f"the sweep's driver died; {RESUME_HINT}")
        counts = mlflow_log.child_status_counts(uri, parent)
        finished, failed = counts.get("FINISHED", 0), counts.get("FAILED", 0)
        planned = int(summary.get("trials_planned", 0))
        summary.update(
            trials_finished=finished,
            trials_failed=failed,
            trials_unfinished=max(0, planned - finished - failed),
            trials_retried=counts.get("retried", 0),
            trials_interrupted_now=closed,
        )
        mlflow_log.finish_parent(uri, parent, files=[], status="KILLED", tags={STATUS_TAG: "INTERRUPTED"})
    except Exception as err:  # MLflow away too: the record says so, the rerun closes the runs
        summary["reason"] = f"{reason} (MLflow could not be updated: {type(err).__name__}: {err})"
    write_json(record, summary)
    print(f"\nsweep INTERRUPTED: {summary['reason']}", file=sys.stderr)
    return EXIT_CODES["INTERRUPTED"]
