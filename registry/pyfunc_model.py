"""The fine-tuned student as an MLflow pyfunc model (logged as "models from code").

MLflow copies this file into the logged model, so it imports nothing from
``fitsense``: only MLflow, torch, transformers and PEFT. The LoRA adapter is a
model artifact; the base weights are referenced by ``model_config``
(``base_model_path``, a local folder, falling back to ``base_model`` as a
Hugging Face id) rather than copied into every version.

Input: a list of conversations (each a list of ``{"role", "content"}`` messages,
system + user), a list of user texts, or a DataFrame with a ``messages`` or
``prompt`` column. Output: one answer text (plan JSON) per input.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
from mlflow.pyfunc import PythonModel


class CoachStudentModel(PythonModel):
    def load_context(self, context):
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        cfg = context.model_config or {}
        adapter = context.artifacts["adapter"]
        base = cfg.get("base_model_path")
        if not base or not Path(base).exists():
            base = cfg["base_model"]
            if base.startswith("bundled:"):
                # The bundled student is converted from a GGUF by fitsense itself.
                try:
                    from fitsense.config import TrainingConfig
                    from fitsense.training.student import resolve_base_model
                except ImportError as exc:
                    raise RuntimeError(f"base model {base!r} needs the fitsense-distill package, or a "
                                       "base_model_path folder that exists on this machine") from exc
                base = str(resolve_base_model(TrainingConfig(base_model=base)))
        tok_dir = adapter if (Path(adapter) / "tokenizer_config.json").exists() else base
        self.tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        self.model = PeftModel.from_pretrained(model, adapter).eval()
        self.system_prompt = cfg.get("system_prompt")
        self.max_new_tokens = int(cfg.get("max_new_tokens", 400))
        self.batch_size = int(cfg.get("batch_size", 8))

    def _conversations(self, model_input) -> list[list[dict]]:
        if hasattr(model_input, "columns"):  # pandas DataFrame
            column = "messages" if "messages" in model_input.columns else "prompt"
            model_input = model_input[column].tolist()
        if isinstance(model_input, (str, dict)):
            model_input = [model_input]
        conversations = []
        for item in model_input:
            if isinstance(item, str):
                try:
                    item = json.loads(item)
                except json.JSONDecodeError:
                    item = [{"role": "user", "content": item}]
            if isinstance(item, dict):
                item = item.get("messages") or [{"role": "user", "content": item["prompt"]}]
            msgs = [dict(m) for m in item if m["role"] != "assistant"]
            if self.system_prompt and msgs[0]["role"] != "system":
                msgs.insert(0, {"role": "system", "content": self.system_prompt})
            conversations.append(msgs)
        return conversations

    def predict(self, context, model_input, params=None):
        import torch

        max_new = int((params or {}).get("max_new_tokens", self.max_new_tokens))
        answers = []
        conversations = self._conversations(model_input)
        for start in range(0, len(conversations), self.batch_size):
            batch = conversations[start : start + self.batch_size]
            texts = [self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in batch]
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.inference_mode():
                out = self.model.generate(**enc, max_new_tokens=max_new, do_sample=False,
                                          pad_token_id=self.tokenizer.pad_token_id)
            new = out[:, enc["input_ids"].shape[1] :]
            answers.extend(self.tokenizer.batch_decode(new, skip_special_tokens=True))
        return answers


mlflow.models.set_model(CoachStudentModel())
