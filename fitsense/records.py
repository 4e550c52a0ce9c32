"""Record contracts passed between stages (one JSON object per line in JSONL files).

- ``CoachingQuery``: written by the query stage, read by the teacher.
- ``TeacherRecord``: written by teacher capture, read by the dataset build and quality.
- ``DistillRecord``: one example in a dataset split, read by training and evaluation.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

QueryKind = Literal["plan_creation", "plan_modification", "safety_adjustment", "progress_adaptation"]
QUERY_KINDS: tuple[str, ...] = ("plan_creation", "plan_modification", "safety_adjustment", "progress_adaptation")

# Slice tags every query carries; bias slicing and per-slice evaluation group by these.
SLICE_TAGS: tuple[str, ...] = (
    "age_band",
    "sex",
    "activity_level",
    "experience",
    "primary_goal",
    "has_condition",
    "has_injury",
    "equipment_tier",
)


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChatMessage(_Record):
    role: Literal["system", "user", "assistant"]
    content: str


class QueryConstraints(_Record):
    """What a correct answer to one query must honour."""

    days_per_week: int = Field(ge=1, le=7)
    session_minutes: int = Field(ge=10, le=180)
    max_exercises_per_day: int = Field(ge=1, le=12)
    available_equipment: list[str]
    avoid_exercises: list[str] = Field(default_factory=list)
    rir_floor: int = Field(ge=0, le=5)
    referral_required: bool = False


class Profile(_Record):
    age: int = Field(ge=13, le=100)
    sex: Literal["female", "male"]
    height_cm: float
    weight_kg: float
    activity_level: Literal["sedentary", "light", "moderate", "active", "very_active"]
    experience: Literal["beginner", "intermediate", "advanced"]


class Injury(_Record):
    site: str  # one of catalogue.INJURY_SITES
    status: Literal["active", "recovering"]  # both are avoided


class ExerciseTrend(_Record):
    """One exercise's recent logged performance, oldest week first."""

    name: str
    weekly_top_reps: list[int]
    weekly_avg_rir: list[float]
    trend: Literal["progressing", "stalled", "regressing"]


class Symptom(_Record):
    text: str  # what the user reports, e.g. "chest pain when climbing stairs"
    red_flag: bool  # True: stop and refer to a clinician


class QueryContext(_Record):
    """Structured facts a query's prompt was written from; the offline teacher reads these."""

    profile: Profile
    primary_goal: Literal["fat_loss", "muscle_gain", "strength", "endurance", "general_health"]
    goals: list[str]  # by priority, primary first
    conditions: list[str] = Field(default_factory=list)  # keys of catalogue.CONDITIONS
    injuries: list[Injury] = Field(default_factory=list)
    medications: list[str] = Field(default_factory=list)
    equipment: list[str]  # catalogue.EQUIPMENT names the user has
    current_plan: dict | None = None  # a CoachAnswer dict (plan_modification, progress_adaptation)
    modification: str | None = None  # plan_modification: what the user wants changed, in words
    recent_trends: list[ExerciseTrend] = Field(default_factory=list)  # progress_adaptation
    new_symptom: Symptom | None = None  # safety_adjustment with a symptom
    new_injury: Injury | None = None  # safety_adjustment with a new injury (also listed in injuries)
    new_condition: str | None = None  # safety_adjustment with a new diagnosis (also in conditions)


class Phrasing(_Record):
    """Which wording of the phrasing bank a query's user message uses (``fitsense.data.phrasings``)."""

    intent: str  # what the request asks, e.g. "red_flag.chest_pain", "change.fewer_days"
    template: str  # the paraphrase: "<intent>.s<NN>" (seen) or "<intent>.h<NN>" (held out: challenge split only)
    held_out: bool = False
    slots: dict[str, str | int] = Field(default_factory=dict)  # the values the template was filled with
    style: str = "plain"  # register: terse | plain | chatty
    units: str = "kg/cm"  # kg or lb / cm or ft-in
    fact_order: list[int] = Field(default_factory=list)  # order of the profile/health/equipment/schedule/avoid lines
    typo: bool = False


class CoachingQuery(_Record):
    query_id: str
    user_id: int
    kind: QueryKind
    messages: list[ChatMessage]  # system + user
    slices: dict[str, str]  # every key of SLICE_TAGS, values as strings
    constraints: QueryConstraints
    context: QueryContext
    phrasing: Phrasing | None = None  # None: a hand-written message, not from the phrasing bank


TeacherStatus = Literal["ok", "failed"]


class TeacherRecord(_Record):
    query_id: str
    user_id: int
    kind: QueryKind
    teacher_model: str
    status: TeacherStatus
    response_text: str | None = None  # the raw final response (after repairs)
    answer: dict | None = None  # the validated CoachAnswer as a dict, when status == "ok"
    failure_reason: str | None = None
    schema_valid: bool = False
    constraint_violations: list[str] = Field(default_factory=list)
    safety_flags: list[str] = Field(default_factory=list)
    referral_required: bool = False
    attempts: int = 0  # HTTP attempts including retries
    repairs: int = 0  # repair prompts sent after invalid answers
    latency_s: float | None = None  # None: not applicable (the offline teacher answers in-process)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cache_hit: bool = False


class DistillRecord(_Record):
    """One chat-format training example plus the metadata evaluation slices by."""

    messages: list[ChatMessage]  # system, user, assistant
    query_id: str
    user_id: int
    kind: QueryKind
    slices: dict[str, str]
    constraints: QueryConstraints
    teacher_model: str
    phrasing: Phrasing | None = None  # the query's wording (the challenge split: a held-out template)
