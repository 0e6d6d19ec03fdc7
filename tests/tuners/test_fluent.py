"""Fluency-constrained projection and LM sampling (``objectives/fluent.py``) and their use in PEZ and soft.

A hand-made bigram LM, whose next-token candidates after each token are known by construction, checks the
constraint exactly; the tiny random GPT-2 and Llama check the key/value-cached decoding against full forward
passes; short PEZ/soft runs on the tiny GPT-2 check that training, dev selection and the returned prompt all
stay within the top-k, that k = 0 and k >= V are plain PEZ, and the three initialisations.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from objectives.errors import ConfigError
from objectives.fluent import fluent_projection, fluent_projections, next_token_ranks, sample_prompts
from objectives.metrics import nearest_tokens
from objectives.models import LanguageModel, start_token_id
from objectives.problem import build_problem
from tuners import get_tuner, preset_config
from tuners.pez import initial_ids, project

# --- a bigram LM with known candidates ----------------------------------------------------------------------

V, D, K = 12, 4, 3
START = V - 1
# After token t the LM's top-3 are exactly these, in this order (logits 3, 2, 1; every other token 0).
ALLOWED = {t: [(t + 1) % V, (t + 5) % V, (t + 8) % V] for t in range(V)}


class _BigramBody(nn.Module):
    """Hidden state = one-hot of the last token; the "cache" only counts the tokens seen."""

    def forward(self, input_ids: torch.Tensor, cache: int | None = None, use_cache: bool = False, **_: object):
        seen = (cache or 0) + input_ids.shape[1]
        return SimpleNamespace(last_hidden_state=F.one_hot(input_ids, V).float(), cache=seen if use_cache else None)


class _BigramLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        table = torch.zeros(V, V)
        for t, nxt in ALLOWED.items():
            table[t, nxt] = torch.tensor([3.0, 2.0, 1.0])
        self.body = _BigramBody()
        self.head = nn.Linear(V, V, bias=False)
        self.head.weight.data = table.T.clone()  # logits after t = table[t]
        self.embed = nn.Embedding(V, D)
        self.embed.weight.data = torch.randn(V, D, generator=torch.Generator().manual_seed(0))

    @property
    def base_model(self) -> nn.Module:
        return self.body

    def get_output_embeddings(self) -> nn.Module:
        return self.head

    def get_input_embeddings(self) -> nn.Module:
        return self.embed


@pytest.fixture(scope="module")
def bigram() -> LanguageModel:
    return LanguageModel(spec="bigram", model=_BigramLM().eval(), tokenizer=None, device=torch.device("cpu"))


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


def test_projection_picks_the_nearest_of_the_known_candidates(bigram):
    embeds = bigram.embeddings
    gen = torch.Generator().manual_seed(1)
    # Exact vocabulary rows (plain projection returns them unchanged) plus soft noise.
    soft = torch.cat([embeds[torch.randint(V, (6, 5), generator=gen)], torch.randn(6, 5, D, generator=gen)])
    ids = fluent_projections(bigram, soft, K, start_id=START)
    assert ids.shape == (12, 5)
    for p in range(len(soft)):
        prev = START
        for i, token in enumerate(ids[p].tolist()):
            allowed = ALLOWED[prev]
            assert token in allowed, (p, i, token, allowed)
            sims = _cosine(soft[p, i], embeds[allowed])
            assert sims[allowed.index(token)] == sims.max()
            prev = token
    # The restriction bites: the unconstrained projection of the exact rows leaves the allowed sets.
    assert not torch.equal(ids[:6], nearest_tokens(soft[:6].reshape(-1, D), embeds)[0].view(6, 5))
    # One prompt at a time gives the same as the batch.
    assert torch.equal(fluent_projection(bigram, soft[3], K, start_id=START), ids[3])


@pytest.mark.parametrize("k", [0, V, V + 100])
def test_no_restriction_is_the_plain_projection(bigram, k):
    soft = torch.randn(3, 4, D, generator=torch.Generator().manual_seed(2))
    plain = nearest_tokens(soft.reshape(-1, D), bigram.embeddings)[0].view(3, 4)
    assert torch.equal(fluent_projections(bigram, soft, k, start_id=START), plain)


def test_l2_metric_picks_the_nearest_candidate_by_distance(bigram):
    soft = torch.randn(1, 4, D, generator=torch.Generator().manual_seed(3))
    ids = fluent_projection(bigram, soft[0], K, start_id=START, metric="l2")
    prev = START
    for i, token in enumerate(ids.tolist()):
        allowed = ALLOWED[prev]
        dist = (bigram.embeddings[allowed] - soft[0, i]).norm(dim=-1)
        assert allowed[int(dist.argmin())] == token
        prev = token


def test_sampling_stays_in_the_known_top_k_and_is_seeded(bigram):
    def draw(seed, top_k):
        return sample_prompts(bigram, 40, 6, generator=torch.Generator().manual_seed(seed), top_k=top_k, start_id=START)

    def within(ids):
        prefix = torch.cat([torch.full((len(ids), 1), START), ids[:, :-1]], dim=1)
        pairs = zip(prefix.flatten().tolist(), ids.flatten().tolist(), strict=True)
        return all(token in ALLOWED[prev] for prev, token in pairs)

    ids = draw(0, K)
    assert ids.shape == (40, 6) and ids.dtype == torch.long
    assert within(ids)
    assert torch.equal(draw(0, K), ids) and not torch.equal(draw(1, K), ids)
    # Sampling from the whole vocabulary leaves the top-k (every other token has logit 0, not -inf).
    assert not within(draw(0, None))


def test_up_front_noise_draws_what_multinomial_draws(bigram):
    """sample_prompts draws a whole prompt's randomness before its first token; the tokens are those that
    torch.multinomial would draw step by step with the same generator (and the generator ends where it would)."""
    from objectives.fluent import exponential_noise, sample_with_noise

    probs = torch.softmax(3 * torch.randn(5, 40, generator=torch.Generator().manual_seed(0)), dim=-1)
    old, new = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    noise = exponential_noise(new, 4, 5, 40, torch.device("cpu"))
    for step in range(4):
        assert torch.equal(sample_with_noise(probs, noise[step]), torch.multinomial(probs, 1, generator=old)[:, 0])
    assert torch.equal(new.get_state(), old.get_state())


def test_ranks_of_the_known_candidates(bigram):
    first = ALLOWED[START][0]
    second = ALLOWED[first][2]
    outside = next(t for t in range(V) if t not in ALLOWED[second])
    ranks = next_token_ranks(bigram, torch.tensor([[first, second, outside]]), start_id=START)
    # A token outside the candidates ties at logit 0 with the rest: exactly the K candidates are above it.
    assert ranks[0].tolist() == [0, 2, K]


# --- cached decoding on real (tiny, random) architectures -------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_dir):
    from objectives.models import load_lm

    return load_lm(tiny_llama_dir, device="cpu")


def _full_forward_logits(lm, ids, start_id):
    """Next-token logits ``(P, L, V)`` at every prompt position from one uncached pass over start + prefix
    (``start_id=None``: over the prompt alone, positions 1..L-1)."""
    if start_id is None:
        return lm.model(ids[:, :-1]).logits[..., : lm.vocab_size]
    start = torch.full((ids.shape[0], 1), start_id)
    return lm.model(torch.cat([start, ids[:, :-1]], dim=1)).logits[..., : lm.vocab_size]


def _assert_within_top_k(lm, ids, k, start_id, soft=None, tol=1e-4):
    """Each token is among the top-k given its prefix (ties at the boundary within ``tol``) and, with ``soft``,
    the cosine-nearest of that top-k. With ``start_id=None`` the first token is free and not checked."""
    logits = _full_forward_logits(lm, ids, start_id)
    if start_id is None:
        ids = ids[:, 1:]
        soft = None if soft is None else soft[:, 1:]
    kth = logits.topk(k, dim=-1).values[..., -1]
    own = logits.gather(-1, ids[..., None])[..., 0]
    assert bool((own >= kth - tol).all()), (own - kth).min()
    if soft is not None:
        top = logits.topk(k, dim=-1).indices
        sims = torch.einsum("pld,plkd->plk", F.normalize(soft, dim=-1), F.normalize(lm.embeddings[top], dim=-1))
        own_sim = torch.einsum("pld,pld->pl", F.normalize(soft, dim=-1), F.normalize(lm.embeddings[ids], dim=-1))
        assert bool((own_sim >= sims.max(-1).values - 1e-5).all())


@pytest.mark.parametrize("model", ["gpt2", "llama"])
def test_cached_projection_matches_full_forward_passes(tiny_lm, tiny_llama, model):
    lm = tiny_lm if model == "gpt2" else tiny_llama
    start = start_token_id(lm.tokenizer)
    soft = torch.randn(3, 5, lm.embeddings.shape[1], generator=torch.Generator().manual_seed(4))
    ids = fluent_projections(lm, soft, 7, start_id=start)
    _assert_within_top_k(lm, ids, 7, start, soft=soft)
    ranks = next_token_ranks(lm, ids, start_id=start)
    assert int(ranks.max()) < 7
    sampled = sample_prompts(lm, 4, 5, generator=torch.Generator().manual_seed(0), top_k=7)
    _assert_within_top_k(lm, sampled, 7, start)


@pytest.mark.parametrize("model", ["gpt2", "llama"])
def test_memo_skips_known_prefixes_and_changes_nothing(tiny_lm, tiny_llama, model):
    lm = tiny_lm if model == "gpt2" else tiny_llama
    start, k = start_token_id(lm.tokenizer), 7
    soft_a = torch.randn(5, lm.embeddings.shape[1], generator=torch.Generator().manual_seed(6))
    memo: dict = {}
    passes: list[int] = []  # tokens fed per LM pass
    hook = lm.body.register_forward_pre_hook(lambda m, a, kw: passes.append(kw["input_ids"].shape[1]), with_kwargs=True)
    try:
        ids_a = fluent_projection(lm, soft_a, k, start_id=start, memo=memo)
        assert passes == [1] * 5 and len(memo) == 5
        passes.clear()
        assert torch.equal(fluent_projection(lm, soft_a, k, start_id=start, memo=memo), ids_a)
        assert passes == []  # every prefix known: no LM pass at all
        # Move position 3 onto another of its candidates: positions 0-3 still hit the memo, position 4's prefix
        # is new, and the LM catches up on start + 4 tokens in one pass.
        other = next(c for c in memo[(start, k, *ids_a[:3].tolist())].tolist() if c != ids_a[3])
        soft_b = soft_a.clone()
        soft_b[3] = lm.embeddings[other]
        ids_b = fluent_projection(lm, soft_b, k, start_id=start, memo=memo)
        assert ids_b[:4].tolist() == [*ids_a[:3].tolist(), other]
        assert passes == [5]
    finally:
        hook.remove()
    assert torch.equal(ids_b, fluent_projection(lm, soft_b, k, start_id=start))  # the same as without a memo
    _assert_within_top_k(lm, ids_b[None], k, start, soft=soft_b[None])


def test_bad_arguments_are_clear_errors(bigram):
    with pytest.raises(ValueError, match="k=-1 must be >= 0"):
        fluent_projections(bigram, torch.zeros(1, 2, D), -1, start_id=START)
    with pytest.raises(ValueError, match=r"soft must be \(P, L, d\)"):
        fluent_projections(bigram, torch.zeros(2, D), 2, start_id=START)
    with pytest.raises(ValueError, match="top_k=0 must be >= 1"):
        sample_prompts(bigram, 1, 2, generator=torch.Generator(), top_k=0, start_id=START)


# --- PEZ and soft with the fluent projection ---------------------------------------------------------------


def _config(name, task_dir, **extra):
    values = {"task": str(task_dir), "k_shot": None, "device": "cpu", "steps": 3, "eval_every": 1, **extra}
    return preset_config(name, "smoke", values)


def _run(name, task_dir, **extra):
    return get_tuner(name).run(_config(name, task_dir, **extra))


@pytest.mark.parametrize("name", ["pez", "soft"])
def test_k_zero_and_k_at_least_vocabulary_are_plain(name, task_dir, tiny_lm):
    plain = _run(name, task_dir, lambda_ppl=0.5)
    for k in (0, tiny_lm.vocab_size):
        same = _run(name, task_dir, lambda_ppl=0.5, fluent_top_k=k)
        assert same.prompt_ids == plain.prompt_ids
        assert same.metrics == plain.metrics
        assert same.history == plain.history
        assert same.soft_prompt == plain.soft_prompt


@pytest.mark.parametrize("name", ["pez", "soft"])
def test_every_prompt_the_run_sees_and_returns_is_within_the_top_k(name, task_dir, tiny_lm, monkeypatch):
    k = 4
    config = _config(name, task_dir, fluent_top_k=k, lambda_ppl=0.5)
    problem = build_problem(config)
    seen: dict[str, list[torch.Tensor]] = {"train": [], "dev": []}
    for split in seen:
        scorer = problem.scorers[split]
        original = scorer.logits

        def spy(prompt, rows=None, _split=split, _original=original, **kw):
            seen[_split].append(prompt.detach().clone())
            return _original(prompt, rows, **kw)

        monkeypatch.setattr(scorer, "logits", spy)
    result = get_tuner(name).run(config)
    monkeypatch.undo()

    returned = torch.tensor([result.prompt_ids])
    # The prompt alone is the context (as interp/log_ppl reads it): the first token is free.
    _assert_within_top_k(tiny_lm, returned, k, None, soft=torch.tensor(result.soft_prompt)[None])
    # One (L, d) prompt per training step and per dev evaluation; the final evaluation scores (P, L, d) stacks.
    during = [p for p in seen["train"] + seen["dev"] if p.dim() == 2]
    assert len(during) == 2 * config.steps
    # PEZ's loss and dev candidates are the discrete prompts themselves; soft's are P̄ (its projection enters
    # through the fluency term and the discrete prompt the run returns).
    if name == "pez":
        for prompt in during:
            ids = nearest_tokens(prompt, tiny_lm.embeddings)[0]
            torch.testing.assert_close(prompt, tiny_lm.embeddings[ids])  # an exact vocabulary row
            _assert_within_top_k(tiny_lm, ids[None], k, None)
    # The projection the run uses is the one tested above, so train, selection and the result agree.
    assert project(problem, config, torch.tensor(result.soft_prompt)).tolist() == result.prompt_ids


def test_prompt_only_context_frees_the_first_token_and_conditions_the_rest(tiny_lm):
    gen = torch.Generator().manual_seed(3)
    soft = tiny_lm.embeddings[torch.randint(tiny_lm.vocab_size, (4, 5), generator=gen)] + 0.05 * torch.randn(
        4, 5, tiny_lm.embeddings.shape[1], generator=gen
    )
    ids = fluent_projections(tiny_lm, soft, 6, start_id=None)
    assert torch.equal(ids[:, 0], nearest_tokens(soft[:, 0], tiny_lm.embeddings)[0])
    _assert_within_top_k(tiny_lm, ids, 6, None, soft=soft)


def test_fluent_projection_changes_the_prompt(task_dir):
    assert _run("pez", task_dir, fluent_top_k=4).prompt_ids != _run("pez", task_dir).prompt_ids


# --- initialisation -----------------------------------------------------------------------------------------


def test_random_init_is_the_original_draw_and_seeded(task_dir, tiny_lm):
    config = _config("pez", task_dir)
    problem = build_problem(config)
    first = initial_ids(problem, config, torch.Generator().manual_seed(0))
    original = torch.randint(tiny_lm.vocab_size, (config.prompt_len,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(first, original)
    assert torch.equal(initial_ids(problem, config, torch.Generator().manual_seed(0)), first)
    assert not torch.equal(initial_ids(problem, config, torch.Generator().manual_seed(1)), first)


def test_text_init_gives_exactly_its_ids(task_dir, tiny_lm):
    config = _config("pez", task_dir, init="text", init_text=" the film is")
    ids = initial_ids(build_problem(config), config, torch.Generator())
    assert ids.tolist() == tiny_lm.tokenizer.encode(" the film is") == [262, 2646, 318]
    # With lr 0 the continuous prompt never moves, so the run returns the text itself.
    result = _run("pez", task_dir, init="text", init_text=" the film is", lr=0.0)
    assert result.prompt_ids == [262, 2646, 318] and result.prompt_text == " the film is"


def test_text_of_the_wrong_length_is_a_clear_error_at_run_start(task_dir):
    config = _config("pez", task_dir, init="text", init_text=" My rating: the film is")
    with pytest.raises(ConfigError) as err:
        get_tuner("pez").run(config)
    message = str(err.value)
    for part in ("' My rating: the film is'", "6 tokens", "' rating'", "prompt_len=3"):
        assert part in message, message


@pytest.mark.parametrize("k", [0, 3])
def test_lm_init_samples_from_the_lm_within_the_top_k(task_dir, tiny_lm, k):
    config = _config("pez", task_dir, init="lm", fluent_top_k=k)
    problem = build_problem(config)
    ids = initial_ids(problem, config, torch.Generator().manual_seed(5))
    assert ids.shape == (config.prompt_len,)
    assert torch.equal(initial_ids(problem, config, torch.Generator().manual_seed(5)), ids)
    expected = sample_prompts(
        tiny_lm, 1, config.prompt_len, generator=torch.Generator().manual_seed(5), top_k=k or None
    )[0]
    assert torch.equal(ids, expected)
    if k:
        _assert_within_top_k(tiny_lm, ids[None], k, start_token_id(tiny_lm.tokenizer))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"fluent_top_k": -1}, "fluent_top_k=-1 must be >= 0"),
        ({"init": "zeros"}, "init='zeros' is not one of ('random', 'text', 'lm')"),
        ({"init": "text"}, "init='text' needs init_text"),
        ({"init_text": " hello"}, "init_text=' hello' is only read with init='text'"),
    ],
)
@pytest.mark.parametrize("name", ["pez", "soft"])
def test_bad_fluent_and_init_config_is_a_clear_error(task_dir, name, values, message):
    with pytest.raises(ConfigError) as err:
        _config(name, task_dir, **values)
    assert message in str(err.value)
