"""Mixed precision as CUDA runs it, checked on the CPU: bf16 autocast over the body stands in for CUDA's.

Under autocast the output head and every log-softmax must still run in fp32 (the logits equal an fp32 head
applied to the body's hidden states), and the resident cache's size must be what its tensors really take
(GPT-2's keys and values come out bf16; a rotary model's keys stay fp32 because its cos/sin tables are fp32).
"""

from __future__ import annotations

import pytest
import torch

from objectives.evaluation import log_ppl
from objectives.models import LanguageModel, load_lm
from objectives.scoring import PromptScorer, prompt_logits

TEXTS = ["a gripping , beautifully shot film", "dull .", "i have never been so bored in my whole life", "fun"]
# fp32 head on the same hidden states: the same op, so only summation order may differ.
FP32 = {"atol": 1e-6, "rtol": 1e-5}


def bf16_stand_in(lm: LanguageModel) -> LanguageModel:
    """``lm`` as CUDA runs it (bf16 autocast over the body), on the CPU."""
    return LanguageModel(
        spec=f"{lm.spec}+bf16", model=lm.model, tokenizer=lm.tokenizer, device=lm.device, compute_dtype=torch.bfloat16
    )


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def lm(request, tiny_lm, tiny_llama_dir):
    base = tiny_lm if request.param == "gpt2" else load_lm(tiny_llama_dir, device="cpu")
    return bf16_stand_in(base)


class _Hidden:
    """Records the final hidden states of every pass through the LM's body."""

    def __init__(self, lm: LanguageModel) -> None:
        self.seen: list[torch.Tensor] = []
        self._handle = lm.body.register_forward_hook(lambda _m, _a, out: self.seen.append(out.last_hidden_state))

    def __enter__(self) -> _Hidden:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()


def _verbalizer(lm):
    return [lm.tokenizer.encode(w, add_special_tokens=False)[0] for w in (" terrible", " great")]


def _fp32_head(lm, hidden, rows=None):
    weight = lm.head.weight.float() if rows is None else lm.head.weight[rows].float()
    return hidden.float() @ weight.T


def _prompt(lm, length=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, lm.vocab_size, (length,), generator=gen)
    return lm.embeddings[ids] + 0.01 * torch.randn(length, lm.embeddings.shape[1], generator=gen)


def test_the_stand_in_really_rounds_the_body(lm):
    """Otherwise the tests below could not tell an fp32 head from a bf16 one."""
    ids = torch.tensor([[11, 22, 33]])
    with lm.autocast():
        hidden = lm.body(input_ids=ids).last_hidden_state
    plain = lm.body(input_ids=ids).last_hidden_state
    assert (hidden.float() - plain).abs().max() > 1e-4
    bf16 = (hidden.to(torch.bfloat16).float() @ lm.head.weight.to(torch.bfloat16).float().T).to(torch.bfloat16)
    assert (bf16.float() - _fp32_head(lm, hidden)).abs().max() > 1e-4


@pytest.mark.parametrize(("template", "use_cache"), [("suffix", True), ("suffix", False), ("prefix", True)])
def test_verbalizer_logits_are_an_fp32_head(lm, template, use_cache):
    scorer = PromptScorer(lm, TEXTS, template=template, verbalizer_ids=_verbalizer(lm), use_cache=use_cache)
    prompt = _prompt(lm)
    for row in range(len(TEXTS)):
        with _Hidden(lm) as hidden:
            logits = scorer.logits(prompt, torch.tensor([row]))
        assert logits.dtype == torch.float32
        expected = _fp32_head(lm, hidden.seen[-1][:, -1], torch.tensor(_verbalizer(lm)))
        torch.testing.assert_close(logits, expected, **FP32)


def test_no_prompt_logits_are_an_fp32_head(lm):
    scorer = PromptScorer(lm, TEXTS, template="suffix", verbalizer_ids=_verbalizer(lm), use_cache=False)
    with _Hidden(lm) as hidden:
        empty = scorer.empty_prompt_logits()
    (seen,) = hidden.seen  # one frozen pass over the whole split, right-padded
    last = torch.tensor([len(lm.tokenizer.encode(t, add_special_tokens=False)) - 1 for t in TEXTS])
    order = sorted(range(len(TEXTS)), key=lambda r: last[r])  # the pass holds the rows sorted by length
    expected = _fp32_head(lm, seen[torch.arange(len(TEXTS)), last[order]], torch.tensor(_verbalizer(lm)))
    torch.testing.assert_close(empty[order], expected, **FP32)


def test_full_vocabulary_logits_are_an_fp32_head(lm):
    scorer = PromptScorer(lm, TEXTS, template="suffix", verbalizer_ids=_verbalizer(lm))
    with _Hidden(lm) as hidden:
        logits, _ = scorer.logits(_prompt(lm), torch.tensor([1]), full_vocab=True)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, _fp32_head(lm, hidden.seen[-1]), **FP32)


def test_prompt_logits_and_log_ppl_are_fp32(lm):
    ids = torch.tensor([[11, 22, 33, 44], [5, 6, 7, 8]])
    with _Hidden(lm) as hidden:
        logits = prompt_logits(lm, lm.embeddings[ids])
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, _fp32_head(lm, hidden.seen[-1]), **FP32)

    class _Problem:
        pass

    problem = _Problem()
    problem.lm = lm
    nll = log_ppl(problem, ids)
    expected = -torch.log_softmax(_fp32_head(lm, hidden.seen[-1])[:, :-1], -1).gather(-1, ids[:, 1:, None])
    torch.testing.assert_close(nll, expected[..., 0].mean(-1), **FP32)


def _resident_bytes(scorer):
    assert scorer._chunk_kv is not None
    return sum(t.numel() * t.element_size() for layers in scorer._chunk_kv for kv in layers for t in kv)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cache_size_is_what_its_tensors_take(lm, precision, tiny_lm, tiny_llama_dir):
    if precision == "fp32":
        lm = tiny_lm if lm.spec.startswith("tiny-gpt2") else load_lm(tiny_llama_dir, device="cpu")
    scorer = PromptScorer(lm, TEXTS, template="suffix", verbalizer_ids=_verbalizer(lm), chunk_size=2)
    assert scorer.cached
    assert scorer.cache_bytes() == _resident_bytes(scorer)
    kinds = {(k.dtype, v.dtype) for layers in scorer._chunk_kv for k, v in layers}
    if precision == "fp32":
        assert kinds == {(torch.float32, torch.float32)}
    elif lm.spec.startswith("tiny-gpt2"):
        assert kinds == {(torch.bfloat16, torch.bfloat16)}
    else:  # rotary: keys are multiplied by fp32 cos/sin tables after the bf16 projection
        assert kinds == {(torch.float32, torch.bfloat16)}
