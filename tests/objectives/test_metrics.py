"""Tests of objectives.metrics against answers worked out by hand on tiny tensors.

Expected values are written as plain ``math`` arithmetic, not with the torch op under test, so a bug shared
by the implementation and the test cannot cancel out.
"""

from __future__ import annotations

import math

import pytest
import torch

from objectives import metrics
from objectives.metrics import (
    METRICS,
    accuracy,
    faith_dist,
    faith_output,
    faith_perf,
    gap_reward,
    metric_info,
    nearest_tokens,
    register_metric,
    repeat_frac,
    special_frac,
    task_ce,
    token_nll,
    word_frac,
    zscore,
)


def _softmax(row: list[float]) -> list[float]:
    total = sum(math.exp(x) for x in row)
    return [math.exp(x) / total for x in row]


def _log_softmax(row: list[float]) -> list[float]:
    log_total = math.log(sum(math.exp(x) for x in row))
    return [x - log_total for x in row]


# --- registry ---------------------------------------------------------------------------------------------

EXPECTED_DIRECTIONS = {
    "task/ce": False,
    "task/acc_train": True,
    "task/acc_dev": True,
    "task/acc_test": True,
    "task/acc_dev_soft": True,
    "task/acc_test_soft": True,
    "baseline/acc_dev": True,
    "baseline/acc_test": True,
    "interp/log_ppl": False,
    "interp/scrutability": True,
    "interp/repeat_frac": False,
    "interp/special_frac": False,
    "interp/word_frac": True,
    "faith/dist": False,
    "faith/output": False,
    "faith/perf": False,
    "faith/perf_ce": False,
    "learn/acc_dev_untrained": True,
    "learn/acc_dev_gain": True,
}


@pytest.mark.parametrize(("name", "higher"), sorted(EXPECTED_DIRECTIONS.items()))
def test_every_metric_registered_with_its_direction(name: str, higher: bool) -> None:
    info = metric_info(name)
    assert info.name == name
    assert info.higher_is_better is higher
    assert info.description


def test_registry_holds_exactly_the_documented_names() -> None:
    assert set(METRICS) == set(EXPECTED_DIRECTIONS)


def test_duplicate_registration_raises_naming_the_metric() -> None:
    with pytest.raises(ValueError, match="task/ce"):
        register_metric("task/ce", higher_is_better=True, description="again")
    assert metric_info("task/ce").higher_is_better is False


def test_register_new_metric_then_duplicate(monkeypatch: pytest.MonkeyPatch) -> None:
    # A private copy, so the module's registry is unchanged for the other tests.
    monkeypatch.setattr(metrics, "METRICS", dict(METRICS))
    register_metric("custom/x", higher_is_better=True, description="a test metric")
    assert metric_info("custom/x") == metrics.MetricInfo("custom/x", True, "a test metric")
    with pytest.raises(ValueError, match="custom/x"):
        register_metric("custom/x", higher_is_better=False, description="clash")
    assert "custom/x" not in METRICS


def test_unknown_metric_suggests_close_match_and_lists_known() -> None:
    with pytest.raises(KeyError) as err:
        metric_info("task/acc_dve")
    message = str(err.value)
    assert "Did you mean" in message
    assert "'task/acc_dev'" in message
    assert "faith/perf_ce" in message


def test_unknown_metric_without_close_match() -> None:
    with pytest.raises(KeyError) as err:
        metric_info("zzzzzz")
    assert "Did you mean" not in str(err.value)
    assert "task/ce" in str(err.value)


# --- task -------------------------------------------------------------------------------------------------


def test_task_ce_two_classes() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0])
    # -log(e^2 / (e^2 + 1)) and -log(1 / (1 + e)).
    expected = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.e)) / 2
    result = task_ce(logits, labels)
    assert result.shape == ()
    assert result.item() == pytest.approx(expected, rel=1e-12)


def test_task_ce_leading_dims_and_gradient() -> None:
    logits = torch.tensor(
        [[[2.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [3.0, -1.0]]], dtype=torch.float64, requires_grad=True
    )
    labels = torch.tensor([0, 1])
    result = task_ce(logits, labels)
    expected = [
        (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(-1.0))) / 2,
        (math.log(2.0) + math.log(1 + math.exp(4.0))) / 2,
    ]
    assert result.shape == (2,)
    assert result.tolist() == pytest.approx(expected, rel=1e-12)
    result.sum().backward()
    # d CE / d logit_label = (p_label - 1) / B for the first example: p = e^2 / (e^2 + 1).
    p = math.exp(2.0) / (math.exp(2.0) + 1)
    assert logits.grad[0, 0, 0].item() == pytest.approx((p - 1) / 2, rel=1e-12)


def test_task_ce_rejects_mismatched_labels() -> None:
    with pytest.raises(ValueError, match="labels"):
        task_ce(torch.zeros(3, 2), torch.tensor([0, 1]))


def test_accuracy_two_classes() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    labels = torch.tensor([0, 0, 0])
    assert accuracy(logits, labels).item() == pytest.approx(2 / 3)


def test_accuracy_leading_dims() -> None:
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0]], [[-1.0, 0.0], [0.0, 1.0]]])
    labels = torch.tensor([0, 1])
    result = accuracy(logits, labels)
    assert result.dtype.is_floating_point
    assert result.tolist() == [1.0, 0.5]


def test_gap_reward_one_correct_one_incorrect() -> None:
    rows = [[1.0, 0.0, -1.0], [0.0, 2.0, 1.0]]
    labels = [0, 0]
    p0, p1 = _softmax(rows[0]), _softmax(rows[1])
    gap_correct = p0[0] - max(p0[1], p0[2])  # label 0 is the largest: positive gap
    gap_wrong = p1[0] - max(p1[1], p1[2])  # label 0 is the smallest: negative gap
    assert gap_correct > 0 > gap_wrong
    expected = (200.0 * gap_correct + 180.0 * gap_wrong) / 2

    logits = torch.tensor([rows], dtype=torch.float64)  # P = 1
    result = gap_reward(logits, torch.tensor(labels))
    assert result.shape == (1,)
    assert result.item() == pytest.approx(expected, rel=1e-12)


def test_gap_reward_per_prompt_and_custom_coefs() -> None:
    # Probabilities chosen directly: logits = log(p) give softmax = p since each row sums to 1.
    probs = [[[0.6, 0.3, 0.1], [0.5, 0.2, 0.3]], [[0.2, 0.7, 0.1], [0.1, 0.1, 0.8]]]
    logits = torch.tensor(probs, dtype=torch.float64).log()
    labels = torch.tensor([0, 1])
    # Prompt 0: gaps 0.6 - 0.3 = 0.3 (correct), 0.2 - 0.5 = -0.3 (incorrect).
    # Prompt 1: gaps 0.2 - 0.7 = -0.5 (incorrect), 0.1 - 0.8 = -0.7 (incorrect).
    result = gap_reward(logits, labels)
    assert result.tolist() == pytest.approx([(200 * 0.3 + 180 * -0.3) / 2, (180 * -0.5 + 180 * -0.7) / 2])
    custom = gap_reward(logits, labels, correct_coef=1.0, incorrect_coef=2.0)
    assert custom.tolist() == pytest.approx([(0.3 - 0.6) / 2, (-1.0 - 1.4) / 2])


def test_zscore_closed_form() -> None:
    values = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    # Population variance: ((1.5)^2 + (0.5)^2 + (0.5)^2 + (1.5)^2) / 4 = 1.25.
    std = math.sqrt(1.25)
    expected = [(x - 2.5) / (std + 1e-8) for x in (1.0, 2.0, 3.0, 4.0)]
    assert zscore(values).tolist() == pytest.approx(expected, rel=1e-12)


def test_zscore_degenerate_inputs_give_zeros() -> None:
    assert zscore(torch.tensor([3.5])).tolist() == [0.0]
    # 0.1 is not exact in binary; the mean may differ from it by a rounding error that eps would amplify.
    assert zscore(torch.tensor([0.1, 0.1, 0.1])).tolist() == [0.0, 0.0, 0.0]


# --- interpretability -------------------------------------------------------------------------------------


def test_token_nll_manual_sum_v3_l3() -> None:
    rows = [[1.0, 0.0, 2.0], [0.5, -1.0, 0.0], [9.0, 9.0, 9.0]]  # last row predicts nothing
    ids = [0, 2, 1]
    # Token 2 at position 1 is predicted by row 0; token 1 at position 2 by row 1.
    expected = -(_log_softmax(rows[0])[2] + _log_softmax(rows[1])[1]) / 2
    logits = torch.tensor([rows], dtype=torch.float64, requires_grad=True)
    result = token_nll(logits, torch.tensor([ids]))
    assert result.shape == (1,)
    assert result.item() == pytest.approx(expected, rel=1e-12)

    result.sum().backward()
    # d/d logits[0, 0, 2] of -log p_2 / 2 is (p_2 - 1) / 2; the last row gets no gradient.
    assert logits.grad[0, 0, 2].item() == pytest.approx((_softmax(rows[0])[2] - 1) / 2, rel=1e-12)
    assert logits.grad[0, 2].abs().sum().item() == 0.0


def test_token_nll_batch_of_prompts() -> None:
    rows_a = [[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]
    rows_b = [[3.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    logits = torch.tensor([rows_a, rows_b], dtype=torch.float64)
    ids = torch.tensor([[1, 1], [2, 0]])
    expected = [math.log(3.0), -_log_softmax(rows_b[0])[0]]
    assert token_nll(logits, ids).tolist() == pytest.approx(expected, rel=1e-12)


def test_token_nll_single_token_is_zero() -> None:
    logits = torch.randn(2, 1, 5)
    assert token_nll(logits, torch.tensor([[1], [4]])).tolist() == [0.0, 0.0]


def test_repeat_frac() -> None:
    assert repeat_frac([5, 5, 5, 7]) == 0.5
    assert repeat_frac([1, 2, 3]) == 0.0
    assert repeat_frac([1, 2, 1, 2]) == 0.5
    assert repeat_frac([]) == 0.0


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    from transformers import GPT2TokenizerFast

    from objectives import assets

    return GPT2TokenizerFast.from_pretrained(str(assets.gpt2_tokenizer_dir()))


def test_gpt2_ids_used_below(gpt2_tokenizer) -> None:
    assert gpt2_tokenizer.encode("Hello world") == [15496, 995]
    assert gpt2_tokenizer.encode(" great") == [1049]
    assert gpt2_tokenizer.encode("\n") == [198]
    assert gpt2_tokenizer.encode("<|endoftext|>") == [50256]


def test_special_frac_gpt2(gpt2_tokenizer) -> None:
    # <|endoftext|> is special, "\n" is whitespace (and a control character); " great" and "Hello" are words.
    assert special_frac([50256, 198, 1049, 15496], gpt2_tokenizer) == 0.5
    assert special_frac([1049, 995], gpt2_tokenizer) == 0.0
    assert special_frac([50256, 50256, 198], gpt2_tokenizer) == 1.0
    assert special_frac([], gpt2_tokenizer) == 0.0


def test_special_frac_partial_utf8_and_space(gpt2_tokenizer) -> None:
    # " “" is two byte-level tokens, each only part of the UTF-8 encoding, so each decodes to U+FFFD alone.
    partial = gpt2_tokenizer.encode(" \u201c")
    assert len(partial) == 2
    assert all("\ufffd" in gpt2_tokenizer.decode([t]) for t in partial)
    assert special_frac(partial + [1049], gpt2_tokenizer) == pytest.approx(2 / 3)
    space = gpt2_tokenizer.encode(" ")
    assert special_frac(space, gpt2_tokenizer) == 1.0


def test_word_frac_examples() -> None:
    assert word_frac("the movie was great") == 1.0
    assert word_frac("asdfgh qwzx") == 0.0
    assert word_frac("great !!") == 0.5
    assert word_frac("") == 0.0
    assert word_frac("   \n ") == 0.0


def test_word_frac_punctuation_apostrophes_digits() -> None:
    assert word_frac('"Great," he said.') == 1.0
    assert word_frac("\u201cdon\u2019t\u201d") == 1.0
    assert word_frac("don't") == 1.0
    # Digits and mixed tokens are not words.
    assert word_frac("2024 great7") == 0.0


def test_word_frac_threshold() -> None:
    # "great" is common (Zipf ~5.9), but not as common as a threshold of 7 asks.
    assert word_frac("great", min_zipf=7.0) == 0.0
    assert word_frac("the great", min_zipf=7.0) == 0.5


# --- faithfulness -----------------------------------------------------------------------------------------

# Rows on the axes, of different lengths, so cosine and l2 can disagree.
AXES = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)


def _polar(radius: float, degrees: float) -> list[float]:
    rad = math.radians(degrees)
    return [radius * math.cos(rad), radius * math.sin(rad)]


def test_nearest_tokens_cosine() -> None:
    prompt = torch.tensor([_polar(1.0, 30.0), _polar(3.0, 100.0), _polar(0.5, 200.0)], dtype=torch.float64)
    ids, dist = nearest_tokens(prompt, AXES, metric="cosine")
    # 30 deg is 30 from row 0; 100 deg is 10 from row 1; 200 deg is 20 from row 2.
    assert ids.tolist() == [0, 1, 2]
    expected = [1 - math.cos(math.radians(a)) for a in (30.0, 10.0, 20.0)]
    assert dist.tolist() == pytest.approx(expected, rel=1e-9)
    assert not dist.requires_grad


def test_nearest_tokens_l2_differs_from_cosine() -> None:
    prompt = torch.tensor([[0.6, 0.5], [1.5, 0.0]], dtype=torch.float64)
    # (0.6, 0.5): angle ~39.8 deg is closer to row 0 by angle, but row 1 is nearer in space:
    # |(0.6, -0.5)| = sqrt(0.61) < |(-1.4, 0.5)| = sqrt(2.21).
    ids_cos, _ = nearest_tokens(prompt, AXES, metric="cosine")
    ids_l2, dist_l2 = nearest_tokens(prompt, AXES, metric="l2")
    assert ids_cos.tolist() == [0, 0]
    assert ids_l2.tolist() == [1, 0]
    assert dist_l2.tolist() == pytest.approx([math.sqrt(0.61), 0.5], rel=1e-12)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("chunk_size", [1, 2, 3, 8192])
def test_nearest_tokens_chunking_matches_full_scan(metric: str, chunk_size: int) -> None:
    gen = torch.Generator().manual_seed(0)
    embeddings = torch.randn(37, 5, generator=gen, dtype=torch.float64)
    prompt = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    ids, dist = nearest_tokens(prompt, embeddings, metric=metric, chunk_size=chunk_size)
    for i in range(4):
        p = prompt[i].tolist()
        if metric == "l2":
            scores = [math.dist(p, e) for e in embeddings.tolist()]
        else:
            norm_p = math.hypot(*p)
            scores = [
                1 - sum(a * b for a, b in zip(p, e, strict=True)) / (norm_p * math.hypot(*e))
                for e in embeddings.tolist()
            ]
        best = min(range(len(scores)), key=scores.__getitem__)
        assert ids[i].item() == best
        assert dist[i].item() == pytest.approx(scores[best], rel=1e-9, abs=1e-12)


def test_nearest_tokens_tie_goes_to_lowest_id() -> None:
    embeddings = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    ids, _ = nearest_tokens(torch.tensor([[2.0, 0.0]]), embeddings, metric="l2", chunk_size=1)
    assert ids.tolist() == [1]


def test_nearest_tokens_unknown_metric() -> None:
    with pytest.raises(ValueError, match="'dot'.*cosine.*l2"):
        nearest_tokens(torch.zeros(1, 2), AXES, metric="dot")


def test_faith_dist_cosine_and_l2_values() -> None:
    prompt = torch.tensor([_polar(1.0, 30.0), _polar(3.0, 100.0)], dtype=torch.float64)
    expected_cos = ((1 - math.cos(math.radians(30.0))) + (1 - math.cos(math.radians(10.0)))) / 2
    assert faith_dist(prompt, AXES).item() == pytest.approx(expected_cos, rel=1e-9)

    prompt_l2 = torch.tensor([[1.5, 0.0], [0.0, 3.0]], dtype=torch.float64)
    # Nearest rows: (2, 0) at 0.5 and (0, 1) at 2.
    assert faith_dist(prompt_l2, AXES, metric="l2").item() == pytest.approx((0.5 + 2.0) / 2, rel=1e-12)


def test_faith_dist_l2_gradient_points_to_nearest_row() -> None:
    prompt = torch.tensor([[1.5, 0.0], [0.0, 3.0]], dtype=torch.float64, requires_grad=True)
    faith_dist(prompt, AXES, metric="l2").backward()
    # d|p - e|/dp = (p - e) / |p - e|, times 1/L: row 0 -> (-1, 0)/2, row 1 -> (0, 1)/2.
    assert prompt.grad.tolist() == [pytest.approx([-0.5, 0.0]), pytest.approx([0.0, 0.5])]
    nearest = AXES[[0, 1]]
    # Descent (-grad) moves each vector toward its nearest row.
    toward = ((-prompt.grad) * (nearest - prompt.detach())).sum(dim=-1)
    assert (toward > 0).all()


def test_faith_dist_cosine_gradient_rotates_toward_nearest_row() -> None:
    prompt = torch.tensor([_polar(1.0, 30.0)], dtype=torch.float64, requires_grad=True)
    loss = faith_dist(prompt, AXES)
    loss.backward()
    # For unit p and unit direction u of the row: d(1 - p.u)/dp = -(u - cos * p); here u = (1, 0).
    c, s = math.cos(math.radians(30.0)), math.sin(math.radians(30.0))
    expected = [-(1 - c * c), c * s]
    assert prompt.grad[0].tolist() == pytest.approx(expected, rel=1e-9)
    assert prompt.grad.abs().sum().item() > 0
    stepped = prompt.detach() - 0.1 * prompt.grad
    assert faith_dist(stepped, AXES).item() < loss.item()


def test_faith_output_with_and_without_mask() -> None:
    a = torch.tensor([[[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]]], dtype=torch.float64)  # (1, S=3, V=2)
    b = torch.tensor([[[0.0, 0.0], [4.0, 4.0], [1.0, 1.0]]], dtype=torch.float64)
    # Per-position mean of squares: (1 + 4)/2 = 2.5, (16 + 16)/2 = 16, (4 + 4)/2 = 4.
    assert faith_output(a, b).item() == pytest.approx((2.5 + 16 + 4) / 3)
    mask = torch.tensor([[1, 0, 1]])
    assert faith_output(a, b, mask).item() == pytest.approx((2.5 + 4) / 2)
    assert faith_output(a, b, torch.zeros(1, 3)).item() == 0.0


def test_faith_output_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shapes"):
        faith_output(torch.zeros(2, 3), torch.zeros(2, 4))


def test_faith_perf() -> None:
    assert faith_perf(0.8, 0.75) == pytest.approx(0.05)
    assert faith_perf(0.6, 0.9) == pytest.approx(0.3)
    assert faith_perf(0.5, 0.5) == 0.0
