"""PEZ takes its gradient at the projection and applies it to the continuous prompt."""

from __future__ import annotations

import pytest
import torch

from objectives.metrics import faith_dist, nearest_tokens, task_ce, token_nll
from objectives.problem import build_problem
from objectives.scoring import prompt_logits
from tuners import preset_config
from tuners.pez import step_gradient


@pytest.fixture(scope="module")
def setup(task_dir):
    def make(**extra):
        config = preset_config("pez", "smoke", {"task": str(task_dir), "k_shot": None, "device": "cpu", **extra})
        return config, build_problem(config)

    return make


def _off_vocabulary_prompt(problem, seed=0):
    gen = torch.Generator().manual_seed(seed)
    embeds = problem.lm.embeddings
    ids = torch.randint(0, len(embeds), (3,), generator=gen)
    return (embeds[ids] + 0.5 * torch.randn(3, embeds.shape[1], generator=gen)).requires_grad_(True)


def _manual_grad(problem, at, rows, lambda_ppl=0.0):
    ids = nearest_tokens(at.detach(), problem.lm.embeddings)[0]
    leaf = at.detach().clone().requires_grad_(True)
    loss = task_ce(problem.scorers["train"].logits(leaf, rows), problem.labels["train"][rows])
    if lambda_ppl:
        loss = loss + lambda_ppl * token_nll(prompt_logits(problem.lm, leaf[None]), ids[None])[0]
    (grad,) = torch.autograd.grad(loss, leaf)
    return grad


def test_gradient_is_taken_at_the_projection(setup):
    config, problem = setup()
    soft = _off_vocabulary_prompt(problem)
    rows = torch.arange(len(problem.labels["train"]))
    step_gradient(problem, config, soft, rows, mode="pez")
    projection = problem.lm.embeddings[nearest_tokens(soft.detach(), problem.lm.embeddings)[0]]
    at_projection = _manual_grad(problem, projection, rows)
    at_soft = _manual_grad(problem, soft, rows)
    torch.testing.assert_close(soft.grad, at_projection, atol=1e-6, rtol=1e-5)
    # The two candidates must differ, or this test could not tell them apart.
    assert (at_projection - at_soft).abs().max() > 1e-4
    assert not torch.allclose(soft.grad, at_soft, atol=1e-6)


def test_soft_tuner_takes_its_gradient_at_the_soft_prompt(setup):
    config, problem = setup()
    soft = _off_vocabulary_prompt(problem)
    rows = torch.arange(len(problem.labels["train"]))
    step_gradient(problem, config, soft, rows, mode="soft")
    torch.testing.assert_close(soft.grad, _manual_grad(problem, soft, rows), atol=1e-6, rtol=1e-5)


def test_fluency_term_enters_the_gradient(setup):
    config, problem = setup(lambda_ppl=0.7)
    soft = _off_vocabulary_prompt(problem)
    rows = torch.arange(len(problem.labels["train"]))
    step_gradient(problem, config, soft, rows, mode="pez")
    projection = problem.lm.embeddings[nearest_tokens(soft.detach(), problem.lm.embeddings)[0]]
    torch.testing.assert_close(soft.grad, _manual_grad(problem, projection, rows, lambda_ppl=0.7), atol=1e-6, rtol=1e-5)


def test_distance_term_is_taken_at_the_soft_prompt(setup):
    config, problem = setup(lambda_dist=2.0)
    soft = _off_vocabulary_prompt(problem)
    rows = torch.arange(len(problem.labels["train"]))
    step_gradient(problem, config, soft, rows, mode="pez")
    leaf = soft.detach().clone().requires_grad_(True)
    (dist_grad,) = torch.autograd.grad(2.0 * faith_dist(leaf, problem.lm.embeddings), leaf)
    projection = problem.lm.embeddings[nearest_tokens(soft.detach(), problem.lm.embeddings)[0]]
    expected = _manual_grad(problem, projection, rows) + dist_grad
    torch.testing.assert_close(soft.grad, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mode", ["pez", "soft"])
def test_the_step_loss_is_the_whole_objective(setup, mode):
    """What the finite check reads is the loss the step differentiates: the convex form and λ_dist included."""
    config, problem = setup(lambda_ppl=0.25, fluency_form="convex", lambda_dist=2.0)
    soft = _off_vocabulary_prompt(problem)
    loss = step_gradient(problem, config, soft, torch.arange(len(problem.labels["train"])), mode=mode)
    dist = faith_dist(soft.detach(), problem.lm.embeddings)
    torch.testing.assert_close(loss.loss, 0.75 * loss.ce + 0.25 * loss.nll + 2.0 * dist)


def test_convex_fluency_form_needs_a_weight_in_unit_interval(task_dir):
    from objectives.errors import ConfigError

    with pytest.raises(ConfigError, match="lambda_ppl=2.0 must be in \\[0, 1\\]"):
        preset_config("pez", "smoke", {"task": str(task_dir), "fluency_form": "convex", "lambda_ppl": 2})


@pytest.mark.parametrize("name", ["pez", "soft"])
def test_resuming_from_a_checkpoint_ends_as_an_uninterrupted_run(name, task_dir):
    from tuners import get_tuner
    from tuners.base import Checkpointing

    config = preset_config(name, "smoke", {"task": str(task_dir), "k_shot": None, "device": "cpu", "steps": 6})
    saved: list[dict] = []
    whole = get_tuner(name).run(config, checkpoint=Checkpointing(every=2, save=saved.append))
    assert [s["step"] for s in saved] == [2, 4]  # none at the end: the result is what is kept then
    for state in saved:
        resumed = get_tuner(name).run(config, checkpoint=Checkpointing(every=2, save=lambda s: None, state=state))
        assert resumed.prompt_ids == whole.prompt_ids and resumed.history == whole.history
        assert resumed.metrics == pytest.approx(whole.metrics, abs=1e-6)


def test_a_loss_that_becomes_nan_stops_the_run_at_its_step(task_dir):
    from objectives.errors import DivergedError
    from tuners import get_tuner

    config = preset_config("pez", "smoke", {"task": str(task_dir), "k_shot": None, "device": "cpu", "lr": 1e30})
    with pytest.raises(DivergedError, match=r"(loss|prompt_norm) became (nan|inf) at step 1; lower the learning rate"):
        get_tuner("pez").run(config)
