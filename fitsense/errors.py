"""Errors whose message is the whole story for a user (bad data, missing upstream stage).

The CLI prints these without a traceback and exits 1; anything else is a bug and
keeps its traceback.
"""


class StageError(RuntimeError):
    """A stage refused its input or could not finish; the message names the file, field or record."""
