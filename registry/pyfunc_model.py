"""The fine-tuned student as an MLflow pyfunc model (logged as "models from code").

It answers through the project's one inference path
(``fitsense.evaluation.inference.CoachInference``: safety screen, per-request
grammar, chat template, generation, parsing, constraint check), so it needs the
``fitsense-distill`` package installed where the model is loaded. The LoRA
adapter and the safety screen are model artifacts; the base weights are
referenced by ``model_config`` (``base_model_path``, a local folder, falling back
to ``base_model``) rather than copied into every version. The adapter is merged
into the base weights at load, in bf16 where the CPU has native bf16.

Input: a list of conversations (each a list of ``{"role", "content"}`` messages,
system + user), of user texts, of ``{"messages" | "prompt", "constraints"}``
dicts, or a DataFrame with a ``messages`` or ``prompt`` column and an optional
``constraints`` column (a ``QueryConstraints`` dict per row; an unknown field is
rejected by name). Params (declared in the model signature):
``max_new_tokens`` and ``decoding`` (``guided``: the screen and the request's
grammar, needs constraints; ``raw``: the student alone).

Output: one dict per input row: ``text`` (the plan JSON), ``error`` (why the row
was not answered, e.g. no safe exercise for its equipment and avoid list),
``valid``, ``violations`` and ``screen_refer``.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
from mlflow.pyfunc import PythonModel


class CoachStudentModel(PythonModel):
    def load_context(self, context):
        from fitsense.config import TrainingConfig
        from fitsense.evaluation.inference import CoachInference
        from fitsense.training.screen import load_screen
        from fitsense.training.student import load_student, resolve_base_model

        cfg = context.model_config or {}
        base = cfg.get("base_model_path")
        if not base or not Path(base).exists():
            base = str(resolve_base_model(TrainingConfig(base_model=cfg["base_model"])))
        model, tokenizer = load_student(base, context.artifacts["adapter"], device="cpu", precision="auto")
        model = model.merge_and_unload().eval()
        self.engine = CoachInference(model, tokenizer, load_screen(context.artifacts.get("screen")))
        self.system_prompt = cfg.get("system_prompt")
        self.max_new_tokens = int(cfg.get("max_new_tokens", 768))
        self.batch_size = int(cfg.get("batch_size", 8))

    def _requests(self, model_input) -> list:
        from fitsense.evaluation.inference import CoachRequest, parse_constraints

        if hasattr(model_input, "columns"):  # pandas DataFrame
            column = "messages" if "messages" in model_input.columns else "prompt"
            constraints = model_input["constraints"].tolist() if "constraints" in model_input.columns \
                else [None] * len(model_input)
            model_input = [{column: m, "constraints": c} for m, c in zip(model_input[column].tolist(), constraints)]
        if isinstance(model_input, (str, dict)):
            model_input = [model_input]
        requests = []
        for item in model_input:
            constraints = None
            if isinstance(item, str):
                try:
                    item = json.loads(item)
                except json.JSONDecodeError:
                    item = [{"role": "user", "content": item}]
            if isinstance(item, dict):
                constraints = item.get("constraints")
                messages = item.get("messages")
                if isinstance(messages, str):
                    messages = json.loads(messages)
                item = messages or [{"role": "user", "content": item["prompt"]}]
            msgs = [dict(m) for m in item if m["role"] != "assistant"]
            if self.system_prompt and msgs[0]["role"] != "system":
                msgs.insert(0, {"role": "system", "content": self.system_prompt})
            requests.append(CoachRequest(msgs, parse_constraints(constraints)))
        return requests

    def predict(self, context, model_input, params=None):
        params = params or {}
        replies = self.engine.answer(self._requests(model_input), decoding=params.get("decoding", "guided"),
                                     max_new_tokens=int(params.get("max_new_tokens", self.max_new_tokens)),
                                     batch_size=self.batch_size)
        return [{"text": r.text, "error": r.error, "valid": r.answer is not None, "violations": r.violations,
                 "screen_refer": r.screen_refer} for r in replies]


mlflow.models.set_model(CoachStudentModel())
