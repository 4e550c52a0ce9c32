"""Logging set-up with secret redaction.

API keys come from the environment only; ``configure_logging`` installs a
filter that masks their values in every log record, so a key echoed by an
SDK error message never reaches a log file, MLflow or an artifact.
"""

from __future__ import annotations

import logging
import os

_SECRET_ENV_HINTS = ("KEY", "TOKEN", "SECRET", "PASSWORD")


def secret_values(extra_env_names: tuple[str, ...] = ()) -> list[str]:
    """Values of environment variables that look like secrets (8+ chars)."""
    names = {n for n in os.environ if any(h in n.upper() for h in _SECRET_ENV_HINTS)} | set(extra_env_names)
    return sorted({os.environ[n] for n in names if len(os.environ.get(n, "")) >= 8}, key=len, reverse=True)


def redact(text: str, secrets: list[str] | None = None) -> str:
    for value in secrets if secrets is not None else secret_values():
        text = text.replace(value, "***")
    return text


class RedactSecrets(logging.Filter):
    def __init__(self, extra_env_names: tuple[str, ...] = ()):
        super().__init__()
        self.extra_env_names = extra_env_names

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = secret_values(self.extra_env_names)
        if secrets:
            record.msg = redact(record.getMessage(), secrets)
            record.args = ()
        return True


def configure_logging(level: str = "INFO", extra_env_names: tuple[str, ...] = ()) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    # Logs go to stderr: stdout is for a command's result (JSON that scripts parse).
    handler = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False, markup=False)
    handler.addFilter(RedactSecrets(extra_env_names))
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler], force=True)
    for noisy in ("httpx", "httpx2", "urllib3", "filelock", "alembic", "mlflow.store", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
