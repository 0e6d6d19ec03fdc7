"""Device memory: the cache estimate against the bytes its tensors take, weights as CUDA holds them, the cache
budget from a trial's share of its GPU, and releasing what a reused worker no longer needs."""

from __future__ import annotations

import pytest
import torch

from objectives import models, problem, scoring
from objectives.errors import UserError
from objectives.memory import (
    CPU_CACHE_BUDGET_BYTES,
    GPU_CACHE_FRACTION,
    cache_budget,
    estimate_trial_bytes,
    kv_bytes_per_token,
    kv_element_bytes,
    release_caches,
    split_cache_tokens,
    weight_bytes,
)
from objectives.models import LanguageModel, cast_body, load_lm
from objectives.scoring import _CALL_TOKENS, PromptScorer
from tuners import preset_config

# Texts of one length in tokens, so that any chunking pads nothing: the cache holds exactly n × length tokens
# whatever the device's call cost (the CPU's and CUDA's chunkings then agree).
SAME_LENGTH = ["a good film", "a bad film", "a dull film", "a fine film", "a long film"]


def _bf16(lm: LanguageModel) -> LanguageModel:
    return LanguageModel(
        spec=f"{lm.spec}+bf16", model=lm.model, tokenizer=lm.tokenizer, device=lm.device, compute_dtype=torch.bfloat16
    )


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def fp32_lm(request, tiny_lm, tiny_llama_dir):
    return tiny_lm if request.param == "gpt2" else load_lm(tiny_llama_dir, device="cpu")


def _resident_bytes(scorer: PromptScorer) -> int:
    assert scorer._chunk_kv is not None
    return sum(t.numel() * t.element_size() for layers in scorer._chunk_kv for kv in layers for t in kv)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_element_sizes_without_a_pass_are_the_measured_ones(fp32_lm, precision):
    lm = fp32_lm if precision == "fp32" else _bf16(fp32_lm)
    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    config = lm.model.config
    key, value = kv_element_bytes(config, dtype)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    assert kv_bytes_per_token(lm) == config.num_hidden_layers * kv_heads * head_dim * (key + value)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_estimated_caches_are_the_measured_bytes(fp32_lm, precision, task_dir):
    """estimate_trial_bytes' caches == the scorers' cache_bytes() == what the resident tensors take."""
    lm = fp32_lm if precision == "fp32" else _bf16(fp32_lm)
    texts = {"train": SAME_LENGTH, "dev": SAME_LENGTH[:3], "test": SAME_LENGTH[1:]}
    measured = 0
    for split_texts in texts.values():
        scorer = PromptScorer(lm, split_texts, template="suffix", verbalizer_ids=[1, 2], chunk_size=2)
        assert scorer.cached and scorer.cache_bytes() == _resident_bytes(scorer)
        measured += _resident_bytes(scorer)
    config = preset_config("pez", "smoke", {"task": str(task_dir), "k_shot": None, "eval_chunk": 2})
    estimate = estimate_trial_bytes(
        config, texts=texts, model_configs={"tiny-gpt2": lm.model.config}, tokenizer=lm.tokenizer
    )
    if precision == "bf16":  # the estimate is for CUDA, where the body runs in bf16
        assert estimate.caches == measured
    else:
        assert estimate.caches < measured  # fp32 keys/values take more than CUDA's


def test_split_cache_tokens_follow_the_scorer_chunks(tiny_lm):
    texts = ["dull ."] + ["a " + "very " * k + "good film" for k in (0, 1, 3, 6, 10, 16)] + ["fun"]
    scorer = PromptScorer(tiny_lm, texts, template="suffix", verbalizer_ids=[1, 2], chunk_size=3)
    lengths = [len(tiny_lm.tokenizer.encode(t, add_special_tokens=False)) for t in texts]
    tokens = split_cache_tokens(lengths, 3, _CALL_TOKENS["cpu"])
    assert tokens * kv_bytes_per_token(tiny_lm) == scorer.cache_bytes() == _resident_bytes(scorer)


def test_weights_as_cuda_holds_them(fp32_lm):
    """Counted on the meta device without loading: the same bytes as the model after the one cast at load."""
    import copy

    model = copy.deepcopy(fp32_lm.model)
    assert cast_body(model, torch.bfloat16) > 0
    held = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    assert weight_bytes(fp32_lm.model.config) == held
    # The head and the input embeddings stay fp32 (tied in both tiny models), the layers' matrices bf16.
    assert model.get_output_embeddings().weight.dtype == torch.float32
    assert {p.dtype for n, p in model.named_parameters() if "mlp" in n and n.endswith("weight")} == {torch.bfloat16}


def test_the_cast_once_body_computes_what_per_pass_autocast_did(fp32_lm):
    import copy

    cast = copy.deepcopy(fp32_lm.model)
    cast_body(cast, torch.bfloat16)
    ids = torch.tensor([[11, 22, 33, 44], [5, 6, 7, 8]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = fp32_lm.model.base_model(input_ids=ids).last_hidden_state
        after = cast.base_model(input_ids=ids).last_hidden_state
    assert torch.equal(before, after)


def test_cache_budget():
    assert cache_budget("cpu") == CPU_CACHE_BUDGET_BYTES == 512e6
    assert cache_budget("cpu", budget_mb=100) == 100e6
    assert cache_budget("cuda", budget_mb=0) == 0.0  # always streams
    # From the trial's share of the card: four trials on a 24 GiB card get 0.6 GiB a split.
    card = 24 * 2**30
    assert cache_budget("cuda", gpu_share=0.25, card_bytes=card) == pytest.approx(GPU_CACHE_FRACTION * card / 4)
    assert cache_budget("cuda", gpu_share=2.0, card_bytes=card) == pytest.approx(GPU_CACHE_FRACTION * card)
    assert cache_budget("cuda") == CPU_CACHE_BUDGET_BYTES  # share unknown: as before
    with pytest.raises(UserError, match=r"cache_budget_mb=-1 must be >= 0"):
        cache_budget("cpu", budget_mb=-1)


def test_a_split_over_its_budget_streams(tiny_lm):
    scorer = PromptScorer(tiny_lm, SAME_LENGTH, template="suffix", verbalizer_ids=[1, 2], cache_budget_bytes=1.0)
    assert not scorer.cached and scorer.cache_budget_bytes == 1.0


def test_estimate_for_a_smoke_trial_loads_its_own_task(task_dir):
    config = preset_config("rlprompt", "smoke", {"task": str(task_dir), "k_shot": None})
    estimate = estimate_trial_bytes(config)
    assert estimate.weights > 0 and estimate.caches > 0 and estimate.activations > 0
    assert estimate.total == estimate.weights + estimate.caches + estimate.activations + estimate.context
    assert "GiB (weights" in estimate.describe()


def test_releasing_keeps_what_the_next_trial_uses(task_dir, tiny_llama_dir, monkeypatch):
    # On copies of the process caches, so other tests keep theirs.
    monkeypatch.setattr(problem, "_PROBLEMS", dict(problem._PROBLEMS))
    monkeypatch.setattr(scoring, "_SCORERS", dict(scoring._SCORERS))
    monkeypatch.setattr(models, "_CACHE", dict(models._CACHE))
    values = {"task": str(task_dir), "k_shot": None, "device": "cpu"}
    kept = preset_config("pez", "smoke", values)
    other = preset_config("pez", "smoke", {**values, "model": tiny_llama_dir})
    kept_problem, other_problem = problem.build_problem(kept), problem.build_problem(other)
    release_caches(keep=[kept])
    assert problem.build_problem(kept) is kept_problem  # still cached
    assert other_problem not in problem._PROBLEMS.values()
    assert not any(s in scoring._SCORERS.values() for s in other_problem.scorers.values())
    assert all(s in scoring._SCORERS.values() for s in kept_problem.scorers.values())
    assert (tiny_llama_dir, "cpu") not in models._CACHE and ("tiny-gpt2", "cpu") in models._CACHE
