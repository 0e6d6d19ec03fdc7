"""Which device a trial runs on, from what it asked for and the GPUs Ray gave it.

Ray 2.60 no longer hides GPUs from a worker given none (``CUDA_VISIBLE_DEVICES`` is left as the node has it),
so "CUDA is available" does not mean "this trial may use a GPU": a trial with ``gpus_per_trial=0`` that took
the first visible GPU would run beside trials Ray did give it, uncounted. The rule here reads only what Ray
allocated (``ray.get_gpu_ids()``, passed in: objectives/ and tuners/ never import Ray):

- ``auto``: CUDA exactly when Ray gave the trial a GPU (a fraction counts) and torch can use it, else CPU;
- ``cpu``: the CPU, whatever Ray gave;
- ``cuda`` / ``cuda:N``: CUDA, and a clear error when Ray gave the trial no GPU (the fix: ``gpus_per_trial``).

Inside a trial Ray sets ``CUDA_VISIBLE_DEVICES`` to the GPUs it gave, so they are ``cuda:0 .. cuda:n-1`` there.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from objectives.errors import ConfigError

logger = logging.getLogger(__name__)


def resolve_device(requested: str, gpu_ids: Sequence[str | int], cuda_available: bool) -> str:
    """The device string a trial's config should carry: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Args:
        requested: the config's ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``).
        gpu_ids: the GPUs Ray gave the trial (``ray.get_gpu_ids()``); empty with ``gpus_per_trial=0``.
        cuda_available: ``torch.cuda.is_available()`` in the trial's process.

    Raises:
        ConfigError: a device that is not one, or CUDA asked for where Ray gave no GPU or torch has no CUDA.
    """
    text = requested.strip().lower()
    given = len(gpu_ids)
    if text == "auto":
        if given and not cuda_available:
            # Ray counted a GPU for this trial but this process's torch cannot use it (a CPU-only torch build,
            # or a driver problem): run, on the CPU, rather than fail a sweep that said "auto".
            logger.warning(
                "Ray gave this trial GPU(s) %s but torch.cuda.is_available() is False here; running on the CPU",
                ",".join(str(g) for g in gpu_ids),
            )
        return "cuda" if given and cuda_available else "cpu"
    if text == "cpu":
        return "cpu"
    if text != "cuda" and not text.startswith("cuda:"):
        raise ConfigError(f"device={requested!r} is not a device; use auto, cpu, cuda or cuda:N")
    index = 0
    if text.startswith("cuda:"):
        try:
            index = int(text.split(":", 1)[1])
        except ValueError:
            index = -1
        if index < 0:
            raise ConfigError(f"device={requested!r} is not a device; use auto, cpu, cuda or cuda:N")
    if not given:
        raise ConfigError(
            f"device={requested!r} but Ray gave this trial no GPU (gpus_per_trial=0): set gpus_per_trial to 1, or "
            "a fraction such as 0.25 to share a GPU, or use device=auto (CUDA only where a GPU is given) or device=cpu"
        )
    if not cuda_available:
        raise ConfigError(
            f"device={requested!r}: Ray gave this trial GPU(s) {','.join(str(g) for g in gpu_ids)} but torch cannot "
            "use CUDA in this worker (a CPU-only torch build?); install a CUDA build of torch on the workers or use "
            "device=auto"
        )
    if index >= given:
        raise ConfigError(
            f"device={requested!r}: this trial sees only the {given} GPU(s) Ray gave it, as cuda:0..cuda:{given - 1}; "
            "use device=cuda (its first GPU) or raise gpus_per_trial"
        )
    return text
