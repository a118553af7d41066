"""Database access: the one place that creates SQLAlchemy engines and sessions.

SQLite (the embedded default) and PostgreSQL are both supported; the schema (every table on
:class:`engine.models.Base`) is created on first use, and a table made by an older botsq gains the
columns (and their indexes) added since (:func:`add_missing_columns`). A failure becomes a one-line
:class:`~engine.errors.DatabaseError` with the password masked.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, MetaData, Table, create_engine, event, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from engine.errors import DatabaseError, one_line
from engine.log import mask_url
from engine.models import Base
from engine.sqlite import SQLITE_PRAGMAS

_engines: dict[str, Engine] = {}
_makers: dict[str, sessionmaker[Session]] = {}
_lock = threading.Lock()


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    for pragma in SQLITE_PRAGMAS:
        cur.execute(pragma)
    cur.close()


def get_engine(url: str) -> Engine:
    """The (cached) engine for a URL, schema created; raises DatabaseError if unreachable."""
    with _lock:
        eng = _engines.get(url)
        if eng is not None:
            return eng
        try:
            if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
                Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
            kwargs: dict = {}
            if url.startswith("sqlite"):
                kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
            else:
                kwargs["pool_pre_ping"] = True
                if url.startswith("postgresql"):
                    kwargs["connect_args"] = {"connect_timeout": 5}
            eng = create_engine(url, **kwargs)
            if url.startswith("sqlite"):
                event.listen(eng, "connect", _sqlite_pragmas)
            with eng.connect() as conn:
                conn.execute(text("SELECT 1"))
            create_tables(eng)
        except (SQLAlchemyError, OSError, ImportError) as exc:   # ImportError: the URL's driver is not installed
            reason = one_line(exc)
            if isinstance(exc, ImportError):
                reason = f"its database driver is not installed ({reason})"
            raise DatabaseError(f"database {mask_url(url)} cannot be used: {reason}") from None
        _engines[url] = eng
        _makers[url] = sessionmaker(eng, expire_on_commit=False)
        return eng


_SCHEMA_LOCK = 0x626F7473  # PostgreSQL advisory lock key ("bots") serialising schema creation


def add_missing_columns(conn: Connection, tables: list[Table]) -> list[str]:
    """Add to each existing table of ``tables`` the columns its model has and the database lacks
    (``ALTER TABLE ... ADD COLUMN``); ``table.column`` of each one added (their indexes come with
    :func:`add_missing_indexes`).

    A column added after release must have a server default or be nullable, so the rows already
    there get a value; create_all alone only makes missing *tables*."""
    insp = inspect(conn)
    added: list[str] = []
    for table in tables:
        if not insp.has_table(table.name):
            continue                         # create_all makes it whole
        have = {c["name"] for c in insp.get_columns(table.name)}
        missing = [c for c in table.columns if c.name not in have]
        if not missing:
            continue
        ddl = conn.dialect.ddl_compiler(conn.dialect, None)
        for column in missing:
            if not column.nullable and column.server_default is None:
                raise RuntimeError(f"column {table.name}.{column.name} was added to the model without a server "
                                   f"default: existing rows would have no value")
            spec = ddl.get_column_specification(column)
            conn.execute(text(f"ALTER TABLE {ddl.preparer.format_table(table)} ADD COLUMN {spec}"))
            added.append(f"{table.name}.{column.name}")
    return added


def add_missing_indexes(conn: Connection, tables: list[Table]) -> list[str]:
    """Create the indexes of each existing table of ``tables`` that the database lacks (a database
    made by an older botsq gains the indexes added since; create_all skips an existing table's
    indexes); the name of each one created."""
    created: list[str] = []
    for table in tables:
        if not table.indexes or not inspect(conn).has_table(table.name):
            continue
        have = {ix["name"] for ix in inspect(conn).get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in have:
                index.create(conn)
                created.append(str(index.name))
    return created


def create_tables(eng: Engine, tables: list | None = None, metadata: MetaData | None = None) -> None:
    """Create missing tables, and the missing columns and indexes of existing ones
    (:func:`add_missing_columns`, :func:`add_missing_indexes`).
    Processes starting together on a new database must not race (PostgreSQL: duplicate key on
    pg_type; SQLite: table or column already exists), so PostgreSQL serialises with an advisory
    lock and a lost race elsewhere is simply tried again."""
    meta = metadata or Base.metadata
    for attempt in range(3):
        try:
            with eng.begin() as conn:
                if eng.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SCHEMA_LOCK})
                meta.create_all(conn, tables=tables)
                chosen = list(tables) if tables is not None else list(meta.sorted_tables)
                add_missing_columns(conn, chosen)
                add_missing_indexes(conn, chosen)
            return
        except SQLAlchemyError:
            if attempt == 2:
                raise
            time.sleep(0.2 * (attempt + 1))


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    get_engine(url)
    session = _makers[url]()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def dispose_all() -> None:
    """Close pooled connections (after fork, and in tests)."""
    with _lock:
        for eng in _engines.values():
            eng.dispose()
        _engines.clear()
        _makers.clear()
