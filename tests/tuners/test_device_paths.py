"""The paths a GPU run takes, checked on the CPU (and on CUDA where present): a checkpoint restored the way the
sweep restores it reaches ``evaluate()`` on the model's device; an out-of-memory error fails the trial with a
message that names the fix; hot loops read nothing back to the host per token or per prompt position."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
import torch

from objectives.errors import UserError
from objectives.fluent import fluent_projection, sample_prompts
from objectives.memory import DeviceMemoryError
from objectives.models import load_lm
from tuners import get_tuner, preset_config
from tuners.base import Checkpointing
from tuners.rlprompt import RLPrompt
from tuners.rlprompt.policy import PolicyMLP, PromptPolicy

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
    ),
]
TUNERS = ["pez", "soft", "rlprompt"]
REPO = str(Path(__file__).resolve().parents[2])


def _config(name, task_dir, device="cpu", **extra):
    return preset_config(name, "smoke", {"task": str(task_dir), "k_shot": None, "device": device, **extra})


def _as_the_sweep_restores_it(state):
    """``sweep/trainable.py``: ``torch.save`` into a Tune checkpoint, ``torch.load(map_location="cpu")``."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, map_location="cpu", weights_only=True)


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", TUNERS)
def test_a_restored_checkpoint_reaches_evaluate_on_the_model_device(name, device, task_dir, monkeypatch):
    """The retried trial of issue 20: resumed where the run ends, so the restored best prompt is what evaluate()
    scores (no later candidate replaces it), on CUDA beside a model on CUDA."""
    tuner = get_tuner(name)
    saved = []
    tuner.run(
        _config(name, task_dir, device, steps=4, eval_every=1), checkpoint=Checkpointing(every=2, save=saved.append)
    )
    state = _as_the_sweep_restores_it(saved[0])
    assert state["step"] == 2 and all(t.device.type == "cpu" for t in _tensors(state))

    module = sys.modules["tuners.pez" if name != "rlprompt" else "tuners.rlprompt.trainer"]
    evaluate = module.evaluate
    seen = []

    def checked(problem, prompt_ids, soft=None):
        seen.append([t.device for t in (prompt_ids, soft) if t is not None])
        return evaluate(problem, prompt_ids, soft=soft)

    monkeypatch.setattr(module, "evaluate", checked)
    config = _config(name, task_dir, device, steps=2, eval_every=1)
    resumed = tuner.run(config, checkpoint=Checkpointing(every=2, save=lambda s: None, state=state))
    lm_device = load_lm(config.model, config.device).device
    assert seen and all(d == lm_device for d in seen[-1])
    uninterrupted = tuner.run(config)
    assert resumed.prompt_ids == uninterrupted.prompt_ids
    # CUDA is not bitwise reproducible by default (objectives/models.py): the two runs' first steps may differ
    # in float noise there.
    assert resumed.metrics == pytest.approx(uninterrupted.metrics, abs=1e-5 if device == "cpu" else 1e-3)


@pytest.mark.parametrize("name", TUNERS)
def test_out_of_memory_fails_the_trial_with_the_fix(name, task_dir, monkeypatch):
    config = _config(name, task_dir, batch_size=5)
    tuner = get_tuner(name)
    tuner.run(_config(name, task_dir, steps=1, eval_every=1))  # build the problem, so its scorer can be patched
    from objectives.problem import build_problem

    scorer = build_problem(config).scorers["train"]

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(scorer, "logits", oom)
    with pytest.raises(DeviceMemoryError) as info:
        tuner.run(config)
    assert isinstance(info.value, UserError)  # the sweep fails the trial without retrying it
    message = str(info.value)
    assert "out of memory on cpu with model='tiny-gpt2', eval_chunk=64, batch_size=5" in message
    assert "Tried to allocate 2.00 GiB" in message and "gpus_per_trial" in message and "eval_chunk" in message


class _HostReads:
    """Counts reads of tensor values into Python (``.item()``, ``.tolist()``, ``.cpu()``, ``bool()``, ...) made
    by this repository's code: each is a wait on the device on CUDA. On the CPU every tensor is a host tensor,
    so helpers that take host data only are named ``*_on_host`` and are not counted."""

    METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")

    def __init__(self, monkeypatch) -> None:
        self.reads: list[str] = []
        self.active = False
        for name in self.METHODS:
            original = getattr(torch.Tensor, name)

            def counted(tensor, *args, _original=original, _name=name, **kwargs):
                if self.active:
                    frame = sys._getframe(1)
                    where = frame.f_code.co_filename
                    ours = where.startswith(REPO) and not any(part in where for part in ("/tests/", "-packages/"))
                    if ours and "_on_host" not in frame.f_code.co_name:
                        self.reads.append(f"{_name} at {Path(where).name}:{frame.f_lineno}")
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)

    def __enter__(self) -> _HostReads:
        self.reads.clear()
        self.active = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.active = False


def test_rlprompt_decode_reads_nothing_per_token(tiny_lm, monkeypatch):
    policy = PromptPolicy(tiny_lm, tiny_lm, start_id=50256, n_actions=tiny_lm.vocab_size, fluent_top_k=None)
    mlp = PolicyMLP(tiny_lm.embeddings.shape[1], 32, generator=torch.Generator().manual_seed(0))
    counter = _HostReads(monkeypatch)
    for fluent in (None, 16):
        policy.fluent_top_k = fluent
        with counter:
            policy.decode(mlp, 4, 6, top_k=50, generator=torch.Generator().manual_seed(0), with_log_ppl=True)
        assert counter.reads == [], counter.reads


def test_sampled_prompts_read_nothing_per_token(tiny_lm, monkeypatch):
    counter = _HostReads(monkeypatch)
    with counter:
        sample_prompts(tiny_lm, 3, 6, generator=torch.Generator().manual_seed(0), top_k=20)
    assert counter.reads == [], counter.reads


def test_fluent_projection_reads_once_per_lm_pass_not_per_position(tiny_lm, monkeypatch):
    soft = torch.randn(6, tiny_lm.embeddings.shape[1], generator=torch.Generator().manual_seed(0))
    memo: dict = {}
    counter = _HostReads(monkeypatch)
    with counter:
        fluent_projection(tiny_lm, soft, 7, memo=memo)  # 5 LM passes (positions 1..5), each read once
    first = len(counter.reads)
    with counter:
        fluent_projection(tiny_lm, soft, 7, memo=memo)  # every prefix known: no LM pass
    # The prompt and its first token are read once a call; nothing per position.
    assert len(counter.reads) == 2, counter.reads
    assert first == 2 + 5, counter.reads
    with counter:
        fluent_projection(tiny_lm, soft, 7)  # no memo: nothing to look up on the host, nothing read
    assert counter.reads == [], counter.reads


@pytest.mark.parametrize("prompt_len", [3, 6])
def test_an_rlprompt_step_that_reports_nothing_reads_a_fixed_few_values(task_dir, prompt_len, monkeypatch):
    """Not per token, not per prompt, no metric: the step's training rows (grouped on the host by the scorer)
    and one finiteness flag per update. (``problem.train_batch`` reads the labels once a step too.)"""
    config = _config("rlprompt", task_dir, prompt_len=prompt_len, prompts_per_step=6, updates_per_step=2)
    run = RLPrompt(config)
    run.train_step()
    counter = _HostReads(monkeypatch)
    with counter:
        run._step(measure_ppl=False, report=False)
    ours = [r for r in counter.reads if not r.split(" at ")[1].startswith("problem.py")]
    assert sorted(r.split(":")[0] for r in ours) == [
        "__bool__ at trainer.py",
        "__bool__ at trainer.py",
        "tolist at scoring.py",
    ], ours
