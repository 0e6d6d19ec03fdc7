"""Named points where a fault test stops the whole sweep as a lost machine would.

``PROMPTSWEEP_FAILPOINT=NAME`` (or ``NAME@N``: the N-th pass in a process) makes ``hit(NAME)`` SIGKILL the
driver's process group (the driver and the embedded Ray it started; the tests start the driver as a session
leader, and Ray's workers keep its session in groups of their own) and then its own: with no chance to clean
up. The points sit at the moments a resume must survive (``tests/sweep/test_faults.py``):

- ``checkpoint_saved``: a trial has just saved a checkpoint;
- ``trial_finished``: a trial's MLflow run is FINISHED and Tune has not been told;
- ``tune_state``: Tune is writing its experiment state;
- ``resumed``: a resumed sweep has brought its studies up to date and not started Tune;
- ``exports``: the exports are written and ``sweep.json`` and the MLflow parent are not;
- ``rung_decided``: the scheduler has decided (and written down) a trial's fate at a rung, and Tune has not
  acted on it.

Unset (always, outside those tests) it costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "PROMPTSWEEP_FAILPOINT"
_passes: dict[str, int] = {}


def hit(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec or spec.split("@")[0] != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    nth = int(spec.split("@")[1]) if "@" in spec else 1
    if _passes[name] == nth:
        os.killpg(os.getsid(0), signal.SIGKILL)
        os.killpg(os.getpgrp(), signal.SIGKILL)
