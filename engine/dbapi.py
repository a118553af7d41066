"""The tracking database in plain SQL, without importing SQLAlchemy: short transactions for the
paths whose process starts only to run a few of them - every lease (:mod:`engine.lease`: the engine
lock, the beat lock) and a Bots engine run's record (:mod:`engine.botsengine`), so ``bots-engine``
with ``[engine] kind = bots`` starts Bots' engine without paying SQLAlchemy's import (~0.3 s here).

``transact(url, work, write=True) -> T``: ``work(tx)`` runs in one transaction, committed when it
returns, rolled back when it raises; ``tx.execute(sql, params) -> Result`` (``rows``: tuples,
``rowcount``). SQL takes ``:name`` parameters and is written for SQLite and PostgreSQL alike.

- SQLite (``sqlite:///PATH``, no query string): the stdlib's ``sqlite3``, one connection per thread
  and process, with the pragmas of :mod:`engine.sqlite` (as engine.db's); a write transaction begins
  ``IMMEDIATE`` (it waits for the write lock up to ``busy_timeout`` instead of failing on an
  upgrade); datetimes are bound and stored in SQLAlchemy's SQLite format, so the ORM and this path
  read each other's rows. Read times back with :func:`as_datetime`.
- Any other URL: a connection of :func:`engine.db.get_engine` (SQLAlchemy Core).

The schema stays :mod:`engine.db`'s (the one place of DB sessions and the schema): on SQLite, a
statement that finds its table or a column missing (a new database, or one made by an older
botsq) makes :func:`engine.db.get_engine` create or upgrade it, and ``work`` runs once more.
Errors: :class:`Conflict` for a duplicate key; :class:`~engine.errors.DatabaseError` (one line,
password masked) for the rest.
"""
from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from engine.errors import database_error
from engine.sqlite import SQLITE_PRAGMAS, SQLITE_TIME_FORMAT

T = TypeVar("T")

SQLITE_PREFIX = "sqlite:///"
# what sqlite3 says when the schema lacks what a statement needs
_SCHEMA_MISSING = ("no such table", "no such column", "has no column named", "unable to open database file")


class Conflict(Exception):
    """A statement violated a unique key (an insert of a row that another writer inserted first)."""


@dataclass(frozen=True)
class Result:
    """What a statement gave: its rows (tuples; empty for a statement returning none) and how many
    rows it changed (``rowcount``; -1 where the driver does not say)."""
    rows: list[tuple[Any, ...]]
    rowcount: int


class Transaction(Protocol):
    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> Result: ...


def sqlite_path(url: str) -> str | None:
    """The file of a plain SQLite URL (``sqlite:///PATH``), or None for any other URL - including
    SQLite in memory and URLs with a query string, which go through SQLAlchemy."""
    if not url.startswith(SQLITE_PREFIX) or "?" in url:
        return None
    path = url[len(SQLITE_PREFIX):]
    return path if path and path != ":memory:" else None


def as_datetime(value: datetime | str | None) -> datetime | None:
    """A time column's value as a naive datetime: PostgreSQL gives datetimes, SQLite the stored text."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value)


def transact(url: str, work: Callable[[Transaction], T], *, write: bool = True) -> T:
    """Run ``work(tx)`` in one transaction on the database at ``url`` (see the module doc).
    ``write=False``: a reading transaction (no write lock taken on SQLite)."""
    path = sqlite_path(url)
    if path is None:
        return _transact_sqlalchemy(url, work)
    if not os.path.exists(path):            # a new database: engine.db makes it, its folder and its schema
        _make_schema(url)
    try:
        return _transact_sqlite(path, work, write)
    except sqlite3.OperationalError as exc:
        if not any(m in str(exc) for m in _SCHEMA_MISSING):
            raise database_error(url, exc) from None
    except sqlite3.Error as exc:
        raise database_error(url, exc) from None
    _make_schema(url)
    try:
        return _transact_sqlite(path, work, write)
    except sqlite3.Error as exc:
        raise database_error(url, exc) from None


def _make_schema(url: str) -> None:
    from engine.db import get_engine       # the schema's one place: creates or upgrades it (DatabaseError)
    get_engine(url)


class _SqliteTransaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> Result:
        bound = {k: v.strftime(SQLITE_TIME_FORMAT) if isinstance(v, datetime) else v
                 for k, v in (params or {}).items()}
        try:
            cur = self.conn.execute(sql, bound)
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" in str(exc) or "PRIMARY KEY" in str(exc):
                raise Conflict(str(exc)) from None
            raise
        rows = cur.fetchall()
        return Result(rows, cur.rowcount)


class _Connections(threading.local):
    """This thread's SQLite connections, by file. A connection is kept open: closing the last one of
    a WAL database checkpoints and removes its WAL file, a cost per transaction otherwise."""
    def __init__(self) -> None:
        self.by_path: dict[str, sqlite3.Connection] = {}


_local = _Connections()
_inherited: list[sqlite3.Connection] = []    # connections of a parent process: never used, never closed here


def _forget_after_fork() -> None:
    # SQLite's rule: a connection must not be used across fork(). The child opens its own.
    global _local
    _inherited.extend(_local.by_path.values())
    _local = _Connections()


os.register_at_fork(after_in_child=_forget_after_fork)


def _connection(path: str) -> sqlite3.Connection:
    conn = _local.by_path.get(path)
    if conn is None:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=True)
        for pragma in SQLITE_PRAGMAS:
            conn.execute(pragma)
        _local.by_path[path] = conn
    return conn


def _transact_sqlite(path: str, work: Callable[[Transaction], T], write: bool) -> T:
    conn = _connection(path)
    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        out = work(_SqliteTransaction(conn))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:        # SQLite may have rolled back itself (and a failed COMMIT leaves it open)
            conn.execute("ROLLBACK")
        raise
    return out


class _SqlalchemyTransaction:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> Result:
        from sqlalchemy import text
        r = self.conn.execute(text(sql), dict(params or {}))
        return Result([tuple(row) for row in r] if r.returns_rows else [], r.rowcount)


def _transact_sqlalchemy(url: str, work: Callable[[Transaction], T]) -> T:
    from sqlalchemy.exc import IntegrityError, SQLAlchemyError

    from engine.db import get_engine
    try:
        with get_engine(url).begin() as conn:
            return work(_SqlalchemyTransaction(conn))
    except IntegrityError as exc:
        raise Conflict(str(exc.orig)) from None
    except SQLAlchemyError as exc:
        raise database_error(url, exc) from None


def placeholders(columns: Sequence[str]) -> str:
    """``:a, :b, :c`` for the named columns of an INSERT."""
    return ", ".join(f":{c}" for c in columns)


__all__ = ["transact", "Transaction", "Result", "Conflict", "as_datetime", "sqlite_path", "placeholders"]
