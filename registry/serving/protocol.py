"""The seam between serving and a model: ``Answerer.answer_batch(requests) -> answers``.

The server never touches a tokenizer or ``generate`` itself. An ``Answerer``
is one loaded model version with its safety screen; it turns a batch of
``ServeRequest`` into one ``ServeAnswer`` each, in order. The implementation
(``student.StudentAnswerer``) runs the project's one inference path
(``fitsense.evaluation.inference.CoachInference``: a per-request grammar from
``ServeRequest.constraints``, xgrammar-guided decoding); another model or
decoder plugs in here without any change to the HTTP layer, the batcher or the
inference log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from fitsense.records import QueryConstraints


@dataclass(frozen=True)
class ServeRequest:
    messages: list[dict]  # system + user messages, ``{"role", "content"}``
    constraints: QueryConstraints | None = None  # the user's constraints, when the client sent them
    max_new_tokens: int = 768
    response_schema: dict | None = None  # a JSON schema the answer must match (``response_format``)
    user: str | None = None  # the end user's id (OpenAI's ``user`` field), for the inference log


@dataclass(frozen=True)
class ServeAnswer:
    text: str
    prompt_tokens: int
    completion_tokens: int
    decoding: str = "raw"  # raw | guided
    error: str | None = None  # why the request could not be answered (e.g. no safe exercise for its constraints)


@dataclass(frozen=True)
class ScreenDecision:
    refer: bool  # True: a clinician referral is answered instead of a plan
    reason: str | None = None
    flags: list[str] = field(default_factory=list)  # which rules (or the classifier) fired

    @property
    def label(self) -> str:
        return "refer" if self.refer else "pass"


class Screen(Protocol):
    def screen(self, request: ServeRequest) -> ScreenDecision: ...


class Answerer(Protocol):
    """One loaded model version, with the safety screen that ships with it."""

    version: str  # the registered model version, e.g. "3"
    fingerprint: str  # the adapter digest (sha256 of the adapter folder)
    screen: Screen
    system_prompt: str | None  # added to requests that send none; None: the project's SYSTEM_PROMPT

    def answer_batch(self, requests: list[ServeRequest]) -> list[ServeAnswer]: ...

    def prompt_tokens(self, messages: list[dict]) -> int: ...

