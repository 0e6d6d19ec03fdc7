"""Replicates: one configuration measured on several data seeds crossed with init seeds.

A single run of a configuration cannot tell a trend from noise: on a k-shot split one dev example is several
points of accuracy, and two init seeds of the same configuration give different prompts. So a trial runs
its tuner ``R`` times and reports every metric as its replicate mean with a spread (``objectives.stats``).

Replicate ``i`` of a configuration with seed ``s``:

- data: for an LM-BFF folder family (``.../sst-2/16-{13,21,42,87,100}``: sibling folders ``<k>-<seed>``
  with the three TSV files) the ``i``-th folder of the family, starting from the configured one; for any
  other source (Rotten Tomatoes, ``hf:``, a lone folder) the same source, whose k-shot draw follows the seed;
- init: ``seed = s + i``, which also seeds the tuner (initial prompt, batches, sampling).

Every replicate of every trial uses the same plan, so replicate ``i`` of two configurations (a learned
prompt and a baseline) saw the same data: comparisons between them are paired. The LM, the caches and
a split's scorer are built once per process and shared (``objectives.problem.build_problem``).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from objectives.errors import ConfigError
from objectives.problem import ProblemConfig
from objectives.stats import aggregate
from objectives.tasks import LMBFF_FILES
from tuners.base import Checkpointing, PromptResult, Reporter, Tuner
from tuners.selection import best_index, selection_key

logger = logging.getLogger(__name__)

# ``<k>-<seed>``: LM-BFF's name for the k-shot split drawn with that seed.
_LMBFF_SPLIT = re.compile(r"^(\d+)-(\d+)$")

ReplicateReporter = Callable[[int, int, Mapping[str, float]], None]


def lmbff_family(task: str) -> list[str] | None:
    """The sibling split folders of an LM-BFF folder, the given one first, then by seed; ``None`` if lone.

    ``.../sst-2/16-100`` → ``[.../16-100, .../16-13, .../16-21, .../16-42, .../16-87]`` when those exist and
    each holds train/dev/test.tsv.
    """
    folder = Path(task).expanduser()
    match = _LMBFF_SPLIT.match(folder.name)
    if match is None or not folder.is_dir():
        return None
    k = match.group(1)
    siblings = []
    for sibling in folder.parent.iterdir():
        found = _LMBFF_SPLIT.match(sibling.name)
        if found and found.group(1) == k and sibling != folder and all((sibling / f).is_file() for f in LMBFF_FILES):
            siblings.append((int(found.group(2)), sibling))
    if not siblings:
        return None
    ordered = [folder] + [path for _, path in sorted(siblings)]
    # Keep the user's spelling of the path (relative stays relative), only the last part changes.
    return [str(Path(task).parent / path.name) if path != folder else task for path in ordered]


def replicate_configs(config: ProblemConfig, replicates: int) -> list[ProblemConfig]:
    """The ``replicates`` configurations of the plan in the module docstring, replicate 0 being ``config``."""
    if replicates < 1:
        raise ConfigError(f"replicates={replicates} must be >= 1")
    family = lmbff_family(config.task)
    if family is not None and replicates > len(family):
        logger.info(
            "replicates=%d exceeds the %d split folders of %s: folders are reused with other init seeds",
            replicates,
            len(family),
            config.task,
        )
    out = []
    for i in range(replicates):
        task = family[i % len(family)] if family else config.task
        out.append(dataclasses.replace(config, task=task, seed=config.seed + i))
    return out


@dataclass(frozen=True)
class ReplicatedResult:
    """A configuration's replicates: each one's ``PromptResult`` and the aggregated metrics.

    ``representative`` is the replicate whose prompt stands for the configuration in tables and plots: the
    best dev accuracy (ties: the lowest index; ``tuners.selection``); selection on dev, never on test.
    """

    tuner: str
    results: tuple[PromptResult, ...]
    metrics: dict[str, float]
    representative: int
    tasks: tuple[str, ...] = field(default=())

    @property
    def prompt(self) -> PromptResult:
        return self.results[self.representative]

    @property
    def prompt_texts(self) -> list[str]:
        return [r.prompt_text for r in self.results]

    @property
    def wall_s(self) -> float:
        return sum(r.wall_s for r in self.results)

    def to_json(self) -> dict[str, Any]:
        return {
            "tuner": self.tuner,
            "representative": self.representative,
            "metrics": self.metrics,
            "replicates": [{"task": t, **r.to_json()} for t, r in zip(self.tasks, self.results, strict=True)],
        }


RungCallback = Callable[[int, "ReplicatedResult"], bool]


def run_replicates(
    tuner: Tuner,
    config: ProblemConfig,
    replicates: int,
    *,
    report: ReplicateReporter | None = None,
    checkpoint: Checkpointing | None = None,
    rungs: Sequence[int] = (),
    at_rung: RungCallback | None = None,
) -> ReplicatedResult:
    """Run ``tuner`` on every replicate of ``config``; ``report(replicate, step, metrics)`` as they train.

    Without ``rungs`` each replicate runs to its end, one after the other. With ``rungs`` (steps before the
    tuner's last; ignored by tuners that train nothing) the replicates advance in lockstep: each runs to the
    first rung (``Checkpointing.until``), then ``at_rung(step, result)`` is given the replicates' result at
    that step (means over replicates at equal steps, like for like) and says whether the trial goes on; the
    next segment continues every replicate from its own state. A trial stopped at a rung returns the result at
    that rung (``steps`` of each replicate's result says how far it got).

    With ``checkpoint``, the state saved is ``{"states": [each replicate's tuner state], "results": [each
    replicate's result at the last segment end it reached, as JSON]}``, saved at every checkpoint of the
    running replicate and as each one ends a segment; resuming continues every replicate from its own state.
    """
    configs = replicate_configs(config, replicates)
    trains = getattr(tuner, "trains", True)
    steps = int(getattr(config, "steps", 0))
    ends = [int(s) for s in sorted(set(rungs)) if trains and 0 < s < steps] + [steps]
    progress = _Progress.resume(checkpoint, len(configs))
    results = progress.results
    every = checkpoint.every if checkpoint is not None else max(1, steps)
    for end in ends:
        for index, replicate in enumerate(configs):
            if results[index] is not None and (results[index].steps >= end or not trains):  # type: ignore[union-attr]
                continue
            logger.info(
                "%s replicate %d/%d to step %d: task=%s seed=%d",
                tuner.name,
                index + 1,
                len(configs),
                end,
                replicate.task,
                replicate.seed,
            )
            inner = Checkpointing(
                every=every,
                save=lambda tuner_state, i=index: progress.persist(i, tuner_state),
                state=progress.states[index],
                until=end if end < steps else None,
            )
            results[index] = tuner.run(
                replicate, report=_for_replicate(report, index), checkpoint=inner if trains else None
            )
            if trains:
                progress.persist(index, progress.states[index] if end < steps else None)
        if end < steps and at_rung is not None and not at_rung(end, _combine(tuner, results, configs)):
            break
    return _combine(tuner, results, configs)


@dataclass
class _Progress:
    """Each replicate's tuner state, and its result at the last segment end it reached: what a trial saves."""

    states: list[dict[str, Any] | None]
    results: list[PromptResult | None]
    checkpoint: Checkpointing | None

    @classmethod
    def resume(cls, checkpoint: Checkpointing | None, replicates: int) -> _Progress:
        """Where an earlier attempt left off (``checkpoint.state``), or the start."""
        saved = (checkpoint.state if checkpoint is not None else None) or {}
        results = [
            PromptResult.from_json(r) if r is not None else None for r in saved.get("results") or [None] * replicates
        ]
        return cls(list(saved.get("states") or [None] * replicates), results, checkpoint)

    def persist(self, index: int, state: dict[str, Any] | None) -> None:
        self.states[index] = state
        if self.checkpoint is not None:
            results = [r.to_json() if r else None for r in self.results]
            self.checkpoint.save({"states": list(self.states), "results": results})


def _for_replicate(report: ReplicateReporter | None, index: int) -> Reporter | None:
    """The tuner's ``report(step, metrics)`` for replicate ``index``: ``report(index, step, metrics)``."""
    if report is None:
        return None
    return lambda step, metrics: report(index, step, metrics)


def _combine(
    tuner: Tuner, results: Sequence[PromptResult | None], configs: Sequence[ProblemConfig]
) -> ReplicatedResult:
    done = [r for r in results if r is not None]
    assert len(done) == len(configs), "every replicate has a result at the end of each segment"
    # Dev accuracy alone (no cross-entropy tie-break): ties go to the lowest replicate index.
    keys = [
        selection_key("dev_acc", step=i, acc=r.metrics.get("task/acc_dev", float("-inf"))) for i, r in enumerate(done)
    ]
    return ReplicatedResult(
        tuner=tuner.name,
        results=tuple(done),
        metrics=aggregate([r.metrics for r in done]),
        representative=best_index(keys),
        tasks=tuple(c.task for c in configs),
    )
