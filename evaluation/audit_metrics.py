"""Coaching-rule audit of a model's answers: the rules of ``fitsense.audit`` that the quality stage
applies to the teacher, applied to any model, so student and teacher are held to the same bar.

Answers that do not parse are left out (validity already counts them); a rule's rate is over the
answers it applies to, with n and a 95% Wilson interval.
"""

from __future__ import annotations

from scipy.stats import binomtest

from fitsense.audit import audit_answer, pass_rates
from fitsense.plan import AnswerParseError, parse_coach_answer
from fitsense.records import CoachingQuery


def audit_rates(texts: list[str | None], queries: list[CoachingQuery | None]) -> dict[str, dict]:
    """Rule name -> {n, passed, rate, ci95} over the parseable answers to known queries."""
    audits = []
    for text, query in zip(texts, queries):
        if not text or query is None:
            continue
        try:
            answer = parse_coach_answer(text)
        except AnswerParseError:
            continue
        audits.append(audit_answer(answer, query))
    out = {}
    for rule, r in pass_rates(audits).items():
        n, k = r["applicable"], r["passed"]
        ci = binomtest(k, n).proportion_ci(method="wilson") if n else None
        out[rule] = {"n": n, "passed": k, "rate": r["rate"],
                     "ci95": [round(float(ci.low), 4), round(float(ci.high), 4)] if ci else None}
    return out


def audit_by_model(texts: dict[str, list[str | None]], queries: list[CoachingQuery | None]) -> dict[str, dict]:
    """``audit_rates`` for every model's answers (same examples, same order as ``queries``)."""
    return {role: audit_rates(model_texts, queries) for role, model_texts in texts.items()}
