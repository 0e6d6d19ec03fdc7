"""What the benchmarks share: a GPT-2-small-shaped model and the benchmark data."""

from __future__ import annotations

from pathlib import Path

import torch

from objectives.models import LanguageModel, load_lm, load_tokenizer
from objectives.tasks import Task, load_task

SST2 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fewshot" / "sst-2" / "16-100"


def bench_lm(spec: str) -> LanguageModel:
    """``gpt2-shaped``: GPT-2 small's architecture (124M) with random weights and the real tokenizer, the
    model the originals were timed with (README, "Benchmarks"); anything else is a model spec."""
    if spec != "gpt2-shaped":
        return load_lm(spec, device="cpu")
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config()).eval().requires_grad_(False)
    return LanguageModel(
        spec="gpt2-shaped", model=model, tokenizer=load_tokenizer("gpt2-tokenizer"), device=torch.device("cpu")
    )


def bench_task() -> tuple[Task, str]:
    """SST-2 16-shot (seed 100) from ../shared/data when present, else Rotten Tomatoes 16-shot."""
    if SST2.is_dir():
        return load_task(str(SST2), num_classes=2, n_test=1), "SST-2 16-shot (16-100)"
    return load_task("rotten-tomatoes", num_classes=2, k_shot=16, n_test=1), "Rotten Tomatoes k=16"
