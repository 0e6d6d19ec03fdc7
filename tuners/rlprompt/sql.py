"""RLPrompt's reward and soft Q-learning (SQL) losses as pure functions on tensors.

Shape letters: ``P`` prompts sampled in one step (the RL batch), ``T`` prompt positions (time steps), ``A``
actions (vocabulary), ``B`` training examples, ``C`` classes.

The losses follow the original's ``v2_v2r_v3_v3r`` implementation as its few-shot classification runs call
it, with no ``coefficient``: the "reversed" halves (online and target swapped) are then switched off, so the
loss is the average of the single-step (``v2``) and path-consistency (``v3``) losses, each summed over time
and averaged over prompts. Rewards are sparse: one per prompt, after its last token.
"""

from __future__ import annotations

import torch

from objectives.metrics import gap_reward


def task_rewards(
    class_logits: torch.Tensor,
    labels: torch.Tensor,
    log_ppl: torch.Tensor | None = None,
    *,
    lambda_ppl: float = 0.0,
    correct_coef: float = 200.0,
    incorrect_coef: float = 180.0,
) -> torch.Tensor:
    """Unnormalised reward of each prompt: ``gap_reward - lambda_ppl * log_ppl``, ``(P, B, C)`` → ``(P,)``.

    The interpretability term is on the gap reward's own scale (tens), before any z-scoring, so
    ``lambda_ppl`` trades reward points against nats of prompt perplexity. ``log_ppl`` is ``(P,)``.
    """
    reward = gap_reward(class_logits, labels, correct_coef=correct_coef, incorrect_coef=incorrect_coef)
    if lambda_ppl:
        if log_ppl is None:
            raise ValueError("lambda_ppl > 0 needs the prompts' log_ppl")
        reward = reward - lambda_ppl * log_ppl.to(reward)
    return reward


def shape_reward(
    values: torch.Tensor, *, old_min: float, old_max: float, new_min: float, new_max: float
) -> torch.Tensor:
    """RLPrompt's reward shaping: the affine map taking ``[old_min, old_max]`` onto ``[new_min, new_max]``.

    Values outside the old range are extrapolated, not clipped (as the original). ``(...)`` → ``(...)``.
    """
    return (values - old_min) / (old_max - old_min) * (new_max - new_min) + new_min


def zscore_on_device(values: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``objectives.metrics.zscore`` without reading a number back to the host: ``(P,)`` → ``(P,)``.

    The same values (``(x - mean) / (std + eps)``, zeros when all are equal or there is one), with the
    all-equal case chosen by ``torch.where`` on the device rather than by a host ``if``, which would wait for
    the device once per training step.
    """
    if values.numel() <= 1:
        return torch.zeros_like(values)
    centred = values - values.mean()
    scores = centred / (values.std(unbiased=False) + eps)
    return torch.where((values == values.reshape(-1)[0]).all(), torch.zeros_like(scores), scores)


def shaped_rewards(
    raw: torch.Tensor, *, old_min: float, old_max: float, new_min: float, new_max: float
) -> torch.Tensor:
    """What the SQL loss sees: ``raw`` ``(P,)`` z-scored across the step's prompts, then shaped."""
    return shape_reward(zscore_on_device(raw), old_min=old_min, old_max=old_max, new_min=new_min, new_max=new_max)


def _advantages(q: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``A_t = Q(s_t, a_t) - V(s_t)`` with ``V = logsumexp_a Q``: ``(P, T, A)``, ``(P, T)`` → ``(P, T)`` twice."""
    v = q.logsumexp(dim=-1)
    chosen = q.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    return chosen - v, v


def single_step_loss(
    q: torch.Tensor, q_target: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor
) -> torch.Tensor:
    """Per-step single-step consistency loss (the original's ``v2``), ``(P, T)``.

    ``(A_t - Â_t)²`` where ``A_t = Q_t(a_t) - V_t`` from the online Q-values ``q`` ``(P, T, A)`` and the
    target ``Â_t = V'_{t+1} - V'_t`` from the target network's ``q_target``, or ``r - V'_t`` at the last
    step. ``rewards`` is ``(P,)``. The target carries no gradient.
    """
    adv, _ = _advantages(q, actions)
    v_target = q_target.detach().logsumexp(dim=-1)
    target = torch.cat([v_target[:, 1:], rewards.detach()[:, None].to(v_target)], dim=1) - v_target
    return (adv - target).pow(2)


def path_loss(q: torch.Tensor, q_target: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """Per-step path-consistency loss (the original's ``v3``), ``(P, T)``.

    ``(Σ_{t'≥t} A_{t'} - (r - V'_t))²``: the log-probabilities of the rest of the path must add up to the
    reward's advantage over the target network's value of ``s_t``. Gradient reaches every future step.
    """
    adv, _ = _advantages(q, actions)
    to_go = adv.flip(1).cumsum(1).flip(1)
    v_target = q_target.detach().logsumexp(dim=-1)
    return (to_go - (rewards.detach()[:, None].to(v_target) - v_target)).pow(2)


def sql_loss(q: torch.Tensor, q_target: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """Scalar SQL loss: ``mean_P Σ_t (v2_t + v3_t) / 2`` for Q-values ``(P, T, A)``, actions ``(P, T)``,
    rewards ``(P,)``."""
    per_step = (single_step_loss(q, q_target, actions, rewards) + path_loss(q, q_target, actions, rewards)) / 2
    return per_step.sum(dim=1).mean()


@torch.no_grad()
def polyak_update(target: torch.nn.Module, online: torch.nn.Module, rate: float) -> None:
    """Move ``target`` towards ``online`` in place: ``θ' ← (1 - rate)·θ' + rate·θ`` for every parameter."""
    for param_t, param in zip(target.parameters(), online.parameters(), strict=True):
        param_t.mul_(1.0 - rate).add_(param, alpha=rate)
