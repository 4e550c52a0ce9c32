"""``fitsense ask``: one question to the registered student, answered in the terminal.

It runs the same service as ``fitsense serve`` (screen, generation, checks,
fallback, inference log), in-process, without HTTP.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

from fitsense.config import Params
from fitsense.errors import InputDataError
from fitsense.records import CoachingQuery, QueryConstraints
from fitsense.runs import RunContext, describe_invalid, read_jsonl
from fitsense.registry.serving.service import ServedAnswer


@dataclass(frozen=True)
class AskProfile:
    """What a free-text question is asked with: the user's constraints and their facts as text."""

    constraints: QueryConstraints | None = None
    text: str | None = None  # profile and constraint lines added to the question (fitsense.data.prompts)
    user: str | None = None  # the user id, logged with the request


def load_profile(ctx: RunContext, profile: Path | None, user_id: int | None) -> AskProfile:
    """Constraints from a JSON file, or the run's latest query of ``user_id`` (its constraints and profile), or none."""
    from fitsense.data.prompts import profile_text

    if profile is not None:
        try:
            data = json.loads(Path(profile).read_text())
            constraints = QueryConstraints.model_validate(data.get("constraints", data) if isinstance(data, dict)
                                                          else data)
        except FileNotFoundError:
            raise InputDataError(f"{profile}: profile file not found") from None
        except ValueError as exc:
            raise InputDataError(f"{profile}: not a constraints object: {describe_invalid(exc)}") from None
        return AskProfile(constraints, profile_text(constraints))
    if user_id is not None:
        queries = [q for q in read_jsonl(ctx.require("queries", "queries.jsonl"), CoachingQuery) if q.user_id == user_id]
        if not queries:
            raise InputDataError(f"run {ctx.run_id} has no query for user {user_id}")
        latest = queries[-1]
        return AskProfile(latest.constraints, profile_text(latest.constraints, latest.context), str(user_id))
    return AskProfile()


def ask_student(params: Params, text: str, profile: AskProfile = AskProfile(),
                model_uri: str | None = None) -> ServedAnswer:
    """One answer to ``text``, asked with the profile's facts appended and its constraints sent alongside."""
    from fitsense.registry.serving.server import build_service

    content = f"{text}\n{profile.text}" if profile.text else text

    async def _ask() -> ServedAnswer:
        service = build_service(params, model_uri)
        await asyncio.to_thread(service.load)
        await service.start()
        try:
            request = service.prepare([{"role": "user", "content": content}], profile.constraints,
                                      user=profile.user)
            return await service.answer(request)
        finally:
            await service.stop()

    return asyncio.run(_ask())


def print_answer(served: ServedAnswer) -> None:
    from rich.console import Console
    from rich.panel import Panel

    console = Console()
    check = served.fallback_check if served.fallback else served.student
    source = f"teacher {served.fallback_model} (fallback)" if served.fallback else "student"
    body = check.answer.model_dump_json(indent=2, exclude_none=True) if check.answer else served.text
    console.print(Panel(body, title=f"{served.model_id} · {source}", subtitle=f"{served.latency_s:.1f}s, "
                        f"{served.completion_tokens} tokens · screen {served.screen.label}"))
    if check.error:
        console.print(f"[red]not a valid plan:[/red] {check.error}")
    for violation in check.violations:
        console.print(f"[yellow]breaks a constraint:[/yellow] {violation}")
