"""Resolve a model spec to a frozen causal LM and its tokenizer, cached per process.

Specs resolve in this order: a local folder; a named offline asset (``smollm2-135m``, ``tiny-gpt2``); a hub
name, only where the hub is reachable. ``trust_remote_code`` is never enabled.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from objectives import assets
from objectives.errors import UserError

logger = logging.getLogger(__name__)

# Assets that are models (``gpt2-tokenizer`` is a tokenizer only; ``tiny-gpt2`` pairs it with random weights).
MODEL_ASSETS = ("smollm2-135m", "tiny-gpt2")
TOKENIZER_ASSETS = ("gpt2-tokenizer",)


class ModelSpecError(UserError, ValueError):
    """A model spec that is neither a folder, an offline asset nor reachable on the hub."""


@dataclass(frozen=True)
class LanguageModel:
    """A frozen causal LM with the handles the objectives need.

    ``embeddings`` is the input embedding matrix ``E`` of shape ``(vocab, d_model)``; ``body`` maps input
    embeddings to final hidden states (final norm applied); ``head`` maps hidden states to vocabulary logits.
    """

    spec: str
    model: nn.Module
    tokenizer: object
    device: torch.device

    @property
    def body(self) -> nn.Module:
        return self.model.base_model

    @property
    def head(self) -> nn.Module:
        return self.model.get_output_embeddings()

    @property
    def embeddings(self) -> torch.Tensor:
        return self.model.get_input_embeddings().weight

    @property
    def vocab_size(self) -> int:
        return int(self.embeddings.shape[0])

    def autocast(self) -> torch.autocast:
        """bf16 autocast on CUDA; a disabled context on CPU, where fp32 is both faster and exact."""
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda")


DOCUMENT_BOUNDARY = "<|endoftext|>"


def start_token_id(tokenizer: object) -> int:
    """The token a prompt is generated from, as if it opened a new document.

    ``<|endoftext|>`` where the vocabulary has it (GPT-2's EOS; SmolLM2's id 0, whose BOS ``<|im_start|>``
    would make the next token a chat role), else BOS, else EOS.
    """
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    if DOCUMENT_BOUNDARY in vocab:
        return int(vocab[DOCUMENT_BOUNDARY])
    for candidate in (getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if candidate is not None:
            return int(candidate)
    raise ValueError(
        f"{type(tokenizer).__name__} has neither <|endoftext|>, a BOS nor an EOS token to start prompts from"
    )


def select_device(requested: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cpu``/``cuda``/``cuda:N`` are taken as given."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as err:
        raise ModelSpecError(f"device={requested!r} is not a device; use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelSpecError(f"device={requested!r} but CUDA is not available here; use device=auto or device=cpu")
    return device


_CACHE: dict[tuple[str, str], LanguageModel] = {}
_LOCK = threading.Lock()


def load_lm(spec: str, device: str = "auto") -> LanguageModel:
    """Load (once per process) the frozen LM named by ``spec`` onto ``device``.

    The cache is keyed by ``(spec, device)``: later trials in the same Ray worker reuse the loaded weights.
    Nothing about a run's configuration is stored here; the model is frozen and shared read-only.
    """
    dev = select_device(device)
    key = (spec, str(dev))
    with _LOCK:
        if key not in _CACHE:
            model, tokenizer = _resolve(spec)
            model.to(dev).eval().requires_grad_(False)
            _CACHE[key] = LanguageModel(spec=spec, model=model, tokenizer=tokenizer, device=dev)
        return _CACHE[key]


def load_tokenizer(spec: str) -> object:
    """The tokenizer alone (cheap; used to validate verbalizers before any model is loaded)."""
    if spec in TOKENIZER_ASSETS or spec == "tiny-gpt2":
        return _gpt2_tokenizer()
    from transformers import AutoTokenizer

    folder = _asset_or_folder(spec)
    if folder is None and os.sep in spec and (spec.startswith((".", "/", "~")) or spec.count("/") > 1):
        raise ModelSpecError(_unknown_message(spec, f"the folder {spec!r} does not exist"))
    try:
        return AutoTokenizer.from_pretrained(str(folder) if folder else spec, trust_remote_code=False)
    except (OSError, ValueError) as err:
        where = f"the folder {str(folder)!r} holds no tokenizer" if folder else "the hub did not provide it"
        raise ModelSpecError(_unknown_message(spec, f"{where} ({type(err).__name__})")) from err


def _gpt2_tokenizer() -> object:
    from transformers import GPT2TokenizerFast

    return GPT2TokenizerFast.from_pretrained(str(assets.gpt2_tokenizer_dir()))


def tiny_gpt2(seed: int = 0, n_layer: int = 2, n_embd: int = 64, n_head: int = 2) -> nn.Module:
    """A randomly initialised GPT-2 with GPT-2's real vocabulary, for tests and the smoke preset."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=256)
    # Weight init draws from the global RNG; fork it so that loading a model never reseeds a caller.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT2LMHeadModel(config)


def _asset_or_folder(spec: str) -> Path | None:
    if Path(spec).expanduser().is_dir():
        return Path(spec).expanduser()
    if spec == "smollm2-135m":
        return assets.smollm2_dir()
    return None


def _resolve(spec: str) -> tuple[nn.Module, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec == "tiny-gpt2":
        return tiny_gpt2(), _gpt2_tokenizer()
    folder = _asset_or_folder(spec)
    if folder is not None:
        logger.info("loading %s from %s", spec, folder)
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, trust_remote_code=False)
        return model, AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    if spec in TOKENIZER_ASSETS:
        raise ModelSpecError(f"model {spec!r} is a tokenizer asset, not a model; model assets: {MODEL_ASSETS}")
    looks_like_path = os.sep in spec and (spec.startswith((".", "/", "~")) or spec.count("/") > 1)
    if looks_like_path:
        raise ModelSpecError(_unknown_message(spec, f"the folder {spec!r} does not exist"))
    try:
        model = AutoModelForCausalLM.from_pretrained(spec, dtype=torch.float32, trust_remote_code=False)
        return model, AutoTokenizer.from_pretrained(spec, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise ModelSpecError(_unknown_message(spec, f"the hub did not provide it ({type(err).__name__})")) from err


def _unknown_message(spec: str, why: str) -> str:
    return (
        f"model {spec!r} is neither a local folder, an offline asset nor reachable: {why}. "
        f"Offline model assets: {', '.join(MODEL_ASSETS)}; or pass the path of a Hugging Face model folder."
    )
