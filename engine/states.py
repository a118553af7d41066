"""The states and the clock of the tracking tables, without SQLAlchemy.

:mod:`engine.models` maps them onto its tables (and re-exports them); the paths that must not pay
SQLAlchemy's import - a lease, ``bots-engine`` with ``[engine] kind = bots`` (:mod:`engine.dbapi`)
- take them from here. States are ``StrEnum`` members: stored, compared and written to JSON as
plain strings. Times are naive UTC so SQLite and PostgreSQL store and compare them alike.
"""
from __future__ import annotations

from datetime import datetime, timezone
from enum import StrEnum


class RunStatus(StrEnum):
    """``Run.status``."""
    RUNNING = "running"
    OK = "ok"
    ERRORS = "errors"          # ran, with file or communication errors (exit 2)
    CRASHED = "crashed"        # its process died; recorded by the run that recovered it
    FAILED = "failed"          # stopped by a system error or a signal
    KILLED = "killed"          # a Bots engine child that died by a signal (the hard time limit, or a kill)
    LOCKED = "locked"          # a Bots engine child that found Bots locked (exit 3): nothing ran, the job waits


class InStatus(StrEnum):
    """``Incoming.status``."""
    RECEIVED = "received"      # archived and recorded, not yet processed
    DONE = "done"
    ERROR = "error"            # a file error
    COMMERROR = "commerror"    # could not be fetched; still at the partner


class OutStatus(StrEnum):
    """``Outgoing.status``: the translation result (an output exists)."""
    OK = "ok"


class CommStatus(StrEnum):
    """``Outgoing.commstatus``: the delivery."""
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


def utcnow() -> datetime:
    """Now, naive UTC: the one clock of every tracking column (leases included)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def iso_utc(dt: datetime | None) -> str | None:
    """A naive UTC time as ISO 8601 with its offset (``2026-01-31T12:00:00+00:00``), for output."""
    return dt.replace(tzinfo=timezone.utc).isoformat(timespec="seconds") if dt else None


__all__ = ["RunStatus", "InStatus", "OutStatus", "CommStatus", "utcnow", "iso_utc"]
