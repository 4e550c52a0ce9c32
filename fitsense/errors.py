"""The project's errors: one hierarchy, one rule for how the CLI reports them.

- ``UserError``: the input is wrong (a params file, a data file, a missing
  upstream stage, a model version that does not exist). The message names the
  file, key, record or version; the CLI prints it as one line and exits 2.
- ``StageError``: a stage ran on valid input and could not finish (a failed
  quality gate, a model that cannot be loaded). One line, exit 1.

Any other exception is a bug: the CLI prints one line and exits 1, and
``fitsense --debug ...`` shows its traceback.
"""

from __future__ import annotations


class FitSenseError(Exception):
    """Root of the project's errors; the message is the whole story for a user."""


class UserError(FitSenseError):
    """Bad input from the user: config, input data, lineage. CLI exit code 2."""


class ConfigError(UserError, ValueError):
    """A params file or override that does not fit the schema; the message names the key."""


class InputDataError(UserError, ValueError):
    """A data file or record that cannot be used; the message names the file and line or record."""


class MissingUpstreamError(UserError, FileNotFoundError):
    """An upstream stage's artifact is missing; the message says which stage to run."""


class LineageError(UserError, LookupError):
    """A registered model version, alias or run that does not exist."""


class StageError(FitSenseError, RuntimeError):
    """A stage refused its input or could not finish; the message names the file, field or record."""
