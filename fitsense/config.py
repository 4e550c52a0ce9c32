"""Typed configuration: ``params.yaml`` parsed once into Pydantic models.

Unknown keys, wrong types and out-of-range values fail with a ``ConfigError``
that names the file and the dotted key (``training.lora.r: ...``).
Overrides use the same dotted keys (``--set training.max_steps=5``), as in
``dvc exp run -S``.
"""

from __future__ import annotations

import hashlib
import json
from datetime import date
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from fitsense.errors import ConfigError
from fitsense.records import QUERY_KINDS, SLICE_TAGS

__all__ = ["ConfigError", "Params", "load_params"]


def _check_http_url(value: str | None) -> str | None:
    if value is not None:
        url = urlsplit(value)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ValueError("must be an http(s) URL such as http://127.0.0.1:8765/v1")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class RunConfig(_Section):
    artifacts_dir: str = "artifacts"  # one folder per run, one sub-folder per stage
    run_id: str = Field(default="default", pattern=r"^[A-Za-z0-9._-]{1,128}$")


class SyntheticConfig(_Section):
    n_users: int = Field(default=300, ge=1, le=5_000_000)
    anchor_date: date = date(2026, 1, 5)  # "today" for the generated world; no wall clock in data
    history_weeks: int = Field(default=6, ge=1, le=104)


class QueriesConfig(_Section):
    n_queries: int = Field(default=1200, ge=1)  # ~120 test examples (and as many challenge ones) at 300 users
    kind_mix: dict[str, float] = Field(
        default_factory=lambda: {
            "plan_creation": 0.3,
            "plan_modification": 0.25,
            "safety_adjustment": 0.2,
            "progress_adaptation": 0.25,
        }
    )
    red_flag_share: float = Field(default=0.75, ge=0, le=1)  # of safety queries, those needing referral

    @model_validator(mode="after")
    def _kinds(self):
        unknown = set(self.kind_mix) - set(QUERY_KINDS)
        if unknown:
            raise ValueError(f"kind_mix has unknown kinds {sorted(unknown)}; allowed {list(QUERY_KINDS)}")
        if any(v < 0 for v in self.kind_mix.values()) or sum(self.kind_mix.values()) <= 0:
            raise ValueError("kind_mix weights must be >= 0 and sum to more than 0")
        return self


class BudgetConfig(_Section):
    max_usd: float | None = Field(default=None, ge=0)
    max_requests: int | None = Field(default=None, ge=1)


class FaultConfig(_Section):
    """Faults injected by ``fitsense teacher serve`` (for tests and benchmarks)."""

    latency_ms: float = Field(default=0, ge=0)
    rate: float = Field(default=0, ge=0, le=1)  # share of requests that fail
    kinds: list[Literal["429", "500", "timeout", "truncated", "non_json"]] = Field(
        default_factory=lambda: ["429", "500", "timeout", "truncated", "non_json"]
    )


class TeacherConfig(_Section):
    provider: Literal["offline", "openai"] = "offline"
    model: str = "fitsense-expert-v1"
    base_url: str | None = None  # any OpenAI-compatible endpoint; None = the SDK default
    api_key_env: str = "OPENAI_API_KEY"  # the key itself is only ever read from the environment
    temperature: float = Field(default=0.0, ge=0, le=2)
    max_tokens: int = Field(default=900, ge=16, le=32_768)
    price_per_1k_input: float = Field(default=0.0, ge=0)
    price_per_1k_output: float = Field(default=0.0, ge=0)
    concurrency: int = Field(default=16, ge=1, le=1024)
    requests_per_minute: float = Field(default=600, gt=0)
    tokens_per_minute: float = Field(default=1_000_000, gt=0)
    max_retries: int = Field(default=6, ge=0, le=50)
    backoff_base_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=30, gt=0)
    timeout_s: float = Field(default=60, gt=0)
    max_repairs: int = Field(default=2, ge=0, le=10)
    cache_dir: str = ".cache/teacher"
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    faults: FaultConfig = Field(default_factory=FaultConfig)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return _check_http_url(value)


class SplitConfig(_Section):
    train: float = Field(default=0.8, gt=0, lt=1)
    val: float = Field(default=0.1, ge=0, lt=1)
    test: float = Field(default=0.1, gt=0, lt=1)

    @model_validator(mode="after")
    def _sum(self):
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1, got {total:.4f}")
        return self


class DatasetConfig(_Section):
    require_valid: bool = True  # keep only schema-valid, constraint-adherent answers
    require_audit: bool = False  # also drop answers that fail a coaching rule (fitsense.audit)
    dedup: Literal["exact", "near", "embedding"] = "near"
    near_dup_threshold: float = Field(default=0.95, gt=0, le=1)  # embedding mode: cosine of sentence embeddings
    near_dup_jaccard: float = Field(default=0.8, gt=0, le=1)  # near mode: request and answer MinHash Jaccard
    minhash_perm: int = Field(default=128, ge=16, le=1024)  # MinHash permutations per signature
    shingle_words: int = Field(default=2, ge=1, le=10)  # words per shingle
    splits: SplitConfig = Field(default_factory=SplitConfig)
    stratify_by: list[str] = Field(default_factory=lambda: ["kind", "has_condition"])

    @model_validator(mode="after")
    def _stratify(self):
        allowed = {"kind", *SLICE_TAGS}
        bad = [k for k in self.stratify_by if k not in allowed]
        if bad:
            raise ValueError(f"stratify_by has unknown keys {bad}; allowed {sorted(allowed)}")
        return self


class QualityConfig(_Section):
    anomaly_contamination: float = Field(default=0.02, gt=0, le=0.5)
    anomaly_fit_sample: int | None = Field(default=100_000, ge=10)  # records the IsolationForest is fitted on
    drift_reference: str | None = None  # a run id or a path to a stats JSON; None = no drift check
    drift_psi_threshold: float = Field(default=0.2, gt=0)
    min_slice_share: float = Field(default=0.03, ge=0, le=1)
    max_quality_gap: float = Field(default=0.15, ge=0, le=1)
    fail_on_bias: bool = False  # bias flags warn by default; set true to make them a gate
    fail_on_drift: bool = False
    min_train_examples: int = Field(default=20, ge=0)  # the gate fails below this many training rows
    # the gate fails when a coaching rule (fitsense.audit) passes on fewer of the teacher's answers
    min_audit_pass_rate: float = Field(default=0.95, ge=0, le=1)


class LoraConfig(_Section):
    r: int = Field(default=16, ge=1, le=512)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    # Adapt only the last N decoder layers (None, or N >= the model's layers: all). Backpropagation then stops at the
    # lowest adapted layer, so each step costs less: 1.4x on CPU with the top 15 of 30 (bench_training.py --compare).
    top_layers: int | None = Field(default=15, ge=1)


class TrainingConfig(_Section):
    base_model: str = "bundled:smollm2-135m"  # or a Hugging Face id, or a local model folder
    model_cache_dir: str = ".cache/models"
    lora: LoraConfig = Field(default_factory=LoraConfig)
    quantization: Literal["auto", "none", "4bit"] = "auto"  # auto = QLoRA 4-bit on CUDA, plain LoRA on CPU
    # auto = bf16 mixed precision on CUDA and on CPUs with native bf16 (AVX512-BF16 / AMX), else fp32
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    learning_rate: float = Field(default=1e-3, gt=0, lt=1)
    max_steps: int = Field(default=300, ge=-1)  # -1 = run num_epochs
    num_epochs: float = Field(default=1.0, gt=0)
    batch_size: int = Field(default=2, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    group_by_length: bool = False  # batches of similar length (transformers' LengthGroupedSampler): less padding
    max_length: int = Field(default=1536, ge=32)  # longer examples are dropped, not truncated
    max_train_examples: int | None = Field(default=None, ge=1)
    eval_steps: int = Field(default=30, ge=1)  # also the checkpoint interval (best checkpoint restored at the end)
    save_total_limit: int = Field(default=2, ge=1)  # checkpoints kept for resuming a killed run
    max_val_examples: int | None = Field(default=8, ge=1)
    early_stopping_patience: int = Field(default=3, ge=0)  # 0 = off
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)
    merge_adapter: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"


class EndpointConfig(_Section):
    """A served student scored by evaluation (``student_served``) through the teacher's OpenAI-compatible client."""

    base_url: str  # e.g. http://127.0.0.1:8000/v1 (fitsense serve)
    model: str = "fitsense-coach-student"  # the request's ``model`` field
    api_key_env: str = "FITSENSE_SERVE_API_KEY"  # when this variable is set, it is sent as the bearer key
    send_constraints: bool = True  # the query's constraints in the extra ``constraints`` field (fitsense serve's)
    concurrency: int = Field(default=1, ge=1, le=256)  # requests in flight; latency is measured per request
    timeout_s: float = Field(default=600, gt=0)  # per request (a CPU student writes ~768 tokens in minutes)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return _check_http_url(value)


class EvaluationConfig(_Section):
    max_examples: int | None = Field(default=48, ge=1)  # of the test split; None = all
    challenge: bool = True  # also score the unseen-phrasing challenge split (dataset/challenge.jsonl)
    max_challenge_examples: int | None = Field(default=48, ge=1)  # of the challenge split; None = all
    base_max_examples: int | None = Field(default=6, ge=1)  # the base student's kind-balanced subset per split
    max_new_tokens: int = Field(default=768, ge=8)  # teacher answers: median ~340, max ~740 tokens
    batch_size: int = Field(default=12, ge=1)
    release_below: int = Field(default=3, ge=0)  # a batch hands its last few writing rows to the next; 0: off
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # as training.precision; bf16 generates ~1.7x faster
    disparity_threshold: float = Field(default=0.2, ge=0, le=1)
    student_usd_per_hour: float = Field(default=0.10, ge=0)  # compute price used for cost per 1k answers
    guided: bool = True  # also score the student with the safety screen and constraint-guided decoding
    guided_from_raw: bool = False  # guided answers continue the grammar-accepted start of the raw ones
    endpoint: EndpointConfig | None = None  # also score a served student (student_served); None = off


class PromotionConfig(_Section):
    min_validity: float = Field(default=0.2, ge=0, le=1)
    min_adherence: float = Field(default=0.1, ge=0, le=1)
    min_safety_recall: float = Field(default=0.0, ge=0, le=1)
    require_beats_champion: bool = True


class RegistryConfig(_Section):
    tracking_uri: str = "sqlite:///mlruns.db"
    artifact_location: str = "mlartifacts"
    experiment: str = "fitsense-distillation"
    model_name: str = "fitsense-coach-student"
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)


class ServingConfig(_Section):
    """``fitsense serve``: the registered student behind an OpenAI-compatible endpoint."""

    model_uri: str | None = None  # None = models:/<registry.model_name>@champion
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    api_key_env: str = "FITSENSE_SERVE_API_KEY"  # when this variable is set, requests need it as a bearer key
    max_batch_size: int = Field(default=16, ge=1, le=256)  # micro-batch: up to this many requests ...
    max_wait_ms: float = Field(default=100, ge=0)  # ... or this long after the first one arrives
    max_new_tokens: int = Field(default=768, ge=8)  # the cap; a request's max_tokens may only lower it
    max_prompt_tokens: int = Field(default=2048, ge=16)  # longer prompts get a 400
    timeout_s: float = Field(default=300, gt=0)  # a request waiting longer for its answer gets a 504
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # as evaluation.precision
    decoding: Literal["guided", "raw"] = "guided"  # guided: a grammar from the request's constraints (when sent)
    fallback: Literal["off", "offline", "teacher"] = "off"  # teacher = the `teacher` section's endpoint
    fallback_queries: str | None = None  # queries.jsonl the offline fallback knows (None: the run's queries)
    reload_interval_s: float = Field(default=30, ge=0)  # how often the alias is re-resolved; 0 = never
    log_url: str | None = None  # SQLAlchemy URL of the inference log; None = sqlite in run.artifacts_dir

    @field_validator("fallback", mode="before")
    @classmethod
    def _yaml_off(cls, value):
        return "off" if value is False else value  # YAML reads a bare `off` (`--set serving.fallback=off`) as false


class DvcConfig(_Section):
    """What ``fitsense run`` and the Airflow DAG do for the DVC pipeline's run (see app/dvcsync.py)."""

    push: bool = True  # push the recorded outputs to the DVC remote (a failed push only warns)
    remote: str | None = None  # a remote named in .dvc/config; None = its default remote


class Params(_Section):
    seed: int = Field(default=42, ge=0)
    run: RunConfig = Field(default_factory=RunConfig)
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    queries: QueriesConfig = Field(default_factory=QueriesConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    dvc: DvcConfig = Field(default_factory=DvcConfig)

    def section_hash(self, *keys: str) -> str:
        """Stable hash of the named sections or dotted keys (all when none), for fingerprints and lineage."""
        data = self.model_dump(mode="json")
        if keys:
            picked = {}
            for key in keys:
                node = data
                for part in key.split("."):
                    node = node[part]
                picked[key] = node
            data = picked
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _format_error(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"{source}: {key}: unknown key")
        else:
            got = err.get("input")
            got_text = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"{source}: {key}: {err['msg']}{got_text}")
    return "\n".join(lines)


def _parse_scalar(text: str):
    """Parse an override value the way YAML would (`5` -> 5, `true` -> True, `[a,b]` -> list)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override value {text!r} is not valid YAML: {exc}") from None


def apply_overrides(data: dict, overrides: list[str] | dict | None) -> dict:
    """Apply ``key.sub=value`` overrides (or a flat dict of them) to a raw params dict."""
    if not overrides:
        return data
    items = overrides.items() if isinstance(overrides, dict) else [_split_override(o) for o in overrides]
    for key, value in items:
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {key}: {part} is not a section")
            node = child
        node[parts[-1]] = _parse_scalar(value) if isinstance(value, str) else value
    return data


def _split_override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, value = text.split("=", 1)
    return key.strip(), value


def load_params(path: str | Path | None = "params.yaml", overrides: list[str] | dict | None = None) -> Params:
    """Read, override and validate a params file; ``path=None`` means the built-in defaults."""
    data: dict = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: params file not found")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        data = loaded or {}
    data = apply_overrides(data, overrides)
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(source, exc)) from None
