"""Prompted forward passes: verbalizer logits for (prompt, example) pairs, with the frozen input cache.

Two templates place the prompt relative to the input ``x``:

- ``suffix``: ``{x}{prompt}`` and the next-token logits after the last prompt token (RLPrompt's layout).
  The frozen LM's keys/values for ``x`` do not depend on the prompt, so they are computed once per example
  and every later pass only runs the ``L`` prompt positions against them. This is the system's main speed
  lever: a step costs ``L`` positions instead of ``|x| + L``.
- ``prefix``: ``{prompt}{x} It was`` and the next-token logits after the template (PEZ/OpenPrompt layout).
  The prompt comes first, so nothing is cacheable and every pass runs the full sequence.

Inputs are right-padded: a padded query then still sees real tokens before it, so no attention row is fully
masked (which would put NaNs into cached values), and explicit position ids keep every real token at its
unpadded position. Prompts enter as embeddings, so gradients reach a soft prompt or, through PEZ's
straight-through trick, the projected one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from objectives.models import LanguageModel

TEMPLATES = ("suffix", "prefix")
PREFIX_TAIL = " It was"


@dataclass(frozen=True)
class _Encoded:
    """Token ids of one split, right-padded: ``ids``/``mask`` are ``(N, T)``, ``lengths`` is ``(N,)``."""

    ids: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor


def _encode(lm: LanguageModel, texts: Sequence[str]) -> _Encoded:
    # No special tokens anywhere: GPT-2 has no BOS by convention in RLPrompt/PEZ, and adding one only for
    # some tokenizers would make templates mean different things on different models.
    rows = [lm.tokenizer.encode(t, add_special_tokens=False) or [_filler_id(lm)] for t in texts]
    lengths = torch.tensor([len(r) for r in rows])
    width = int(lengths.max())
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return _Encoded(ids.to(lm.device), mask.to(lm.device), lengths.to(lm.device))


def _filler_id(lm: LanguageModel) -> int:
    """A token for an empty input text, so every example has at least one position."""
    tok = lm.tokenizer
    for candidate in (tok.eos_token_id, tok.bos_token_id, tok.pad_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


class PromptScorer:
    """Next-token logits of the verbalizer words for prompts applied to the examples of one split.

    Args:
        lm: the frozen task LM.
        texts: the split's input texts ``x``.
        template: ``suffix`` or ``prefix``.
        verbalizer_ids: one token id per class, ``(C,)``.
        use_cache: keep the frozen keys/values of every ``x`` resident (``suffix`` only), as long as they
            fit in ``cache_budget_bytes``. A split over budget streams instead: its cache is built chunk by
            chunk inside each call, which costs the same as an uncached pass once.
        chunk_size: examples per forward pass, bounding memory.
        cache_budget_bytes: the most memory a resident cache may take.
    """

    def __init__(
        self,
        lm: LanguageModel,
        texts: Sequence[str],
        *,
        template: str,
        verbalizer_ids: Sequence[int],
        use_cache: bool = True,
        chunk_size: int = 64,
        cache_budget_bytes: float = 512e6,
    ) -> None:
        if template not in TEMPLATES:
            raise ValueError(f"template={template!r} is not one of {TEMPLATES}")
        self.lm = lm
        self.template = template
        self.verbalizer_ids = torch.tensor(list(verbalizer_ids), device=lm.device)
        self.chunk_size = chunk_size
        self.n = len(texts)
        if template == "prefix":
            texts = [" " + t.strip() + PREFIX_TAIL for t in texts]
        self._inputs = _encode(lm, texts)
        self.cached = use_cache and template == "suffix" and self.cache_bytes() <= cache_budget_bytes
        self._kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        # The pass that builds the cache also ends at each x's last token: the no-prompt logits come free.
        self._empty: torch.Tensor | None = None
        if self.cached:
            self._kv = self._input_cache(torch.arange(self.n, device=lm.device), keep_empty=True)

    def cache_bytes(self) -> int:
        """Memory a resident key/value cache of this split takes (padded width, model dtype)."""
        config = self.lm.model.config.get_text_config()
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        itemsize = 2 if self.lm.device.type == "cuda" else self.lm.embeddings.element_size()
        return int(self._inputs.ids.numel()) * config.num_hidden_layers * 2 * kv_heads * head_dim * itemsize

    @torch.no_grad()
    def _input_cache(self, rows: torch.Tensor, keep_empty: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer keys and values ``(rows, heads, T, head_dim)`` of the frozen LM over ``x``."""
        kv: list[list[torch.Tensor]] = []
        empty = []
        for start in range(0, len(rows), self.chunk_size):
            sel = rows[start : start + self.chunk_size]
            with self.lm.autocast():
                out = self.lm.body(
                    input_ids=self._inputs.ids[sel],
                    attention_mask=self._inputs.mask[sel],
                    position_ids=self._positions(sel),
                    use_cache=True,
                )
            if keep_empty:
                last = self._inputs.lengths[sel] - 1
                empty.append(self._verbalize(out.last_hidden_state[torch.arange(len(sel)), last]))
            layers = [(k, v) for k, v, *_ in out.cache]
            if not kv:
                kv = [[k, v] for k, v in layers]
            else:
                for acc, (k, v) in zip(kv, layers, strict=True):
                    acc[0] = torch.cat([acc[0], k])
                    acc[1] = torch.cat([acc[1], v])
        if keep_empty:
            self._empty = torch.cat(empty)
        return [(k, v) for k, v in kv]

    def _positions(self, rows: torch.Tensor) -> torch.Tensor:
        width = self._inputs.ids.shape[1]
        return torch.arange(width, device=self.lm.device).expand(len(rows), width)

    def logits(
        self,
        prompt: torch.Tensor,
        rows: torch.Tensor | None = None,
        *,
        full_vocab: bool = False,
    ) -> torch.Tensor:
        """Verbalizer logits for every prompt on every selected example.

        Args:
            prompt: prompt embeddings ``(L, d_model)`` or ``(P, L, d_model)``.
            rows: example indices ``(B,)``; all examples when ``None``.
            full_vocab: return full-vocabulary logits at every position from the first prompt token through
                the prediction position instead (for ``faith/output``).

        Returns:
            ``(P, B, C)`` verbalizer logits (fp32), or with ``full_vocab`` a pair ``(logits, mask)`` of
            ``(P, B, S, vocab)`` and ``(P, B, S)``, ``mask`` marking real positions.
        """
        squeeze = prompt.dim() == 2
        prompts = prompt.unsqueeze(0) if squeeze else prompt
        if rows is None:
            rows = torch.arange(self.n, device=self.lm.device)
        chunks = []
        step = max(1, self.chunk_size // prompts.shape[0])
        for start in range(0, len(rows), step):
            chunks.append(self._logits_chunk(prompts, rows[start : start + step], full_vocab))
        if full_vocab:
            width = max(c[0].shape[2] for c in chunks)
            logits = torch.cat([_pad_dim2(c[0], width) for c in chunks], dim=1)
            mask = torch.cat([_pad_dim2(c[1], width) for c in chunks], dim=1)
            return (logits[0], mask[0]) if squeeze else (logits, mask)
        out = torch.cat(chunks, dim=1)
        return out[0] if squeeze else out

    def _logits_chunk(
        self, prompts: torch.Tensor, rows: torch.Tensor, full_vocab: bool
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        n_prompts, length, _ = prompts.shape
        batch = len(rows)
        if self.template == "suffix":
            hidden, pos_mask = self._suffix_hidden(prompts, rows)
        else:
            hidden, pos_mask = self._prefix_hidden(prompts, rows)
        # hidden: (P*B, S, d) over the positions that depend on the prompt; the prediction position is the
        # last real one of each row.
        with self.lm.autocast():
            if full_vocab:
                logits = self.lm.head(hidden).float()
                return (
                    logits.view(n_prompts, batch, *logits.shape[1:]),
                    pos_mask.view(n_prompts, batch, -1),
                )
            last = pos_mask.sum(1) - 1
            logits = self._verbalize(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])
        return logits.view(n_prompts, batch, -1)

    def _suffix_hidden(self, prompts: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n_prompts, length, _ = prompts.shape
        kv = self._kv if self._kv is not None else None
        if kv is not None:
            layers = [(k[rows], v[rows]) for k, v in kv]
        else:
            layers = self._input_cache(rows)
        if n_prompts > 1:
            layers = [(k.repeat(n_prompts, 1, 1, 1), v.repeat(n_prompts, 1, 1, 1)) for k, v in layers]
        mask_x = self._inputs.mask[rows].repeat(n_prompts, 1)
        lengths = self._inputs.lengths[rows].repeat(n_prompts)
        embeds = prompts.repeat_interleave(len(rows), dim=0)
        ones = torch.ones(embeds.shape[0], length, dtype=mask_x.dtype, device=mask_x.device)
        positions = lengths[:, None] + torch.arange(length, device=lengths.device)
        with self.lm.autocast():
            out = self.lm.body(
                inputs_embeds=embeds,
                attention_mask=torch.cat([mask_x, ones], dim=1),
                position_ids=positions,
                cache=DynamicCache(layers),
                use_cache=True,
            )
        return out.last_hidden_state, ones

    def _prefix_hidden(self, prompts: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n_prompts, length, _ = prompts.shape
        ids = self._inputs.ids[rows]
        x_embeds = self.lm.model.get_input_embeddings()(ids).repeat(n_prompts, 1, 1)
        embeds = torch.cat([prompts.repeat_interleave(len(rows), dim=0).to(x_embeds.dtype), x_embeds], dim=1)
        ones = torch.ones(embeds.shape[0], length, dtype=torch.long, device=embeds.device)
        mask = torch.cat([ones, self._inputs.mask[rows].repeat(n_prompts, 1)], dim=1)
        positions = torch.arange(embeds.shape[1], device=embeds.device).expand(embeds.shape[0], -1)
        with self.lm.autocast():
            out = self.lm.body(inputs_embeds=embeds, attention_mask=mask, position_ids=positions)
        return out.last_hidden_state, mask

    @torch.no_grad()
    def empty_prompt_logits(self) -> torch.Tensor:
        """Verbalizer logits with no prompt at all (``{x}`` or ``{x} It was``): the baseline a prompt must beat.

        Returns ``(N, C)`` for every example of the split.
        """
        if self._empty is not None:
            return self._empty
        out = []
        for start in range(0, self.n, self.chunk_size):
            rows = torch.arange(start, min(start + self.chunk_size, self.n), device=self.lm.device)
            with self.lm.autocast():
                hidden = self.lm.body(
                    input_ids=self._inputs.ids[rows],
                    attention_mask=self._inputs.mask[rows],
                    position_ids=self._positions(rows),
                ).last_hidden_state
            out.append(self._verbalize(hidden[torch.arange(len(rows)), self._inputs.lengths[rows] - 1]))
        return torch.cat(out)

    def _verbalize(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of the verbalizer tokens only, ``(..., d_model)`` → ``(..., C)`` fp32: the head's other rows
        are never needed for classification, and skipping them saves a ``d × vocab`` product per example."""
        logits = hidden @ self.lm.head.weight[self.verbalizer_ids].T
        bias = getattr(self.lm.head, "bias", None)
        if bias is not None:
            logits = logits + bias[self.verbalizer_ids]
        return logits.float()

    def uncached_suffix_logits(self, prompt: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The ``suffix`` template's verbalizer logits computed the slow way, ``x`` and prompt in one pass.

        Reference for tests and benchmarks. ``prompt`` is ``(L, d_model)``; returns ``(B, C)``.
        """
        if rows is None:
            rows = torch.arange(self.n, device=self.lm.device)
        ids = self._inputs.ids[rows]
        lengths = self._inputs.lengths[rows]
        length = prompt.shape[0]
        x_embeds = self.lm.model.get_input_embeddings()(ids)
        batch, width, dim = x_embeds.shape
        # Place the prompt right after each row's real tokens, then pad: (B, T + L, d).
        mask = torch.zeros(batch, width + length, dtype=torch.long, device=ids.device)
        rows_emb = []
        for i in range(batch):
            n = int(lengths[i])
            rows_emb.append(torch.cat([x_embeds[i, :n], prompt, x_embeds.new_zeros(width - n, dim)]))
            mask[i, : n + length] = 1
        embeds = torch.stack(rows_emb)
        positions = torch.arange(width + length, device=ids.device).expand(batch, -1)
        with self.lm.autocast():
            hidden = self.lm.body(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
        return self._verbalize(hidden[torch.arange(batch, device=ids.device), lengths + length - 1])


def _pad_dim2(t: torch.Tensor, width: int) -> torch.Tensor:
    if t.shape[2] == width:
        return t
    pad = [0, 0] * (t.dim() - 3) + [0, width - t.shape[2]]
    return torch.nn.functional.pad(t, pad)


def prompt_logits(lm: LanguageModel, prompt: torch.Tensor) -> torch.Tensor:
    """The LM's logits over the prompt alone, ``(P, L, d_model)`` → ``(P, L, vocab)``, for ``interp/log_ppl``."""
    with lm.autocast():
        hidden = lm.body(inputs_embeds=prompt).last_hidden_state
        return lm.head(hidden).float()
