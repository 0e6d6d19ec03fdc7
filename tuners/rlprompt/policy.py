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

Decoding runs the frozen LM without gradient and keeps its hidden states, so the online and target Q-values
are a cheap MLP + head pass over the same states (the LM part of "teacher forcing" is shared).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from objectives.models import LanguageModel, start_token_id

__all__ = ["PolicyMLP", "PromptPolicy", "Rollout", "sample_top_k", "start_token_id"]

# The original's init: Xavier-uniform with a tiny gain and a tiny negative bias, so the MLP's output starts
# near zero (here: the policy starts at the LM's distribution).
INIT_GAIN = 1e-4
INIT_BIAS = -1e-4


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
    token; ``base`` ``(P, T, A)`` its log-probabilities over the actions; ``allowed`` ``(P, T, A)`` the
    fluent restriction, ``None`` when off.
    """

    ids: torch.Tensor
    hidden: torch.Tensor
    base: torch.Tensor
    allowed: torch.Tensor | None


class _Decoder:
    """Incremental decoding of one frozen LM: feed tokens ``(P, 1)``, read the last hidden state ``(P, d)``."""

    def __init__(self, lm: LanguageModel) -> None:
        self.lm = lm
        self.cache: object | None = None

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        with self.lm.autocast():
            out = self.lm.body(input_ids=tokens, cache=self.cache, use_cache=True)
        self.cache = out.cache
        return out.last_hidden_state[:, -1].float()


class PromptPolicy:
    """Decodes prompts from the frozen ``lm`` steered by a ``PolicyMLP``; turns rollouts into Q-values.

    Args:
        lm: the frozen policy LM (may be the task LM itself).
        task_lm: the frozen task LM, whose next-token top-k the ``fluent`` mode restricts the policy to.
        start_id: the token every prompt is decoded from.
        n_actions: size of the action set (token ids ``0 .. n_actions-1``, shared by both LMs).
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
        self.fluent_top_k = fluent_top_k

    @property
    def _head_weight(self) -> torch.Tensor:
        """The policy LM's output weight over the actions, ``(A, d)``."""
        return self.lm.head.weight[: self.n_actions]

    def q_values(self, mlp: PolicyMLP, rollout: Rollout) -> torch.Tensor:
        """Q-values ``(P, T, A)`` of ``mlp`` at the rollout's states; disallowed actions are ``-inf``."""
        q = rollout.base + mlp(rollout.hidden) @ self._head_weight.float().T
        if rollout.allowed is not None:
            q = q.masked_fill(~rollout.allowed, float("-inf"))
        return q

    @torch.no_grad()
    def decode(
        self,
        mlp: PolicyMLP,
        n_prompts: int,
        length: int,
        *,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Rollout:
        """Decode ``n_prompts`` prompts of ``length`` tokens.

        With a ``generator``, each token is sampled from the policy restricted to its ``top_k`` actions
        (training); without one, the argmax is taken (greedy, for evaluation).
        """
        device = self.lm.device
        tokens = torch.full((n_prompts, 1), self.start_id, dtype=torch.long, device=device)
        policy_lm = _Decoder(self.lm)
        # The fluent restriction needs the task LM's next-token distribution; when the policy runs on the task
        # LM itself that is the policy LM's own, so no second decoder is needed.
        task_lm = _Decoder(self.task_lm) if self.fluent_top_k and self.task_lm is not self.lm else None
        ids, hiddens, bases, alloweds = [], [], [], []
        for _ in range(length):
            hidden = policy_lm(tokens)
            base = torch.log_softmax(self.lm.head(hidden.to(self.lm.embeddings.dtype)).float()[:, : self.n_actions], -1)
            allowed = None
            if self.fluent_top_k:
                if task_lm is None:
                    task_logits = base
                else:
                    task_hidden = task_lm(tokens).to(self.task_lm.embeddings.dtype)
                    task_logits = self.task_lm.head(task_hidden).float()[:, : self.n_actions]
                allowed = _top_k_mask(task_logits, self.fluent_top_k)
            step = Rollout(ids=tokens, hidden=hidden[:, None], base=base[:, None], allowed=_unsqueeze(allowed))
            q = self.q_values(mlp, step)[:, 0]
            if generator is None:
                action = q.argmax(dim=-1)
            else:
                action = sample_top_k(q, top_k or self.n_actions, generator)
            tokens = action[:, None]
            ids.append(action)
            hiddens.append(hidden)
            bases.append(base)
            alloweds.append(allowed)
        return Rollout(
            ids=torch.stack(ids, dim=1),
            hidden=torch.stack(hiddens, dim=1),
            base=torch.stack(bases, dim=1),
            allowed=None if alloweds[0] is None else torch.stack(alloweds, dim=1),
        )


def _unsqueeze(mask: torch.Tensor | None) -> torch.Tensor | None:
    return None if mask is None else mask[:, None]


def _top_k_mask(logits: torch.Tensor, k: int) -> torch.Tensor:
    """``True`` on each row's ``k`` largest entries: ``(N, A)`` → ``(N, A)`` bool (exactly k, ties by index)."""
    index = logits.topk(min(k, logits.shape[-1]), dim=-1).indices
    return torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, index, True)


def sample_top_k(q: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """One action per row of ``q`` ``(N, A)``, sampled from ``softmax(q)`` restricted to the row's top ``k``.

    The draw happens on the CPU with ``generator``, so a seed gives the same prompts on any device.
    """
    top = q.topk(min(k, q.shape[-1]), dim=-1)
    probs = torch.softmax(top.values.float(), dim=-1).cpu()
    choice = torch.multinomial(probs, 1, generator=generator).to(q.device)
    return top.indices.gather(-1, choice).squeeze(-1)
