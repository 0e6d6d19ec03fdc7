"""Metrics of a trained prompt: task performance, interpretability and faithfulness.

Every metric has a name in :data:`METRICS` with its direction, so sweeps and reports know whether to
maximise or minimise it without hard-coding names. The functions are pure: tensors in, tensors (or floats)
out, no state.

Shape letters: ``P`` prompts scored together, ``B`` examples in a batch, ``C`` verbalizer classes, ``L``
prompt length in tokens, ``V`` vocabulary size, ``d`` embedding width, ``S`` sequence positions.

- Task: :func:`task_ce`, :func:`accuracy` and RLPrompt's :func:`gap_reward` on verbalizer logits.
- Interpretability: :func:`token_nll` (``interp/log_ppl``), :func:`repeat_frac`, :func:`special_frac`,
  :func:`word_frac`.
- Faithfulness of a projected (discrete) prompt to its soft one: :func:`faith_dist` (distance of the soft
  vectors to their nearest vocabulary rows), :func:`faith_output` (squared gap of the LM's logits) and
  :func:`faith_perf` (gap of the task score).
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from objectives.errors import did_you_mean

NEAREST_METRICS = ("cosine", "l2")


@dataclass(frozen=True)
class MetricInfo:
    """A registered metric: its name, whether larger values are better, and what it measures."""

    name: str
    higher_is_better: bool
    description: str


METRICS: dict[str, MetricInfo] = {}


def register_metric(name: str, *, higher_is_better: bool, description: str) -> None:
    """Add ``name`` to :data:`METRICS`; a name already there raises ``ValueError``.

    Re-registration is refused rather than overwritten, so two modules cannot silently disagree about a
    metric's direction.
    """
    if name in METRICS:
        raise ValueError(f"metric {name!r} is already registered")
    METRICS[name] = MetricInfo(name=name, higher_is_better=higher_is_better, description=description)


def metric_info(name: str) -> MetricInfo:
    """The :class:`MetricInfo` of ``name``; an unknown name raises ``KeyError`` with close matches."""
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(did_you_mean("metric", name, METRICS)) from None


for _name, _higher, _description in (
    ("task/ce", False, "mean cross-entropy of the verbalizer softmax against the labels"),
    ("task/acc_train", True, "accuracy of the discrete prompt on the training split"),
    ("task/acc_dev", True, "accuracy of the discrete prompt on the dev split"),
    ("task/acc_test", True, "accuracy of the discrete prompt on the test split"),
    ("task/acc_dev_soft", True, "accuracy of the soft (continuous) prompt on the dev split"),
    ("task/acc_test_soft", True, "accuracy of the soft (continuous) prompt on the test split"),
    ("baseline/acc_dev", True, "accuracy with no prompt on the dev split: the baseline a prompt must beat"),
    ("baseline/acc_test", True, "accuracy with no prompt on the test split"),
    ("interp/log_ppl", False, "mean next-token negative log-likelihood of the prompt under the LM"),
    ("interp/scrutability", True, "how well a reader can tell what the prompt asks for"),
    ("interp/repeat_frac", False, "share of prompt positions repeating an earlier token"),
    ("interp/special_frac", False, "share of prompt positions holding special or non-printing tokens"),
    ("interp/word_frac", True, "share of whitespace words in the decoded prompt that are common English"),
    ("faith/dist", False, "mean distance of the soft prompt vectors to their nearest vocabulary rows"),
    ("faith/output", False, "mean squared gap between the LM logits under the soft and discrete prompts"),
    ("faith/perf", False, "absolute gap between the soft and discrete prompts' task accuracy"),
    ("faith/perf_ce", False, "absolute gap between the soft and discrete prompts' task cross-entropy"),
    ("learn/acc_dev_untrained", True, "dev accuracy of the untrained policy's greedy prompt (RLPrompt)"),
    ("learn/acc_dev_gain", True, "dev accuracy of the final greedy prompt minus the untrained one's (RLPrompt)"),
):
    register_metric(_name, higher_is_better=_higher, description=_description)
del _name, _higher, _description


# --- task -------------------------------------------------------------------------------------------------


def _check_labels(class_logits: torch.Tensor, labels: torch.Tensor) -> None:
    if class_logits.dim() < 2 or labels.dim() != 1 or labels.shape[0] != class_logits.shape[-2]:
        raise ValueError(
            f"class_logits must be (..., B, C) and labels (B,); got {tuple(class_logits.shape)} and "
            f"{tuple(labels.shape)}"
        )


def _label_index(class_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Labels as a gather index ``(..., B, 1)`` matching ``class_logits``' leading dimensions."""
    index = labels.to(device=class_logits.device, dtype=torch.long)
    return index.expand(class_logits.shape[:-1]).unsqueeze(-1)


def task_ce(class_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``softmax(class_logits)`` against ``labels``; differentiable.

    ``class_logits`` is ``(..., B, C)`` (LM logits restricted to the verbalizer tokens), ``labels`` is
    ``(B,)``; returns ``(...)``, the mean over the batch.
    """
    _check_labels(class_logits, labels)
    log_p = torch.log_softmax(class_logits, dim=-1)
    return -log_p.gather(-1, _label_index(class_logits, labels)).squeeze(-1).mean(dim=-1)


def accuracy(class_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Share of examples whose argmax class is the label: ``(..., B, C)``, ``(B,)`` -> ``(...)`` float."""
    _check_labels(class_logits, labels)
    hits = class_logits.argmax(dim=-1) == labels.to(class_logits.device)
    return hits.float().mean(dim=-1)


def gap_reward(
    class_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    correct_coef: float = 200.0,
    incorrect_coef: float = 180.0,
) -> torch.Tensor:
    """RLPrompt's classification reward (Deng et al. 2022): ``(P, B, C)``, ``(B,)`` -> ``(P,)``.

    With ``p = softmax(class_logits)`` and ``gap_b = p(y_b) - max_{c != y_b} p(c)``, the reward is
    ``mean_b gap_b * (correct_coef if gap_b > 0 else incorrect_coef)``. A gap of exactly 0 (a tie) counts
    as incorrect. Any leading dimensions work in place of ``P``.
    """
    _check_labels(class_logits, labels)
    if class_logits.shape[-1] < 2:
        raise ValueError(f"gap_reward needs at least 2 classes, got {class_logits.shape[-1]}")
    probs = torch.softmax(class_logits, dim=-1)
    index = _label_index(class_logits, labels)
    p_label = probs.gather(-1, index).squeeze(-1)
    # -inf on the label's own column so the max runs over the other classes only.
    others = probs.scatter(-1, index, float("-inf"))
    gap = p_label - others.max(dim=-1).values
    coef = torch.where(gap > 0, correct_coef, incorrect_coef).to(gap.dtype)
    return (gap * coef).mean(dim=-1)


def zscore(values: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Standardise ``(P,)`` -> ``(P,)``: ``(x - mean) / (std + eps)`` with the population std.

    A single value or all-equal values give zeros: their ``x - mean`` can be a rounding error, which
    ``eps`` alone would blow up to a large number.
    """
    if values.numel() <= 1 or bool((values == values.reshape(-1)[0]).all()):
        return torch.zeros_like(values)
    centred = values - values.mean()
    return centred / (values.std(unbiased=False) + eps)


# --- interpretability -------------------------------------------------------------------------------------


def token_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token negative log-likelihood of each prompt under the LM (``interp/log_ppl``).

    ``logits`` is ``(P, L, V)`` from running the LM on the prompt tokens ``ids`` ``(P, L)``; returns
    ``(P,)``, the mean over ``i = 1..L-1`` of ``-log softmax(logits[:, i-1])[ids[:, i]]``. The first token
    has no context, so it is not scored. With ``L <= 1`` there is nothing to predict and the result is zeros
    (detached from ``logits``). Differentiable with respect to ``logits``.
    """
    if logits.dim() != 3 or ids.shape != logits.shape[:2]:
        raise ValueError(f"logits must be (P, L, V) and ids (P, L); got {tuple(logits.shape)} and {tuple(ids.shape)}")
    if logits.shape[1] <= 1:
        return logits.new_zeros(logits.shape[0])
    log_p = torch.log_softmax(logits[:, :-1], dim=-1)
    target = ids[:, 1:].to(device=logits.device, dtype=torch.long).unsqueeze(-1)
    return -log_p.gather(-1, target).squeeze(-1).mean(dim=-1)


def repeat_frac(ids: Sequence[int]) -> float:
    """Share of positions whose token already occurred earlier: ``[5, 5, 5, 7]`` -> 0.5; empty -> 0.0."""
    if len(ids) == 0:
        return 0.0
    seen: set[int] = set()
    repeats = 0
    for token in ids:
        token = int(token)
        repeats += token in seen
        seen.add(token)
    return repeats / len(ids)


def _is_special_text(text: str) -> bool:
    if not text.strip() or "\ufffd" in text:
        return True
    return any(unicodedata.category(ch).startswith("C") for ch in text)


def special_frac(ids: Sequence[int], tokenizer: Any) -> float:
    """Share of positions holding a special, control or non-printing token.

    A token counts if its id is in ``tokenizer.all_special_ids``, or its decoded text is empty or
    whitespace-only, holds a Unicode ``C*`` character (control, format, unassigned, private use,
    surrogate), or holds U+FFFD (a byte-level token that is only part of a UTF-8 character). ``tokenizer``
    is any Hugging Face tokenizer. Empty ``ids`` -> 0.0.
    """
    if len(ids) == 0:
        return 0.0
    special_ids = set(tokenizer.all_special_ids)
    verdicts: dict[int, bool] = {}
    count = 0
    for token in ids:
        token = int(token)
        if token not in verdicts:
            verdicts[token] = token in special_ids or _is_special_text(tokenizer.decode([token]))
        count += verdicts[token]
    return count / len(ids)


_QUOTES = "\u2018\u2019\u201a\u201b\u201c\u201d\u201e\u201f\u00ab\u00bb\u2039\u203a"
_STRIP = string.punctuation + _QUOTES
# Letters only (no digits or underscore), with apostrophes allowed between letters: "don't", not "'tis'".
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")


def word_frac(text: str, *, min_zipf: float = 3.0) -> float:
    """Share of whitespace-separated words in ``text`` that are common English words.

    Each word is stripped of surrounding punctuation and quotes and lowercased; it counts if it is purely
    alphabetic (an inner apostrophe allowed) and its ``wordfreq`` Zipf frequency in English is at least
    ``min_zipf`` (3.0 is about once per million words). Words that are pure punctuation still count in the
    denominator, so ``"great !!"`` -> 0.5. No words -> 0.0.
    """
    from wordfreq import zipf_frequency

    words = text.split()
    if not words:
        return 0.0
    count = 0
    for word in words:
        # Curly apostrophes are as common as straight ones in decoded text; wordfreq knows the straight form.
        core = word.strip(_STRIP).replace("\u2019", "'").lower()
        if core and _WORD.fullmatch(core) and zipf_frequency(core, "en") >= min_zipf:
            count += 1
    return count / len(words)


# --- faithfulness -----------------------------------------------------------------------------------------


def _check_nearest_metric(metric: str) -> None:
    if metric not in NEAREST_METRICS:
        raise ValueError(f"unknown distance metric {metric!r}; choose one of {', '.join(NEAREST_METRICS)}")


def _row_distance(prompt: torch.Tensor, rows: torch.Tensor, metric: str) -> torch.Tensor:
    """Distance between matching rows of ``prompt`` and ``rows``, both ``(L, d)`` -> ``(L,)``."""
    if metric == "cosine":
        return 1.0 - F.cosine_similarity(prompt, rows, dim=-1)
    return torch.linalg.vector_norm(prompt - rows, dim=-1)


def nearest_tokens(
    prompt: torch.Tensor,
    embeddings: torch.Tensor,
    *,
    metric: str = "cosine",
    chunk_size: int = 8192,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest vocabulary row of each prompt vector: ``(L, d)``, ``(V, d)`` -> ``ids (L,)``, ``dist (L,)``.

    ``metric`` is ``"cosine"`` (``1 - cos``) or ``"l2"`` (Euclidean). The vocabulary is scanned in chunks
    of ``chunk_size`` rows so memory stays ``O(L * chunk_size)``; ties go to the lowest id. No gradient.
    """
    _check_nearest_metric(metric)
    if prompt.dim() != 2 or embeddings.dim() != 2 or prompt.shape[1] != embeddings.shape[1]:
        raise ValueError(
            f"prompt must be (L, d) and embeddings (V, d); got {tuple(prompt.shape)} and {tuple(embeddings.shape)}"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    with torch.no_grad():
        # Half-precision dot products over a large d round badly enough to flip near-ties; search in fp32.
        dtype = torch.promote_types(torch.promote_types(prompt.dtype, embeddings.dtype), torch.float32)
        query = prompt.to(dtype)
        if metric == "cosine":
            query = F.normalize(query, dim=-1)
        best = torch.full((prompt.shape[0],), float("inf"), dtype=dtype, device=prompt.device)
        best_ids = torch.zeros(prompt.shape[0], dtype=torch.long, device=prompt.device)
        for start in range(0, embeddings.shape[0], chunk_size):
            chunk = embeddings[start : start + chunk_size].to(device=prompt.device, dtype=dtype)
            if metric == "cosine":
                scores = 1.0 - query @ F.normalize(chunk, dim=-1).T
            else:
                scores = torch.cdist(query, chunk)
            value, index = scores.min(dim=-1)
            # Strict < keeps the earlier chunk on a tie, so the lowest id wins as in a single argmin.
            better = value < best
            best = torch.where(better, value, best)
            best_ids = torch.where(better, index + start, best_ids)
        # The search used matmul shortcuts; the reported distance is recomputed exactly for the chosen rows.
        rows = embeddings[best_ids.to(embeddings.device)].to(device=prompt.device, dtype=dtype)
        distances = _row_distance(prompt.to(dtype), rows, metric)
    return best_ids, distances


def faith_dist(prompt: torch.Tensor, embeddings: torch.Tensor, *, metric: str = "cosine") -> torch.Tensor:
    """Scalar ``(1/L) * sum_i min_y D(E_y, P_i)`` for a soft prompt ``(L, d)`` and embeddings ``(V, d)``.

    Differentiable with respect to ``prompt`` (it is a training loss term): the nearest rows are found
    without gradient, then the distance to them is recomputed with it. The min is piecewise that distance,
    so this is its exact gradient away from ties.
    """
    ids, _ = nearest_tokens(prompt, embeddings, metric=metric)
    rows = embeddings[ids.to(embeddings.device)].to(device=prompt.device)
    return _row_distance(prompt, rows.to(prompt.dtype), metric).mean()


def faith_output(
    logits_a: torch.Tensor,
    logits_b: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scalar mean of ``(a - b)**2`` over the vocabulary and the included positions.

    ``logits_a`` and ``logits_b`` are ``(..., S, V)`` of the same shape; ``mask`` ``(..., S)`` (or anything
    broadcasting to it) marks with 1 the positions to include, ``None`` includes all. A mask with no
    included position gives 0.
    """
    if logits_a.shape != logits_b.shape:
        raise ValueError(f"logits shapes differ: {tuple(logits_a.shape)} vs {tuple(logits_b.shape)}")
    per_position = (logits_a - logits_b).pow(2).mean(dim=-1)
    if mask is None:
        return per_position.mean()
    weights = mask.to(device=per_position.device, dtype=per_position.dtype).broadcast_to(per_position.shape)
    return (per_position * weights).sum() / weights.sum().clamp_min(1.0)


def faith_perf(soft: float, discrete: float) -> float:
    """``|soft - discrete|``: how much of the soft prompt's task score its discrete projection loses."""
    return abs(float(soft) - float(discrete))
