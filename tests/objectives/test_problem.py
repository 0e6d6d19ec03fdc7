"""``Problem.train_batch``: class-balanced training batches; and what a problem must fit (seeds, positions, weights)."""

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


# --- what a problem must fit -------------------------------------------------------------------------------


def test_seeds_are_unsigned_32_bit():
    from objectives.errors import ConfigError
    from objectives.problem import ProblemConfig

    for seed in (-1, 2**32):
        with pytest.raises(ConfigError, match=rf"seed={seed} must be in \[0, 4294967295\]"):
            ProblemConfig(seed=seed)
    assert ProblemConfig(seed=2**32 - 1).seed == 2**32 - 1


def test_the_prompt_must_fit_beside_the_longest_input():
    from objectives.errors import ConfigError
    from objectives.problem import check_prompt_fits

    check_prompt_fits(6, (250, "a review"), 256, model="m", task="t")  # exactly full
    check_prompt_fits(10**6, (10, "x"), None, model="m", task="t")  # positions unknown: nothing to check
    with pytest.raises(ConfigError, match=r"prompt_len=7 does not fit model 'm'.*set prompt_len <= 6"):
        check_prompt_fits(7, (250, "a review"), 256, model="m", task="t")
    with pytest.raises(ConfigError, match=r"task 't' has an input of 300 tokens \('a long one'\).*not truncated"):
        check_prompt_fits(1, (300, "a long one"), 256, model="m", task="t")


def test_longest_input_as_the_template_lays_it_out(task_dir):
    from objectives.models import load_tokenizer, tiny_gpt2
    from objectives.problem import longest_input, max_positions
    from objectives.tasks import load_task

    tokenizer = load_tokenizer("tiny-gpt2")
    task = load_task(str(task_dir), num_classes=2)
    suffix, text = longest_input(tokenizer, task, "suffix")
    prefix, same = longest_input(tokenizer, task, "prefix")
    assert text == same and suffix == len(tokenizer.encode(text)) and prefix == suffix + 2  # " It was"
    assert max_positions(tiny_gpt2().config) == 256


def test_a_model_folder_needs_its_weights(tmp_path):
    from transformers import GPT2Config

    from objectives.errors import ConfigError
    from objectives.problem import check_model_folder

    check_model_folder("tiny-gpt2")  # not a folder: the loader's business
    with pytest.raises(ConfigError, match="has no config.json"):
        check_model_folder(str(tmp_path))
    GPT2Config(n_layer=1, n_embd=8, n_head=1).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=r"has a config.json but no weights \(model.safetensors"):
        check_model_folder(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"")
    check_model_folder(str(tmp_path))
