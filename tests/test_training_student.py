"""The bundled student: GGUF -> safetensors conversion (real 135M model), reuse of the cached copy, base model specs."""

from __future__ import annotations

import time

import pytest

from fitsense.config import ConfigError, TrainingConfig


def test_local_folder_is_used_as_is(tiny_model_dir):
    from fitsense.training.student import resolve_base_model

    assert resolve_base_model(TrainingConfig(base_model=str(tiny_model_dir))) == tiny_model_dir


def test_bad_base_model_specs_are_clear(tmp_path):
    from fitsense.training.student import resolve_base_model

    with pytest.raises(ConfigError, match="unknown bundled model 'gpt-9'"):
        resolve_base_model(TrainingConfig(base_model="bundled:gpt-9"))
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_base_model(TrainingConfig(base_model=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a Hugging Face model folder"):
        resolve_base_model(TrainingConfig(base_model=str(tmp_path / "empty")))
    # Offline (tests run with HF_HUB_OFFLINE=1): a hub id that is not cached fails with a clear message.
    with pytest.raises(ConfigError, match="downloading it from the Hugging Face Hub failed"):
        resolve_base_model(TrainingConfig(base_model="nobody-xyz/not-a-model"))


@pytest.mark.slow
def test_bundled_gguf_converts_once_to_an_equivalent_safetensors_model(tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    from fitsense.training import student
    from fitsense.training.student import bundled_gguf_path

    cfg = TrainingConfig(model_cache_dir=str(tmp_path / "models"))
    started = time.perf_counter()
    path = student.resolve_base_model(cfg)
    assert time.perf_counter() - started < 120
    assert path == tmp_path / "models" / "smollm2-135m-instruct"
    assert (path / "model.safetensors").exists() and (path / "config.json").exists()
    assert not list(path.parent.glob(".smollm2*")), "temporary folders left behind"

    model, tokenizer = student.load_student(path, device="cpu", precision="fp32")  # exact comparison below
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)

    gguf = bundled_gguf_path()
    reference = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    enc = tokenizer(["Plan a squat day."], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model(**enc).logits, reference(**enc).logits, atol=1e-4)

    def no_second_conversion(*args, **kwargs):
        raise AssertionError("the cached copy was not reused")

    monkeypatch.setattr(student, "convert_bundled_gguf", no_second_conversion)
    assert student.resolve_base_model(cfg) == path
