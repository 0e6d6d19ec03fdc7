"""Model specs resolve to frozen LMs, once per process, with clear errors for specs that cannot work."""

from __future__ import annotations

import pytest
import torch

from objectives.models import ModelSpecError, load_lm, select_device


def test_tiny_gpt2_is_frozen_cached_and_uses_the_real_gpt2_tokenizer(tiny_lm):
    assert load_lm("tiny-gpt2", device="cpu") is tiny_lm
    assert not any(p.requires_grad for p in tiny_lm.model.parameters())
    assert tiny_lm.tokenizer.encode("Hello world") == [15496, 995]
    assert tiny_lm.embeddings.shape == (50257, 64)


def test_loading_does_not_touch_the_global_rng(tiny_lm):
    from objectives.models import tiny_gpt2

    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    tiny_gpt2(seed=7)
    assert torch.rand(1) == expected


def test_folder_spec(tmp_path, tiny_lm):
    tiny_lm.model.save_pretrained(tmp_path)
    tiny_lm.tokenizer.save_pretrained(tmp_path)
    lm = load_lm(str(tmp_path), device="cpu")
    torch.testing.assert_close(lm.embeddings, tiny_lm.embeddings)


def test_unknown_spec_lists_the_offline_assets():
    with pytest.raises(ModelSpecError, match=r"smollm2-135m, tiny-gpt2"):
        load_lm("no-such-org/no-such-model-xyz", device="cpu")


def test_missing_folder_is_named(tmp_path):
    missing = str(tmp_path / "nope" / "model")
    with pytest.raises(ModelSpecError, match="does not exist"):
        load_lm(missing, device="cpu")


def test_tokenizer_asset_is_not_a_model():
    with pytest.raises(ModelSpecError, match="tokenizer asset"):
        load_lm("gpt2-tokenizer", device="cpu")


def test_device_selection():
    assert select_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert select_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="CUDA is not available"):
            select_device("cuda")


def test_cpu_models_stay_fp32(tiny_lm):
    """The CPU keeps every weight fp32 and runs no autocast: CPU results stay what they were, bit for bit."""
    assert tiny_lm.compute_dtype == torch.float32
    assert {p.dtype for p in tiny_lm.model.parameters()} == {torch.float32}
    with tiny_lm.autocast():
        assert not torch.is_autocast_cpu_enabled()


def test_deterministic_flag(monkeypatch):
    from objectives.errors import UserError
    from objectives.models import DETERMINISTIC_ENV, deterministic_requested

    monkeypatch.delenv(DETERMINISTIC_ENV, raising=False)
    assert not deterministic_requested()  # off by default
    for value, expected in (("1", True), ("true", True), ("0", False), ("", False), ("off", False)):
        monkeypatch.setenv(DETERMINISTIC_ENV, value)
        assert deterministic_requested() is expected
    monkeypatch.setenv(DETERMINISTIC_ENV, "maybe")
    with pytest.raises(UserError, match="PROMPTSWEEP_DETERMINISTIC='maybe' is not a switch; set it to 1"):
        deterministic_requested()


def test_restored_state_follows_a_device_except_kept_keys():
    from objectives.models import to_device

    generator = torch.Generator().get_state()
    state = {
        "soft": torch.ones(2),
        "best": {"payload": (torch.tensor([1, 2]), [torch.zeros(1)])},
        "generator": generator,
    }
    moved = to_device(state, torch.device("meta"), keep=frozenset({"generator"}))
    assert moved["soft"].device.type == "meta" and moved["generator"] is generator
    ids, rest = moved["best"]["payload"]
    assert ids.device.type == "meta" and rest[0].device.type == "meta"
