"""The prompt-tuning problem every tuner solves: a frozen LM, a task, a template and a verbalizer.

``ProblemConfig`` holds the fields every tuner shares; tuners extend it with their own. ``Problem`` is the
built form: the loaded LM, the k-shot splits and one ``PromptScorer`` per split (each keeps its frozen input
cache resident while it fits the scorer's memory budget, else streams it). ``build_problem`` caches built
problems per process, keyed by the problem fields only, so later trials in one Ray worker reuse the model, the
data and the caches; scorers are shared further, between problems whose split is the same (``shared_scorer``):
replicates on different train/dev seeds share one test set, whose frozen pass then runs once per process.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from objectives.errors import ConfigError
from objectives.tasks import Task, load_task, verbalizer_ids

if TYPE_CHECKING:  # torch, the LM and its scorers are imported where a problem is built: a config needs none
    import torch

    from objectives.models import LanguageModel
    from objectives.scoring import PromptScorer

SPLITS = ("train", "dev", "test")
# How a prompt and an input are laid out (objectives/scoring.py): 'suffix' {x}{prompt}, 'prefix' {prompt}{x} It was.
TEMPLATES = ("suffix", "prefix")
PREFIX_TAIL = " It was"
# How a run picks the prompt it returns, from the candidates it scored on dev during training:
# - dev_acc: the best dev accuracy (ties: lower dev cross-entropy). What a reader expects, but on a k-shot dev
#   split accuracy moves in steps of 1/|dev| and often picks an early checkpoint, so the λ terms the run was
#   trained with show up only loosely in the prompt it returns.
# - dev_objective: the best dev value of the objective the tuner trains (its λ terms included), e.g. PEZ's
#   ce + λ_ppl·log_ppl (+ λ_dist·faith_dist), RLPrompt's gap reward − λ_ppl·log_ppl. Smooth, and consistent
#   with what the search asked for; it trades some dev accuracy for the interpretability the λ's buy.
# - last: the final step's prompt. No selection at all (so no selection noise), at the mercy of the last step.
# Test data never takes part in any of them. Validated here, where the value enters; tuners/selection.py ranks by it.
SELECTIONS = ("dev_acc", "dev_objective", "last")
# Seeds reach torch generators, Python's random and (through the sweep's seed) numpy, whose seeds are unsigned
# 32-bit; one range for all of them.
MAX_SEED = 2**32 - 1


@dataclass(frozen=True, kw_only=True)
class ProblemConfig:
    """Fields shared by every tuner: what to prompt, on which data, and how to read its answer."""

    model: str = field(default="tiny-gpt2", metadata={"help": "folder, offline asset or hub name of the task LM"})
    task: str = field(
        default="rotten-tomatoes",
        metadata={"help": "'rotten-tomatoes', an LM-BFF folder (train/dev/test.tsv), or 'hf:NAME[:CONFIG]'"},
    )
    verbalizer: tuple[str, ...] = field(
        default=(" terrible", " great"), metadata={"help": "one single-token word per class, in label order"}
    )
    template: str = field(
        default="suffix", metadata={"help": "'suffix' ({x}{prompt}) or 'prefix' ({prompt}{x} It was)"}
    )
    k_shot: int | None = field(default=16, metadata={"help": "examples per class in train and dev (None: all)"})
    k_dev: int | None = field(
        default=None,
        metadata={"help": "examples per class in dev when it should differ from k_shot (a larger dev: less noise)"},
    )
    n_test: int | None = field(default=500, metadata={"help": "test examples scored at the end (None: all)"})
    prompt_len: int = field(default=5, metadata={"help": "number of prompt token positions L"})
    seed: int = field(default=0, metadata={"help": "seeds the tuner and the k-shot sampling"})
    device: str = field(default="auto", metadata={"help": "'auto' (CUDA if present), 'cpu', 'cuda', 'cuda:N'"})
    use_cache: bool = field(default=True, metadata={"help": "reuse the frozen LM's keys/values of x (suffix only)"})
    eval_chunk: int = field(default=64, metadata={"help": "examples per forward pass in evaluation"})
    cache_budget_mb: float | None = field(
        default=None,
        metadata={
            "help": "memory one split's frozen input cache may take, in MB; over it the split streams (None: 512 on "
            "the CPU, on CUDA a tenth of the trial's GPU share per split)"
        },
    )
    gpu_share: float | None = field(
        default=None, metadata={"help": "share of its GPU the trial may use (the sweep sets it from gpus_per_trial)"}
    )
    select: str = field(
        default="dev_objective",
        metadata={"help": f"how the returned prompt is picked: {', '.join(SELECTIONS)} (see objectives/problem.py)"},
    )

    def __post_init__(self) -> None:
        if isinstance(self.verbalizer, list):
            object.__setattr__(self, "verbalizer", tuple(self.verbalizer))
        if self.template not in TEMPLATES:
            raise ConfigError(f"template={self.template!r} is not one of {TEMPLATES}")
        if self.prompt_len < 1:
            raise ConfigError(f"prompt_len={self.prompt_len} must be >= 1 (the number of prompt tokens)")
        if len(self.verbalizer) < 2:
            raise ConfigError(f"verbalizer={self.verbalizer!r} needs one word per class, at least 2")
        if self.select not in SELECTIONS:
            raise ConfigError(f"select={self.select!r} is not one of {SELECTIONS}")
        for name in ("k_shot", "k_dev", "n_test"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name}={value} must be >= 1, or None for all examples")
        if self.eval_chunk < 1:
            raise ConfigError(f"eval_chunk={self.eval_chunk} must be >= 1")
        if self.cache_budget_mb is not None and not self.cache_budget_mb >= 0:
            raise ConfigError(f"cache_budget_mb={self.cache_budget_mb} must be >= 0 (0: no resident cache)")
        if self.gpu_share is not None and not 0 < self.gpu_share <= 1:
            raise ConfigError(f"gpu_share={self.gpu_share} must be in (0, 1], the share of one GPU")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed={self.seed} must be in [0, {MAX_SEED}] (2**32 - 1)")

    def problem_key(self) -> tuple:
        """The fields that decide the built ``Problem`` (prompt length and selection do not)."""
        return tuple(
            getattr(self, f.name) for f in dataclasses.fields(ProblemConfig) if f.name not in ("prompt_len", "select")
        )


@dataclass
class Problem:
    """A built ``ProblemConfig``: LM, splits, labels and scorers."""

    lm: LanguageModel
    task: Task
    verbalizer_ids: list[int]
    scorers: dict[str, PromptScorer]
    labels: dict[str, torch.Tensor]
    # Accuracies with no prompt (the ``baseline/acc_*`` metrics), filled on first use by ``objectives.evaluation``.
    no_prompt_metrics: dict[str, float] = field(default_factory=dict)
    # The longest input of any split in tokens, as the template lays it out, and the positions the LM has
    # (None: unknown): a prompt must fit beside it (``check_prompt_fits``).
    longest_input: tuple[int, str] = (0, "")
    max_positions: int | None = None

    @functools.cached_property
    def host_train_labels(self) -> torch.Tensor:
        """The train labels on the host, read from the device once (not a sync every step on CUDA)."""
        return self.labels["train"].cpu()

    def train_batch(self, size: int, generator: torch.Generator) -> torch.Tensor:
        """``size`` training rows drawn without replacement, classes as even as the split allows; all rows
        (in order) when ``size`` covers the split.

        Class-balanced because a small uniform draw is often lopsided (8 of 16+16 reviews are 6:2 or worse
        one time in five), and then the step's loss or reward favours whatever shifts the LM's bias toward the
        batch's majority class: noise that pushes a prompt toward predicting one class. Rows are dealt round
        robin over the classes of a random permutation, so each class's share differs by at most one (a class
        with too few rows gives its share to the others) and which classes get the remainder is random.
        """
        import torch

        labels = self.labels["train"]
        n = len(labels)
        if size >= n:
            return torch.arange(n, device=labels.device)
        perm = torch.randperm(n, generator=generator)
        cls = self.host_train_labels[perm]
        # The rank of each row among its class's rows in the permutation: round r holds every class's r-th row.
        rank = torch.zeros(n, dtype=torch.long)
        for c in cls.unique():
            members = cls == c
            rank[members] = torch.arange(int(members.sum()))
        order = torch.argsort(rank * n + torch.arange(n), stable=True)
        return perm[order[:size]].to(labels.device)


_PROBLEMS: dict[tuple, Problem] = {}
_LOCK = threading.Lock()


def build_problem(config: ProblemConfig) -> Problem:
    """Build (or reuse from this process's cache) the problem that ``config`` describes.

    Raises ``ConfigError`` when ``config.prompt_len`` does not fit beside the task's longest input in the LM's
    positions (checked on every call: the cache key leaves the prompt length out).
    """
    key = config.problem_key()
    with _LOCK:
        if key not in _PROBLEMS:
            _PROBLEMS[key] = _build(config)
        problem = _PROBLEMS[key]
    check_prompt_fits(
        config.prompt_len, problem.longest_input, problem.max_positions, model=config.model, task=config.task
    )
    return problem


# The weights files ``from_pretrained`` loads into PyTorch (transformers.utils' *WEIGHTS*_NAME), sharded or not.
WEIGHTS_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def check_model_folder(spec: str) -> None:
    """A model given as a folder holds a config and weights (checked before loading: transformers' own error
    for a folder without weights is an ``OSError`` deep in its loader). Names that are no folder pass."""
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        return
    if not (folder / "config.json").is_file():
        raise ConfigError(f"model folder {spec!r} has no config.json; pass a Hugging Face model folder")
    if not any((folder / name).is_file() for name in WEIGHTS_FILES):
        raise ConfigError(
            f"model folder {spec!r} has a config.json but no weights ({', '.join(WEIGHTS_FILES)}); save the model "
            "into it with model.save_pretrained(folder), or pass another folder"
        )


def max_positions(model_config: Any) -> int | None:
    """The token positions a Hugging Face model config allows (GPT-2's ``n_positions``, Llama's
    ``max_position_embeddings``), or None when the config names none."""
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(text, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def longest_input(tokenizer: Any, task: Task, template: str) -> tuple[int, str]:
    """``(tokens, text)`` of the longest input of any split, laid out as ``PromptScorer`` lays it out
    (``objectives/scoring.py``: the ``prefix`` template appends " It was"; an empty text is one token)."""
    texts = [text for split in SPLITS for text in task.texts(split)]
    if not texts:
        return 0, ""
    laid_out = [" " + t.strip() + PREFIX_TAIL for t in texts] if template == "prefix" else texts
    lengths = [max(1, len(ids)) for ids in tokenizer(laid_out, add_special_tokens=False)["input_ids"]]
    at = max(range(len(texts)), key=lengths.__getitem__)
    return lengths[at], texts[at]


def check_prompt_fits(
    prompt_len: int, longest: tuple[int, str], positions: int | None, *, model: str, task: str
) -> None:
    """``prompt_len`` prompt tokens beside the longest input (``longest_input``) fit the LM's ``positions``.

    Inputs are never truncated (a cut review is another example), so the sum must fit: past it the position
    embeddings run out (an ``IndexError`` in every trial) or, for rotary models, the LM reads positions it was
    never trained on.
    """
    tokens, text = longest
    if positions is None or prompt_len + tokens <= positions:
        return
    shown = text if len(text) <= 60 else text[:57] + "..."
    if tokens >= positions:
        raise ConfigError(
            f"task {task!r} has an input of {tokens} tokens ({shown!r}), but model {model!r} has {positions} "
            "positions in all, the prompt included; inputs are not truncated: shorten or drop the longest examples, "
            "or use a model with a longer context"
        )
    raise ConfigError(
        f"prompt_len={prompt_len} does not fit model {model!r}: it has {positions} positions and the longest input "
        f"of task {task!r} takes {tokens} ({shown!r}); set prompt_len <= {positions - tokens}"
    )


def _build(config: ProblemConfig) -> Problem:
    import torch

    from objectives.memory import cache_budget
    from objectives.models import load_lm
    from objectives.scoring import shared_scorer

    check_model_folder(config.model)
    lm = load_lm(config.model, config.device)
    ids = verbalizer_ids(lm.tokenizer, config.verbalizer)
    task = load_task(
        config.task,
        num_classes=len(config.verbalizer),
        k_shot=config.k_shot,
        k_dev=config.k_dev,
        n_test=config.n_test,
        seed=config.seed,
    )
    longest, positions = longest_input(lm.tokenizer, task, config.template), max_positions(lm.model.config)
    # The inputs alone must fit before the scorers run the frozen LM over them (the prompt is checked per call).
    check_prompt_fits(0, longest, positions, model=config.model, task=config.task)
    scorers = {
        # Every split's keys/values stay resident while they fit the scorer's memory budget, and a scorer is
        # shared by every problem with the same split texts: trials that share a worker process, and replicates
        # that share a test set, then score it on prompt positions only.
        split: shared_scorer(
            lm,
            task.texts(split),
            template=config.template,
            verbalizer_ids=ids,
            use_cache=config.use_cache,
            chunk_size=config.eval_chunk,
            cache_budget_bytes=cache_budget(lm.device, gpu_share=config.gpu_share, budget_mb=config.cache_budget_mb),
        )
        for split in SPLITS
    }
    labels = {split: torch.tensor(task.labels(split), device=lm.device) for split in SPLITS}
    return Problem(
        lm=lm,
        task=task,
        verbalizer_ids=ids,
        scorers=scorers,
        labels=labels,
        longest_input=longest,
        max_positions=positions,
    )
