"""Device memory: what a trial needs, what its caches may take, and what happens when it runs out.

A GPU may be shared by several trials (``gpus_per_trial=0.25``: four processes on one card, each with its own
CUDA context, weights and caches), and Ray does not enforce memory shares, so each trial must size itself:

- :func:`kv_bytes_per_token`: what one token of an LM's frozen input cache really takes, measured with a
  one-token pass (GPT-2's keys and values come out of autocast in bf16; a rotary model's keys stay fp32,
  because its cos/sin tables are fp32, so SmolLM2's cache is 1.5x what 2 bytes an element would say).
- :func:`cache_budget`: the memory one split's resident cache may take: ``cache_budget_mb`` when given, else
  512 MB on the CPU (as ever) and on CUDA a tenth of the trial's share of the card per split.
- :func:`estimate_trial_bytes`: a trial's GPU bytes before anything is loaded (weights as loaded on CUDA,
  resident caches, the largest transient activations, the CUDA context), for a preflight check against
  ``gpus_per_trial`` × the card's memory.
- :func:`release_caches`: drop the per-process models, problems and scorers a worker no longer needs when
  Tune reuses it for a trial of another configuration.
- :func:`out_of_memory_fails_the_trial`: an out-of-memory error becomes a :class:`DeviceMemoryError`, a
  ``UserError`` that names the trial's sizes and the fixes, so the sweep fails that trial without retrying it
  beside the same neighbours.
"""

from __future__ import annotations

import gc
import logging
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from objectives.errors import UserError
from objectives.models import LanguageModel, cached_models, forget_models, select_device

logger = logging.getLogger(__name__)

CPU_CACHE_BUDGET_BYTES = 512e6
# Per split, of the trial's share of its GPU: three splits' resident caches then take at most 30 % of it,
# leaving the rest to weights, activations and the CUDA context (see estimate_trial_bytes).
GPU_CACHE_FRACTION = 0.10
# What a CUDA context and the caching allocator's slack take per process, beside torch's own tensors
# (nvidia-smi shows ~0.4-0.5 GB for an idle torch process on recent drivers).
CUDA_CONTEXT_BYTES = 500 * 2**20
# The caching allocator's fragmentation on top of the largest transient (a guess to be checked against the peak
# memory benchmarks/gpu_check.sh prints beside this estimate).
ALLOCATOR_SLACK = 1.5


class DeviceMemoryError(UserError, MemoryError):
    """A trial ran out of memory on its device: its sizes do not fit its share, so a retry beside the same
    neighbours would fail the same way. The message names the sizes and the fixes."""


# --- the frozen input cache ------------------------------------------------------------------------------

_KV_BYTES: weakref.WeakKeyDictionary[torch.nn.Module, dict[str, int]] = weakref.WeakKeyDictionary()


@torch.no_grad()
def kv_bytes_per_token(lm: LanguageModel) -> int:
    """Bytes one token's keys and values take over all layers, measured with a one-token pass under the LM's
    autocast (so the element sizes are the ones the cache really gets). Remembered per model and precision."""
    key = f"{lm.compute_dtype}"
    known = _KV_BYTES.setdefault(lm.model, {})
    if key not in known:
        ids = torch.zeros(1, 1, dtype=torch.long, device=lm.device)
        with lm.autocast():
            out = lm.body(input_ids=ids, use_cache=True)
        known[key] = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v, *_ in out.cache)
    return known[key]


def cache_budget(
    device: torch.device | str,
    *,
    gpu_share: float | None = None,
    budget_mb: float | None = None,
    card_bytes: int | None = None,
) -> float:
    """Bytes one split's resident key/value cache may take on ``device``.

    ``budget_mb`` wins when given. Otherwise: 512 MB on the CPU; on CUDA ``GPU_CACHE_FRACTION`` of the trial's
    share of the card, ``gpu_share`` (the sweep's ``gpus_per_trial``, capped at 1) × ``card_bytes`` (the
    device's memory when not given); 512 MB there too when the share is not known.
    """
    if budget_mb is not None:
        if not budget_mb >= 0:
            raise UserError(f"cache_budget_mb={budget_mb} must be >= 0 (0: never keep a split's cache resident)")
        return float(budget_mb) * 1e6
    device = torch.device(device)
    if device.type != "cuda" or gpu_share is None:
        return CPU_CACHE_BUDGET_BYTES
    if not gpu_share > 0:
        raise UserError(f"gpu_share={gpu_share} must be > 0 on CUDA (the trial's gpus_per_trial)")
    if card_bytes is None:
        card_bytes = torch.cuda.get_device_properties(device).total_memory
    return GPU_CACHE_FRACTION * min(gpu_share, 1.0) * card_bytes


def split_cache_tokens(lengths: Sequence[int], chunk_size: int, call_tokens: int) -> int:
    """Tokens a split's resident cache holds: its examples sorted by length and cut into the scorer's chunks,
    each padded to its own longest (``objectives.scoring._partition``)."""
    from objectives.scoring import _partition

    ordered = sorted(lengths)
    return sum((end - start) * ordered[end - 1] for start, end in _partition(ordered, chunk_size, call_tokens))


# --- a trial's estimate ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialMemory:
    """A trial's GPU bytes by part (see :func:`estimate_trial_bytes`); ``total`` is their sum."""

    weights: int
    caches: int
    activations: int
    context: int

    @property
    def total(self) -> int:
        return self.weights + self.caches + self.activations + self.context

    def describe(self) -> str:
        gib = 2**30
        return (
            f"~{self.total / gib:.2f} GiB (weights {self.weights / gib:.2f}, resident caches {self.caches / gib:.2f}, "
            f"activations {self.activations / gib:.2f}, CUDA context {self.context / gib:.2f})"
        )


def model_config(spec: str) -> Any:
    """The Hugging Face config of a model spec, without loading weights (``tiny-gpt2``: its built config)."""
    from transformers import AutoConfig

    from objectives.models import ModelSpecError, _asset_or_folder, _unknown_message, tiny_gpt2

    if spec == "tiny-gpt2":
        with torch.device("meta"):
            return tiny_gpt2().config
    folder = _asset_or_folder(spec)
    try:
        return AutoConfig.from_pretrained(str(folder) if folder else spec, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise ModelSpecError(_unknown_message(spec, f"no model config ({type(err).__name__})")) from err


def weight_bytes(config: Any, compute_dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes of a model's parameters and buffers as ``load_lm`` holds them on CUDA: the body's matrix weights
    in ``compute_dtype`` (``objectives.models.cast_body``), embeddings, head and norms fp32. Counted on the
    meta device, so nothing is allocated."""
    from transformers import AutoModelForCausalLM

    from objectives.models import cast_body

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.to(torch.float32)
    cast_body(model, compute_dtype)
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def kv_element_bytes(config: Any, compute_dtype: torch.dtype = torch.bfloat16) -> tuple[int, int]:
    """Bytes of one key and one value element in the cache, under autocast to ``compute_dtype``, without a
    pass: both ``compute_dtype`` for learned or absolute positions (GPT-2), the key fp32 for rotary models
    (the rotation multiplies the bf16 key by fp32 cos/sin tables). ``kv_bytes_per_token`` measures it on a
    loaded model; tests hold the two equal on GPT-2 and Llama."""
    size = torch.finfo(compute_dtype).bits // 8
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    rotary = any(
        getattr(text, name, None) is not None
        for name in ("rope_theta", "rope_scaling", "rope_parameters", "rotary_dim")
    )
    return (4 if rotary and size < 4 else size), size


def _kv_shape(config: Any) -> tuple[int, int, int]:
    """``(layers, kv_heads, head_dim)`` of a model config."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return text.num_hidden_layers, kv_heads, head_dim


def estimate_trial_bytes(
    config: Any,
    *,
    texts: Mapping[str, Sequence[str]] | None = None,
    gpu_share: float | None = None,
    card_bytes: int | None = None,
    model_configs: Mapping[str, Any] | None = None,
    tokenizer: object | None = None,
) -> TrialMemory:
    """A trial's GPU memory on CUDA, before anything is loaded: for a preflight against ``gpus_per_trial`` ×
    the card's memory.

    Args:
        config: a tuner config (a ``ProblemConfig``; ``batch_size``, ``prompts_per_step``, ``policy_model``,
            ``mlp_hidden``, ``fluent_top_k`` are read where the tuner has them).
        texts: the split texts ``{"train": [...], "dev": [...], "test": [...]}``; loaded from ``config.task``
            when not given.
        gpu_share: the trial's share of its GPU (``gpus_per_trial``), for the cache budget.
        card_bytes: the card's memory, for the cache budget with ``gpu_share`` (else 512 MB a split).
        model_configs: Hugging Face configs by model spec, used instead of resolving the spec
            (``model_config``); for sizes no offline asset has (GPT-2 large) and to read each config once.
        tokenizer: the task LM's tokenizer (loaded from ``config.model`` when not given), for the lengths.

    Parts: weights (``weight_bytes`` of the task LM, and of the policy LM where it is another model, plus
    RLPrompt's MLP, target MLP and Adam moments); the resident caches of the splits that fit their budget
    (exact token counts: the scorer's chunking of the real lengths); activations, the largest transient among
    a frozen pass over a chunk, a training step's forward and backward, the full-vocabulary passes of
    ``faith/output`` and ``interp/log_ppl``, and RLPrompt's Q-values over the vocabulary, times
    ``ALLOCATOR_SLACK`` for the allocator's fragmentation; and one CUDA context. An estimate to refuse plans
    that cannot fit, not a promise that one fits (not yet checked against a GPU: benchmarks/gpu_check.sh
    prints it beside the measured peak).
    """
    from objectives.models import load_tokenizer
    from objectives.problem import PREFIX_TAIL
    from objectives.scoring import _CALL_TOKENS

    configs = dict(model_configs or {})

    def resolve(spec: str) -> Any:
        if spec not in configs:
            configs[spec] = model_config(spec)
        return configs[spec]

    lm_config = resolve(config.model)
    text = lm_config.get_text_config() if hasattr(lm_config, "get_text_config") else lm_config
    d_model, vocab = text.hidden_size, text.vocab_size
    layers, kv_heads, head_dim = _kv_shape(lm_config)
    key_size, value_size = kv_element_bytes(lm_config)
    per_token = layers * kv_heads * head_dim * (key_size + value_size)

    weights = weight_bytes(lm_config)
    policy = getattr(config, "policy_model", None)
    if policy is not None and policy != config.model:
        weights += weight_bytes(resolve(policy))
    mlp_hidden = getattr(config, "mlp_hidden", None)
    if mlp_hidden:
        # MLP, target MLP, gradients and Adam's two moments, fp32: five copies of d·h + h + h·d + d.
        weights += 5 * 4 * (2 * d_model * mlp_hidden + mlp_hidden + d_model)

    if texts is None:
        from objectives.tasks import load_task

        task = load_task(
            config.task,
            num_classes=len(config.verbalizer),
            k_shot=config.k_shot,
            k_dev=config.k_dev,
            n_test=config.n_test,
            seed=config.seed,
        )
        texts = {split: task.texts(split) for split in ("train", "dev", "test")}
    if tokenizer is None:
        tokenizer = load_tokenizer(config.model)
    budget = cache_budget(
        "cuda",
        gpu_share=gpu_share if card_bytes is not None else None,
        budget_mb=getattr(config, "cache_budget_mb", None),
        card_bytes=card_bytes,
    )
    chunk = config.eval_chunk
    caches, longest = 0, 1
    for split_texts in texts.values():
        if config.template == "prefix":
            split_texts = [" " + t.strip() + PREFIX_TAIL for t in split_texts]
        lengths = [max(1, len(tokenizer.encode(t, add_special_tokens=False))) for t in split_texts]
        longest = max([longest, *lengths])
        tokens = split_cache_tokens(lengths, chunk, _CALL_TOKENS["cuda"])
        if config.template == "suffix" and config.use_cache and tokens * per_token <= budget:
            caches += tokens * per_token

    length = config.prompt_len
    act = 2  # bf16 activations of the body
    batch = getattr(config, "batch_size", chunk)
    prompts = getattr(config, "prompts_per_step", 1)
    width = longest + length
    # A frozen pass over a chunk of the longest examples: the residual stream (fp32), one MLP block's
    # intermediate (4d) and one layer's attention scores, plus the cache it builds.
    frozen = chunk * width * (4 * d_model + act * 4 * d_model + 4 * text.num_attention_heads * width)
    frozen += chunk * width * per_token
    # Positions a prompted pass computes per example (the prompt against the cache, or the whole template), and
    # a batch's keys/values gathered from the resident cache.
    seq = length if config.template == "suffix" else width
    gathered = min(batch, chunk) * width * per_token
    if mlp_hidden:
        # RLPrompt: the task LM scores the P prompts × B examples without gradient (only the MLP trains), so a
        # pass holds one layer's activations of its B × P·L positions at a time, against width + P·L keys.
        positions = min(batch, chunk) * prompts * seq
        keys = width + prompts * length
        train = positions * (4 * d_model + act * 4 * d_model + 4 * text.num_attention_heads * keys) + gathered
    else:
        # PEZ and soft: a step keeps every layer's activations of its B × L positions for the backward, against
        # cached keys of width ``longest``: per layer and position ~34·d + 5·heads·width bytes in mixed precision
        # (Korthikanti et al. 2022), rounded up for the fp32 residual stream this body keeps.
        positions = batch * seq
        train = positions * layers * (40 * d_model + 6 * text.num_attention_heads * width) + gathered
    # fp32 full-vocabulary logits: faith/output scores 8 examples × 2 prompts over the prompt positions (and
    # x's with the prefix template) and keeps two copies; log_ppl and RLPrompt's decode a few rows of V; the
    # Q-values of RLPrompt's loss (online, target, gradient, base) are P × L × V.
    positions = length + (longest if config.template == "prefix" else 0)
    full_vocab = 3 * 8 * 2 * positions * vocab * 4
    q_values = 6 * prompts * length * vocab * 4 if mlp_hidden else 0
    activations = ALLOCATOR_SLACK * max(frozen, train, full_vocab, q_values)
    return TrialMemory(weights=weights, caches=int(caches), activations=int(activations), context=CUDA_CONTEXT_BYTES)


# --- releasing per-process caches --------------------------------------------------------------------------


def release_caches(keep: Iterable[Any] = ()) -> int:
    """Drop this process's models, problems and scorers that the configs in ``keep`` do not use; returns the
    number of entries dropped.

    Tune reuses a worker process for the next trial (``reuse_actors``), and the process caches (``load_lm``,
    ``build_problem``, ``shared_scorer``) would otherwise keep every model and every split cache any earlier
    trial built. Call it as a trial starts with the configs it will build (its replicates): what they share
    with the last trial stays, the rest goes, and CUDA's cached blocks are handed back.
    """
    from objectives import problem as problem_module
    from objectives import scoring

    keep = list(keep)
    keys = {config.problem_key() for config in keep}
    specs = set()
    for config in keep:
        specs.add(config.model)
        policy = getattr(config, "policy_model", None)
        if policy is not None:
            specs.add(policy)
    dropped = 0
    with problem_module._LOCK:
        for key in [k for k in problem_module._PROBLEMS if k not in keys]:
            del problem_module._PROBLEMS[key]
            dropped += 1
        kept_scorers = {id(s) for p in problem_module._PROBLEMS.values() for s in p.scorers.values()}
    with scoring._SCORERS_LOCK:
        for key in [k for k, s in scoring._SCORERS.items() if id(s) not in kept_scorers]:
            del scoring._SCORERS[key]
            dropped += 1
    unused = {key for key in cached_models() if key[0] not in specs}
    forget_models(unused)
    dropped += len(unused)
    if dropped:
        gc.collect()
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()
        logger.info("released %d cached models, problems and scorers no longer used in this worker", dropped)
    return dropped


# --- out of memory ------------------------------------------------------------------------------------------


@contextmanager
def out_of_memory_fails_the_trial(config: Any, device: torch.device | str | None = None) -> Iterator[None]:
    """Turn ``torch.OutOfMemoryError`` inside the block into a :class:`DeviceMemoryError` that names the trial's
    sizes and the fixes, after handing the allocator's cached blocks back."""
    try:
        yield
    except torch.OutOfMemoryError as err:
        if device is None:
            try:
                device = select_device(getattr(config, "device", "cpu"))
            except UserError:
                device = "cpu"
        device = torch.device(device)
        where = str(device)
        if device.type == "cuda" and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
            free, total = torch.cuda.mem_get_info(device)
            where = f"{device} ({(total - free) / 2**30:.1f} of {total / 2**30:.1f} GiB in use on the card)"
        sizes = [f"model={getattr(config, 'model', '?')!r}", f"eval_chunk={getattr(config, 'eval_chunk', '?')}"]
        for name in ("batch_size", "prompts_per_step", "mlp_hidden", "policy_model"):
            if hasattr(config, name):
                sizes.append(f"{name}={getattr(config, name)!r}")
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DeviceMemoryError(
            f"out of memory on {where} with {', '.join(sizes)}: {first_line}. Give each trial more of the GPU "
            "(a larger gpus_per_trial, so fewer trials share a card), or lower eval_chunk and the batch sizes, "
            "or set cache_budget_mb lower so split caches stream instead of staying resident"
        ) from err
