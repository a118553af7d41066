"""How botsq opens a SQLite database, for both of its ways in: :mod:`engine.db` (SQLAlchemy) and
:mod:`engine.dbapi` (the stdlib's sqlite3) - the pragmas every connection gets, and the text form
a time is stored in."""
from __future__ import annotations

# WAL lets the monitor, CLI and a running engine read while the engine writes.
SQLITE_PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL", "PRAGMA busy_timeout=30000",
                  "PRAGMA foreign_keys=ON")
# SQLAlchemy's storage format of DateTime on SQLite (its pysqlite dialect): always six digits of microseconds
SQLITE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"

__all__ = ["SQLITE_PRAGMAS", "SQLITE_TIME_FORMAT"]
