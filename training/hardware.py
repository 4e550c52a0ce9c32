"""Hardware: which device and quantization a training run uses, and the base model loaded for it.

QLoRA on CUDA (4-bit NF4, double quantisation, bf16 compute, prepared with
``prepare_model_for_kbit_training``); plain LoRA elsewhere (float32 weights on
the CPU, bf16 on CUDA). 4bit without CUDA is a ``ConfigError``.
"""

from __future__ import annotations

from pathlib import Path

from fitsense.config import TrainingConfig
from fitsense.errors import ConfigError
from fitsense.training.student import resolve_device


def plan_hardware(cfg: TrainingConfig) -> tuple[str, str]:
    """(device, quantization) actually used: ``4bit`` or ``none``; clear errors for impossible requests."""
    device = resolve_device(cfg.device)
    if cfg.quantization == "4bit" and device != "cuda":
        raise ConfigError(
            "training.quantization: 4bit (QLoRA) needs a CUDA GPU and none is in use; "
            "set training.quantization=auto or none to train plain LoRA on the CPU"
        )
    quant = "4bit" if device == "cuda" and cfg.quantization in ("auto", "4bit") else "none"
    return device, quant


def load_base_for_training(model_dir: Path, device: str, quantization: str):
    import torch
    from transformers import AutoModelForCausalLM

    if quantization == "4bit":
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        bnb = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )
        model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), quantization_config=bnb, dtype=torch.bfloat16, device_map={"": 0}
        )
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    return model.to(device)
