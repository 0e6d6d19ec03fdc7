"""Prompted forward passes: verbalizer logits for (prompt, example) pairs, with the frozen input cache.

Two templates place the prompt relative to the input ``x``:

- ``suffix``: ``{x}{prompt}`` and the next-token logits after the last prompt token (RLPrompt's layout).
  The frozen LM's keys/values for ``x`` do not depend on the prompt, so they are computed once per example
  and every later pass only runs the ``L`` prompt positions against them. This is the system's main speed
  lever: a step costs ``L`` positions instead of ``|x| + L``.
- ``prefix``: ``{prompt}{x} It was`` and the next-token logits after the template (PEZ/OpenPrompt layout).
  The prompt comes first, so nothing is cacheable and every pass runs the full sequence.

Cost follows the real tokens: the examples of a split are sorted by length and cut into chunks of similar
length (``_partition``), each padded only to its own longest and holding its own key/value cache, so a split
with a long tail pays for its long examples only where they are. A call on arbitrary rows (training passes
random batches) groups the rows by length, runs each group padded to its own longest, and returns the
results in the caller's row order.

Inputs are right-padded: a padded query then still sees real tokens before it, so no attention row is fully
masked (which would put NaNs into cached values), and explicit position ids keep every real token at its
unpadded position. Prompts enter as embeddings, so gradients reach a soft prompt or, through PEZ's
straight-through trick, the projected one.

Several prompts on one example share that example's cached keys/values: their ``P·L`` positions run as one
sequence against the cache, under a mask that lets each prompt see ``x`` and its own earlier positions only.
No copy of the cache per prompt is made, which is what made the multi-prompt path (RLPrompt's reward) run at
half the per-token speed of an uncached pass.

``shared_scorer`` keeps one scorer per (LM, template, verbalizer, texts, settings) in the process, so that
problems which share a split (replicates on different train/dev seeds share one test set) run its frozen
pass once.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

from objectives.memory import cache_budget, kv_bytes_per_token
from objectives.models import LanguageModel
from objectives.problem import PREFIX_TAIL, TEMPLATES

# What one more forward call costs, in padded tokens, when cutting a split into chunks. Measured on 2 CPU
# cores (GPT-2-small, SmolLM2-135M): a call on 32 tokens takes ~150 ms, on 128 ~250 ms, and throughput only
# levels off above ~256 tokens a call, so a call is worth ~128 tokens there; on a GPU a call on few tokens
# is launch-bound and worth thousands. Only speed depends on it, never the result.
_CALL_TOKENS = {"cpu": 128, "cuda": 4096}
# Attention implementations that take a custom 4-D mask, needed to run several prompts in one sequence.
_PACKABLE = ("sdpa", "eager")

Layers = list[tuple[torch.Tensor, torch.Tensor]]


def _partition(lengths: Sequence[int], max_rows: int, call_tokens: int) -> list[tuple[int, int]]:
    """Cut non-decreasing ``lengths`` into runs ``[start, end)`` of at most ``max_rows`` examples.

    Minimises the padded tokens (each run is padded to its longest, its last) plus ``call_tokens`` per run:
    exact dynamic programming over the cut points, ``O(len(lengths) · max_rows)``.
    """
    n = len(lengths)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        width = lengths[end - 1]
        for start in range(max(0, end - max_rows), end):
            cost = best[start] + (end - start) * width + call_tokens
            if cost < best[end]:
                best[end], cut[end] = cost, start
    runs = []
    end = n
    while end > 0:
        runs.append((cut[end], end))
        end = cut[end]
    return runs[::-1]


def _tokenize(lm: LanguageModel, texts: Sequence[str]) -> list[list[int]]:
    # No special tokens anywhere: GPT-2 has no BOS by convention in RLPrompt/PEZ, and adding one only for
    # some tokenizers would make templates mean different things on different models.
    return [lm.tokenizer.encode(t, add_special_tokens=False) or [_filler_id(lm)] for t in texts]


def _filler_id(lm: LanguageModel) -> int:
    """A token for an empty input text, so every example has at least one position."""
    tok = lm.tokenizer
    for candidate in (tok.eos_token_id, tok.bos_token_id, tok.pad_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


class _FrozenPrefixLayer(DynamicLayer):
    """One layer's keys/values ``(B, kv_heads, T, head_dim)`` of ``x``, read but never changed.

    ``DynamicCache(layers)`` copies every tensor it is given (its layers grow by concatenation onto an empty
    tensor), and a resident cache must not be modified by a pass: this layer holds the given tensors (views
    of the resident cache) as they are and returns them with the new positions appended, keeping nothing.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.keys, self.values = keys, values
        self.device = keys.device
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


class _FrozenPrefixCache(DynamicCache):
    """A ``DynamicCache`` over frozen per-layer keys/values, built without copying them."""

    def __init__(self, layers: Layers) -> None:
        Cache.__init__(self, layers=[_FrozenPrefixLayer(k, v) for k, v in layers])


class PromptScorer:
    """Next-token logits of the verbalizer words for prompts applied to the examples of one split.

    Args:
        lm: the frozen task LM.
        texts: the split's input texts ``x``.
        template: ``suffix`` or ``prefix``.
        verbalizer_ids: one token id per class, ``(C,)``.
        use_cache: keep the frozen keys/values of every ``x`` resident (``suffix`` only), as long as they
            fit in ``cache_budget_bytes``. A split over budget streams instead: its cache is built group by
            group inside each call, which costs the same as an uncached pass once.
        chunk_size: the most examples per forward pass, bounding memory (``chunk_size // P`` with ``P``
            prompts where each (prompt, example) pair is its own sequence: ``prefix``, or an attention
            implementation without custom masks); also the most examples per chunk of the resident cache.
        cache_budget_bytes: the most memory a resident cache may take; ``None``: 512 MB, the default of
            ``objectives.memory.cache_budget`` (which sizes it from a trial's share of its GPU).
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
        cache_budget_bytes: float | None = None,
    ) -> None:
        if template not in TEMPLATES:
            raise ValueError(f"template={template!r} is not one of {TEMPLATES}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size} must be >= 1")
        self.lm = lm
        self.template = template
        self.verbalizer_ids = torch.tensor(list(verbalizer_ids), device=lm.device)
        self.chunk_size = chunk_size
        self.n = len(texts)
        if template == "prefix":
            texts = [" " + t.strip() + PREFIX_TAIL for t in texts]
        tokens = _tokenize(lm, texts)
        self._tokens = [torch.tensor(t, device=lm.device) for t in tokens]
        self._lengths = [len(t) for t in tokens]
        self._call_tokens = _CALL_TOKENS.get(lm.device.type, _CALL_TOKENS["cuda"])
        # Chunks: runs of the length-sorted examples (indices into the split), each padded to its own longest.
        order = sorted(range(self.n), key=self._lengths.__getitem__)
        runs = _partition([self._lengths[i] for i in order], chunk_size, self._call_tokens)
        self._chunks = [order[start:end] for start, end in runs]
        # Where each example sits: (chunk, slot in chunk); sorting rows by it sorts them by length.
        self._where = [(0, 0)] * self.n
        for c, chunk in enumerate(self._chunks):
            for slot, row in enumerate(chunk):
                self._where[row] = (c, slot)
        self._packable = getattr(lm.model.config, "_attn_implementation", None) in _PACKABLE
        # No-prompt logits (N, C), filled by whichever frozen pass over x runs first: the resident cache's,
        # a streamed call's, or empty_prompt_logits' own. The lock keeps them computed once under threads.
        self._empty = torch.zeros(self.n, len(self.verbalizer_ids), device=lm.device)
        self._empty_known = [False] * self.n
        self._lock = threading.Lock()
        self._baseline_lock = threading.Lock()
        if cache_budget_bytes is None:
            cache_budget_bytes = cache_budget(lm.device)
        self.cache_budget_bytes = float(cache_budget_bytes)
        self.cached = use_cache and template == "suffix" and self.cache_bytes() <= cache_budget_bytes
        self._chunk_kv: list[Layers] | None = None
        if self.cached:
            self._chunk_kv = [self._input_cache(chunk) for chunk in self._chunks]

    def cache_bytes(self) -> int:
        """Memory the resident key/value cache of this split takes: each chunk padded to its own longest, at the
        element sizes the cache really gets (``objectives.memory.kv_bytes_per_token``: a rotary model's keys
        stay fp32 under bf16 autocast)."""
        tokens = sum(len(chunk) * self._lengths[chunk[-1]] for chunk in self._chunks)
        return tokens * kv_bytes_per_token(self.lm)

    def padded_cache(self) -> Layers:
        """The resident cache as one right-padded ``(N, kv_heads, T_max, head_dim)`` key/value pair per layer,
        rows in the split's order. A copy, for benchmarks that need the whole split's cache as one tensor."""
        assert self._chunk_kv is not None, "the split's cache is not resident (use_cache=False or over budget)"
        return self._gather_cache(list(range(self.n)))

    @property
    def _kv(self) -> Layers | None:
        # benchmarks/pez_step.py reads the split's cache under this name for its floor.
        return self.padded_cache() if self._chunk_kv is not None else None

    # --- inputs and the frozen pass over x ---------------------------------------------------------------

    def _pad(self, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids and mask ``(B, T)`` of ``rows`` right-padded to their own longest, and lengths ``(B,)``."""
        ids = torch.nn.utils.rnn.pad_sequence([self._tokens[r] for r in rows], batch_first=True)
        lengths = torch.tensor([self._lengths[r] for r in rows], device=self.lm.device)
        mask = (torch.arange(ids.shape[1], device=ids.device) < lengths[:, None]).long()
        return ids, mask, lengths

    @torch.no_grad()
    def _input_cache(self, rows: Sequence[int], *, keep: bool = True) -> Layers:
        """One frozen pass over ``x`` of ``rows``: per-layer keys and values ``(B, kv_heads, T, head_dim)``,
        ``T`` the longest of ``rows``. It ends at each ``x``'s last token, so it records the no-prompt logits
        of ``rows`` too; with ``keep=False`` it keeps only those (no cache is built)."""
        ids, mask, lengths = self._pad(rows)
        positions = torch.arange(ids.shape[1], device=ids.device).expand(len(rows), -1)
        with self.lm.autocast():
            out = self.lm.body(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=keep)
        empty = self._verbalize(out.last_hidden_state[torch.arange(len(rows), device=ids.device), lengths - 1])
        with self._lock:
            index = torch.tensor(list(rows), device=self.lm.device)
            self._empty[index] = empty
            for r in rows:
                self._empty_known[r] = True
        return [(k, v) for k, v, *_ in out.cache] if keep else []

    def _gather_cache(self, rows: Sequence[int]) -> Layers:
        """The resident keys/values of ``rows`` (sorted by ``_where``), right-padded to their longest.

        Rows that are a contiguous run of one chunk are a view of it (no copy); others are gathered.
        """
        assert self._chunk_kv is not None
        width = max(self._lengths[r] for r in rows)
        pieces: list[tuple[int, list[int]]] = []
        for r in rows:
            c, slot = self._where[r]
            if pieces and pieces[-1][0] == c:
                pieces[-1][1].append(slot)
            else:
                pieces.append((c, [slot]))
        # How each piece is read: a slice where its slots are contiguous (a view), else an index tensor, made
        # once here and not per layer (a host-to-device copy per layer and piece).
        reads: list[tuple[int, slice | torch.Tensor]] = []
        for c, slots in pieces:
            if slots == list(range(slots[0], slots[-1] + 1)):
                reads.append((c, slice(slots[0], slots[-1] + 1)))
            else:
                reads.append((c, torch.tensor(slots, device=self.lm.device)))
        layers: Layers = []
        for layer in range(len(self._chunk_kv[0])):
            keys, values = [], []
            for c, index in reads:
                k, v = self._chunk_kv[c][layer]
                keys.append(_fit_width(k[index], width))
                values.append(_fit_width(v[index], width))
            layers.append((torch.cat(keys), torch.cat(values)) if len(keys) > 1 else (keys[0], values[0]))
        return layers

    # --- grouping rows ----------------------------------------------------------------------------------

    def _groups(self, rows: Sequence[int], max_rows: int, extra_tokens: int) -> list[list[list[int]]]:
        """Positions into ``rows`` grouped into forward passes of at most ``max_rows`` examples each; a pass
        is a list of groups that share one frozen pass over ``x`` each (when no cache is resident).

        With a resident cache a pass runs only prompt positions, whose cost hardly depends on the cached
        width: passes follow the chunks (a whole chunk is a view of its cache) and small neighbours merge.
        Streamed, the frozen passes are cut from the length-sorted rows to minimise padded tokens plus the
        cost of a call, and their caches merge into prompt passes of up to ``max_rows`` examples (a prompt
        pass on a few examples costs about as much as on many). With ``prefix`` every pass runs every token
        of its examples (``extra_tokens`` more each) and is cut the same way.
        """
        by_length = sorted(range(len(rows)), key=lambda p: self._where[rows[p]])
        if self.template == "suffix" and self._chunk_kv is not None:
            pieces: list[list[int]] = []
            last_chunk = -1
            for p in by_length:
                c = self._where[rows[p]][0]
                if c != last_chunk or len(pieces[-1]) == max_rows:
                    pieces.append([])
                pieces[-1].append(p)
                last_chunk = c
            return [[[p for piece in merged for p in piece]] for merged in _merge(pieces, max_rows)]
        if self.template == "suffix":
            lengths = [self._lengths[rows[p]] for p in by_length]
            runs = _partition(lengths, min(max_rows, self.chunk_size), self._call_tokens)
            return _merge([by_length[start:end] for start, end in runs], max_rows)
        lengths = [self._lengths[rows[p]] + extra_tokens for p in by_length]
        return [[by_length[start:end]] for start, end in _partition(lengths, max_rows, self._call_tokens)]

    # --- prompted passes --------------------------------------------------------------------------------

    def logits(
        self,
        prompt: torch.Tensor,
        rows: torch.Tensor | None = None,
        *,
        full_vocab: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Verbalizer logits for every prompt on every selected example.

        Args:
            prompt: prompt embeddings ``(L, d_model)`` or ``(P, L, d_model)``.
            rows: example indices ``(B,)``, any order, repeats allowed; all examples when ``None``.
            full_vocab: return full-vocabulary logits at every position from the first prompt token through
                the prediction position instead (for ``faith/output``).

        Returns:
            ``(P, B, C)`` verbalizer logits (fp32), or with ``full_vocab`` a pair ``(logits, mask)`` of
            ``(P, B, S, vocab)`` and ``(P, B, S)``, ``mask`` marking real positions; the ``P`` axis is absent
            for a ``(L, d_model)`` prompt. Row ``b`` is the example ``rows[b]``.
        """
        squeeze = prompt.dim() == 2
        prompts = prompt.unsqueeze(0) if squeeze else prompt
        n_prompts, length, _ = prompts.shape
        row_list = list(range(self.n)) if rows is None else [int(r) for r in rows.tolist()]
        if not row_list:
            raise ValueError("rows is empty; pass at least one example index")
        passes = self._groups(row_list, self._max_rows(n_prompts), length)
        outs = [
            self._group_logits(prompts, [[row_list[p] for p in group] for group in groups], full_vocab)
            for groups in passes
        ]
        # Back to the caller's order: the passes hold positions into row_list, sorted by length.
        inverse = torch.empty(len(row_list), dtype=torch.long)
        inverse[[p for groups in passes for group in groups for p in group]] = torch.arange(len(row_list))
        inverse = inverse.to(self.lm.device)
        if full_vocab:
            width = max(out[0].shape[2] for out in outs)
            logits = torch.cat([_pad_dim2(out[0], width) for out in outs], dim=1)[:, inverse]
            mask = torch.cat([_pad_dim2(out[1], width) for out in outs], dim=1)[:, inverse]
            return (logits[0], mask[0]) if squeeze else (logits, mask)
        out = torch.cat(outs, dim=1)[:, inverse]
        return out[0] if squeeze else out

    def _max_rows(self, n_prompts: int) -> int:
        """Examples per pass for ``n_prompts`` prompts: ``chunk_size`` when the prompts of an example share one
        sequence against its cache (a pass then holds one cache row and ``P·L`` new positions per example),
        else ``chunk_size // P`` (a pass holds ``P`` full sequences per example)."""
        if self.template == "suffix" and (n_prompts == 1 or self._packable):
            return self.chunk_size
        return max(1, self.chunk_size // n_prompts)

    def _group_logits(
        self, prompts: torch.Tensor, groups: list[list[int]], full_vocab: bool
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """One prompted forward pass on the examples of ``groups`` (each group one frozen pass over ``x`` when
        no cache is resident): ``(P, B, C)``, or ``(P, B, S, vocab)`` and ``(P, B, S)`` with ``full_vocab``."""
        rows = [r for group in groups for r in group]
        if self.template == "suffix":
            if self._chunk_kv is not None:
                layers = self._gather_cache(rows)
            else:
                layers = _cat_caches([self._input_cache(group) for group in groups])
            lengths = torch.tensor([self._lengths[r] for r in rows], device=self.lm.device)
            hidden = self._suffix_hidden(prompts, layers, lengths)  # (P, B, L, d)
            if full_vocab:
                mask = torch.ones(hidden.shape[:3], dtype=torch.long, device=hidden.device)
                return self.lm.head_logits(hidden), mask
            return self._verbalize(hidden[:, :, -1])
        hidden, mask = self._prefix_hidden(prompts, rows)  # (P, B, S, d), (P, B, S)
        if full_vocab:
            return self.lm.head_logits(hidden), mask
        last = mask.sum(-1, keepdim=True) - 1  # (P, B, 1): the template's last real token
        at = torch.gather(hidden, 2, last[..., None].expand(-1, -1, -1, hidden.shape[-1]))[:, :, 0]
        return self._verbalize(at)

    def _suffix_hidden(self, prompts: torch.Tensor, layers: Layers, lengths: torch.Tensor) -> torch.Tensor:
        """Final hidden states ``(P, B, L, d)`` of ``P`` prompts ``(P, L, d)`` placed after each cached ``x``.

        ``layers`` hold the keys/values ``(B, kv_heads, T, head_dim)`` of the ``B`` inputs, ``lengths`` their
        real lengths ``(B,)``.
        """
        n_prompts, length, dim = prompts.shape
        batch, width = len(lengths), layers[0][0].shape[2]
        device = lengths.device
        real = torch.arange(width, device=device) < lengths[:, None]  # (B, T): keys of x that are not padding
        steps = torch.arange(length, device=device)
        if n_prompts == 1 or not self._packable:
            # One sequence per (prompt, example) pair, through the model's own causal mask.
            if n_prompts > 1:
                layers = [(k.repeat(n_prompts, 1, 1, 1), v.repeat(n_prompts, 1, 1, 1)) for k, v in layers]
            embeds = prompts.repeat_interleave(batch, dim=0)
            mask = torch.cat([real.long().repeat(n_prompts, 1), real.new_ones(n_prompts * batch, length).long()], 1)
            positions = lengths.repeat(n_prompts)[:, None] + steps
            with self.lm.autocast():
                out = self.lm.body(
                    inputs_embeds=embeds,
                    attention_mask=mask,
                    position_ids=positions,
                    cache=_FrozenPrefixCache(layers),
                    use_cache=True,
                )
            return out.last_hidden_state.view(n_prompts, batch, length, -1)
        # All P prompts of an example in one sequence of P·L positions against its cache, once: prompt p sees
        # the real tokens of x and its own earlier positions, never another prompt's.
        embeds = prompts.reshape(1, n_prompts * length, dim).expand(batch, -1, -1)
        positions = lengths[:, None] + steps.repeat(n_prompts)
        prompt_of = torch.arange(n_prompts, device=device).repeat_interleave(length)
        step_of = steps.repeat(n_prompts)
        own = (prompt_of[:, None] == prompt_of[None, :]) & (step_of[:, None] >= step_of[None, :])  # (PL, PL)
        allowed = torch.cat(
            [real[:, None, :].expand(-1, n_prompts * length, -1), own.expand(batch, -1, -1)], dim=2
        ).unsqueeze(1)  # (B, 1, PL, T + PL)
        if self.lm.model.config._attn_implementation == "eager":
            allowed = torch.zeros(allowed.shape, device=device).masked_fill(~allowed, torch.finfo(torch.float32).min)
        with self.lm.autocast():
            out = self.lm.body(
                inputs_embeds=embeds,
                attention_mask=allowed,
                position_ids=positions,
                cache=_FrozenPrefixCache(layers),
                use_cache=True,
            )
        return out.last_hidden_state.view(batch, n_prompts, length, -1).transpose(0, 1)

    def _prefix_hidden(self, prompts: torch.Tensor, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Final hidden states ``(P, B, L + T, d)`` of ``{prompt}{x} It was`` and their mask ``(P, B, L + T)``."""
        n_prompts, length, _ = prompts.shape
        ids, x_mask, _ = self._pad(rows)
        batch = len(rows)
        x_embeds = self.lm.model.get_input_embeddings()(ids).repeat(n_prompts, 1, 1)
        embeds = torch.cat([prompts.repeat_interleave(batch, dim=0).to(x_embeds.dtype), x_embeds], dim=1)
        ones = torch.ones(embeds.shape[0], length, dtype=torch.long, device=embeds.device)
        mask = torch.cat([ones, x_mask.repeat(n_prompts, 1)], dim=1)
        positions = torch.arange(embeds.shape[1], device=embeds.device).expand(embeds.shape[0], -1)
        with self.lm.autocast():
            out = self.lm.body(inputs_embeds=embeds, attention_mask=mask, position_ids=positions)
        return out.last_hidden_state.view(n_prompts, batch, embeds.shape[1], -1), mask.view(n_prompts, batch, -1)

    @torch.no_grad()
    def empty_prompt_logits(self) -> torch.Tensor:
        """Verbalizer logits with no prompt at all (``{x}`` or ``{x} It was``): the baseline a prompt must beat.

        Returns ``(N, C)`` for every example of the split. They come from the frozen pass over ``x`` that
        builds the resident cache, or from the first streamed call that covers a row; rows no pass has seen
        yet get one pass of their own here. Each row's are computed once.
        """
        # Its own lock (``_input_cache`` takes ``_lock`` to record what it computed): a second thread waits
        # for the first one's pass instead of running its own.
        with self._baseline_lock:
            missing = [r for r in range(self.n) if not self._empty_known[r]]
            for group in self._frozen_groups(missing):
                self._input_cache(group, keep=False)
        return self._empty

    def _frozen_groups(self, rows: list[int]) -> list[list[int]]:
        """``rows`` cut into frozen passes over ``x`` alone (no prompt), as the chunks are cut."""
        by_length = sorted(rows, key=self._where.__getitem__)
        lengths = [self._lengths[r] for r in by_length]
        return [by_length[s:e] for s, e in _partition(lengths, self.chunk_size, self._call_tokens)]

    def _verbalize(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of the verbalizer tokens only, ``(..., d_model)`` → ``(..., C)``, in fp32 on every device
        (``LanguageModel.head_logits``): the head's other rows are never needed for classification."""
        return self.lm.head_logits(hidden, self.verbalizer_ids)

    def uncached_suffix_logits(self, prompt: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The ``suffix`` template's verbalizer logits computed the slow way, ``x`` and prompt in one pass.

        Reference for tests and benchmarks. ``prompt`` is ``(L, d_model)``; returns ``(B, C)``.
        """
        row_list = list(range(self.n)) if rows is None else [int(r) for r in rows.tolist()]
        ids, _, lengths = self._pad(row_list)
        length = prompt.shape[0]
        x_embeds = self.lm.model.get_input_embeddings()(ids)
        batch, width, dim = x_embeds.shape
        # Place the prompt right after each row's real tokens, then pad: (B, T + L, d).
        mask = torch.zeros(batch, width + length, dtype=torch.long, device=ids.device)
        rows_emb = []
        for i in range(batch):
            n = self._lengths[row_list[i]]
            rows_emb.append(torch.cat([x_embeds[i, :n], prompt, x_embeds.new_zeros(width - n, dim)]))
            mask[i, : n + length] = 1
        embeds = torch.stack(rows_emb)
        positions = torch.arange(width + length, device=ids.device).expand(batch, -1)
        with self.lm.autocast():
            hidden = self.lm.body(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
        return self._verbalize(hidden[torch.arange(batch, device=ids.device), lengths + length - 1])


def _merge(groups: list[list[int]], max_rows: int) -> list[list[list[int]]]:
    """Consecutive ``groups`` collected into passes of at most ``max_rows`` examples (or one group)."""
    passes: list[list[list[int]]] = []
    size = 0
    for group in groups:
        if passes and size + len(group) <= max_rows:
            passes[-1].append(group)
            size += len(group)
        else:
            passes.append([group])
            size = len(group)
    return passes


def _cat_caches(caches: list[Layers]) -> Layers:
    """Per-layer keys/values of several groups ``(B_i, heads, T_i, head_dim)`` as one batch, right-padded."""
    if len(caches) == 1:
        return caches[0]
    width = max(layers[0][0].shape[2] for layers in caches)
    return [
        (
            torch.cat([_fit_width(k, width) for k, _ in per_layer]),
            torch.cat([_fit_width(v, width) for _, v in per_layer]),
        )
        for per_layer in zip(*caches, strict=True)
    ]


def _fit_width(t: torch.Tensor, width: int) -> torch.Tensor:
    """Keys or values ``(B, heads, T, head_dim)`` cut or right-padded (zeros, masked) to ``T = width``."""
    if t.shape[2] >= width:
        return t[:, :, :width]
    return torch.nn.functional.pad(t, (0, 0, 0, width - t.shape[2]))


def _pad_dim2(t: torch.Tensor, width: int) -> torch.Tensor:
    if t.shape[2] == width:
        return t
    pad = [0, 0] * (t.dim() - 3) + [0, width - t.shape[2]]
    return torch.nn.functional.pad(t, pad)


_SCORERS: dict[tuple, PromptScorer] = {}
_SCORERS_LOCK = threading.Lock()


def shared_scorer(
    lm: LanguageModel,
    texts: Sequence[str],
    *,
    template: str,
    verbalizer_ids: Sequence[int],
    use_cache: bool = True,
    chunk_size: int = 64,
    cache_budget_bytes: float | None = None,
) -> PromptScorer:
    """The process's one ``PromptScorer`` for these texts on this LM, built on first use.

    Problems that share a split (replicates of a trial on different train/dev seeds share one test set;
    trials in one Ray worker share everything) then share its frozen pass and its resident cache. The key
    holds the model object's identity as well as its spec: the scorer keeps the model alive, so the identity
    cannot be reused by another model while the entry exists.
    """
    key = (
        lm.spec,
        str(lm.device),
        id(lm.model),
        template,
        tuple(int(i) for i in verbalizer_ids),
        tuple(texts),
        use_cache,
        chunk_size,
        cache_budget_bytes,
    )
    with _SCORERS_LOCK:
        if key not in _SCORERS:
            _SCORERS[key] = PromptScorer(
                lm,
                texts,
                template=template,
                verbalizer_ids=verbalizer_ids,
                use_cache=use_cache,
                chunk_size=chunk_size,
                cache_budget_bytes=cache_budget_bytes,
            )
        return _SCORERS[key]


def prompt_logits(lm: LanguageModel, prompt: torch.Tensor) -> torch.Tensor:
    """The LM's logits over the prompt alone, ``(P, L, d_model)`` → ``(P, L, vocab)`` fp32, for ``interp/log_ppl``
    (its log-softmax then runs in fp32 too: ``objectives.metrics.token_nll``)."""
    with lm.autocast():
        hidden = lm.body(inputs_embeds=prompt).last_hidden_state
    return lm.head_logits(hidden)
