"""The beat lock and beat's memory, in the environment's tracking database.

* the lock is lease ``beat`` (:mod:`engine.lease`): one active beat per database, a second one
  started by mistake stays idle until the first is gone by the lease rule - stopped, crashed on
  this machine (its pid is dead or a zombie), or silent for ``[settings] lock_grace`` seconds;
* table ``botsq_beat_state`` keeps each job's last run, so after downtime (or when the lock moves
  to the other beat) a missed run is made up once, never once per missed slot.
"""
from __future__ import annotations

import socket
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, Float, MetaData, String, Table, insert, select, update

from engine import lease
from engine.db import create_tables, get_engine
from engine.lease import Holder

LEASE = "beat"

_meta = MetaData()
state_table = Table(
    "botsq_beat_state", _meta,
    Column("name", String(200), primary_key=True),
    Column("last_run_at", Float, nullable=False),
    Column("result", String(40), nullable=False, default=""),
)


def _epoch(dt: datetime) -> float:
    return dt.replace(tzinfo=UTC).timestamp()


def _row(h: Holder) -> dict[str, Any]:
    """A holder as ``botsq schedule --json`` and the scheduler's log lines show it (epoch seconds)."""
    return {"name": h.name, "holder": h.token, "host": h.host, "pid": h.pid, "acquired_at": _epoch(h.started),
            "heartbeat_at": _epoch(h.heartbeat)}


class BeatStore:
    """The beat lock (lease ``beat``) and the last-run table, in the environment's tracking database.

    A beat's holder id is its lease token (``host:pid:random``): it names the beat in logs."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = get_engine(url)
        create_tables(self.engine, metadata=_meta)
        self.host = socket.gethostname()

    # ------------------------------------------------------------------ lock
    def try_acquire(self, holder: str, grace: float) -> tuple[bool, dict[str, Any] | None]:
        """(acquired, the holder row as found). Takes over a holder that is gone by the lease rule."""
        claim = lease.acquire(self.url, LEASE, grace, token=holder)
        return claim.lease is not None, _row(claim.holder) if claim.holder else None

    def heartbeat(self, holder: str) -> bool:
        """Refresh our lock; False when it is no longer ours."""
        return lease.refresh(self.url, LEASE, holder)

    def release(self, holder: str) -> None:
        lease.release(self.url, LEASE, holder)

    def holder(self, grace: float = 120.0) -> dict[str, Any] | None:
        """The current lock holder with its heartbeat age (``age``, seconds) and ``alive``."""
        h = lease.read(self.url, LEASE, grace)
        if h is None:
            return None
        return {**_row(h), "age": h.silence(), "alive": h.alive}

    # ------------------------------------------------------------------ last runs
    def load_state(self) -> dict[str, datetime]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(state_table)).all()
        return {r.name: datetime.fromtimestamp(r.last_run_at, UTC) for r in rows}

    def save_run(self, name: str, at: datetime, result: str) -> None:
        ts = at.timestamp()
        with self.engine.begin() as conn:
            res = conn.execute(update(state_table).where(state_table.c.name == name)
                               .values(last_run_at=ts, result=result))
            if res.rowcount == 0:
                conn.execute(insert(state_table).values(name=name, last_run_at=ts, result=result))
