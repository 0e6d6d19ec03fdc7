"""The frozen input cache, its length-bucketed chunks and the multi-prompt path give the same logits and
gradients as the uncached path, on GPT-2 and Llama; scorers are shared and run one frozen pass per split."""

from __future__ import annotations

import threading

import pytest
import torch
from transformers import AutoModelForCausalLM

from objectives.models import LanguageModel, load_lm
from objectives.problem import ProblemConfig, build_problem
from objectives.scoring import PromptScorer, _partition, shared_scorer

TEXTS = [
    "a gripping , beautifully shot film",
    "dull .",
    "i have never been so bored in a theater in my whole life",
    "great fun",
]
# Lengths from 2 to ~60 tokens: with chunk_size=3 the split falls into several chunks of different widths.
MIXED = ["dull ."] + ["a " + "very " * k + "good film" for k in (0, 1, 3, 6, 10, 16, 25, 40, 55)] + ["fun"]


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


def _resident_bytes(scorer):
    assert scorer._chunk_kv is not None
    return sum(t.numel() * t.element_size() for layers in scorer._chunk_kv for kv in layers for t in kv)


def test_cache_over_budget_streams(lm):
    kwargs = dict(template="suffix", verbalizer_ids=_verbalizer(lm))
    scorer = PromptScorer(lm, TEXTS, use_cache=True, cache_budget_bytes=0, **kwargs)
    assert not scorer.cached and scorer.cache_bytes() > 0
    resident = PromptScorer(lm, TEXTS, use_cache=True, **kwargs)
    assert scorer.cache_bytes() == _resident_bytes(resident)


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


def test_partition_minimises_padding_plus_calls():
    # Three short examples and a long one: apart they pad nothing (3 + 10); together all pad to 10 (40).
    assert _partition([1, 1, 1, 10], 4, 0) == [(0, 3), (3, 4)]
    # A call costing more than the padding it saves keeps them together: 40 + 100 < 13 + 200.
    assert _partition([1, 1, 1, 10], 4, 100) == [(0, 4)]
    runs = _partition([2, 2, 2, 2, 3], 2, 1)  # at most 2 rows a run, covering every row once, in order
    assert runs[0][0] == 0 and runs[-1][1] == 5 and all(a[1] == b[0] for a, b in zip(runs, runs[1:], strict=False))
    assert max(end - start for start, end in runs) == 2 and len(runs) == 3


def _mixed_scorer(lm, **kwargs):
    scorer = PromptScorer(lm, MIXED, template="suffix", verbalizer_ids=_verbalizer(lm), chunk_size=3, **kwargs)
    widths = [scorer._lengths[chunk[-1]] for chunk in scorer._chunks]
    assert len(scorer._chunks) >= 4 and min(widths) < max(widths) / 4
    return scorer


@pytest.mark.parametrize("use_cache", [True, False])
def test_bucketed_logits_and_gradients_match_uncached_for_shuffled_rows(lm, use_cache):
    """Rows in any order (repeats too) come back in the caller's order, each equal to the uncached reference."""
    scorer = _mixed_scorer(lm, use_cache=use_cache)
    assert scorer.cached == use_cache
    rows = torch.randperm(len(MIXED), generator=torch.Generator().manual_seed(1))
    rows = torch.cat([rows, rows[:3]])
    _, soft = _prompt(lm)
    p1 = soft.clone().requires_grad_(True)
    bucketed = scorer.logits(p1, rows)
    bucketed.square().sum().backward()
    p2 = soft.clone().requires_grad_(True)
    reference = scorer.uncached_suffix_logits(p2, rows)  # one pass over x + prompt, padded to the longest
    reference.square().sum().backward()
    torch.testing.assert_close(bucketed, reference, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(p1.grad, p2.grad, atol=1e-5, rtol=1e-4)
    assert p1.grad.abs().sum() > 0


@pytest.mark.parametrize("use_cache", [True, False])
def test_many_prompts_share_one_sequence_per_example_exactly(lm, use_cache):
    """The packed multi-prompt pass equals one sequence per (prompt, example) pair, logits and gradients."""
    scorer = _mixed_scorer(lm, use_cache=use_cache)
    rows = torch.tensor([9, 0, 4, 10, 4, 7])
    soft = torch.stack([_prompt(lm, seed=s)[1] for s in range(3)])
    p1 = soft.clone().requires_grad_(True)
    packed = scorer.logits(p1, rows)
    packed.square().sum().backward()
    p2 = soft.clone().requires_grad_(True)
    reference = torch.stack([scorer.uncached_suffix_logits(p, rows) for p in p2])
    reference.square().sum().backward()
    assert packed.shape == (3, len(rows), 2)
    torch.testing.assert_close(packed, reference, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(p1.grad, p2.grad, atol=1e-5, rtol=1e-4)
    # The fallback for attention implementations without custom masks gives the same.
    scorer._packable = False
    torch.testing.assert_close(scorer.logits(soft, rows), packed.detach(), atol=1e-5, rtol=1e-4)


def test_packed_prompts_under_eager_attention(tiny_llama_dir):
    """The eager implementation takes the packed mask as an additive float mask: same logits as sdpa."""
    sdpa = load_lm(tiny_llama_dir, device="cpu")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="eager").eval()
    eager = LanguageModel(spec="eager", model=model.requires_grad_(False), tokenizer=sdpa.tokenizer, device=sdpa.device)
    prompts = torch.stack([_prompt(sdpa, seed=s)[1] for s in range(3)])
    out = [_mixed_scorer(m).logits(prompts) for m in (sdpa, eager)]
    torch.testing.assert_close(out[1], out[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("template", ["suffix", "prefix"])
def test_full_vocab_logits_come_back_in_row_order(lm, template):
    scorer = PromptScorer(lm, MIXED, template=template, verbalizer_ids=_verbalizer(lm), chunk_size=3)
    rows = torch.tensor([10, 1, 9, 5])
    prompts = torch.stack([_prompt(lm, seed=s)[1] for s in range(2)])
    logits, mask = scorer.logits(prompts, rows, full_vocab=True)
    assert logits.shape[:2] == (2, 4) and mask.shape == logits.shape[:3]
    for b, row in enumerate(rows.tolist()):
        alone, alone_mask = scorer.logits(prompts, torch.tensor([row]), full_vocab=True)
        width = alone.shape[2]
        torch.testing.assert_close(logits[:, b, :width], alone[:, 0], atol=1e-5, rtol=1e-4)
        assert torch.equal(mask[:, b, :width], alone_mask[:, 0]) and not mask[:, b, width:].any()


def test_resident_cache_follows_the_real_tokens(lm):
    scorer = _mixed_scorer(lm)
    assert scorer.cache_bytes() == _resident_bytes(scorer)
    # Padding every example to the longest, as a single padded cache would, takes over twice as much here.
    per_token = scorer.cache_bytes() / sum(len(c) * scorer._lengths[c[-1]] for c in scorer._chunks)
    assert scorer.cache_bytes() * 2 < per_token * len(MIXED) * max(scorer._lengths)
    padded = scorer.padded_cache()
    assert padded[0][0].shape[:1] + padded[0][0].shape[2:3] == (len(MIXED), max(scorer._lengths))


class _FrozenPasses:
    """Counts the LM body's passes over token ids (frozen passes over x; prompted passes take embeddings)."""

    def __init__(self, lm, monkeypatch):
        self.count = 0
        forward = lm.body.forward

        def counting(*args, **kwargs):
            self.count += kwargs.get("input_ids") is not None
            return forward(*args, **kwargs)

        monkeypatch.setattr(lm.body, "forward", counting)


def test_empty_prompt_logits_come_from_the_resident_cache_pass(lm, monkeypatch):
    passes = _FrozenPasses(lm, monkeypatch)
    scorer = _mixed_scorer(lm)
    assert passes.count == len(scorer._chunks)
    scorer.logits(_prompt(lm)[1])
    empty = scorer.empty_prompt_logits()
    assert passes.count == len(scorer._chunks)
    for i in (0, 10, 9):
        tokens = lm.tokenizer.encode(MIXED[i], add_special_tokens=False)
        expected = lm.model(torch.tensor([tokens])).logits[0, -1, _verbalizer(lm)]
        torch.testing.assert_close(empty[i], expected, atol=1e-5, rtol=1e-4)


def test_streamed_scorer_takes_empty_prompt_logits_from_its_first_pass(lm, monkeypatch):
    reference = _mixed_scorer(lm).empty_prompt_logits()
    passes = _FrozenPasses(lm, monkeypatch)
    streamed = _mixed_scorer(lm, use_cache=False)
    assert passes.count == 0
    streamed.logits(torch.stack([_prompt(lm, seed=s)[1] for s in range(2)]))
    after_logits = passes.count
    assert after_logits > 0
    torch.testing.assert_close(streamed.empty_prompt_logits(), reference, atol=1e-5, rtol=1e-4)
    assert passes.count == after_logits  # no pass of its own
    # A scorer asked for the baseline first runs one pass for it, once.
    fresh = _mixed_scorer(lm, use_cache=False)
    before = passes.count
    torch.testing.assert_close(fresh.empty_prompt_logits(), reference, atol=1e-5, rtol=1e-4)
    fresh.empty_prompt_logits()
    assert 0 < passes.count - before <= len(fresh._chunks)


def test_problems_with_the_same_test_texts_share_one_scorer(task_dir):
    configs = [ProblemConfig(task=str(task_dir), k_shot=2, seed=seed, device="cpu") for seed in (0, 1)]
    first, second = (build_problem(c) for c in configs)
    assert first is not second and first.task.train != second.task.train
    assert first.scorers["test"] is second.scorers["test"]
    assert first.scorers["train"] is not second.scorers["train"]
    prefix = build_problem(ProblemConfig(task=str(task_dir), k_shot=2, seed=0, device="cpu", template="prefix"))
    assert prefix.scorers["test"] is not first.scorers["test"]


def test_shared_scorer_is_built_once_under_threads(tiny_lm):
    texts = [f"{t} (threads)" for t in TEXTS]
    found, barrier = [], threading.Barrier(4)

    def build():
        barrier.wait()
        found.append(shared_scorer(tiny_lm, texts, template="suffix", verbalizer_ids=_verbalizer(tiny_lm)))

    threads = [threading.Thread(target=build) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(found) == 4 and all(s is found[0] for s in found)


def test_streamed_groups_merge_into_few_prompt_passes(lm, monkeypatch):
    """With free calls every length gets a frozen pass of its own (no padding), and their caches merge
    into prompt passes of up to chunk_size examples; the logits stay exact."""
    scorer = PromptScorer(lm, MIXED, template="suffix", verbalizer_ids=_verbalizer(lm), chunk_size=6, use_cache=False)
    scorer._call_tokens = 0
    calls = {"frozen": 0, "prompted": 0}
    forward = lm.body.forward

    def counting(*args, **kwargs):
        calls["frozen" if kwargs.get("input_ids") is not None else "prompted"] += 1
        return forward(*args, **kwargs)

    monkeypatch.setattr(lm.body, "forward", counting)
    prompts = torch.stack([_prompt(lm, seed=s)[1] for s in range(2)])
    rows = torch.randperm(len(MIXED), generator=torch.Generator().manual_seed(2))
    logits = scorer.logits(prompts, rows)
    assert calls == {"frozen": len(set(scorer._lengths)), "prompted": 2}
    reference = torch.stack([scorer.uncached_suffix_logits(p, rows) for p in prompts])
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-4)
