"""Prompts the reference LM itself finds fluent: sampling prompts from it, and projecting a soft prompt onto
its own next-token candidates.

Both read the LM left to right with incremental decoding (one token per step against a key/value cache, no
gradient), so a prompt of ``L`` tokens costs ``L`` one-position forward passes of the batch. Sampling starts
from a start token (``objectives.models.start_token_id``: the prompt read as the opening of a document). The
projection reads the prompt as ``interp/log_ppl`` does by default (``start_id=None``): its first token is free
and every later one is conditioned on the prompt tokens before it. Conditioning on a document start instead
would exclude good suffix prompts by construction: after ``<|endoftext|>`` SmolLM2's top candidates are
document openings, and `` My`` (the first token of " My rating: the film is") ranks in the thousands.

- :func:`sample_prompts`: ``n`` prompts drawn from the LM (optionally from its top-k at each step). The
  randomness comes from an explicit CPU generator, so a seed gives the same prompts on any device, and is
  drawn for the whole prompt up front (:func:`exponential_noise`), so the decode makes no host round trip per
  token.
- :func:`fluent_projection` / :func:`fluent_projections`: PEZ's nearest-token projection restricted, at each
  position, to the LM's top-k next tokens given the already projected tokens before it. ``k = 0`` or
  ``k >= V`` is the plain projection (``objectives.metrics.nearest_tokens``) exactly. An optional memo of
  candidates per prefix lets a training run skip the LM for prefixes it has projected onto before; with it the
  walk over positions runs on the host (the memo's keys are host token ids), reading the device only once per
  LM pass, never once per position.
- :func:`next_token_ranks`: where each token of a prompt ranks among the LM's next-token candidates given its
  prefix; a prompt lies within the top-k when every rank is below ``k``.

Shape letters as in ``objectives.metrics``: ``P`` prompts, ``L`` prompt length, ``V`` vocabulary, ``d``
embedding width.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

from objectives.metrics import NEAREST_METRICS, nearest_tokens
from objectives.models import LanguageModel, start_token_id

__all__ = [
    "CandidateMemo",
    "exponential_noise",
    "fluent_projection",
    "fluent_projections",
    "next_token_ranks",
    "sample_prompts",
    "sample_with_noise",
]


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
    # The head runs in fp32 (bf16 logits tie often enough to make a top-k boundary arbitrary). Rows past the
    # input vocabulary (padded heads) are not tokens a prompt can hold.
    return lm.head_logits(hidden)[..., : lm.vocab_size]


def _start(lm: LanguageModel, n: int, start_id: int | None) -> torch.Tensor:
    first = start_token_id(lm.tokenizer) if start_id is None else start_id
    return torch.full((n, 1), first, dtype=torch.long, device=lm.device)


def exponential_noise(
    generator: torch.Generator, steps: int, rows: int, width: int, device: torch.device
) -> torch.Tensor:
    """The randomness of ``steps`` rounds of ``torch.multinomial(probs, 1, generator=generator)`` on ``(rows,
    width)`` CPU probabilities, drawn now, in the same order, and moved to ``device`` in one copy:
    ``(steps, rows, width)``.

    torch draws one sample as ``argmax(probs / q)`` with ``q ~ Exp(1)`` from ``empty_like(probs).exponential_``
    (the Gumbel-max trick), so :func:`sample_with_noise` with step ``t``'s noise picks exactly what the ``t``-th
    ``multinomial`` call would have, and leaves the generator where those calls would: a seed gives the same
    prompts as before, and on any device, while the decode never waits on the host between tokens.
    """
    noise = torch.stack([torch.empty(rows, width).exponential_(1, generator=generator) for _ in range(steps)])
    if device.type == "cuda":
        # Pinned, so the copy does not wait for the device to drain the work queued before it.
        return noise.pin_memory().to(device, non_blocking=True)
    return noise.to(device)


def sample_with_noise(probs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """One index per row of ``probs`` ``(N, W)``, drawn with one step of :func:`exponential_noise` ``(N, W)``:
    what ``torch.multinomial(probs, 1)`` draws, computed where ``probs`` are."""
    return (probs / noise).argmax(dim=-1)


def _draw(logits: torch.Tensor, top_k: int | None, noise: torch.Tensor) -> torch.Tensor:
    """One token per row of ``logits`` ``(N, V)`` from its softmax, within the row's top ``top_k`` when given;
    ``noise`` is this step's ``(N, V or top_k)`` slice of :func:`exponential_noise`."""
    if top_k is None or top_k >= logits.shape[-1]:
        return sample_with_noise(torch.softmax(logits, dim=-1), noise)
    top = logits.topk(top_k, dim=-1)
    choice = sample_with_noise(torch.softmax(top.values, dim=-1), noise)
    return top.indices.gather(-1, choice[:, None]).squeeze(-1)


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
    width = lm.vocab_size if top_k is None else min(top_k, lm.vocab_size)
    noise = exponential_noise(generator, length, n, width, lm.device)
    out = []
    for t in range(length):
        tokens = _draw(decode(tokens), top_k, noise[t])[:, None]
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
    if memo is None:
        return _project_on_device(lm, soft, query, k, start_id, metric)
    return _project_with_memo(lm, soft, query, k, start_id, metric, memo)


def _distance(query: torch.Tensor, rows: torch.Tensor, metric: str) -> torch.Tensor:
    """Distance of each prompt's vector ``(P, d)`` (normalised for cosine) to its candidates' rows ``(P, k, d)``."""
    if metric == "cosine":
        return 1.0 - torch.einsum("pd,pkd->pk", query, F.normalize(rows, dim=-1))
    return torch.cdist(query[:, None], rows)[:, 0]


def _project_on_device(
    lm: LanguageModel, soft: torch.Tensor, query: torch.Tensor, k: int, start_id: int | None, metric: str
) -> torch.Tensor:
    """The projection without a memo: every position's candidates from one LM pass, all on the device."""
    embeds = lm.embeddings
    length = soft.shape[1]
    decode = _Decoder(lm)
    if start_id is None:
        seq = nearest_tokens(soft[:, 0].detach(), embeds, metric=metric)[0][:, None].to(lm.device)
        first = 1
    else:
        seq = _start(lm, soft.shape[0], start_id)  # (P, 1 + i): the start token and the tokens chosen so far
        first = 0
    query = query.to(lm.device)
    fed = 0  # how many of seq's columns the decoder's key/value cache holds
    for i in range(first, length):
        # Sorted ids, so the first of equal distances (argmin's pick) is the lowest id, as in nearest_tokens.
        candidates = decode(seq[:, fed:]).topk(k, dim=-1).indices.sort(dim=-1).values
        fed = seq.shape[1]
        distance = _distance(query[:, i], embeds[candidates].float(), metric)
        seq = torch.cat([seq, candidates.gather(-1, distance.argmin(dim=-1, keepdim=True))], dim=1)
    return seq[:, -length:].to(soft.device)


def _project_with_memo(
    lm: LanguageModel,
    soft: torch.Tensor,
    query: torch.Tensor,
    k: int,
    start_id: int | None,
    metric: str,
    memo: CandidateMemo,
) -> torch.Tensor:
    """The projection with a memo of candidates per prefix, walked on the host: the memo's keys are token ids,
    so the tokens chosen so far live on the host, the distances are computed there (a few ``k × d`` rows), and
    the device is read once per LM pass (a prefix missing from the memo), never once per position."""
    n_prompts, length, _ = soft.shape
    host_query = query.cpu()
    rows_of = _host_embeddings(lm)
    decode = _Decoder(lm)
    if start_id is None:
        seq = [[t] for t in nearest_tokens(soft[:, 0].detach(), lm.embeddings, metric=metric)[0].tolist()]
        first = 1
    else:
        seq = [[start_id] for _ in range(n_prompts)]  # the start token and the tokens chosen so far
        first = 0
    fed = 0  # how many of seq's columns the decoder's key/value cache holds
    # -1 marks "no start token", so one memo never mixes the two contexts.
    context = -1 if start_id is None else start_id
    skip = 0 if start_id is None else 1
    for i in range(first, length):
        keys = [(context, k, *row[skip:]) for row in seq]
        if not all(key in memo for key in keys):
            # The LM catches up on every column it has not seen in one pass (a pass reads all weights once,
            # whatever its length).
            tokens = torch.tensor([row[fed:] for row in seq], dtype=torch.long, device=lm.device)
            # Sorted ids, so the first of equal distances (argmin's pick) is the lowest id, as in nearest_tokens.
            computed = decode(tokens).topk(k, dim=-1).indices.sort(dim=-1).values.cpu()
            fed = len(seq[0])
            # A prefix met before keeps its first candidates, so repeated calls agree even where float noise
            # between pass shapes could reorder a near-tie at the top-k boundary.
            for key, row in zip(keys, computed, strict=True):
                memo.setdefault(key, row)
        chosen = _nearest_candidates_on_host(host_query[:, i], [memo[key] for key in keys], rows_of, metric)
        for row, token in zip(seq, chosen, strict=True):
            row.append(token)
    return torch.tensor([row[-length:] for row in seq], dtype=torch.long).to(soft.device)


def _nearest_candidates_on_host(
    query: torch.Tensor, candidates: list[torch.Tensor], rows_of: torch.Tensor, metric: str
) -> list[int]:
    """For each prompt, the nearest of its candidate ids ``(k,)`` to its query ``(d,)``: host tensors in, host
    ints out (``query`` ``(P, d)``, ``rows_of`` the host embedding matrix), so reading them waits on no device."""
    stacked = torch.stack(candidates)  # (P, k)
    distance = _distance(query, rows_of[stacked].float(), metric)
    return stacked.gather(-1, distance.argmin(dim=-1, keepdim=True))[:, 0].tolist()


_HOST_EMBEDDINGS: weakref.WeakKeyDictionary[torch.nn.Module, torch.Tensor] = weakref.WeakKeyDictionary()


def _host_embeddings(lm: LanguageModel) -> torch.Tensor:
    """The input embedding matrix on the host: the LM's own on the CPU, a copy made once per model elsewhere."""
    if lm.embeddings.device.type == "cpu":
        return lm.embeddings
    if lm.model not in _HOST_EMBEDDINGS:
        _HOST_EMBEDDINGS[lm.model] = lm.embeddings.detach().float().cpu()
    return _HOST_EMBEDDINGS[lm.model]


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
