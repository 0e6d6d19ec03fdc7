"""Resolve a model spec to a frozen causal LM and its tokenizer, cached per process.

Specs resolve in this order: a local folder; a named offline asset (``smollm2-135m``, ``tiny-gpt2``); a hub
name, only where the hub is reachable. ``trust_remote_code`` is never enabled.

Precision, by device (``LanguageModel.compute_dtype``):

- CPU: everything fp32, no autocast (fp32 is both faster and exact there).
- CUDA: the body's matrix products in bf16 under autocast, with the weights autocast would cast on every pass
  (those of ``nn.Linear`` and GPT-2's ``Conv1D`` layers) cast to bf16 once at load: autocast caches casts
  only for weights that need gradients, so a frozen fp32 body was re-cast on every pass (about 4x the weight
  traffic of a short pass). Norms, the input embeddings and the output head stay fp32; the head and every
  log-softmax run in fp32 (``LanguageModel.head_logits``), so class margins, rewards and ``interp/log_ppl``
  are not rounded to bf16.

Determinism: on the CPU a run is bitwise reproducible for its configuration (same threads, same torch). On
CUDA it is not by default (fused attention backward and atomics-based reductions vary run to run, and CPU and
GPU chunk their reductions differently). Setting ``PROMPTSWEEP_DETERMINISTIC=1`` in a worker's environment
makes models loaded on CUDA switch torch to deterministic algorithms (``torch.use_deterministic_algorithms``,
cuBLAS workspace config, the math attention kernel): bitwise repeatable on one GPU model and software stack,
at some speed cost; off by default.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


DETERMINISTIC_ENV = "PROMPTSWEEP_DETERMINISTIC"


@dataclass(frozen=True)
class LanguageModel:
    """A frozen causal LM with the handles the objectives need.

    ``embeddings`` is the input embedding matrix ``E`` of shape ``(vocab, d_model)``; ``body`` maps input
    embeddings to final hidden states (final norm applied); ``head`` maps hidden states to vocabulary logits
    (use ``head_logits`` for fp32 logits on every device). ``compute_dtype`` is the dtype of the body's matrix
    products: ``None`` picks bf16 on CUDA and fp32 elsewhere; a test may set bf16 on the CPU to stand in for
    CUDA's autocast.
    """

    spec: str
    model: nn.Module
    tokenizer: object
    device: torch.device
    compute_dtype: torch.dtype | None = field(default=None)

    def __post_init__(self) -> None:
        if self.compute_dtype is None:
            object.__setattr__(self, "compute_dtype", torch.bfloat16 if self.device.type == "cuda" else torch.float32)

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
        """Autocast to ``compute_dtype`` for the body (bf16 on CUDA); a disabled context where it is fp32."""
        dtype = self.compute_dtype or torch.float32
        return torch.autocast(device_type=self.device.type, dtype=dtype, enabled=dtype != torch.float32)

    def head_logits(self, hidden: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Output-head logits in fp32 on every device: ``(..., d_model)`` → ``(..., vocab)``, or ``(..., R)`` for
        the head rows ``rows`` ``(R,)`` only (the verbalizer's tokens: the other rows are never needed for
        classification, and skipping them saves a ``d × vocab`` product per example).

        Outside autocast and from fp32 hidden states: bf16 logits move a class margin by up to 0.15 and a
        full-vocabulary logit by up to 0.42 on SmolLM2, enough to change ``task/ce``, accuracy ties, RLPrompt's
        ×200 reward and ``interp/log_ppl``. On the CPU these are the ops the fp32 model always ran.
        """
        with torch.autocast(device_type=self.device.type, enabled=False):
            hidden = hidden.float()
            if rows is None:
                return self.head(hidden).float()
            logits = hidden @ self.head.weight[rows].float().T
            bias = getattr(self.head, "bias", None)
            if bias is not None:
                logits = logits + bias[rows].float()
            return logits


DOCUMENT_BOUNDARY = "<|endoftext|>"
_START_IDS: weakref.WeakKeyDictionary[object, int] = weakref.WeakKeyDictionary()


def start_token_id(tokenizer: object) -> int:
    """The token a prompt is generated from, as if it opened a new document.

    ``<|endoftext|>`` where the vocabulary has it (GPT-2's EOS; SmolLM2's id 0, whose BOS ``<|im_start|>``
    would make the next token a chat role), else BOS, else EOS. Remembered per tokenizer (reading the whole
    vocabulary takes ~30 ms) without keeping the tokenizer alive.
    """
    try:
        return _START_IDS[tokenizer]
    except (KeyError, TypeError):
        pass
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    found = None
    if DOCUMENT_BOUNDARY in vocab:
        found = int(vocab[DOCUMENT_BOUNDARY])
    else:
        for candidate in (getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
            if candidate is not None:
                found = int(candidate)
                break
    if found is not None:
        try:
            _START_IDS[tokenizer] = found
        except TypeError:  # not weakly referenceable: computed again next time
            pass
        return found
    raise ValueError(
        f"{type(tokenizer).__name__} has neither <|endoftext|>, a BOS nor an EOS token to start prompts from"
    )


def select_device(requested: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cpu``/``cuda``/``cuda:N`` are taken as given.

    For a run in one process (``python -m tuners run``, a notebook). Inside a Ray trial the sweep resolves
    ``auto`` itself, from the GPUs Ray gave the trial (``sweep/devices.py``): Ray does not hide GPUs from a
    trial given none, so "present" is not "ours" there.
    """
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
            lm = LanguageModel(spec=spec, model=model, tokenizer=tokenizer, device=dev)
            if dev.type == "cuda":
                cast_body(model, lm.compute_dtype or torch.float32)
                if deterministic_requested():
                    use_deterministic_algorithms()
            _CACHE[key] = lm
        return _CACHE[key]


def cached_models() -> dict[tuple[str, str], LanguageModel]:
    """The LMs this process holds, by ``(spec, device)`` (a copy; ``objectives.memory`` releases them)."""
    with _LOCK:
        return dict(_CACHE)


def forget_models(keys: set[tuple[str, str]]) -> None:
    """Drop these ``(spec, device)`` entries from the process's cache (their memory goes when unreferenced)."""
    with _LOCK:
        for key in keys:
            _CACHE.pop(key, None)


def cast_body(model: nn.Module, dtype: torch.dtype) -> int:
    """Cast, once and in place, the weights autocast would cast to ``dtype`` on every pass: those of the
    ``nn.Linear`` and ``Conv1D`` layers, except the output head (and anything tied to the input embeddings).

    Norms and embeddings stay fp32, as autocast leaves them, so a pass under autocast computes the same
    numbers as before the cast, without re-casting frozen weights each time. Returns the parameters cast.
    """
    from transformers.pytorch_utils import Conv1D

    keep = {id(p) for p in model.get_input_embeddings().parameters()}
    head = model.get_output_embeddings()
    if head is not None:
        keep |= {id(p) for p in head.parameters()}
    cast = 0
    for module in model.modules():
        if module is head or not isinstance(module, (nn.Linear, Conv1D)):
            continue
        for param in module.parameters(recurse=False):
            if id(param) not in keep and param.is_floating_point() and param.dtype != dtype:
                param.data = param.data.to(dtype)
                cast += 1
    return cast


def deterministic_requested() -> bool:
    """Whether ``PROMPTSWEEP_DETERMINISTIC`` asks for deterministic GPU algorithms (``1``/``true``/``yes``)."""
    value = os.environ.get(DETERMINISTIC_ENV, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise UserError(f"{DETERMINISTIC_ENV}={value!r} is not a switch; set it to 1 (deterministic) or 0 (default)")


def use_deterministic_algorithms() -> None:
    """Switch this process's torch to deterministic algorithms on CUDA (process-wide torch state, set once).

    cuBLAS needs its workspace config set before its first use, which loading a model does not reach; the
    math attention kernel replaces the fused ones, whose backward is not bitwise reproducible.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.enable_flash_sdp(False)
    torch.backends.cuda.enable_mem_efficient_sdp(False)
    logger.info("deterministic algorithms on (%s): slower, bitwise repeatable on one GPU model", DETERMINISTIC_ENV)


def to_device(state: Any, device: torch.device, *, keep: frozenset[str] = frozenset()) -> Any:
    """``state`` (nested dicts, lists and tuples of tensors and plain values) with every tensor on ``device``.

    For state restored from a checkpoint, which the sweep loads onto the CPU (``map_location="cpu"``): a
    restored tensor must follow its model's device, or the first op mixing it with live tensors fails. Keys in
    ``keep`` stay as they are (a CPU ``torch.Generator``'s state must stay a CPU byte tensor).
    """
    if isinstance(state, torch.Tensor):
        return state.to(device)
    if isinstance(state, Mapping):
        return {k: v if k in keep else to_device(v, device, keep=keep) for k, v in state.items()}
    if isinstance(state, tuple):
        return tuple(to_device(v, device, keep=keep) for v in state)
    if isinstance(state, list):
        return [to_device(v, device, keep=keep) for v in state]
    return state


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
