"""The report page's header, computed: what the sweep was and what it found, as text (no HTML).

The facts (status, trial counts, objectives, commit, MLflow run, timings, versions), the hypervolume table with
each front's share beating each baseline and the training gain, and the config and record shown in full.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from objectives.metrics import METRICS
from sweep.results.columns import BASELINE_NAMES, LEARN_METRIC, arrow, duration, formatted
from sweep.results.compare import learning_text
from sweep.results.pareto import ALL_KEY, Fronts
from tuners.base import BASELINES


@dataclass(frozen=True)
class Header:
    """The page's header. ``facts`` are ``(label, text, is_code)`` rows; ``volumes`` the hypervolume table, its
    headings first (empty without hypervolumes, when ``note`` says why if there is a reason to give);
    ``reference`` the hypervolume reference point in the metrics' own units; ``learns`` whether the table has
    a training-gain column; ``config`` the resolved config and ``rest`` every other field of the record."""

    name: str
    facts: tuple[tuple[str, str, bool], ...]
    volumes: tuple[tuple[str, ...], ...]
    reference: str
    learns: bool
    note: str
    config: Mapping[str, Any]
    rest: Mapping[str, Any]


def direction(name: str) -> str:
    """`` ↑`` or `` ↓`` after a registered metric's name; nothing after another column's."""
    return f" {arrow(name)}" if name in METRICS else ""


def compute_header(header: Mapping[str, Any], table: pd.DataFrame, fronts: Fronts) -> Header:
    config = header.get("config") if isinstance(header.get("config"), Mapping) else {}
    summary = header.get("summary_metrics") if isinstance(header.get("summary_metrics"), Mapping) else {}
    volumes, learns = _volumes(fronts, summary)
    reference = ", ".join(
        f"{o} = {formatted(r, '.4f')}" for o, r in zip(fronts.objectives, fronts.original_reference, strict=True)
    )
    note = "No hypervolume: it is computed for exactly two objectives." if len(fronts.objectives) != 2 else ""
    return Header(
        name=str(header.get("experiment") or config.get("name") or "sweep"),
        facts=_facts(header, table, fronts),
        volumes=volumes,
        reference=reference,
        learns=learns,
        note="" if volumes else note,
        config=config,
        rest={k: v for k, v in header.items() if k != "config"},
    )


def _facts(header: Mapping[str, Any], table: pd.DataFrame, fronts: Fronts) -> tuple[tuple[str, str, bool], ...]:
    facts: list[tuple[str, str, bool]] = []
    if header.get("status"):
        facts.append(("status", str(header["status"]), False))
    finished = header.get("trials_finished", len(table))
    trials = f"{finished} finished" + (f" of {header['trials_expected']}" if "trials_expected" in header else "")
    for key in ("stopped", "failed", "killed", "retried"):
        if header.get(f"trials_{key}"):
            trials += f", {header[f'trials_{key}']} {key}" + (" at a rung" if key == "stopped" else "")
    facts.append(("trials", trials, False))
    if header.get("first_error"):
        facts.append(("first failure", str(header["first_error"]), False))
    objectives = ", ".join(f"{o}{direction(o)}" for o in fronts.objectives)
    facts.append(("objectives", objectives + " (fronts and hypervolumes on these, dev data)", False))
    for key, label in (
        ("git_commit", "git commit"),
        ("parent_run_id", "MLflow parent run"),
        ("tracking_uri", "MLflow tracking URI"),
    ):
        if header.get(key):
            facts.append((label, str(header[key]), True))
    timings = header.get("timings")
    if isinstance(timings, Mapping) and timings:
        spent = " · ".join(f"{k.removesuffix('_s')} {duration(v)}" for k, v in timings.items())
        facts.append(("timings", spent, False))
    versions = header.get("versions")
    if isinstance(versions, Mapping) and versions:
        facts.append(("versions", " · ".join(f"{k} {v}" for k, v in versions.items()), False))
    return tuple(facts)


def _volumes(fronts: Fronts, summary: Mapping[str, Any]) -> tuple[tuple[tuple[str, ...], ...], bool]:
    """The hypervolume table, headings first (empty without hypervolumes), and whether it shows the training
    gain: per tuner (all tuners last) its area, the share of its front beating each baseline, its gain."""
    volumes = sorted(fronts.hypervolume.items(), key=lambda kv: kv[0] == ALL_KEY)
    if not volumes:
        return (), False
    baselines = [b for b in BASELINES if any(str(k).startswith(f"front_beats/{b}/") for k in summary)]
    learns = any(str(k).startswith(f"{LEARN_METRIC}/") for k in summary)
    head = ["tuner", "hypervolume", *(f"front beats {BASELINE_NAMES[b]}" for b in baselines)]
    head += ["training gain (dev)"] if learns else []
    rows = [tuple(head)]
    for tuner, volume in volumes:
        cells = ["all tuners" if tuner == ALL_KEY else tuner, formatted(volume, ".4f")]
        for b in baselines:
            share = summary.get(f"front_beats/{b}/{tuner}")
            cells.append(f"{float(share):.0%}" if isinstance(share, (int, float)) and math.isfinite(share) else "")
        cells += [learning_text(summary, tuner)] if learns else []
        rows.append(tuple(cells))
    return tuple(rows), learns
