"""A registered model version as an ``Answerer``: the adapter and screen from MLflow, on the one inference path.

``resolve_model_uri`` turns ``models:/<name>@<alias>`` or ``models:/<name>/<version>``
into a concrete version (number and adapter digest); ``load_version``
downloads that version's artifacts and loads base + adapter with
``fitsense.training.student.load_student``, the loader evaluation uses. The
adapter is folded into the weights (as evaluation does) so each decoding step
costs what the base model's does. Answers go through
``fitsense.evaluation.inference.CoachInference``, the path evaluation and the
pyfunc use: guided decoding (``serving.decoding``) for a request that carries
constraints, raw decoding for one that does not.
"""

from __future__ import annotations

import copy
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from fitsense.config import Params
from fitsense.errors import LineageError
from fitsense.evaluation.inference import CoachInference, CoachRequest
from fitsense.registry.register import UnknownVersionError, resolve_version
from fitsense.registry.serving.protocol import ServeAnswer, ServeRequest
from fitsense.registry.serving.screen import VersionScreen, load_screen

log = logging.getLogger(__name__)

MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))$")


class ModelUriError(LineageError):
    """A model URI that is malformed or does not resolve to a registered version."""


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    fingerprint: str  # the adapter digest the version was registered with
    uri: str  # what was asked for (an alias follows the champion, a number stays put)

    @property
    def model_id(self) -> str:
        return f"{self.name}/{self.version}"


def default_model_uri(params: Params) -> str:
    return params.serving.model_uri or f"models:/{params.registry.model_name}@champion"


def resolve_model_uri(params: Params, uri: str) -> ModelRef:
    match = MODEL_URI.match(uri)
    if match is None:
        raise ModelUriError(f"model URI {uri!r}: expected models:/<name>@<alias> or models:/<name>/<version>")
    from mlflow import MlflowClient

    from fitsense.tracking import setup_mlflow

    setup_mlflow(params)
    name = match["name"]
    try:
        mv = resolve_version(MlflowClient(), name, match["alias"] or match["version"])
    except UnknownVersionError as exc:
        raise ModelUriError(f"model URI {uri!r} does not resolve in {params.registry.tracking_uri}: {exc}") from None
    return ModelRef(name=name, version=str(mv.version), fingerprint=(mv.tags or {}).get("adapter_sha256", ""),
                    uri=uri)


def _pyfunc_flavor(model_dir: Path) -> dict:
    """The logged model's python_function flavor: its ``config`` and its ``artifacts`` (the adapter, ...)."""
    from mlflow.models import Model

    return Model.load(str(model_dir)).flavors.get("python_function", {})


def _base_model_path(config: dict, params: Params) -> Path:
    base = config.get("base_model_path")
    if base and Path(base).exists():
        return Path(base)
    from fitsense.config import TrainingConfig
    from fitsense.training.student import resolve_base_model

    spec = config.get("base_model") or params.training.base_model
    return resolve_base_model(TrainingConfig(base_model=spec, model_cache_dir=params.training.model_cache_dir))


class StudentAnswerer:
    """One registered version, loaded: greedy decoding in batches, guided by each request's constraints."""

    def __init__(self, ref: ModelRef, model, tokenizer, seed: int, model_dir: Path, screen: VersionScreen,
                 decoding: str = "guided", system_prompt: str | None = None):
        self.ref = ref
        self.system_prompt = system_prompt  # the prompt the version was trained with (its model config)
        self.screen = screen
        self.decoding = decoding
        self.engine = CoachInference(model, tokenizer, screen.safety)
        self.version = ref.version
        self.fingerprint = ref.fingerprint
        self.model_dir = model_dir
        self.model, self.tokenizer, self.seed = model, tokenizer, seed
        self._lock = threading.Lock()  # one generate at a time per model
        # Prompts are measured on the event loop while a batch generates: a Rust tokenizer is not safe to
        # share between threads that change its padding, so counting uses its own copy.
        self._counter = copy.deepcopy(tokenizer)

    def prompt_tokens(self, messages: list[dict]) -> int:
        text = self._counter.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return len(self._counter(text, add_special_tokens=False)["input_ids"])

    def answer_batch(self, requests: list[ServeRequest]) -> list[ServeAnswer]:
        # Rows of one generate call share max_new_tokens and decoding: group by them, keep the request order.
        out: list[ServeAnswer | None] = [None] * len(requests)
        groups: dict[tuple[int, str], list[int]] = {}
        for i, r in enumerate(requests):
            decoding = self.decoding if r.constraints is not None else "raw"  # a grammar needs constraints
            groups.setdefault((r.max_new_tokens, decoding), []).append(i)
        with self._lock:
            for (max_new, decoding), rows in groups.items():
                replies = self.engine.answer([CoachRequest(requests[i].messages, requests[i].constraints)
                                              for i in rows], decoding=decoding, max_new_tokens=max_new,
                                             batch_size=len(rows), seed=self.seed, label=f"serve v{self.version}")
                for i, reply in zip(rows, replies):
                    out[i] = ServeAnswer(text=reply.text or "", prompt_tokens=reply.prompt_tokens,
                                         completion_tokens=reply.completion_tokens, decoding=decoding,
                                         error=reply.error)
        return out  # type: ignore[return-value]


def load_version(params: Params, ref: ModelRef) -> StudentAnswerer:
    """Download ``ref``'s artifacts and load its base model + adapter for inference."""
    import mlflow

    from fitsense.training.student import load_student
    from fitsense.tracking import setup_mlflow

    setup_mlflow(params)
    model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{ref.name}/{ref.version}"))
    flavor = _pyfunc_flavor(model_dir)
    adapter_path = (flavor.get("artifacts") or {}).get("adapter", {}).get("path")
    adapter = model_dir / adapter_path if adapter_path else None
    if adapter is None or not adapter.exists():
        raise ModelUriError(f"{ref.model_id}: the logged model in {model_dir} has no adapter artifact")
    config = flavor.get("config") or {}
    base = _base_model_path(config, params)
    model, tokenizer = load_student(base, adapter, device=params.training.device, precision=params.serving.precision)
    model = model.merge_and_unload()
    log.info("loaded %s (adapter %s) from %s", ref.model_id, ref.fingerprint[:12], base)
    return StudentAnswerer(ref, model, tokenizer, params.seed, model_dir, load_screen(model_dir, flavor),
                           decoding=params.serving.decoding, system_prompt=config.get("system_prompt"))
