"""Errors and exit codes: the one place of the error-to-one-line rule.

Every error a user meets is one line: a :class:`ConfigError` names the file and the key, a
:class:`UsageError` the bad argument, a :class:`DatabaseError` the database (password masked).
The commands turn these three into ``<prog>: error: <line>`` and exit code 1 (Bots'
"system error"); see :mod:`engine.cli.common`.

Exit codes are Bots': ``bots-engine`` 0 / 1 / 2 / 3, ``bots-job2queue`` 0 / 1 / 4, and 130 for
Ctrl-C as shells report it.
"""
from __future__ import annotations

from enum import IntEnum

from engine.log import mask_url


class ExitCode(IntEnum):
    """Process exit codes (Bots' numbers; see the contract's command table)."""
    OK = 0
    SYSTEM = 1           # bad arguments or config, unknown route, database unreachable
    RUN_ERRORS = 2       # bots-engine ran, with file or communication errors
    LOCKED = 3           # bots-engine: a live run holds the engine lock
    DUPLICATE = 4        # bots-job2queue: an identical job is waiting
    INTERRUPTED = 130    # Ctrl-C
    READER_GONE = 141    # 128 + SIGPIPE: what a shell shows for a command whose output reader went away


class ConfigError(Exception):
    """A configuration problem; str() is one line naming file and key."""


class UsageError(Exception):
    """Bad input on a command line or in a job; str() is the one line shown."""


class DatabaseError(Exception):
    """The tracking database cannot be reached or used; str() is one line, password masked."""


class Terminated(BaseException):
    """SIGTERM (systemd, a scheduler's timeout) as an exception: the command stops like Ctrl-C,
    releasing the lock on the way out. A BaseException, so no ``except Exception`` swallows it."""


# how a run is stopped from outside: said in one line, never with a traceback (not a crash)
INTERRUPTIONS: tuple[type[BaseException], ...] = (KeyboardInterrupt, SystemExit, Terminated)


def one_line(exc: BaseException, *, with_type: bool = False) -> str:
    """The first line of an exception's text, for a log line or a message.

    SQLAlchemy errors give the driver's own error (``exc.orig``) rather than SQLAlchemy's
    wrapper with the statement in it; an exception without text gives its type name.
    ``with_type`` prefixes the type name: ``"TimeoutError: timed out"``.
    """
    source = getattr(exc, "orig", None) or exc
    lines = str(source).strip().splitlines()
    name = type(exc).__name__
    if not lines:
        return name
    return f"{name}: {lines[0]}" if with_type else lines[0]


def database_error(url: str, exc: BaseException) -> DatabaseError:
    """The one-line :class:`DatabaseError` for a failure on the database at ``url``."""
    return DatabaseError(f"database {mask_url(url)} cannot be used: {one_line(exc)}")


__all__ = ["ExitCode", "ConfigError", "UsageError", "DatabaseError", "Terminated", "INTERRUPTIONS", "one_line",
           "database_error"]
