"""What the driver checks before any cluster starts: a bad value fails in seconds with a clear message.

Inside a Ray worker a bad task folder, label, verbalizer or model path fails every trial, and the message
drowns in Ray's output. Everything that can be checked without a trial is checked here, on the driver,
before Ray, MLflow or Optuna are touched and before anything is written: the output folder and its free space,
the tracking URI (an MLflow store, reachable within a few seconds), the embedded Ray's CPUs, and for every
tuner, baseline and replicate its task data, tokenizer, verbalizer, model spec (its weights included), prompt
length against the model's positions, policy model and device.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from objectives.errors import ConfigError, ResourceError
from objectives.models import MODEL_ASSETS, TOKENIZER_ASSETS, ModelSpecError, load_tokenizer, select_device
from objectives.problem import (
    ProblemConfig,
    check_model_folder,
    check_prompt_fits,
    longest_input,
    max_positions,
)
from objectives.tasks import load_task, verbalizer_ids
from sweep.config import SweepConfig
from tuners import get_tuner, make_config
from tuners.replicates import replicate_configs

logger = logging.getLogger(__name__)

TRACKING_TIMEOUT_S = 5.0
_DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")
_URI_FORMS = (
    "sqlite:////ABSOLUTE/PATH/mlflow.db, http(s)://HOST:PORT (an `mlflow server`), "
    "or a database URI (postgresql://, mysql://, mssql://)"
)
# An endpoint every MLflow tracking server answers with JSON (GET works since MLflow 2).
_MLFLOW_PROBE = "/api/2.0/mlflow/experiments/search?max_results=1"
# What the preflight reads of the code-built tiny-gpt2 (``model_config``).
TINY_GPT2_SIZES = {"n_positions": 256, "n_embd": 64}
# Set to 1 to skip the free-space check (a test that fills a small disk on purpose, a store that reports no size).
SKIP_SPACE_ENV = "PROMPTSWEEP_SKIP_SPACE_CHECK"


def check_out(out: Path) -> None:
    """``out`` is a folder this process can create or write into."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file, not a folder; choose a folder path")
    existing = _existing_ancestor(out)
    # Try it rather than trust os.access, which says yes to root even on read-only mounts.
    try:
        Path(tempfile.mkdtemp(dir=existing, prefix=".promptsweep-probe-")).rmdir()
    except OSError as err:
        raise ConfigError(
            f"--out {str(out)!r}: cannot write into {str(existing)!r} ({err.strerror}); choose a writable folder"
        ) from err


def _existing_ancestor(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


# ----- free space ------------------------------------------------------------------------------------------

SPACE_SAFETY = 1.25
_MB = 1024 * 1024
# Measured on the tests' smoke sweep (14 trials, 14 MB in all): report.html is about 5 MB and the parent run's
# artifacts hold a second copy of every export; a trial's Tune folder and MLflow artifacts stay under 100 KB.
_FIXED_BYTES = 32 * _MB
_PER_TRIAL_BYTES = _MB // 2
# A per-step metric is one SQLite row (about 300 bytes with its indexes, measured); a report of one replicate
# carries 6 (PEZ) to 12 (RLPrompt) metrics.
_METRIC_ROW_BYTES = 300
_METRICS_PER_REPORT = 12
# A checkpoint holds each trained tensor four times in float32: the weights, a second copy (RLPrompt's target
# policy; PEZ's projected prompt and selection) and Adam's two moments.
_CHECKPOINT_BYTES_PER_PARAM = 16


def estimate_bytes(config: SweepConfig, hidden_sizes: dict[str, int | None]) -> int:
    """What a whole sweep writes under ``--out``, in bytes, before ``SPACE_SAFETY`` (rough, and meant high).

    The rule, per trial (``total_trials``; a trial runs ``replicates`` tuner runs):

    - ``_PER_TRIAL_BYTES`` for Tune's trial folder and the trial's MLflow artifacts;
    - per-step metrics, when the MLflow store is the default SQLite file in ``--out``:
      ``replicates x (steps / eval_every + 2) reports x _METRICS_PER_REPORT x _METRIC_ROW_BYTES``
      (a baseline reports once);
    plus ``_FIXED_BYTES`` for the exports (report.html, figures, parquet, each twice with MLflow's copy),
    optuna.db and Tune's experiment state, plus two checkpoints of the largest kind for each of
    ``max_concurrent`` running trials: a running trial keeps two checkpoint slots in its MLflow run (the newest
    and the one being written) and deletes them when it ends. A checkpoint is ``_CHECKPOINT_BYTES_PER_PARAM``
    per trained value, ``prompt_len x d_model`` for PEZ and soft, plus ``2 x d_model x mlp_hidden`` for
    RLPrompt's policy MLP (``d_model`` of the policy model); a baseline trains nothing.
    ``hidden_sizes`` maps a model spec to its ``d_model`` (None: unknown, counted as 1024).
    """
    local_store = config.tracking_uri is None
    total, largest = _FIXED_BYTES, 0
    for name, trials in config.fixed_trials().items():
        values = config.trial_values(name)
        count = config.num_samples if name in config.tuners and config.search.get(name) else len(trials)
        tuner_config = make_config(get_tuner(name).config_cls, {**values, **trials[0]})
        trains = getattr(get_tuner(name), "trains", True)
        steps, every = getattr(tuner_config, "steps", 0), max(1, getattr(tuner_config, "eval_every", 1))
        reports = steps // every + 2 if trains else 1
        rows = config.replicates * reports * _METRICS_PER_REPORT if local_store else 0
        checkpoint = 0
        if trains:
            d_model = hidden_sizes.get(tuner_config.model) or 1024
            params = tuner_config.prompt_len * d_model
            if hasattr(tuner_config, "mlp_hidden"):
                policy = getattr(tuner_config, "policy_model", None) or tuner_config.model
                params += 2 * (hidden_sizes.get(policy) or 1024) * tuner_config.mlp_hidden
            checkpoint = params * _CHECKPOINT_BYTES_PER_PARAM
        largest = max(largest, checkpoint)
        # Under mo_asha most configurations stop at a rung: the anchor runs its full budget, the others on
        # average the share of steps successive halving gives them.
        full = 1 + (count - 1) * _halving_share(config, name) if count > 1 else count
        total += count * _PER_TRIAL_BYTES + int(full * rows * _METRIC_ROW_BYTES)
    return total + config.max_concurrent * 2 * largest


def _halving_share(config: SweepConfig, tuner: str) -> float:
    """The mean share of its steps a configuration of ``tuner`` runs under the sweep's scheduler: 1 under fifo;
    under mo_asha ``sum_k eta^-k (r_(k+1) - r_k) / steps`` over its rungs (0 and the budget added), doubled for
    the first arrivals at each rung, which go on."""
    from sweep.scheduler import rung_steps

    plan = config.rung_plan().get(tuner)
    if plan is None:
        return 1.0
    grace, steps = plan
    bounds = [0, *rung_steps(grace, config.reduction_factor, steps), steps]
    share = sum((bounds[k + 1] - bounds[k]) / steps / config.reduction_factor**k for k in range(len(bounds) - 1))
    return min(1.0, 2 * share)


def check_free_space(config: SweepConfig, out: Path, hidden_sizes: dict[str, int | None]) -> None:
    """The disk of ``out`` has room for ``SPACE_SAFETY`` times ``estimate_bytes``, less what ``out`` already holds
    (a resumed sweep has written part of it). A full disk mid-sweep cuts state files off mid-write."""
    if os.environ.get(SKIP_SPACE_ENV, "") not in ("", "0"):
        logger.warning("%s is set: the free-space check is skipped", SKIP_SPACE_ENV)
        return
    existing = _existing_ancestor(out)
    try:
        free = shutil.disk_usage(existing).free
    except OSError:
        return  # a store that reports no size: nothing to compare against
    written = _folder_bytes(out) if out.is_dir() else 0
    needed = max(0, int(SPACE_SAFETY * estimate_bytes(config, hidden_sizes)) - written)
    if needed > free:
        raise ResourceError(
            f"--out {str(out)!r}: the sweep needs about {needed / _MB:,.0f} MB more ({config.total_trials()} trials, "
            f"x{SPACE_SAFETY:g} for safety), but only {free / _MB:,.0f} MB are free on the disk of {str(existing)!r}; "
            f"free space there, or choose an --out on a disk with room ({SKIP_SPACE_ENV}=1 skips this check)"
        )


def _folder_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += (Path(root) / name).stat().st_size
            except OSError:
                continue
    return total


# ----- tracking store --------------------------------------------------------------------------------------


def check_tracking_uri(uri: str, *, timeout_s: float = TRACKING_TIMEOUT_S, must_exist: bool = False) -> None:
    """The MLflow tracking URI is one this sweep can write to: its folder exists, or an MLflow server answers.

    ``must_exist`` (reading a finished sweep, ``sweep.export``): a SQLite store must be an existing file, so
    that a mistyped path is reported as such and not created as a new, empty store.
    """
    parsed = urlparse(uri)
    scheme = parsed.scheme.split("+")[0]
    if scheme == "sqlite":
        path = uri.removeprefix("sqlite:///")
        if not uri.startswith("sqlite:///") or not Path(path).is_absolute():
            raise ConfigError(f"tracking_uri={uri!r}: a SQLite store needs an absolute path, sqlite:////abs/mlflow.db")
        if must_exist:
            _check_sqlite_file(uri, Path(path))
        elif not Path(path).parent.is_dir():
            raise ConfigError(
                f"tracking_uri={uri!r}: the folder {str(Path(path).parent)!r} does not exist; create it, or leave "
                "tracking_uri unset for the default <out>/mlflow.db"
            )
    elif scheme in ("http", "https"):
        _check_tracking_server(uri, timeout_s)
    elif scheme not in _DATABASE_SCHEMES:
        raise ConfigError(f"tracking_uri={uri!r} is not an MLflow store this sweep can use; use {_URI_FORMS}")


def _check_sqlite_file(uri: str, path: Path) -> None:
    if not path.is_file():
        raise ConfigError(
            f"tracking_uri={uri!r}: no such MLflow store ({str(path)!r} does not exist); give the sqlite:/// URI of a "
            "sweep's store, by default <its --out>/mlflow.db (sweep.json names it)"
        )
    try:
        with path.open("rb") as handle:
            header = handle.read(16)
    except OSError as err:
        raise ConfigError(f"tracking_uri={uri!r}: cannot read {str(path)!r} ({err.strerror})") from err
    if header and header != b"SQLite format 3\x00":
        raise ConfigError(f"tracking_uri={uri!r}: {str(path)!r} is not a SQLite database; give a sweep's mlflow.db")


def _check_tracking_server(uri: str, timeout_s: float) -> None:
    """An MLflow server answers its REST API (with the credentials of the environment, as MLflow sends them)."""
    probe = uri.rstrip("/") + _MLFLOW_PROBE
    request = urllib.request.Request(probe, headers=_auth_headers())
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = response.read(1 << 16)
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            raise ResourceError(
                f"tracking_uri={uri!r}: the server refused this sweep ({err.code} {err.reason}); set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) to its credentials"
            ) from err
        message = _mlflow_error(err)
        if message is not None:
            raise ResourceError(f"tracking_uri={uri!r}: the MLflow server answered an error: {message}") from err
        raise ConfigError(
            f"tracking_uri={uri!r} is an HTTP server but not an MLflow tracking server (GET {probe} answered "
            f"{err.code} {err.reason}); check the host, port and path of the `mlflow server`"
        ) from err
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise ResourceError(
            f"tracking_uri={uri!r}: no MLflow server answered {probe} within {timeout_s:g} s ({reason}); "
            "start it (clusters/mlflow-server.yaml) or fix the URI"
        ) from err
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise ConfigError(
            f"tracking_uri={uri!r} is an HTTP server but not an MLflow tracking server (GET {probe} answered no "
            "MLflow JSON); check the host, port and path of the `mlflow server`"
        )


def _auth_headers() -> dict[str, str]:
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    return {}


def _mlflow_error(err: urllib.error.HTTPError) -> str | None:
    """The message of an MLflow error answer (JSON with an ``error_code``), None for any other answer."""
    try:
        answer = json.loads(err.read(1 << 16))
    except (OSError, ValueError):
        return None
    if isinstance(answer, dict) and "error_code" in answer:
        return f"{answer['error_code']}: {answer.get('message', '')}"
    return None


# ----- problems --------------------------------------------------------------------------------------------


@functools.cache
def _tokenizer(spec: str) -> Any:
    # Cached for the many replicates of one preflight (cleared by each ``preflight``); a tokenizer is read-only.
    return load_tokenizer(spec)


@functools.cache
def model_config(spec: str) -> Any | None:
    """The Hugging Face config of a model spec, read without its weights; None where it cannot be read (a hub
    name while offline: the loader reports that in its own words)."""
    from transformers import AutoConfig, GPT2Config

    from objectives.models import _asset_or_folder

    if spec == "tiny-gpt2":
        # Built in code (objectives.models.tiny_gpt2), with no config file; importing GPT-2's model code to build
        # it would cost the driver seconds. The sizes read here, kept equal to the model's by a test.
        return GPT2Config(**TINY_GPT2_SIZES)
    folder = _asset_or_folder(spec)  # the loader's own resolution of folders and offline assets
    try:
        return AutoConfig.from_pretrained(str(folder) if folder else spec, trust_remote_code=False)
    except (OSError, ValueError):
        return None


def check_problem(config: ProblemConfig, *, local: bool, gpus_per_trial: float) -> None:
    """The task data, tokenizer, verbalizer, model spec, prompt length and device of one trial configuration."""
    _check_model_spec(config.model)
    tokenizer = _tokenizer(config.model)
    verbalizer_ids(tokenizer, config.verbalizer)
    task = load_task(
        config.task,
        num_classes=len(config.verbalizer),
        k_shot=config.k_shot,
        k_dev=config.k_dev,
        n_test=config.n_test,
        seed=config.seed,
    )
    lm_config = model_config(config.model)
    positions = max_positions(lm_config) if lm_config is not None else None
    # As ``build_problem`` checks it in every trial, where an input that does not fit is an IndexError.
    longest = longest_input(tokenizer, task, config.template)
    check_prompt_fits(config.prompt_len, longest, positions, model=config.model, task=config.task)
    policy = getattr(config, "policy_model", None)
    if policy is not None and policy != config.model:
        _check_model_spec(policy)
        if _tokenizer(policy).get_vocab() != tokenizer.get_vocab():
            raise ConfigError(
                f"policy_model={policy!r} and model={config.model!r} have different vocabularies: RLPrompt feeds the "
                "policy's token ids to the task LM, so choose a policy_model with the task LM's tokenizer"
            )
        policy_config = model_config(policy)
        limit = max_positions(policy_config) if policy_config is not None else None
        if limit is not None and config.prompt_len + 1 > limit:
            raise ConfigError(
                f"prompt_len={config.prompt_len} does not fit policy_model={policy!r}: it writes the prompt after a "
                f"start token in {limit} positions; set prompt_len <= {limit - 1}"
            )
    if config.device.startswith("cuda"):
        if gpus_per_trial == 0:
            raise ConfigError(
                f"device={config.device!r} but gpus_per_trial=0: trials would get no GPU; set gpus_per_trial "
                "(fractions share a GPU) or device=auto"
            )
        if local:
            select_device(config.device)
    elif config.device != "auto":
        select_device(config.device)
    if gpus_per_trial > 0 and config.device != "cpu":
        check_gpu_memory(config, task, tokenizer, gpus_per_trial, lm_config)


def check_gpu_memory(config: ProblemConfig, task: Any, tokenizer: Any, gpus_per_trial: float, lm_config: Any) -> None:
    """A trial's estimated GPU memory (``objectives.memory.estimate_trial_bytes``) fits its share of the card,
    where this machine has the GPU the trials get (a local sweep, or a driver on a GPU node); elsewhere the
    card's size is not known here and the trial's own out-of-memory error says it."""
    import torch

    from objectives.memory import estimate_trial_bytes

    if not torch.cuda.is_available():
        logger.info("preflight: no GPU on this machine, the trials' GPU memory is not checked here")
        return
    card = torch.cuda.get_device_properties(0).total_memory
    share = min(gpus_per_trial, 1.0) * card
    estimate = estimate_trial_bytes(
        config,
        texts={split: task.texts(split) for split in ("train", "dev", "test")},
        gpu_share=gpus_per_trial,
        card_bytes=card,
        tokenizer=tokenizer,
        model_configs={config.model: lm_config} if lm_config is not None else None,
    )
    if estimate.total > share:
        raise ResourceError(
            f"a trial of model={config.model!r} needs {estimate.describe()} of GPU memory, but gpus_per_trial="
            f"{gpus_per_trial:g} of a {card / 2**30:.0f} GiB GPU gives it {share / 2**30:.1f} GiB; raise "
            "gpus_per_trial (fewer trials share a GPU), or lower eval_chunk, batch_size or prompts_per_step"
        )


def _check_model_spec(spec: str) -> None:
    """A folder holds a model (its config and weights), an asset name is a model asset; hub names are left to
    the loader."""
    if spec in TOKENIZER_ASSETS:
        raise ModelSpecError(f"model {spec!r} is a tokenizer asset, not a model; model assets: {MODEL_ASSETS}")
    check_model_folder(spec)


def preflight(config: SweepConfig, out: Path, *, local: bool) -> None:
    """Every check of this module for a whole sweep; raises a ``UserError`` naming the first bad value."""
    _tokenizer.cache_clear()
    model_config.cache_clear()
    check_out(out)
    if local and config.ray_num_cpus is not None and config.ray_num_cpus < config.cpus_per_trial:
        raise ConfigError(
            f"ray_num_cpus={config.ray_num_cpus} but each trial reserves cpus_per_trial={config.cpus_per_trial:g}: "
            "no trial could start in the embedded Ray; raise ray_num_cpus (or leave it unset) or lower cpus_per_trial"
        )
    # The default store lives in ``out``, which the sweep creates; a tracking server may come from the environment
    # (MLFLOW_TRACKING_URI, with the credentials beside it), as the sweep then uses it.
    tracking_uri = config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if tracking_uri:
        check_tracking_uri(tracking_uri)
    seen: set[tuple] = set()
    hidden_sizes: dict[str, int | None] = {}
    for name, trials in config.fixed_trials().items():
        for fixed in trials:
            tuner_config = make_config(get_tuner(name).config_cls, {**config.trial_values(name), **fixed})
            for replicate in replicate_configs(tuner_config, config.replicates):
                key = (replicate.problem_key(), replicate.prompt_len, getattr(replicate, "policy_model", None))
                if key not in seen:
                    seen.add(key)
                    check_problem(replicate, local=local, gpus_per_trial=config.gpus_per_trial)
            prompt = getattr(tuner_config, "prompt_text", None)
            if prompt is not None and not _tokenizer(tuner_config.model).encode(prompt, add_special_tokens=False):
                raise ConfigError(f"manual prompt {prompt!r} is no token at all under {tuner_config.model!r}")
            for spec in (tuner_config.model, getattr(tuner_config, "policy_model", None)):
                if spec is not None and spec not in hidden_sizes:
                    found = model_config(spec)
                    hidden_sizes[spec] = getattr(found, "hidden_size", None) if found is not None else None
    check_free_space(config, out, hidden_sizes)
    logger.info("preflight: %d problem configurations checked", len(seen))
