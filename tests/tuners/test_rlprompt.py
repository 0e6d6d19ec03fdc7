"""RLPrompt: reward, z-score, shaping, soft Q-learning losses and Polyak update checked by hand; the policy,
fluent restriction, log_ppl from the decode, batched reward, config errors, exact checkpoint/resume (files and the
tuner protocol's ``Checkpointing``) and the divergence stop."""

from __future__ import annotations

import io
import math
from types import SimpleNamespace

import pytest
import torch

from objectives.errors import ConfigError, DivergedError
from objectives.metrics import token_nll, zscore
from objectives.scoring import prompt_logits
from tuners import get_tuner, preset_config
from tuners.base import Checkpointing
from tuners.rlprompt import CHECKPOINT_NAME, RLPrompt, RLPromptConfig
from tuners.rlprompt.policy import PolicyMLP, PromptPolicy, start_token_id
from tuners.rlprompt.sql import (
    path_loss,
    polyak_update,
    shape_reward,
    shaped_rewards,
    single_step_loss,
    sql_loss,
    task_rewards,
)
from tuners.rlprompt.trainer import _shared_vocabulary

LN = math.log


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors here are tiny: thread start-up and sync would cost more than the work (badly so on a busy
    machine), so this module runs on one thread and restores the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _config(task_dir, **extra) -> RLPromptConfig:
    values = {"task": str(task_dir), "k_shot": None, "device": "cpu", **extra}
    return preset_config("rlprompt", "smoke", values)


# --- reward, z-score, shaping -------------------------------------------------------------------------------


def test_gap_reward_with_ppl_term_zscore_and_shaping_by_hand():
    # Logits (0, ln 3) give probabilities (1/4, 3/4). Prompt 0: example 0 (label 1) has gap 3/4 - 1/4 = 0.5,
    # correct, reward 200 * 0.5 = 100; example 1 (label 0) has gap -0.5, 180 * -0.5 = -90; mean 5.
    # Prompt 1: example 0 gap -0.5 -> -90; example 1 logits (0, 0), a tie: gap 0 -> 0; mean -45.
    logits = torch.tensor(
        [
            [[0.0, LN(3)], [0.0, LN(3)]],
            [[LN(3), 0.0], [0.0, 0.0]],
        ]
    )
    labels = torch.tensor([1, 0])
    torch.testing.assert_close(task_rewards(logits, labels), torch.tensor([5.0, -45.0]))
    # lambda_ppl = 10 on log_ppl (2, 1): 5 - 20 = -15 and -45 - 10 = -55, on the reward's own scale.
    raw = task_rewards(logits, labels, torch.tensor([2.0, 1.0]), lambda_ppl=10.0)
    torch.testing.assert_close(raw, torch.tensor([-15.0, -55.0]))
    # z-score across the prompts: mean -35, population std 20 -> (+1, -1); shaped [0,1] -> [0,5]: (5, -5).
    torch.testing.assert_close(zscore(raw), torch.tensor([1.0, -1.0]))
    shaped = shaped_rewards(raw, old_min=0.0, old_max=1.0, new_min=0.0, new_max=5.0)
    torch.testing.assert_close(shaped, torch.tensor([5.0, -5.0]))
    # The module's default range [0, 100] -> [-10, 10]: 1 -> 1/100 * 20 - 10 = -9.8.
    torch.testing.assert_close(
        shape_reward(torch.tensor([1.0, 100.0]), old_min=0, old_max=100, new_min=-10, new_max=10),
        torch.tensor([-9.8, 10.0]),
    )


def test_zscore_by_hand():
    # mean 2.5, population variance (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25.
    std = math.sqrt(1.25)
    expected = torch.tensor([-1.5 / std, -0.5 / std, 0.5 / std, 1.5 / std])
    torch.testing.assert_close(zscore(torch.tensor([1.0, 2.0, 3.0, 4.0])), expected)
    assert zscore(torch.tensor([3.0, 3.0, 3.0])).tolist() == [0.0, 0.0, 0.0]


def test_ppl_term_needs_log_ppl():
    with pytest.raises(ValueError, match="log_ppl"):
        task_rewards(torch.zeros(1, 1, 2), torch.tensor([0]), lambda_ppl=1.0)


# --- soft Q-learning ---------------------------------------------------------------------------------------


def _two_step_example():
    """One prompt, 2 steps, 3 actions, reward 2.

    Online Q:  step 0 (0, ln 2, 0), action 1:  V0 = ln 4, A0 = ln 2 - ln 4 = -ln 2
               step 1 (ln 3, 0, 0), action 0:  V1 = ln 5, A1 = ln 3 - ln 5
    Target Q:  step 0 (0, 0, 0):               V'0 = ln 3
               step 1 (ln 2, ln 2, 0):         V'1 = ln 5
    """
    q = torch.tensor([[[0.0, LN(2), 0.0], [LN(3), 0.0, 0.0]]], requires_grad=True)
    q_target = torch.tensor([[[0.0, 0.0, 0.0], [LN(2), LN(2), 0.0]]], requires_grad=True)
    actions = torch.tensor([[1, 0]])
    rewards = torch.tensor([2.0])
    return q, q_target, actions, rewards


def test_single_step_loss_by_hand():
    q, q_target, actions, rewards = _two_step_example()
    a0, a1 = -LN(2), LN(3) - LN(5)
    # step 0: A0 against V'1 - V'0; step 1 (last): A1 against r - V'1.
    expected = [(a0 - (LN(5) - LN(3))) ** 2, (a1 - (2.0 - LN(5))) ** 2]
    torch.testing.assert_close(single_step_loss(q, q_target, actions, rewards), torch.tensor([expected]))


def test_path_consistency_loss_by_hand():
    q, q_target, actions, rewards = _two_step_example()
    a0, a1 = -LN(2), LN(3) - LN(5)
    # step t: the advantages still to come, A_t + ... + A_last, against r - V'_t.
    expected = [(a0 + a1 - (2.0 - LN(3))) ** 2, (a1 - (2.0 - LN(5))) ** 2]
    torch.testing.assert_close(path_loss(q, q_target, actions, rewards), torch.tensor([expected]))


def test_sql_loss_mixes_both_sums_over_steps_and_averages_over_prompts():
    q, q_target, actions, rewards = _two_step_example()
    a0, a1 = -LN(2), LN(3) - LN(5)
    v2 = (a0 - (LN(5) - LN(3))) ** 2 + (a1 - (2.0 - LN(5))) ** 2
    v3 = (a0 + a1 - (2.0 - LN(3))) ** 2 + (a1 - (2.0 - LN(5))) ** 2
    loss = sql_loss(q, q_target, actions, rewards)
    assert float(loss.detach()) == pytest.approx((v2 + v3) / 2, rel=1e-6)
    # A second prompt with reward 0 instead of 2 enters the mean over prompts.
    v2_0 = (a0 - (LN(5) - LN(3))) ** 2 + (a1 - (0.0 - LN(5))) ** 2
    v3_0 = (a0 + a1 - (0.0 - LN(3))) ** 2 + (a1 - (0.0 - LN(5))) ** 2
    both = sql_loss(q.repeat(2, 1, 1), q_target.repeat(2, 1, 1), actions.repeat(2, 1), torch.tensor([2.0, 0.0]))
    assert float(both.detach()) == pytest.approx(((v2 + v3) / 2 + (v2_0 + v3_0) / 2) / 2, rel=1e-6)
    # Targets are constants: the gradient reaches the online Q-values only.
    loss.backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert q_target.grad is None


def test_polyak_update_by_hand():
    online, target = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    with torch.no_grad():
        online.weight.fill_(3.0), online.bias.fill_(-1.0)
        target.weight.fill_(1.0), target.bias.fill_(1.0)
    polyak_update(target, online, 0.25)  # 0.75 * target + 0.25 * online
    assert target.weight.item() == pytest.approx(1.5) and target.bias.item() == pytest.approx(0.5)
    assert online.weight.item() == 3.0  # the online network is untouched


# --- policy -----------------------------------------------------------------------------------------------


def _policy(lm, task_lm=None, fluent_top_k=None, seed=0):
    mlp = PolicyMLP(lm.embeddings.shape[1], 32, generator=torch.Generator().manual_seed(seed))
    policy = PromptPolicy(
        lm,
        task_lm or lm,
        start_id=start_token_id(lm.tokenizer),
        n_actions=lm.vocab_size,
        fluent_top_k=fluent_top_k,
    )
    return policy, mlp


def test_policy_starts_at_the_lm_distribution(tiny_lm):
    policy, mlp = _policy(tiny_lm)
    rollout = policy.decode(mlp, 2, 3, top_k=50, generator=torch.Generator().manual_seed(0))
    q = policy.q_values(mlp, rollout)
    # Q = log p_LM + W·mlp(h) with a near-zero MLP: the LM's log-probabilities, and soft values V = 0.
    start = torch.full((2, 1), start_token_id(tiny_lm.tokenizer))
    logits = tiny_lm.model(torch.cat([start, rollout.ids[:, :-1]], dim=1)).logits
    torch.testing.assert_close(q, torch.log_softmax(logits, -1), atol=1e-3, rtol=0)
    torch.testing.assert_close(q.logsumexp(-1), torch.zeros(2, 3), atol=1e-3, rtol=0)


def test_sampling_stays_in_the_policy_top_k_and_greedy_is_argmax(tiny_lm):
    policy, mlp = _policy(tiny_lm)
    rollout = policy.decode(mlp, 6, 4, top_k=3, generator=torch.Generator().manual_seed(1))
    top = policy.q_values(mlp, rollout).topk(3, dim=-1).indices
    assert bool((top == rollout.ids[..., None]).any(-1).all())
    greedy = policy.decode(mlp, 1, 4)
    assert torch.equal(greedy.ids[0], policy.q_values(mlp, greedy)[0].argmax(-1))


def test_sampling_draws_what_multinomial_draws_with_the_same_generator():
    """The decode draws its randomness up front (no host round trip per token) and still picks, row by row and
    step by step, what torch.multinomial on the CPU picks with the same generator: seeds keep their prompts."""
    from tuners.rlprompt.policy import sample_top_k

    def multinomial(q, k, generator):
        top = q.topk(min(k, q.shape[-1]), dim=-1)
        probs = torch.softmax(top.values.float(), dim=-1)
        probs[~torch.isfinite(probs).all(dim=-1)] = 1.0 / probs.shape[-1]  # a diverged row: uniform
        return top.indices.gather(-1, torch.multinomial(probs, 1, generator=generator)).squeeze(-1)

    for seed in range(10):
        q = 3 * torch.randn(8, 300, generator=torch.Generator().manual_seed(100 + seed))
        q[2] = float("nan")
        old, new = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        for k in (256, 7, 300, 1000):
            assert torch.equal(sample_top_k(q, k, new), multinomial(q, k, old))
        assert torch.equal(new.get_state(), old.get_state())


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_dir):
    """A policy LM distinct from the task LM, with the same vocabulary."""
    from objectives.models import load_lm

    return load_lm(tiny_llama_dir, device="cpu")


def _task_lm_top_k(task_lm, ids, k):
    """For each prompt position, the task LM's own top-k next tokens after the start token and the prefix."""
    start = torch.full((ids.shape[0], 1), start_token_id(task_lm.tokenizer))
    logits = task_lm.model(torch.cat([start, ids[:, :-1]], dim=1)).logits
    return logits.topk(k, dim=-1).indices


@pytest.mark.parametrize("shared", [True, False], ids=["policy-is-task-lm", "separate-policy-lm"])
def test_fluent_mode_samples_only_the_task_lm_top_k(tiny_lm, tiny_llama, shared):
    k = 3
    policy, mlp = _policy(tiny_lm if shared else tiny_llama, task_lm=tiny_lm, fluent_top_k=k)
    with torch.no_grad():  # push the MLP far from zero so the restriction, not the prior, decides
        for p in mlp.parameters():
            p.normal_(0, 1, generator=torch.Generator().manual_seed(3))
    rollout = policy.decode(mlp, 8, 4, top_k=256, generator=torch.Generator().manual_seed(2))
    allowed = _task_lm_top_k(tiny_lm, rollout.ids, k)
    assert bool((allowed == rollout.ids[..., None]).any(-1).all())
    # Without the restriction the same policy leaves the task LM's top-k.
    free, _ = _policy(tiny_lm if shared else tiny_llama, task_lm=tiny_lm)
    unrestricted = free.decode(mlp, 8, 4, top_k=256, generator=torch.Generator().manual_seed(2))
    outside = _task_lm_top_k(tiny_lm, unrestricted.ids, k)
    assert not bool((outside == unrestricted.ids[..., None]).any(-1).all())
    # Q-values exist for the k allowed actions only, so the losses only see the restricted action set.
    q = policy.q_values(mlp, rollout)
    assert q.shape == (8, 4, k) and bool(torch.isfinite(q).all())
    assert torch.equal(policy.token_ids(rollout, rollout.choice), rollout.ids)


def test_fluent_q_values_are_the_dense_ones_at_the_allowed_actions(tiny_lm):
    policy, mlp = _policy(tiny_lm, fluent_top_k=4)
    with torch.no_grad():  # an MLP far from zero, so its part of the Q-values shows
        for p in mlp.parameters():
            p.normal_(0, 0.1, generator=torch.Generator().manual_seed(5))
    rollout = policy.decode(mlp, 3, 3, top_k=256, generator=torch.Generator().manual_seed(0))
    # The whole-vocabulary Q-values at the same states, from one full pass.
    start = torch.full((3, 1), start_token_id(tiny_lm.tokenizer))
    hidden = tiny_lm.body(input_ids=torch.cat([start, rollout.ids[:, :-1]], dim=1)).last_hidden_state
    dense = torch.log_softmax(tiny_lm.head(hidden), -1) + mlp(hidden) @ tiny_lm.head.weight.T
    torch.testing.assert_close(policy.q_values(mlp, rollout), dense.gather(-1, rollout.actions), atol=1e-4, rtol=0)


@pytest.mark.parametrize("fluent_top_k", [None, 5], ids=["free", "fluent"])
@pytest.mark.parametrize("shared", [True, False], ids=["policy-is-task-lm", "separate-policy-lm"])
def test_decode_gives_the_task_lm_log_ppl(tiny_lm, tiny_llama, shared, fluent_top_k):
    # The decode's log_ppl rows read the prompt without the start token: interp/log_ppl exactly, as a separate
    # pass over the prompts alone computes it (objectives.evaluation.log_ppl).
    policy, mlp = _policy(tiny_lm if shared else tiny_llama, task_lm=tiny_lm, fluent_top_k=fluent_top_k)
    rollout = policy.decode(mlp, 5, 4, top_k=256, generator=torch.Generator().manual_seed(4), with_log_ppl=True)
    expected = token_nll(prompt_logits(tiny_lm, tiny_lm.embeddings[rollout.ids]), rollout.ids)
    assert rollout.log_ppl is not None
    torch.testing.assert_close(rollout.log_ppl, expected, atol=1e-4, rtol=1e-5)
    # Asked for nothing, the decode carries no log_ppl rows.
    assert policy.decode(mlp, 2, 4).log_ppl is None


def test_greedy_rows_of_a_sampled_decode_are_the_greedy_prompt(tiny_lm):
    policy, mlp = _policy(tiny_lm)
    greedy = policy.decode(mlp, 1, 4).ids[0]
    sampled = policy.decode(mlp, 6, 4, top_k=50, generator=torch.Generator().manual_seed(0), greedy_rows=1)
    assert torch.equal(sampled.ids[0], greedy)
    assert not bool((sampled.ids[1:] == greedy).all(dim=1).all())


# --- the training run ---------------------------------------------------------------------------------------


def test_reward_is_one_batched_call_over_all_prompts_and_examples(task_dir, monkeypatch):
    config = _config(task_dir, prompts_per_step=4, batch_size=6, lambda_ppl=0.5)
    run = RLPrompt(config)
    scorer = run.problem.scorers["train"]
    calls = []
    original = scorer.logits
    monkeypatch.setattr(scorer, "logits", lambda prompt, rows=None, **kw: calls.append(rows) or original(prompt, rows))
    metrics = run.train_step()
    assert len(calls) == 1 and calls[0].shape == (6,)
    assert {"train/reward", "train/loss", "train/distinct"} <= set(metrics)
    assert 0.25 <= metrics["train/distinct"] <= 1.0

    ids = torch.tensor([[11, 22, 33], [44, 55, 66]])
    rows = torch.tensor([0, 3, 5])
    reward, gap, _, nll = run._rewards(ids, rows)
    # Same gap rewards as scoring each prompt alone the slow way, and the ppl term subtracted before z-scoring.
    embeds = run.problem.lm.embeddings[ids].float()
    slow = torch.stack([scorer.uncached_suffix_logits(p, rows) for p in embeds])
    torch.testing.assert_close(gap, task_rewards(slow, run.problem.labels["train"][rows]), atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(reward, gap - 0.5 * nll)


def test_repeated_prompts_are_scored_once(task_dir, monkeypatch):
    run = RLPrompt(_config(task_dir, lambda_ppl=0.5))
    scorer = run.problem.scorers["train"]
    shapes = []
    original = scorer.logits
    monkeypatch.setattr(
        scorer, "logits", lambda prompt, rows=None, **kw: shapes.append(prompt.shape) or original(prompt, rows)
    )
    ids = torch.tensor([[11, 22, 33], [44, 55, 66], [11, 22, 33], [11, 22, 33]])
    rows = torch.tensor([0, 2, 4])
    reward, gap, acc, nll = run._rewards(ids, rows)
    assert shapes == [(2, 3, run.problem.lm.embeddings.shape[1])]  # two distinct prompts
    assert reward[0] == reward[2] == reward[3] and gap[0] == gap[3] and acc[0] == acc[2] and nll[0] == nll[3]
    alone, _, _, _ = run._rewards(ids[1:2], rows)
    torch.testing.assert_close(reward[1:2], alone, atol=1e-4, rtol=1e-5)


def test_train_step_options(task_dir):
    # updates_per_step: that many Adam steps per step on its rewarded prompts.
    run = RLPrompt(_config(task_dir, updates_per_step=3))
    run.train_step()
    run.train_step()
    assert all(int(s["step"]) == 6 for s in run.optimizer.state.values())
    # include_greedy: the step's first prompt is the policy's greedy prompt, and its standing is reported.
    run = RLPrompt(_config(task_dir, include_greedy=True))
    greedy = run.greedy_prompt()
    rollouts = []
    decode = run.policy.decode
    run.policy.decode = lambda *a, **kw: rollouts.append(decode(*a, **kw)) or rollouts[-1]
    metrics = run.train_step()
    assert torch.equal(rollouts[0].ids[0], greedy)
    assert math.isfinite(metrics["train/greedy_z"])


def test_an_unchanged_greedy_prompt_is_not_scored_again(task_dir, monkeypatch):
    run = RLPrompt(_config(task_dir))
    scorer = run.problem.scorers["dev"]
    calls = []
    original = scorer.logits
    monkeypatch.setattr(scorer, "logits", lambda prompt, rows=None, **kw: calls.append(1) or original(prompt, rows))
    first = run.evaluate_dev()
    assert run.evaluate_dev() == first and len(calls) == 1


def test_checkpoint_resume_gives_the_uninterrupted_result(task_dir, tmp_path):
    # batch_size below the 8 training examples, so the resumed run must also restore the example sampler.
    values = {"steps": 4, "eval_every": 1, "batch_size": 5}
    uninterrupted = RLPrompt(_config(task_dir, **values))
    full = uninterrupted.train()

    config = _config(task_dir, **values, checkpoint_dir=str(tmp_path), checkpoint_every=2)

    class Stop(Exception):
        pass

    def stop_at_2(step, metrics):
        if step == 2:
            raise Stop

    with pytest.raises(Stop):
        RLPrompt(config).train(report=stop_at_2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]  # atomic: no temporary left

    fresh = RLPrompt(config)
    resumed = fresh.train(resume_from=tmp_path)
    assert resumed.prompt_ids == full.prompt_ids
    assert resumed.metrics == full.metrics
    assert resumed.steps == full.steps == 4
    assert [s for s, _ in resumed.history] == [1, 2, 3, 4]
    assert resumed.history == full.history
    for key in ("mlp", "target_mlp"):
        for name, tensor in uninterrupted.state_dict()[key].items():
            assert torch.equal(tensor, fresh.state_dict()[key][name]), (key, name)


def test_resume_refuses_another_configuration(task_dir, tmp_path):
    run = RLPrompt(_config(task_dir, steps=1))
    run.train_step()
    run.evaluate_dev()
    path = run.save(tmp_path / "ckpt.pt")
    with pytest.raises(ConfigError, match="lr=0.1 but this run has lr=0.5"):
        RLPrompt(_config(task_dir, steps=1, lr=0.5)).load(path)
    with pytest.raises(ConfigError, match="no such checkpoint"):
        RLPrompt(_config(task_dir, steps=1)).load(tmp_path / "missing.pt")
    RLPrompt(_config(task_dir, steps=3)).load(path)  # a longer budget is a valid resume


def _through_torch_save(state):
    """What the sweep's checkpoint does to a state: ``torch.save`` and ``torch.load(weights_only=True)``."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_protocol_checkpoint_resume_gives_the_uninterrupted_result(task_dir):
    tuner = get_tuner("rlprompt")
    config = _config(task_dir, steps=5, eval_every=1, batch_size=5)
    full = tuner.run(config)

    class Stop(Exception):
        pass

    events = []
    saved = []

    def save(state):
        events.append(("save", state["step"]))
        saved.append(state)

    def report(step, metrics):
        events.append(("report", step))
        if step == 3:
            raise Stop

    with pytest.raises(Stop):
        tuner.run(config, report=report, checkpoint=Checkpointing(every=2, save=save))
    # Saved every 2 steps, after that step's report.
    assert events == [("report", 1), ("report", 2), ("save", 2), ("report", 3)]
    # The saved state is a copy: the run went on to step 3 after saving it, without changing it.
    assert saved[0]["step"] == 2 and saved[0]["optimizer"]["state"][0]["step"] == 2

    later = []
    resumed = tuner.run(
        config,
        report=lambda step, metrics: later.append(step),
        checkpoint=Checkpointing(every=2, save=saved.append, state=_through_torch_save(saved[0])),
    )
    assert later == [3, 4, 5]
    assert resumed.prompt_ids == full.prompt_ids
    assert resumed.metrics == full.metrics
    assert resumed.history == full.history and resumed.steps == 5
    assert [s["step"] for s in saved] == [2, 4]


def test_divergence_stops_at_the_step_with_a_clear_error(task_dir):
    # lr=1e30: step 1's update throws the MLP's weights to ~1e30, so step 2's loss is no longer finite.
    reported = []
    with pytest.raises(DivergedError, match=r"loss became (nan|inf) at step 2"):
        get_tuner("rlprompt").run(
            _config(task_dir, lr=1e30, steps=6, eval_every=1), report=lambda step, metrics: reported.append(step)
        )
    assert reported == [1]
    # A diverged step does not update: the MLP holds what step 1 left.
    run = RLPrompt(_config(task_dir, lr=1e30))
    run.train_step()
    before = {k: v.clone() for k, v in run.mlp.state_dict().items()}
    with pytest.raises(DivergedError, match="at step 2"):
        run.train_step()
    assert run.step == 1
    assert all(torch.equal(v, run.mlp.state_dict()[k]) for k, v in before.items())


# --- configuration -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"prompts_per_step": 1}, "prompts_per_step=1 must be >= 2"),
        ({"lr": 0.0}, "lr=0.0 must be > 0"),
        ({"polyak": 0.0}, "polyak=0.0 must be in (0, 1]"),
        ({"polyak": 1.5}, "polyak=1.5 must be in (0, 1]"),
        ({"top_k": 0}, "top_k=0 must be >= 1"),
        ({"fluent_top_k": -1}, "fluent_top_k=-1 must be >= 0"),
        ({"mlp_hidden": 0}, "mlp_hidden=0 must be >= 1"),
        ({"lambda_ppl": -1.0}, "lambda_ppl=-1.0 must be >= 0"),
        ({"grad_clip": -1.0}, "grad_clip=-1.0 must be >= 0"),
        ({"reward_incorrect": 0.0}, "reward_incorrect=0.0 must be > 0"),
        ({"shaping_old_max": 0.0}, "shaping_old_max=0.0 must be > shaping_old_min=0.0"),
        ({"shaping_new_max": -5.0}, "shaping_new_max=-5.0 must be > shaping_new_min=0.0"),
        ({"checkpoint_every": 5}, "checkpoint_every=5 needs checkpoint_dir"),
        ({"checkpoint_every": -1}, "checkpoint_every=-1 must be >= 0"),
        ({"steps": 0}, "steps=0 must be >= 1"),
        ({"updates_per_step": 0}, "updates_per_step=0 must be >= 1"),
    ],
)
def test_bad_config_is_a_clear_error(values, message):
    with pytest.raises(ConfigError) as err:
        RLPromptConfig(**values)
    assert message in str(err.value)


def test_policy_with_another_vocabulary_is_refused(tiny_lm):
    class Tok:
        def __init__(self, vocab):
            self.vocab = vocab

        def get_vocab(self):
            return self.vocab

        def __len__(self):
            return len(self.vocab)

    task = SimpleNamespace(tokenizer=Tok({"a": 0, "b": 1}), vocab_size=2)
    other = SimpleNamespace(tokenizer=Tok({"a": 1, "b": 0}), vocab_size=2)
    config = RLPromptConfig(policy_model="other-lm")
    with pytest.raises(ConfigError, match="policy_model='other-lm' .* different vocabularies"):
        _shared_vocabulary(config, task, other)
    assert _shared_vocabulary(config, task, SimpleNamespace(tokenizer=Tok({"a": 0, "b": 1}), vocab_size=2)) == 2
