"""Prompts the reference LM itself finds fluent: sampling prompts from it, and projecting a soft prompt onto
its own next-token candidates.

Both read the LM left to right with incremental decoding (one token per step against a key/value cache, no
gradient), so a prompt of ``L`` tokens costs ``L`` one-position forward passes of the batch. Sampling starts
from a start token (``objectives.models.start_token_id``: the prompt read as the opening of a document). The
projection reads the prompt as ``interp/log_ppl`` does by default (``start_id=None``): its first token is free
and every later one is conditioned on the prompt tokens before it. Conditioning on a document start instead
would exclude good suffix prompts by construction: after ``<|endoftext|>`` SmolLM2's top candidates are
document openings, and `` My`` (the first token of " My rating: the film is") ranks in the thousands.

- :func:`sample_prompts`: ``n`` prompts drawn from the LM (optionally from its top-k at each step), the
  draws made on the CPU with an explicit generator so a seed gives the same prompts on any device.
- :func:`fluent_projection` / :func:`fluent_projections`: PEZ's nearest-token projection restricted, at each
  position, to the LM's top-k next tokens given the already projected tokens before it. ``k = 0`` or
  ``k >= V`` is the plain projection (``objectives.metrics.nearest_tokens``) exactly. An optional memo of
  candidates per prefix lets a training run skip the LM for prefixes it has projected onto before.
- :func:`next_token_ranks`: where each token of a prompt ranks among the LM's next-token candidates given its
  prefix; a prompt lies within the top-k when every rank is below ``k``.

Shape letters as in ``objectives.metrics``: ``P`` prompts, ``L`` prompt length, ``V`` vocabulary, ``d``
embedding width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from objectives.metrics import NEAREST_METRICS, nearest_tokens
from objectives.models import LanguageModel, start_token_id

__all__ = ["CandidateMemo", "fluent_projection", "fluent_projections", "next_token_ranks", "sample_prompts"]


class _Decoder:
    """Incremental decoding: feed ``(N, 1)`` tokens, read next-token logits ``(N, V)`` (fp32)."""

    def __init__(self, lm: LanguageModel) -> None:
        self.lm = lm
        self.cache: object | None = None

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        with self.lm.autocast():
            out = self.lm.body(input_ids=tokens, cache=self.cache, use_cache=True)
        self.cache = out.cache
        return _head(self.lm, out.last_hidden_state[:, -1])


def _head(lm: LanguageModel, hidden: torch.Tensor) -> torch.Tensor:
    # The head runs outside autocast: bf16 logits tie often enough to make a top-k boundary arbitrary. Rows past
    # the input vocabulary (padded heads) are not tokens a prompt can hold.
    return lm.head(hidden.to(lm.embeddings.dtype)).float()[..., : lm.vocab_size]


def _start(lm: LanguageModel, n: int, start_id: int | None) -> torch.Tensor:
    first = start_token_id(lm.tokenizer) if start_id is None else start_id
    return torch.full((n, 1), first, dtype=torch.long, device=lm.device)


def _draw(logits: torch.Tensor, top_k: int | None, generator: torch.Generator) -> torch.Tensor:
    """One token per row of ``logits`` ``(N, V)`` from its softmax, within the row's top ``top_k`` when given."""
    if top_k is None or top_k >= logits.shape[-1]:
        probs = torch.softmax(logits, dim=-1).cpu()
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1).to(logits.device)
    top = logits.topk(top_k, dim=-1)
    probs = torch.softmax(top.values, dim=-1).cpu()
    choice = torch.multinomial(probs, 1, generator=generator).to(logits.device)
    return top.indices.gather(-1, choice).squeeze(-1)


@torch.no_grad()
def sample_prompts(
    lm: LanguageModel,
    n: int,
    length: int,
    *,
    generator: torch.Generator,
    top_k: int | None = None,
    start_id: int | None = None,
) -> torch.Tensor:
    """``n`` prompts of ``length`` tokens sampled from ``lm`` (temperature 1), all decoded as one batch.

    Args:
        lm: the LM to sample from.
        n: number of prompts.
        length: tokens per prompt.
        generator: a CPU ``torch.Generator``; every draw is made on the CPU with it, so a seed gives the same
            prompts on any device.
        top_k: sample each token from the LM's ``top_k`` next tokens only; ``None`` (or ``>= V``) for the
            whole vocabulary.
        start_id: the token the prompts continue; ``start_token_id(lm.tokenizer)`` when ``None``.

    Returns:
        ``(n, length)`` token ids on ``lm.device``.
    """
    if n < 1 or length < 1:
        raise ValueError(f"n={n} and length={length} must both be >= 1")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k} must be >= 1, or None for the whole vocabulary")
    decode = _Decoder(lm)
    tokens = _start(lm, n, start_id)
    out = []
    for _ in range(length):
        tokens = _draw(decode(tokens), top_k, generator)[:, None]
        out.append(tokens)
    return torch.cat(out, dim=1)


# Top-k candidates already computed, keyed by ``(start_id or -1, k, *context)``: see ``fluent_projections``.
CandidateMemo = dict[tuple[int, ...], torch.Tensor]


@torch.no_grad()
def fluent_projections(
    lm: LanguageModel,
    soft: torch.Tensor,
    k: int,
    *,
    start_id: int | None = None,
    metric: str = "cosine",
    memo: CandidateMemo | None = None,
) -> torch.Tensor:
    """Project soft prompts onto tokens, each position among the LM's top-``k`` next tokens given the ones before.

    Left to right: position ``i``'s candidates are the LM's top-``k`` after the tokens already chosen for
    positions ``0..i-1`` (preceded by ``start_id`` when given; position 0's candidates are then the top-``k``
    after ``start_id``). With ``start_id=None`` position 0 is projected over the whole vocabulary, as
    ``interp/log_ppl`` scores no first token. Among the candidates
    the nearest embedding row to ``soft[:, i]`` wins (``metric`` as in ``nearest_tokens``; ties go to the
    lowest id, as there). So every projected prompt lies, token by token, within the LM's top-``k``.

    ``k == 0`` or ``k >= V`` is no restriction: the result is ``nearest_tokens`` row by row, exactly.

    Args:
        lm: the reference LM whose candidates restrict the projection; ``lm.embeddings`` is the projection's
            vocabulary.
        soft: continuous prompts ``(P, L, d)``.
        k: candidates per position.
        start_id: the token the prompts continue, or ``None`` (the prompt alone is the context).
        metric: ``"cosine"`` or ``"l2"``.
        memo: candidates of prefixes seen before, read and filled in place. The candidates depend only on the
            tokens before a position, and an optimiser's successive projections mostly share their prefixes, so
            repeated calls (a training run) skip the LM for every prefix they have met. A memo belongs to one
            LM (its key holds ``start_id`` and ``k``, not the LM); ``None`` runs the LM at every position.

    Returns:
        ``(P, L)`` token ids on ``soft``'s device.
    """
    if soft.dim() != 3:
        raise ValueError(f"soft must be (P, L, d); got {tuple(soft.shape)}")
    if k < 0:
        raise ValueError(f"k={k} must be >= 0 (0: no restriction)")
    if metric not in NEAREST_METRICS:
        raise ValueError(f"metric={metric!r} is not one of {NEAREST_METRICS}")
    embeds = lm.embeddings
    n_prompts, length, dim = soft.shape
    if k == 0 or k >= lm.vocab_size:
        return nearest_tokens(soft.reshape(-1, dim), embeds, metric=metric)[0].view(n_prompts, length)
    # fp32 as in nearest_tokens: half-precision dot products flip near-ties.
    query = soft.detach().float()
    if metric == "cosine":
        query = F.normalize(query, dim=-1)
    decode = _Decoder(lm)
    if start_id is None:
        seq = nearest_tokens(soft[:, 0].detach(), embeds, metric=metric)[0][:, None].to(lm.device)
        first = 1
    else:
        seq = _start(lm, n_prompts, start_id)  # (P, 1 + i): the start token and the tokens chosen so far
        first = 0
    fed = 0  # how many of seq's columns the decoder's key/value cache holds
    for i in range(first, length):
        candidates, fed = _candidates(decode, seq, fed, k, memo, start_id)
        rows = embeds[candidates].float()  # (P, k, d)
        if metric == "cosine":
            distance = 1.0 - torch.einsum("pd,pkd->pk", query[:, i], F.normalize(rows, dim=-1))
        else:
            distance = torch.cdist(query[:, i, None], rows)[:, 0]
        seq = torch.cat([seq, candidates.gather(-1, distance.argmin(dim=-1, keepdim=True))], dim=1)
    return seq[:, -length:].to(soft.device)


def _candidates(
    decode: _Decoder, seq: torch.Tensor, fed: int, k: int, memo: CandidateMemo | None, start_id: int | None
) -> tuple[torch.Tensor, int]:
    """Top-``k`` next tokens ``(P, k)`` (ids sorted ascending) after each row of ``seq`` ``(P, T)``, and how many
    columns the decoder holds afterwards. Only prefixes missing from ``memo`` make the LM run; it then catches up
    on every column it has not seen in one pass (a pass reads all weights once, whatever its length)."""
    # -1 marks "no start token", so one memo never mixes the two contexts.
    rows = seq.tolist() if start_id is None else [row[1:] for row in seq.tolist()]
    keys = [(-1 if start_id is None else start_id, k, *row) for row in rows] if memo is not None else []
    if memo is not None and all(key in memo for key in keys):
        return torch.stack([memo[key] for key in keys]), fed
    # Sorted ids, so the first of equal distances (argmin's pick) is the lowest id, as in nearest_tokens.
    computed = decode(seq[:, fed:]).topk(k, dim=-1).indices.sort(dim=-1).values
    if memo is None:
        return computed, seq.shape[1]
    # A prefix met before keeps its first candidates, so repeated calls agree even where float noise between
    # pass shapes could reorder a near-tie at the top-k boundary.
    for key, row in zip(keys, computed, strict=True):
        memo.setdefault(key, row)
    return torch.stack([memo[key] for key in keys]), seq.shape[1]


def fluent_projection(
    lm: LanguageModel,
    soft: torch.Tensor,
    k: int,
    *,
    start_id: int | None = None,
    metric: str = "cosine",
    memo: CandidateMemo | None = None,
) -> torch.Tensor:
    """:func:`fluent_projections` of one soft prompt: ``(L, d)`` → ``(L,)`` token ids."""
    if soft.dim() != 2:
        raise ValueError(f"soft must be (L, d); got {tuple(soft.shape)}")
    return fluent_projections(lm, soft[None], k, start_id=start_id, metric=metric, memo=memo)[0]


@torch.no_grad()
def next_token_ranks(lm: LanguageModel, ids: torch.Tensor, *, start_id: int | None = None) -> torch.Tensor:
    """Rank of each prompt token among the LM's next-token candidates given the start token and its prefix.

    ``ids`` ``(P, L)`` → ``(P, L)`` long: the number of tokens with a strictly larger logit than the prompt's
    token at that position, so 0 is the LM's top choice and a prompt lies within the top-``k`` when every rank
    is ``< k`` (up to ties at the boundary). One full forward pass over ``[start, ids[:, :-1]]``.
    """
    if ids.dim() != 2:
        raise ValueError(f"ids must be (P, L); got {tuple(ids.shape)}")
    ids = ids.to(lm.device)
    inputs = torch.cat([_start(lm, ids.shape[0], start_id), ids[:, :-1]], dim=1)
    with lm.autocast():
        hidden = lm.body(input_ids=inputs).last_hidden_state
    logits = _head(lm, hidden)  # (P, L, V)
    own = logits.gather(-1, ids[..., None])
    return (logits > own).sum(dim=-1)
