"""What the driver checks before any cluster starts: a bad value fails in seconds with a clear message.

Inside a Ray worker a bad task folder, label, verbalizer or model path fails every trial, and the message
drowns in Ray's output. Everything that can be checked without a trial is checked here, on the driver,
before Ray, MLflow or Optuna are touched and before anything is written: the output folder, the tracking
URI (reachable within a few seconds), and for every tuner, baseline and replicate its task data, tokenizer,
verbalizer, model spec, policy model and device.
"""

from __future__ import annotations

import logging
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from objectives.errors import ConfigError, ResourceError
from objectives.models import MODEL_ASSETS, TOKENIZER_ASSETS, ModelSpecError, load_tokenizer, select_device
from objectives.problem import ProblemConfig
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


def check_out(out: Path) -> None:
    """``out`` is a folder this process can create or write into."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file, not a folder; choose a folder path")
    existing = out
    while not existing.exists():
        existing = existing.parent
    # Try it rather than trust os.access, which says yes to root even on read-only mounts.
    try:
        Path(tempfile.mkdtemp(dir=existing, prefix=".promptsweep-probe-")).rmdir()
    except OSError as err:
        raise ConfigError(
            f"--out {str(out)!r}: cannot write into {str(existing)!r} ({err.strerror}); choose a writable folder"
        ) from err


def check_tracking_uri(uri: str, *, timeout_s: float = TRACKING_TIMEOUT_S) -> None:
    """The MLflow tracking URI is one this sweep can write to: its folder exists, or its server answers."""
    parsed = urlparse(uri)
    scheme = parsed.scheme.split("+")[0]
    if scheme == "sqlite":
        path = uri.removeprefix("sqlite:///")
        if not uri.startswith("sqlite:///") or not Path(path).is_absolute():
            raise ConfigError(f"tracking_uri={uri!r}: a SQLite store needs an absolute path, sqlite:////abs/mlflow.db")
        if not Path(path).parent.is_dir():
            raise ConfigError(
                f"tracking_uri={uri!r}: the folder {str(Path(path).parent)!r} does not exist; create it, or leave "
                "tracking_uri unset for the default <out>/mlflow.db"
            )
    elif scheme in ("http", "https"):
        health = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(health, timeout=timeout_s) as response:
                response.read(64)
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise ResourceError(
                f"tracking_uri={uri!r}: no MLflow server answered {health} within {timeout_s:g} s ({reason}); "
                "start it (clusters/mlflow-server.yaml) or fix the URI"
            ) from err
    elif scheme not in _DATABASE_SCHEMES:
        raise ConfigError(f"tracking_uri={uri!r} is not an MLflow store this sweep can use; use {_URI_FORMS}")


def check_problem(config: ProblemConfig, *, local: bool, gpus_per_trial: float) -> None:
    """The task data, tokenizer, verbalizer, model spec and device of one trial configuration."""
    _check_model_spec(config.model)
    tokenizer = load_tokenizer(config.model)
    verbalizer_ids(tokenizer, config.verbalizer)
    load_task(
        config.task,
        num_classes=len(config.verbalizer),
        k_shot=config.k_shot,
        k_dev=config.k_dev,
        n_test=config.n_test,
        seed=config.seed,
    )
    policy = getattr(config, "policy_model", None)
    if policy is not None and policy != config.model:
        _check_model_spec(policy)
        if load_tokenizer(policy).get_vocab() != tokenizer.get_vocab():
            raise ConfigError(
                f"policy_model={policy!r} and model={config.model!r} have different vocabularies: RLPrompt feeds the "
                "policy's token ids to the task LM, so choose a policy_model with the task LM's tokenizer"
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


def _check_model_spec(spec: str) -> None:
    """A folder holds a model, an asset name is a model asset; hub names are left to the loader."""
    if spec in TOKENIZER_ASSETS:
        raise ModelSpecError(f"model {spec!r} is a tokenizer asset, not a model; model assets: {MODEL_ASSETS}")
    folder = Path(spec).expanduser()
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise ModelSpecError(f"model folder {spec!r} has no config.json; pass a Hugging Face model folder")


def preflight(config: SweepConfig, out: Path, *, local: bool) -> None:
    """Every check of this module for a whole sweep; raises a ``UserError`` naming the first bad value."""
    check_out(out)
    if config.tracking_uri:  # the default store lives in ``out``, which the sweep creates
        check_tracking_uri(config.tracking_uri)
    seen: set[tuple] = set()
    for name, trials in config.fixed_trials().items():
        for fixed in trials:
            tuner_config = make_config(get_tuner(name).config_cls, {**config.trial_values(name), **fixed})
            for replicate in replicate_configs(tuner_config, config.replicates):
                key = (replicate.problem_key(), getattr(replicate, "policy_model", None))
                if key not in seen:
                    seen.add(key)
                    check_problem(replicate, local=local, gpus_per_trial=config.gpus_per_trial)
            prompt = getattr(tuner_config, "prompt_text", None)
            if prompt is not None and not load_tokenizer(tuner_config.model).encode(prompt, add_special_tokens=False):
                raise ConfigError(f"manual prompt {prompt!r} is no token at all under {tuner_config.model!r}")
    logger.info("preflight: %d problem configurations checked", len(seen))
