"""The frozen input cache gives the same logits and gradients as the uncached path, on GPT-2 and Llama."""

from __future__ import annotations

import pytest
import torch

from objectives.models import load_lm
from objectives.scoring import PromptScorer

TEXTS = [
    "a gripping , beautifully shot film",
    "dull .",
    "i have never been so bored in a theater in my whole life",
    "great fun",
]


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def lm(request, tiny_lm, tiny_llama_dir):
    return tiny_lm if request.param == "gpt2" else load_lm(tiny_llama_dir, device="cpu")


def _prompt(lm, length=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, lm.vocab_size, (length,), generator=gen)
    # Off the vocabulary on purpose: a soft prompt must work as well as a projected one.
    return ids, lm.embeddings[ids] + 0.01 * torch.randn(length, lm.embeddings.shape[1], generator=gen)


def _verbalizer(lm):
    return [lm.tokenizer.encode(w, add_special_tokens=False)[0] for w in (" terrible", " great")]


def test_cached_logits_and_gradients_match_uncached(lm):
    scorer = PromptScorer(lm, TEXTS, template="suffix", verbalizer_ids=_verbalizer(lm), use_cache=True)
    assert scorer.cached
    _, soft = _prompt(lm)
    p1 = soft.clone().requires_grad_(True)
    cached = scorer.logits(p1)
    cached.square().sum().backward()
    p2 = soft.clone().requires_grad_(True)
    uncached = scorer.uncached_suffix_logits(p2)
    uncached.square().sum().backward()
    torch.testing.assert_close(cached, uncached, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(p1.grad, p2.grad, atol=1e-5, rtol=1e-4)
    assert p1.grad.abs().sum() > 0


def test_suffix_logits_equal_a_plain_forward_over_token_ids(lm):
    """Padding and position ids are right: each row equals the model run on that example alone."""
    scorer = PromptScorer(lm, TEXTS, template="suffix", verbalizer_ids=_verbalizer(lm))
    ids, _ = _prompt(lm)
    logits = scorer.logits(lm.embeddings[ids])
    for i, text in enumerate(TEXTS):
        tokens = lm.tokenizer.encode(text, add_special_tokens=False) + ids.tolist()
        expected = lm.model(torch.tensor([tokens])).logits[0, -1, _verbalizer(lm)]
        torch.testing.assert_close(logits[i], expected, atol=1e-5, rtol=1e-4)


def test_prefix_logits_equal_a_plain_forward(lm):
    scorer = PromptScorer(lm, TEXTS, template="prefix", verbalizer_ids=_verbalizer(lm))
    assert not scorer.cached
    ids, _ = _prompt(lm)
    logits = scorer.logits(lm.embeddings[ids])
    for i, text in enumerate(TEXTS):
        tokens = ids.tolist() + lm.tokenizer.encode(" " + text + " It was", add_special_tokens=False)
        expected = lm.model(torch.tensor([tokens])).logits[0, -1, _verbalizer(lm)]
        torch.testing.assert_close(logits[i], expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("template", ["suffix", "prefix"])
def test_many_prompts_and_row_subsets_match_single_calls(lm, template):
    scorer = PromptScorer(lm, TEXTS, template=template, verbalizer_ids=_verbalizer(lm), chunk_size=3)
    prompts = torch.stack([_prompt(lm, seed=s)[1] for s in range(3)])
    rows = torch.tensor([3, 1])
    batched = scorer.logits(prompts, rows)
    assert batched.shape == (3, 2, 2)
    for p in range(3):
        torch.testing.assert_close(batched[p], scorer.logits(prompts[p], rows), atol=1e-5, rtol=1e-4)


def test_streamed_cache_equals_resident_cache(lm):
    kwargs = dict(template="suffix", verbalizer_ids=_verbalizer(lm), chunk_size=2)
    resident = PromptScorer(lm, TEXTS, use_cache=True, **kwargs)
    streamed = PromptScorer(lm, TEXTS, use_cache=False, **kwargs)
    _, soft = _prompt(lm)
    torch.testing.assert_close(resident.logits(soft), streamed.logits(soft), atol=1e-5, rtol=1e-4)
    # The resident cache's pass also gives the no-prompt logits; the streamed scorer computes them anew.
    torch.testing.assert_close(resident.empty_prompt_logits(), streamed.empty_prompt_logits(), atol=1e-5, rtol=1e-4)


def test_cache_over_budget_streams(lm):
    kwargs = dict(template="suffix", verbalizer_ids=_verbalizer(lm))
    scorer = PromptScorer(lm, TEXTS, use_cache=True, cache_budget_bytes=0, **kwargs)
    assert not scorer.cached and scorer.cache_bytes() > 0
    kv = PromptScorer(lm, TEXTS, use_cache=True, **kwargs)._kv
    assert kv is not None
    assert scorer.cache_bytes() == sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)


def test_full_vocab_logits_cover_prompt_positions(lm):
    scorer = PromptScorer(lm, TEXTS, template="suffix", verbalizer_ids=_verbalizer(lm))
    ids, _ = _prompt(lm)
    logits, mask = scorer.logits(lm.embeddings[ids], full_vocab=True)
    assert logits.shape == (len(TEXTS), 4, lm.vocab_size) and mask.shape == (len(TEXTS), 4)
    verbalized = scorer.logits(lm.embeddings[ids])
    torch.testing.assert_close(logits[:, -1, _verbalizer(lm)], verbalized, atol=1e-5, rtol=1e-4)


def test_empty_prompt_logits(lm):
    scorer = PromptScorer(lm, TEXTS, template="suffix", verbalizer_ids=_verbalizer(lm))
    logits = scorer.empty_prompt_logits()
    tokens = lm.tokenizer.encode(TEXTS[2], add_special_tokens=False)
    expected = lm.model(torch.tensor([tokens])).logits[0, -1, _verbalizer(lm)]
    torch.testing.assert_close(logits[2], expected, atol=1e-5, rtol=1e-4)


def test_unknown_template_is_an_error(tiny_lm):
    with pytest.raises(ValueError, match="template='middle'"):
        PromptScorer(tiny_lm, TEXTS, template="middle", verbalizer_ids=[1, 2])
