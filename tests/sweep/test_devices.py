"""A trial's device follows the GPUs Ray gave it, never merely the GPUs the machine has."""

from __future__ import annotations

import pytest

from objectives.errors import UserError
from sweep.devices import resolve_device


@pytest.mark.parametrize(
    ("requested", "gpu_ids", "cuda_available", "expected"),
    [
        # auto: CUDA only where Ray gave the trial a GPU, whether or not the machine has one.
        ("auto", [], True, "cpu"),
        ("auto", [], False, "cpu"),
        ("auto", ["0"], True, "cuda"),
        ("auto", [3], True, "cuda"),  # a fractional share reports its GPU's id
        ("auto", ["0", "1"], True, "cuda"),
        ("auto", ["0"], False, "cpu"),  # Ray counted a GPU torch cannot use: CPU, with a warning
        ("cpu", ["0"], True, "cpu"),
        ("cpu", [], False, "cpu"),
        ("cuda", ["2"], True, "cuda"),
        ("cuda:1", ["0", "1"], True, "cuda:1"),
        ("CUDA", ["0"], True, "cuda"),
    ],
)
def test_resolution(requested, gpu_ids, cuda_available, expected):
    assert resolve_device(requested, gpu_ids, cuda_available) == expected


@pytest.mark.parametrize("cuda_available", [True, False])
def test_forced_cuda_without_a_given_gpu_names_gpus_per_trial(cuda_available):
    with pytest.raises(UserError, match=r"device='cuda' but Ray gave this trial no GPU.*gpus_per_trial"):
        resolve_device("cuda", [], cuda_available)


def test_forced_cuda_where_torch_has_no_cuda_says_so():
    with pytest.raises(UserError, match=r"torch cannot use CUDA in this worker"):
        resolve_device("cuda", ["0"], False)


def test_a_gpu_index_beyond_the_given_ones_is_refused():
    with pytest.raises(UserError, match=r"sees only the 1 GPU\(s\) Ray gave it, as cuda:0..cuda:0"):
        resolve_device("cuda:1", ["5"], True)


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "cuda:-1", "tpu:0"])
def test_not_a_device(bad):
    with pytest.raises(UserError, match=rf"device={bad!r} is not a device; use auto, cpu, cuda or cuda:N"):
        resolve_device(bad, ["0"], True)
