"""The ``fitsense`` command line. Thin: it parses options and calls stage entry functions."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer._click import Context
from typer._click.exceptions import ClickException
from typer.core import TyperGroup

from fitsense.app.pipeline import STAGE_NAMES, STAGES, get_stage, run_pipeline, run_stage
from fitsense.config import Params, load_params
from fitsense.errors import FitSenseError, UserError
from fitsense.runs import RunContext


class _ReportingGroup(TyperGroup):
    """Reports errors the project's way: a user error is one line and exit 2, a stage failure one
    line and exit 1, anything else (a bug) one line and exit 1; ``--debug`` shows the traceback."""

    def invoke(self, ctx: Context):
        try:
            return super().invoke(ctx)
        except FitSenseError as exc:
            if _debug:
                raise
            kind = "error" if isinstance(exc, UserError) else "stage failed"
            typer.secho(f"{kind}: {exc}", fg="red", err=True)
            raise typer.Exit(2 if isinstance(exc, UserError) else 1) from None
        except (typer.Exit, typer.Abort, ClickException):
            raise
        except Exception as exc:
            if _debug:
                raise
            typer.secho(f"unexpected error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
                        fg="red", err=True)
            raise typer.Exit(1) from None


app = typer.Typer(help="FitSense Distill: distil a fitness-coaching teacher into a small student.",
                  cls=_ReportingGroup, no_args_is_help=True, pretty_exceptions_enable=False)
teacher_app = typer.Typer(help="Teacher capture and the local OpenAI-compatible teacher server.", no_args_is_help=True)
registry_app = typer.Typer(help="The MLflow model registry: lineage, promotion, rollback.", no_args_is_help=True)
db_app = typer.Typer(help="Load generated data into SQL databases.", no_args_is_help=True)
app.add_typer(teacher_app, name="teacher")
app.add_typer(registry_app, name="registry")
app.add_typer(db_app, name="db")

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="params file")]
RunIdOpt = Annotated[Optional[str], typer.Option("--run-id", "-r", help="run ID (default: run.run_id in params)")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-S", help="override a param: key.sub=value")]


_debug = False


@app.callback()
def _options(debug: Annotated[bool, typer.Option("--debug", help="show tracebacks of errors")] = False) -> None:
    global _debug
    _debug = debug


def _params(params: Path, overrides: list[str] | None) -> Params:
    return load_params(params, overrides)


def _context(params: Path, run_id: str | None, overrides: list[str] | None) -> RunContext:
    from fitsense.logs import configure_logging

    p = _params(params, overrides)
    configure_logging(extra_env_names=(p.teacher.api_key_env,))
    return RunContext.create(p, run_id)


def _run_stage(name: str, params: Path, run_id: str | None, overrides: list[str] | None) -> None:
    ctx = _context(params, run_id, overrides)
    result = run_stage(ctx, name)
    typer.echo(json.dumps(result, indent=2, default=str))


@app.command()
def run(
    params: ParamsOpt = Path("params.yaml"),
    run_id: RunIdOpt = None,
    set_: SetOpt = None,
    start: Annotated[Optional[str], typer.Option("--from", help=f"first stage: {', '.join(STAGE_NAMES)}")] = None,
    stop: Annotated[Optional[str], typer.Option("--to", help="last stage")] = None,
    force: Annotated[bool, typer.Option(help="rerun stages even if complete")] = False,
) -> None:
    """Run the whole pipeline end to end (completed stages with the same params are skipped)."""
    for name in (start, stop):
        if name:
            get_stage(name)
    ctx = _context(params, run_id, set_)
    run_pipeline(ctx, start=start, stop=stop, force=force)
    from fitsense.app.summary import print_run_summary

    print_run_summary(ctx)


def _stage_command(name: str):
    def command(params: ParamsOpt = Path("params.yaml"), run_id: RunIdOpt = None, set_: SetOpt = None) -> None:
        _run_stage(name, params, run_id, set_)

    return command


@app.command()
def stage(
    name: Annotated[str, typer.Argument(help=f"one of: {', '.join(STAGE_NAMES)}")],
    params: ParamsOpt = Path("params.yaml"),
    run_id: RunIdOpt = None,
    set_: SetOpt = None,
) -> None:
    """Run one stage (always reruns it). This is what dvc.yaml calls."""
    get_stage(name)
    _run_stage(name, params, run_id, set_)


def _stage_help(name: str) -> str:
    summary = get_stage(name).summary
    return f"{summary[0].upper()}{summary[1:]} (the {name} stage; always reruns it)."


# One command per stage, named in STAGES (`fitsense dataset`, `fitsense train`, ...); `teacher capture`,
# which has options of its own, is below.
for _stage in STAGES:
    if _stage.name == "teacher":
        continue
    _group, _, _verb = _stage.command.rpartition(" ")
    {"": app, "teacher": teacher_app}[_group].command(_verb, help=_stage_help(_stage.name))(
        _stage_command(_stage.name))


LogUrlOpt = Annotated[Optional[str], typer.Option("--log-url", help="inference log URL (default: serving.log_url)")]
LimitOpt = Annotated[Optional[int], typer.Option(help="at most this many logged requests")]


def _export_inference_log(ctx: RunContext, url: str | None, limit: int | None, out: Path | None = None) -> dict:
    from fitsense.registry.serving.inference_log import default_log_url, export_queries, export_to_run

    url = url or default_log_url(ctx.params)
    return export_queries(url, out, limit) if out else export_to_run(ctx, url, limit)


@teacher_app.command("capture", help=_stage_help("teacher") + " With --from-inference-log, the run's queries are "
                     "first replaced by the requests `fitsense serve` logged, fallbacks first: the next "
                     "distillation round.")
def teacher_capture(
    params: ParamsOpt = Path("params.yaml"),
    run_id: RunIdOpt = None,
    set_: SetOpt = None,
    from_inference_log: Annotated[bool, typer.Option(
        "--from-inference-log", help="capture the logged serving requests (that carried constraints) instead")] = False,
    log_url: LogUrlOpt = None,
    limit: LimitOpt = None,
) -> None:
    ctx = _context(params, run_id, set_)
    if not from_inference_log:
        if log_url or limit is not None:
            raise UserError("--log-url and --limit need --from-inference-log")
        typer.echo(json.dumps(run_stage(ctx, "teacher"), indent=2, default=str))
        return
    if ctx.params.teacher.provider == "offline":
        raise UserError("--from-inference-log: logged requests have no synthetic query behind them for the offline "
                        "teacher to answer; use an OpenAI-compatible teacher (--set teacher.provider=openai "
                        "--set teacher.base_url=...)")
    exported = _export_inference_log(ctx, log_url, limit)
    if not exported["queries"]:
        raise UserError(f"--from-inference-log: the inference log has no request with constraints "
                        f"({exported['logged_requests']} logged)")
    result = run_stage(ctx, "teacher")
    typer.echo(json.dumps({"inference_log": exported, **result}, indent=2, default=str))


@teacher_app.command("serve")
def teacher_serve(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    host: str = "127.0.0.1",
    port: int = 8765,
    latency_ms: Annotated[Optional[float], typer.Option(help="injected latency per request")] = None,
    fault_rate: Annotated[Optional[float], typer.Option(help="share of requests that fail")] = None,
    queries: Annotated[Optional[Path], typer.Option(help="queries.jsonl to answer (default: the run's queries)")] = None,
) -> None:
    """Serve the offline teacher as an OpenAI-compatible chat-completions endpoint."""
    from fitsense.data.teacher.server import serve

    p = _params(params, set_)
    faults = p.teacher.faults.model_copy(
        update={k: v for k, v in {"latency_ms": latency_ms, "rate": fault_rate}.items() if v is not None}
    )
    serve(p, host=host, port=port, faults=faults, queries_path=queries)


@registry_app.command("lineage")
def registry_lineage(
    version: Annotated[str, typer.Argument(help="model version number, or an alias such as champion")],
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Print the dataset run ID, manifest and data-quality reports behind a model version."""
    from fitsense.registry.lineage import lineage

    typer.echo(json.dumps(lineage(_params(params, set_), version), indent=2, default=str))


@registry_app.command("promote")
def registry_promote(
    version: Annotated[str, typer.Argument(help="model version to make champion")],
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    force: Annotated[bool, typer.Option(help="skip the promotion gate")] = False,
) -> None:
    """Move the champion alias to a version (after the promotion gate unless --force)."""
    from fitsense.registry.register import promote

    typer.echo(json.dumps(promote(_params(params, set_), version, force=force), indent=2, default=str))


@registry_app.command("rollback")
def registry_rollback(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Move the champion alias back to the previous champion."""
    from fitsense.registry.register import rollback

    typer.echo(json.dumps(rollback(_params(params, set_)), indent=2, default=str))



@app.command()
def serve(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    model_uri: Annotated[Optional[str], typer.Option(help="models:/<name>@<alias> or models:/<name>/<version> "
                                                         "(default: serving.model_uri, else the champion)")] = None,
    host: Annotated[Optional[str], typer.Option(help="default: serving.host")] = None,
    port: Annotated[Optional[int], typer.Option(help="default: serving.port")] = None,
) -> None:
    """Serve the registered student as an OpenAI-compatible chat-completions endpoint."""
    from fitsense.registry.serving.server import serve as serve_student

    serve_student(_params(params, set_), model_uri=model_uri, host=host, port=port)


@app.command()
def ask(
    text: Annotated[str, typer.Argument(help="what you would ask the coach")],
    profile: Annotated[Optional[Path], typer.Option(help="JSON file with your constraints (a QueryConstraints "
                                                         "object, or {\"constraints\": {...}})")] = None,
    user_id: Annotated[Optional[int], typer.Option(help="take the constraints of this user's query in the run")] = None,
    params: ParamsOpt = Path("params.yaml"),
    run_id: RunIdOpt = None,
    set_: SetOpt = None,
    model_uri: Annotated[Optional[str], typer.Option(help="default: serving.model_uri, else the champion")] = None,
) -> None:
    """Ask the registered student one question; prints the answer and the model version that wrote it."""
    from fitsense.registry.serving.ask import ask_student, load_profile, print_answer

    if profile is not None and user_id is not None:
        raise UserError("give --profile or --user-id, not both")
    ctx = _context(params, run_id, set_)
    print_answer(ask_student(ctx.params, text, load_profile(ctx, profile, user_id), model_uri))


@teacher_app.command("from-inference-log")
def teacher_from_inference_log(
    run_id: RunIdOpt = None,
    out: Annotated[Optional[Path], typer.Option(help="write here instead of the run's queries/queries.jsonl")] = None,
    url: Annotated[Optional[str], typer.Option("--url", "--log-url",
                                               help="inference log URL (default: serving.log_url)")] = None,
    limit: LimitOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Turn logged serving requests (fallbacks first) into the queries of a run, for the next teacher capture
    (`teacher capture --from-inference-log` does both)."""
    ctx = _context(params, run_id, set_)
    typer.echo(json.dumps(_export_inference_log(ctx, url, limit, out), indent=2))


@app.command()
def ui(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, port: int = 5000) -> None:
    """Start the MLflow UI on localhost for the configured tracking store."""
    import subprocess

    p = _params(params, set_)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", p.registry.tracking_uri,
           "--host", "127.0.0.1", "--port", str(port)]
    typer.echo(" ".join(cmd))
    raise typer.Exit(subprocess.call(cmd))


@db_app.command("load")
def db_load(
    url: Annotated[str, typer.Option(help="SQLAlchemy URL; default sqlite in the run folder")] = "",
    params: ParamsOpt = Path("params.yaml"),
    run_id: RunIdOpt = None,
    set_: SetOpt = None,
) -> None:
    """Load a generated synthetic run into SQLite (default) or PostgreSQL, enforcing the schema."""
    from fitsense.data.sqlstore import load_run_into_database

    ctx = _context(params, run_id, set_)
    typer.echo(json.dumps(load_run_into_database(ctx, url or None), indent=2, default=str))


@app.command("config")
def config_show(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Validate the params file and print the effective configuration."""
    p = _params(params, set_)
    typer.echo(json.dumps(p.model_dump(mode="json"), indent=2))


@app.command("dvc-yaml")
def dvc_yaml(check: Annotated[bool, typer.Option(help="only check that dvc.yaml is current")] = False) -> None:
    """Regenerate dvc.yaml from the pipeline's stage declaration (STAGES)."""
    from fitsense.app.dvcfile import write_dvc_yaml

    current = write_dvc_yaml("dvc.yaml", check=check)
    if check and not current:
        typer.secho("dvc.yaml differs from STAGES: run `fitsense dvc-yaml`", fg="red", err=True)
        raise typer.Exit(1)
    typer.echo("dvc.yaml is current" if current else "dvc.yaml regenerated")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
