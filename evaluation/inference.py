"""The one inference path: screen -> grammar -> chat template -> generate -> parse -> check.

Evaluation, the registered MLflow model (``registry/pyfunc_model.py``) and
serving all answer coaching requests through ``CoachInference.answer``:

1. the safety screen (``fitsense.training.screen``) reads each request's user text;
2. with ``decoding="guided"``, each request gets the grammar of its constraints
   (``fitsense.plan_grammar.constrained_plan_schema``; the referral branch when the
   screen fired or the constraints require a referral), compiled by xgrammar once
   per constraint key and cached;
3. generation (``fitsense.evaluation.generate.generate_answers``): the chat
   template, batched greedy decoding, one grammar per row when guided;
4. the answer is parsed against the plan schema and checked against the constraints;
5. guided only: given the raw replies to the same requests (``answer(..., raw=...)``), each
   guided answer keeps the longest start of its raw answer that its grammar accepts, since greedy
   decoding under the grammar writes exactly those tokens too, and generates only the rest;
6. guided only: an answer whose session ran long (a sum the plain grammar cannot bound) is
   generated once more under the session-bounded grammar (``bound_session=True``), which
   cannot run long; ``CoachReply.regenerated`` marks it.

``raw`` decoding is the student alone: the screen's verdict is reported
(``CoachReply.screen_refer``) but does not change the answer. A request that
cannot be answered (no usable exercise, guided without constraints) gets a
``CoachReply`` with ``error`` set; the rest of its batch is still answered.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

from pydantic import ValidationError

from fitsense.constraints import check_answer, violation_code
from fitsense.errors import UserError
from fitsense.evaluation.generate import Generation, generate_answers, prompt_messages, stop_token_ids
from fitsense.plan import AnswerParseError, CoachAnswer, parse_coach_answer
from fitsense.plan_grammar import NoSafeExerciseError, constrained_plan_schema, grammar_key
from fitsense.records import QueryConstraints
from fitsense.training.screen import SafetyScreen, user_text

log = logging.getLogger(__name__)

Decoding = Literal["raw", "guided"]
DECODINGS: tuple[str, ...] = ("raw", "guided")


class RequestError(UserError, ValueError):
    """A request that cannot be answered as sent (unknown constraint field, unknown decoding)."""


def parse_constraints(data: dict | QueryConstraints | None) -> QueryConstraints | None:
    """A request's constraints, validated; an unknown or invalid field is named."""
    if data is None or isinstance(data, QueryConstraints):
        return data
    if isinstance(data, str):
        data = json.loads(data)
    unknown = sorted(set(data) - set(QueryConstraints.model_fields))
    if unknown:
        raise RequestError(f"constraints: unknown field {', '.join(map(repr, unknown))}; "
                           f"allowed: {', '.join(QueryConstraints.model_fields)}")
    try:
        return QueryConstraints.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise RequestError(f"constraints.{'.'.join(map(str, first['loc']))}: {first['msg']}") from None


@dataclass
class CoachRequest:
    messages: list[dict]  # system + user (a trailing assistant turn is ignored)
    constraints: QueryConstraints | None = None


@dataclass
class CoachReply:
    text: str | None  # the generated answer; None when the request got an error
    decoding: str
    screen_refer: bool = False  # the safety screen's verdict
    screen_rules: list[str] = field(default_factory=list)
    answer: CoachAnswer | None = None  # parsed, when schema-valid
    parse_error: str | None = None
    violations: list[str] | None = None  # None without constraints to check
    error: str | None = None  # why the request was not answered
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    regenerated: bool = False  # guided: the first answer's session ran long; this one is session-bounded
    shared_tokens: int = 0  # guided with raw replies given: the leading tokens taken from the raw answer
    token_ids: list[int] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("token_ids")
        out["answer"] = self.answer.model_dump(mode="json", exclude_none=True) if self.answer else None
        return out


class GrammarCache:
    """Compiled grammars by constraint key (the first compile ~1 s, later ones ~0.1 s; a hit is free)."""

    def __init__(self, tokenizer, vocab_size: int | None = None):
        import xgrammar as xgr

        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self.compiler = xgr.GrammarCompiler(info)
        self.grammars: dict[str, object] = {}
        self.compile_s = 0.0

    def get(self, constraints: QueryConstraints, referral: bool, bound_session: bool = False):
        key = grammar_key(constraints, referral, bound_session=bound_session)
        if key not in self.grammars:
            # raises NoSafeExerciseError
            schema = constrained_plan_schema(constraints, referral, bound_session=bound_session)
            started = time.perf_counter()
            self.grammars[key] = self.compiler.compile_json_schema(
                json.dumps(schema), any_whitespace=False, separators=(",", ":"))
            self.compile_s += time.perf_counter() - started
        return self.grammars[key]


class CoachInference:
    """A loaded student with its screen and grammar cache; ``answer`` is the inference path."""

    def __init__(self, model, tokenizer, screen: SafetyScreen | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.screen = screen or SafetyScreen(classifier=None)
        self._grammars: GrammarCache | None = None

    @property
    def grammars(self) -> GrammarCache:
        if self._grammars is None:
            self._grammars = GrammarCache(self.tokenizer, getattr(self.model.config, "vocab_size", None))
        return self._grammars

    def answer(self, requests: list[CoachRequest], *, decoding: Decoding = "guided", max_new_tokens: int = 768,
               batch_size: int = 8, seed: int = 0, label: str | None = None,
               raw: list[CoachReply] | None = None, release_below: int = 0,
               reuse_cache: bool = True) -> list[CoachReply]:
        """Answer each request. ``raw``: guided only, this engine's raw replies to the same requests, whose
        grammar-accepted starts the guided answers reuse (the same answers, fewer tokens generated).
        ``release_below``, ``reuse_cache``: see ``generate_answers``."""
        if decoding not in DECODINGS:
            raise RequestError(f"decoding: {decoding!r} is not one of {', '.join(DECODINGS)}")
        if raw is not None and (decoding != "guided" or len(raw) != len(requests)):
            raise ValueError("raw replies are reused by guided decoding, one per request")
        verdicts = self.screen.screen([user_text(prompt_messages(r.messages)) for r in requests])
        replies = [CoachReply(text=None, decoding=decoding, screen_refer=v.refer, screen_rules=v.rules)
                   for v in verdicts]
        grammars: list = []
        todo: list[int] = []
        for i, (request, reply) in enumerate(zip(requests, replies)):
            if decoding == "guided":
                if request.constraints is None:
                    reply.error = "guided decoding needs the request's constraints (or use decoding=raw)"
                    continue
                try:
                    grammars.append(self.grammars.get(request.constraints, reply.screen_refer))
                except NoSafeExerciseError as exc:
                    reply.error = str(exc)
                    continue
            todo.append(i)
        generate = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, release_below=release_below,
                        reuse_cache=reuse_cache)
        if raw is not None:
            self._continue_raw(requests, replies, todo, grammars, raw, label=label or decoding, **generate)
        else:
            generations = generate_answers(
                self.model, self.tokenizer, [requests[i].messages for i in todo], label=label or decoding,
                grammars=grammars if decoding == "guided" else None, **generate) if todo else []
            for i, gen in zip(todo, generations):
                _fill(replies[i], gen, requests[i].constraints)
        if decoding == "guided":
            self._regenerate_long_sessions(requests, replies, todo, label=label or decoding, **generate)
        return replies

    def _continue_raw(self, requests, replies, todo, grammars, raw, *, label, max_new_tokens, **generate) -> None:
        """Guided answers that start as their raw answers do, for as long as the grammar accepts the raw tokens.

        A raw answer the grammar accepts whole (or up to the token budget) is the guided answer; the
        others are continued under the grammar from the last accepted token. The reused part's latency
        is its share of the raw answer's.
        """
        stops = stop_token_ids(self.model, self.tokenizer)
        rest = []  # (raw tokens left after the shared start, request index, shared start, grammar)
        for i, grammar in zip(todo, grammars):
            tokens = raw[i].token_ids
            head, complete = accepted_prefix(grammar, tokens, stops)
            replies[i].shared_tokens = len(head)
            if complete or len(head) >= max_new_tokens:
                ends = complete and len(head) < len(tokens) and tokens[len(head)] in stops
                ids = head + [tokens[len(head)]] if ends else head
                _fill(replies[i], Generation(text=self.tokenizer.decode(ids, skip_special_tokens=True),
                                             prompt_tokens=raw[i].prompt_tokens, completion_tokens=len(ids),
                                             latency_s=0.0, token_ids=list(ids)), requests[i].constraints)
            else:
                rest.append((len(tokens) - len(head), i, head, grammar))
        log.info("%s: %d of %d answers are their raw answers; %d continue after %d shared tokens", label,
                 len(todo) - len(rest), len(todo), len(rest), sum(len(r[2]) for r in rest))
        rest.sort(key=lambda r: r[0])  # continuations of similar length share a batch
        generations = generate_answers(self.model, self.tokenizer, [requests[i].messages for _, i, _, _ in rest],
                                       label=label, grammars=[r[3] for r in rest], prefixes=[r[2] for r in rest],
                                       max_new_tokens=max_new_tokens, **generate) if rest else []
        for (_, i, _, _), gen in zip(rest, generations):
            _fill(replies[i], gen, requests[i].constraints)
        for i in todo:
            replies[i].latency_s += raw[i].latency_s * replies[i].shared_tokens / max(len(raw[i].token_ids), 1)

    def _regenerate_long_sessions(self, requests, replies, todo, *, label, **generate) -> None:
        """Answer again, under the session-bounded grammar, the guided answers whose session ran long."""
        long, grammars = [], []
        for i in todo:
            if any(violation_code(v) == "session_too_long" for v in replies[i].violations or []):
                try:
                    grammars.append(self.grammars.get(requests[i].constraints, replies[i].screen_refer,
                                                      bound_session=True))
                except NoSafeExerciseError:
                    continue  # nothing fits per exercise: keep the first answer and its violation
                long.append(i)
        if not long:
            return
        generations = generate_answers(self.model, self.tokenizer, [requests[i].messages for i in long],
                                       label=f"{label}, session-bounded", grammars=grammars, **generate)
        for i, gen in zip(long, generations):
            first = replies[i]
            reply = CoachReply(text=None, decoding=first.decoding, screen_refer=first.screen_refer,
                               screen_rules=first.screen_rules, regenerated=True)
            _fill(reply, gen, requests[i].constraints)
            reply.completion_tokens += first.completion_tokens  # the time and tokens of both attempts
            reply.latency_s += first.latency_s
            replies[i] = reply


def accepted_prefix(grammar, tokens: list[int], stops: set[int]) -> tuple[list[int], bool]:
    """The longest start of ``tokens`` that ``grammar`` accepts, and whether it is a whole answer of the grammar
    (then guided greedy decoding would write exactly these tokens and stop)."""
    import xgrammar as xgr

    matcher = xgr.GrammarMatcher(grammar)
    head: list[int] = []
    for token in tokens:
        if token in stops or not matcher.accept_token(token):
            break
        head.append(token)
    return head, matcher.is_completed()


def _fill(reply: CoachReply, gen, constraints: QueryConstraints | None) -> None:
    """Record a generation on its reply: text, token counts, the parsed answer and its violations."""
    reply.text, reply.prompt_tokens, reply.token_ids = gen.text, gen.prompt_tokens, list(gen.token_ids)
    reply.completion_tokens, reply.latency_s = gen.completion_tokens, gen.latency_s
    try:
        reply.answer = parse_coach_answer(gen.text)
    except AnswerParseError as exc:
        reply.parse_error = exc.reason
    if reply.answer is not None and constraints is not None:
        reply.violations = check_answer(reply.answer, constraints)
