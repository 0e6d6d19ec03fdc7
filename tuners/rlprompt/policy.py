"""RLPrompt's policy: a frozen causal LM with a small trainable MLP between its last hidden state and its head.

The policy writes a prompt token by token from a start token (``objectives.models.start_token_id``: the
document boundary ``<|endoftext|>`` where the vocabulary has one, as RLPrompt's source, else BOS, else EOS).
Its logits are the soft Q-values of the next token:

    Q(s, ·) = head(h + mlp(h)) - logsumexp(head(h))  =  log p_LM(· | s) + W·mlp(h)

with ``h`` the frozen LM's last hidden state after the prompt so far and ``W`` the head's weight.

Two departures from the original ``head(mlp(h))``, and why:

- Residual. The original feeds only ``mlp(h)`` to the head; with its near-zero MLP init that starts from an
  almost uniform distribution over the whole vocabulary, not from the LM. ``h + mlp(h)`` with the same
  near-zero init starts at the LM's own next-token distribution, as intended here.
- The LM's log-normaliser ``logsumexp(head(h))`` is subtracted. It does not depend on any trained parameter
  and does not change the policy (a per-state shift of all logits), but it makes the initial soft values
  ``V(s) = logsumexp Q(s, ·)`` zero in every state. Without it, the frozen LM's normaliser, which differs
  from state to state by whole nats, would enter the single-step targets ``V(s_{t+1}) - V(s_t)`` as a
  spurious per-token reward. With it, soft Q-learning optimises the reward with the LM as its prior.

What a decode computes, and what it avoids:

- The frozen LM runs without gradient and its hidden states are kept, so the online and target Q-values of
  the loss are a cheap MLP + head pass over the same states (the LM part of "teacher forcing" is shared).
- The start state (the LM after the start token alone) is the same for every prompt of every step: it is
  computed once per policy and every decode starts from its keys/values, so a prompt of ``L`` tokens costs
  ``L - 1`` LM passes, not ``L``.
- ``interp/log_ppl`` (the task LM's next-token NLL of tokens ``2..L`` given the earlier ones, *without* the
  start token) rides along in the same LM passes when the task LM is decoded anyway: each pass carries a
  second set of rows that read the prompt without the start token (the start slot of their cache is masked
  out, their positions shifted by one), so the reward needs no separate pass over the prompts.
- Under the fluent restriction the action set of a state is the task LM's top-k next tokens: the Q-values
  are computed on those ``k`` actions only (``Rollout.actions``), not over the whole vocabulary, so the loss's
  head products shrink from ``V`` to ``k`` columns. Disallowed actions have no Q-value at all, which is the
  same as ``-inf`` for every soft value and every loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache

from objectives.fluent import exponential_noise, sample_with_noise
from objectives.models import LanguageModel, start_token_id

__all__ = ["PolicyMLP", "PromptPolicy", "Rollout", "sample_top_k", "start_token_id"]

# The original's init: Xavier-uniform with a tiny gain and a tiny negative bias, so the MLP's output starts
# near zero (here: the policy starts at the LM's distribution).
INIT_GAIN = 1e-4
INIT_BIAS = -1e-4
# Attention implementations that take a custom 4-D mask (needed for the log_ppl rows), as in objectives/scoring.
_MASKABLE = ("sdpa", "eager")
# Up to this many fluent actions, Q-values are dot products with the gathered head rows ``(P, T, k, d)``;
# beyond it one dense head product and a gather are cheaper than holding k head rows per state.
_GATHER_MAX_K = 256


class PolicyMLP(nn.Module):
    """``hidden → mlp_hidden → hidden`` with a ReLU, initialised near zero from ``generator``."""

    def __init__(self, d_model: int, mlp_hidden: int, *, generator: torch.Generator) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, mlp_hidden), nn.ReLU(), nn.Linear(mlp_hidden, d_model))
        for layer in (self.net[0], self.net[2]):
            nn.init.xavier_uniform_(layer.weight, gain=INIT_GAIN, generator=generator)
            nn.init.constant_(layer.bias, INIT_BIAS)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(..., d_model)`` → ``(..., d_model)``."""
        return self.net(hidden)


@dataclass(frozen=True)
class Rollout:
    """Prompts decoded by the policy and the frozen LM's view of every decision.

    ``ids`` ``(P, T)`` the tokens; ``hidden`` ``(P, T, d)`` the policy LM's last hidden state before each
    token; ``base`` ``(P, T, A)`` its log-probabilities (normalised over the whole vocabulary) of the ``A``
    actions of each state; ``actions`` ``(P, T, A)`` the token ids those actions stand for under the fluent
    restriction (the task LM's top-k, ``A = k``), ``None`` when every token is an action (``A = V``, action
    ``a`` is token ``a``); ``choice`` ``(P, T)`` the index of each token on the action axis; ``log_ppl``
    ``(P,)`` the task LM's ``interp/log_ppl`` of each prompt when the decode was asked for it, else ``None``.
    """

    ids: torch.Tensor
    hidden: torch.Tensor
    base: torch.Tensor
    actions: torch.Tensor | None
    choice: torch.Tensor
    log_ppl: torch.Tensor | None = None


@dataclass(frozen=True)
class _StartState:
    """A frozen LM after the start token alone: last hidden state ``(1, d)`` fp32 and per-layer keys/values
    ``(1, kv_heads, 1, head_dim)``. The same for every prompt, so computed once per policy."""

    hidden: torch.Tensor
    layers: list[tuple[torch.Tensor, torch.Tensor]]


class _Decoder:
    """Incremental decoding of ``n`` prompts through one frozen LM, from its start state.

    Two kinds of rows, each ``n`` wide, run in the same passes:

    - prompt rows read ``[start, t_0, ..., t_{i-1}]`` (the policy's view, and the fluent restriction's);
    - log_ppl rows read ``[t_0, ..., t_{i-1}]`` without the start token (``interp/log_ppl``'s view). Their
      cache slot 0 holds the start state too, only so that both kinds have caches of one width; a 4-D mask
      hides it from them, and their positions are one less.

    ``step(tokens)`` feeds ``t_{i-1}`` ``(n,)`` at decode step ``i >= 1`` and returns the last hidden states
    ``(n, d)`` fp32 of each kind (``None`` for a kind not carried). Step 0 needs no pass: the start state is
    the prompt rows' state, and a log_ppl row has nothing to read yet.
    """

    def __init__(self, lm: LanguageModel, start: _StartState, n: int, *, prompt_rows: bool, ppl_rows: bool) -> None:
        self.lm, self.n = lm, n
        self.prompt_rows, self.ppl_rows = prompt_rows, ppl_rows
        self.rows = n * (int(prompt_rows) + int(ppl_rows))
        # DynamicCache copies what it is given (its layers grow by concatenation), so the shared start state is
        # never written to.
        self.cache = DynamicCache(
            [(k.expand(self.rows, -1, -1, -1), v.expand(self.rows, -1, -1, -1)) for k, v in start.layers]
        )
        self.t = 0

    def step(self, tokens: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        self.t += 1
        t, n, device = self.t, self.n, tokens.device
        kinds = int(self.prompt_rows) + int(self.ppl_rows)
        inputs = tokens.repeat(kinds)[:, None]
        positions = torch.full((self.rows, 1), t, dtype=torch.long, device=device)
        mask = None
        if self.ppl_rows:
            positions[-n:] = t - 1
            allowed = torch.ones(self.rows, 1, 1, t + 1, dtype=torch.bool, device=device)
            allowed[-n:, :, :, 0] = False  # log_ppl rows never see the start slot
            if self.lm.model.config._attn_implementation == "eager":
                allowed = torch.zeros(allowed.shape, device=device).masked_fill(
                    ~allowed, torch.finfo(torch.float32).min
                )
            mask = allowed
        with self.lm.autocast():
            out = self.lm.body(
                input_ids=inputs, attention_mask=mask, position_ids=positions, cache=self.cache, use_cache=True
            )
        self.cache = out.cache
        hidden = out.last_hidden_state[:, -1].float()
        return (hidden[:n] if self.prompt_rows else None), (hidden[-n:] if self.ppl_rows else None)


class PromptPolicy:
    """Decodes prompts from the frozen ``lm`` steered by a ``PolicyMLP``; turns rollouts into Q-values.

    Args:
        lm: the frozen policy LM (may be the task LM itself).
        task_lm: the frozen task LM: the fluent restriction's top-k and ``interp/log_ppl`` are read from it.
        start_id: the token every prompt is decoded from.
        n_actions: size of the vocabulary actions are drawn from (token ids ``0 .. n_actions-1``, shared by
            both LMs).
        fluent_top_k: restrict each step to the task LM's top-k next tokens; ``None`` for no restriction.
    """

    def __init__(
        self,
        lm: LanguageModel,
        task_lm: LanguageModel,
        *,
        start_id: int,
        n_actions: int,
        fluent_top_k: int | None = None,
    ) -> None:
        self.lm = lm
        self.task_lm = task_lm
        self.start_id = start_id
        self.n_actions = n_actions
        self.fluent_top_k = min(fluent_top_k, n_actions) if fluent_top_k else None
        self._starts: dict[int, _StartState] = {}

    @property
    def _head_weight(self) -> torch.Tensor:
        """The policy LM's output weight over the actions, ``(V, d)``."""
        return self.lm.head.weight[: self.n_actions]

    def _log_probs(self, lm: LanguageModel, hidden: torch.Tensor) -> torch.Tensor:
        """``lm``'s next-token log-probabilities over the shared vocabulary: ``(N, d)`` → ``(N, V)`` fp32.
        The head and the log-softmax run in fp32: bf16 logits tie often enough to make a top-k boundary
        arbitrary, and ``interp/log_ppl`` read here must equal the final metric's."""
        return torch.log_softmax(lm.head_logits(hidden)[:, : self.n_actions], -1)

    @torch.no_grad()
    def _start(self, lm: LanguageModel) -> _StartState:
        """``lm``'s start state, computed on first use (the LMs are frozen, so it never changes)."""
        key = id(lm.model)
        if key not in self._starts:
            tokens = torch.full((1, 1), self.start_id, dtype=torch.long, device=lm.device)
            with lm.autocast():
                out = lm.body(input_ids=tokens, use_cache=True)
            layers = [(k, v) for k, v, *_ in out.cache]
            self._starts[key] = _StartState(hidden=out.last_hidden_state[:, -1].float(), layers=layers)
        return self._starts[key]

    def steer(self, mlp: PolicyMLP, hidden: torch.Tensor, actions: torch.Tensor | None) -> torch.Tensor:
        """The MLP's change to the Q-values, ``W·mlp(h)``: ``(..., d)`` → ``(..., A)``; ``actions``
        ``(..., k)`` restricts it to those token ids (``None``: every token)."""
        delta = mlp(hidden)
        weight = self._head_weight.to(delta.dtype)
        if actions is None:
            return delta @ weight.T
        if actions.shape[-1] <= _GATHER_MAX_K:
            return torch.einsum("...d,...kd->...k", delta, weight[actions])
        return (delta @ weight.T).gather(-1, actions)

    def q_values(self, mlp: PolicyMLP, rollout: Rollout) -> torch.Tensor:
        """Q-values ``(P, T, A)`` of ``mlp`` at the rollout's states, over each state's actions."""
        return rollout.base + self.steer(mlp, rollout.hidden, rollout.actions)

    def token_ids(self, rollout: Rollout, index: torch.Tensor) -> torch.Tensor:
        """Token ids of action indices ``(P, T)`` on the rollout's action axis."""
        return index if rollout.actions is None else rollout.actions.gather(-1, index[..., None])[..., 0]

    def _can_mask(self, lm: LanguageModel) -> bool:
        return getattr(lm.model.config, "_attn_implementation", None) in _MASKABLE

    @torch.no_grad()
    def decode(
        self,
        mlp: PolicyMLP,
        n_prompts: int,
        length: int,
        *,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        with_log_ppl: bool = False,
        greedy_rows: int = 0,
    ) -> Rollout:
        """Decode ``n_prompts`` prompts of ``length`` tokens.

        With a ``generator``, each token is sampled from the policy restricted to its ``top_k`` actions
        (training); without one, the argmax is taken (greedy, for evaluation). ``greedy_rows`` makes the
        first rows of a sampled decode greedy all the same. ``with_log_ppl`` fills ``Rollout.log_ppl`` from
        the task LM, in the passes the decode makes anyway where it can (``None`` where the task LM's
        attention takes no custom mask: the caller then computes it itself).

        The whole decode's randomness is drawn from ``generator`` before the first token
        (``objectives.fluent.exponential_noise``, the draws ``sample_top_k`` would make token by token), so
        no token waits on a host round trip; the tokens are the same as drawing them one at a time.
        """
        n = n_prompts
        device = self.lm.device
        shared = self.task_lm is self.lm
        fluent = self.fluent_top_k is not None
        ppl = with_log_ppl and self._can_mask(self.task_lm) and length > 1
        policy_lm = _Decoder(self.lm, self._start(self.lm), n, prompt_rows=True, ppl_rows=ppl and shared)
        task_lm = None
        if not shared and (fluent or ppl):
            # The fluent restriction and log_ppl are the task LM's: it gets its own decoder when it is not the
            # policy LM, carrying only the rows asked for.
            task_lm = _Decoder(self.task_lm, self._start(self.task_lm), n, prompt_rows=fluent, ppl_rows=ppl)
        ppl_decoder = policy_lm if shared else task_lm
        start_policy = self._start(self.lm).hidden
        start_base = self._log_probs(self.lm, start_policy)
        start_task = self._log_probs(self.task_lm, self._start(self.task_lm).hidden) if fluent and not shared else None
        tokens = None
        nll = torch.zeros(n, device=device)
        noise = None
        if generator is not None:
            n_choices = self.fluent_top_k or self.n_actions
            noise = exponential_noise(generator, length, n, min(top_k or n_choices, n_choices), device)
        ids, hiddens, bases, action_sets, choices = [], [], [], [], []
        for t in range(length):
            if t == 0:
                hidden = start_policy.expand(n, -1)
                full = start_base.expand(n, -1)
                task_full = start_task.expand(n, -1) if start_task is not None else None
                ppl_hidden = None
            else:
                hidden, ppl_hidden = policy_lm.step(tokens)
                full = self._log_probs(self.lm, hidden)
                task_full = None
                if task_lm is not None:
                    task_hidden, task_ppl = task_lm.step(tokens)
                    ppl_hidden = task_ppl if ppl else None
                    if fluent:
                        task_full = self._log_probs(self.task_lm, task_hidden)
            actions = None
            base = full
            if fluent:
                assert self.fluent_top_k is not None
                actions = (full if shared else task_full).topk(self.fluent_top_k, dim=-1).indices
                base = full.gather(-1, actions)
            q = base + self.steer(mlp, hidden, actions)
            if noise is None:
                choice = _argmax(q)
            else:
                choice = sample_top_k(q, top_k or q.shape[-1], noise=noise[t])
                if greedy_rows:
                    choice[:greedy_rows] = _argmax(q[:greedy_rows])
            token = choice if actions is None else actions.gather(-1, choice[:, None])[:, 0]
            if ppl_hidden is not None:
                # The log_ppl rows have read t_0 .. t_{t-1} without the start token: their next-token
                # distribution is interp/log_ppl's for t_t.
                nll -= self._log_probs(ppl_decoder.lm, ppl_hidden).gather(-1, token[:, None])[:, 0]
            tokens = token
            ids.append(token)
            hiddens.append(hidden)
            bases.append(base)
            action_sets.append(actions)
            choices.append(choice)
        log_ppl = None
        if ppl:
            log_ppl = nll / (length - 1)
        elif with_log_ppl and length <= 1:
            log_ppl = torch.zeros(n, device=device)  # a single token has nothing to predict (token_nll's 0)
        return Rollout(
            ids=torch.stack(ids, dim=1),
            hidden=torch.stack(hiddens, dim=1),
            base=torch.stack(bases, dim=1),
            actions=None if action_sets[0] is None else torch.stack(action_sets, dim=1),
            choice=torch.stack(choices, dim=1),
            log_ppl=log_ppl,
        )


def _argmax(q: torch.Tensor) -> torch.Tensor:
    """Row-wise argmax of ``q`` ``(N, A)``; a diverged row (NaN) still gets an index, so the run reaches the
    loss that reports the divergence instead of failing inside the decode."""
    return torch.nan_to_num(q, nan=float("-inf")).argmax(dim=-1)


def sample_top_k(
    q: torch.Tensor, k: int, generator: torch.Generator | None = None, *, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """One action index per row of ``q`` ``(N, A)``, sampled from ``softmax(q)`` restricted to the row's top ``k``.

    The randomness is ``noise`` ``(N, min(k, A))`` (a step of ``objectives.fluent.exponential_noise``), or drawn
    here from the CPU ``generator``: either way it comes from a CPU generator, so a seed gives the same prompts
    on any device, and the draw equals ``torch.multinomial`` on the CPU with that generator. A row without a
    finite distribution (a diverged policy: NaN or infinite Q-values) is drawn uniformly from its top ``k``, so
    the decode completes and the trainer's finiteness check on the loss names the step.
    """
    top = q.topk(min(k, q.shape[-1]), dim=-1)
    probs = torch.softmax(top.values.float(), dim=-1)
    # Selected on the device: a host check of the rows would cost a round trip per token.
    probs = torch.where(torch.isfinite(probs).all(dim=-1, keepdim=True), probs, 1.0 / probs.shape[-1])
    if noise is None:
        if generator is None:
            raise ValueError("sample_top_k needs a generator or noise")
        noise = exponential_noise(generator, 1, probs.shape[0], probs.shape[1], probs.device)[0]
    choice = sample_with_noise(probs, noise)
    return top.indices.gather(-1, choice[:, None]).squeeze(-1)
