"""Shared fixtures: a tiny random GPT-2 with the real GPT-2 tokenizer, and tiny LM-BFF style task folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never touch the model hub: a hub name must fail fast instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

POSITIVE = [
    "a warm , funny and moving film",
    "one of the best movies of the year",
    "beautifully acted and wonderfully written",
    "an absolute delight from start to finish",
    "smart , touching and great fun",
    "the cast is superb",
]
NEGATIVE = [
    "a dull , lifeless mess",
    "the worst film i have seen in years",
    "boring , predictable and far too long",
    "an ugly and tedious waste of time",
    "the plot makes no sense at all",
    "painfully bad acting",
]


def write_tsv(path: Path, rows: list[tuple[str, int]]) -> None:
    path.write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))


@pytest.fixture(scope="session")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small binary sentiment task folder: 4 train, 4 dev, 4 test examples per class."""
    folder = tmp_path_factory.mktemp("data") / "sentiment" / "tiny"
    folder.mkdir(parents=True)
    pos, neg = [(s, 1) for s in POSITIVE], [(s, 0) for s in NEGATIVE]
    write_tsv(folder / "train.tsv", pos[:2] + neg[:2] + pos[4:] + neg[4:])
    write_tsv(folder / "dev.tsv", pos[2:4] + neg[2:4])
    write_tsv(folder / "test.tsv", pos[:3] + neg[:3])
    return folder


@pytest.fixture(scope="session")
def tiny_lm():
    from objectives.models import load_lm

    return load_lm("tiny-gpt2", device="cpu")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random Llama (rotary positions, grouped-query attention) with the GPT-2 tokenizer, as a folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from objectives.models import load_tokenizer

    tok = load_tokenizer("gpt2-tokenizer")
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def local_ray():
    """One embedded Ray on loopback for the whole session (starting Ray costs seconds)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield ray
    ray.shutdown()
