"""``Problem.train_batch``: class-balanced training batches."""

from __future__ import annotations

import pytest
import torch

from objectives.problem import Problem


def _problem(labels: list[int]) -> Problem:
    # Only the labels matter to train_batch; the LM, task and scorers are never touched.
    return Problem(lm=None, task=None, verbalizer_ids=[], scorers={}, labels={"train": torch.tensor(labels)})  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [2, 3, 8, 15])
def test_batches_are_class_balanced_distinct_and_random(size):
    problem = _problem([0] * 16 + [1] * 16)
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(200):
        rows = problem.train_batch(size, gen)
        assert len(rows) == size == len(set(rows.tolist()))
        counts = torch.bincount(problem.labels["train"][rows], minlength=2)
        assert int(counts.max() - counts.min()) <= 1, counts
        seen.update(rows.tolist())
    assert seen == set(range(32))  # every row is drawn sometime


def test_a_short_class_gives_its_share_to_the_others():
    problem = _problem([0] * 2 + [1] * 10 + [2] * 10)
    rows = problem.train_batch(12, torch.Generator().manual_seed(1))
    counts = torch.bincount(problem.labels["train"][rows], minlength=3).tolist()
    assert counts[0] == 2 and sorted(counts[1:]) == [5, 5]


def test_a_batch_covering_the_split_is_all_rows_in_order():
    problem = _problem([1, 0, 1, 0, 0])
    assert problem.train_batch(5, torch.Generator()).tolist() == [0, 1, 2, 3, 4]
    assert problem.train_batch(9, torch.Generator()).tolist() == [0, 1, 2, 3, 4]


def test_the_same_generator_state_gives_the_same_batches():
    problem = _problem([0, 1] * 10)
    first = [problem.train_batch(6, torch.Generator().manual_seed(3)).tolist() for _ in range(2)]
    assert first[0] == first[1]
