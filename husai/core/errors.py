"""Bad input, said in one line: the CLI prints an InputError's message and exits 2, before any
compute and before any run is created."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input (config, checkpoint, cache entry): the CLI prints it as one line and exits 2."""


class ConfigError(InputError):
    """A config that cannot be used; the message is one line naming the file and the field."""


class ServiceUnavailable(RuntimeError):
    """A service a command needs (a Ray cluster's head) cannot be reached: the CLI prints it as
    one line, naming the address and what to check, and exits 1."""


class TrackingLost(ServiceUnavailable):
    """The tracking server stopped answering mid-command: what was recorded stays, and no
    further MLflow call is made (each would wait out the client's retries)."""


def described(e: BaseException) -> str:
    """An exception as one line with its type: `ValueError: bad k`."""
    return f"{type(e).__name__}: {first_line(e)}"


def first_line(e: BaseException) -> str:
    """The first line of an exception's text: errors are reported as one line."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
