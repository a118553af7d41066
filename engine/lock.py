"""The engine lock, kept in the tracking database.

One row (id 1) names the run holding the engine: host, pid, start, heartbeat, run id.
A live holder refreshes its heartbeat from a thread and is never taken over, however long it
runs (past maxruntime it only raises an alert). A holder whose process no longer exists on
this host, or whose heartbeat has been silent past ``settings.lock_grace``, is a crashed run:
the next run records it, recovers its files and takes over. A stale lock is never treated as
a damaged database.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from engine.config import Config
from engine.db import session_scope
from engine.errors import DatabaseError, database_error, one_line
from engine.models import EngineLock, utcnow

LOCK_ID = 1


@dataclass
class LockInfo:
    host: str
    pid: int
    started: datetime          # aware UTC
    heartbeat: datetime        # aware UTC
    run_id: int | None
    alive: bool                # holder process exists (same host) and heartbeat within grace

    def describe(self) -> str:
        return f"host {self.host} pid {self.pid} since {self.started.isoformat(timespec='seconds')}"

    def age_minutes(self) -> float:
        return (datetime.now(timezone.utc) - self.started).total_seconds() / 60


def hostname() -> str:
    return socket.gethostname()


def pid_exists(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    try:  # a zombie has ended: its parent just has not reaped it yet
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _aware(dt: datetime) -> datetime:
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt


def _info(row: EngineLock, cfg: Config) -> LockInfo:
    silent = (utcnow() - row.heartbeat).total_seconds()
    alive = silent <= cfg.settings.lock_grace
    if alive and row.host == hostname():
        alive = pid_exists(row.pid)
    return LockInfo(row.host, row.pid, _aware(row.started), _aware(row.heartbeat), row.run_id, alive)


def read_lock(cfg: Config) -> LockInfo | None:
    """The current holder of the engine lock, or None when the engine is free."""
    try:
        with session_scope(cfg.database_url) as s:
            row = s.get(EngineLock, LOCK_ID)
            return _info(row, cfg) if row is not None else None
    except SQLAlchemyError as exc:
        raise database_error(cfg.database_url, exc) from None


@dataclass
class Acquired:
    """The outcome of :func:`acquire`: either ``lock`` (ours) or ``holder`` (a live run)."""
    lock: "EngineLockHandle | None"
    holder: LockInfo | None = None
    crashed: LockInfo | None = None        # a dead holder we took over from


class EngineLockHandle:
    """A lock we hold: keeps the heartbeat fresh until :meth:`release`."""

    def __init__(self, cfg: Config, token: str, started: datetime, log: logging.Logger,
                 on_overtime=None) -> None:  # type: ignore[no-untyped-def]
        self.cfg, self.token, self.started, self.log = cfg, token, started, log
        self.on_overtime = on_overtime
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._alerted = False

    def set_run(self, run_id: int) -> None:
        with session_scope(self.cfg.database_url) as s:
            s.execute(update(EngineLock).where(EngineLock.id == LOCK_ID, EngineLock.token == self.token)
                      .values(run_id=run_id))

    def start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="botsq-lock-heartbeat", daemon=True)
        self._thread.start()

    def beat(self) -> None:
        """One heartbeat; notices a lost lock and an overlong run."""
        try:
            with session_scope(self.cfg.database_url) as s:
                n = s.execute(update(EngineLock).where(EngineLock.id == LOCK_ID, EngineLock.token == self.token)
                              .values(heartbeat=utcnow())).rowcount
            if n == 0 and not self.lost:
                self.lost = True
                self.log.error("engine lock was taken over by another run; this run stops at the next file")
        except Exception as exc:  # noqa: BLE001 - a missed beat is retried; the grace period covers it
            self.log.warning("lock heartbeat failed: %s", one_line(exc))
        minutes = (utcnow() - self.started).total_seconds() / 60
        if not self._alerted and minutes > self.cfg.settings.maxruntime:
            self._alerted = True
            if self.on_overtime:
                try:
                    self.on_overtime(minutes)
                except Exception:  # noqa: BLE001
                    self.log.exception("maxruntime alert failed")

    def _beat(self) -> None:
        interval = max(0.05, self.cfg.settings.lock_heartbeat)
        while not self._stop.wait(interval):
            self.beat()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        try:
            with session_scope(self.cfg.database_url) as s:
                s.execute(delete(EngineLock).where(EngineLock.id == LOCK_ID, EngineLock.token == self.token))
        except SQLAlchemyError as exc:
            self.log.error("could not release the engine lock: %s", database_error(self.cfg.database_url, exc))


def acquire(cfg: Config, log: logging.Logger, on_overtime=None) -> Acquired:  # type: ignore[no-untyped-def]
    """Take the engine lock, or name the live run holding it.

    Race-safe on SQLite and PostgreSQL: a free lock is taken by inserting the one row (a
    second inserter gets a key conflict); a dead holder's row is taken over by an update
    conditional on its token, so of two runs noticing the same crash only one wins.
    """
    token = uuid.uuid4().hex
    for _attempt in range(5):
        now = utcnow()
        try:
            with session_scope(cfg.database_url) as s:
                row = s.get(EngineLock, LOCK_ID)
                if row is None:
                    s.add(EngineLock(id=LOCK_ID, token=token, host=hostname(), pid=os.getpid(), started=now,
                                     heartbeat=now, run_id=None))
                    s.flush()
                    return Acquired(EngineLockHandle(cfg, token, now, log, on_overtime))
                info = _info(row, cfg)
                if info.alive:
                    return Acquired(None, holder=info)
                n = s.execute(update(EngineLock).where(EngineLock.id == LOCK_ID, EngineLock.token == row.token)
                              .values(token=token, host=hostname(), pid=os.getpid(), started=now, heartbeat=now,
                                      run_id=None)).rowcount
                if n == 1:
                    return Acquired(EngineLockHandle(cfg, token, now, log, on_overtime), crashed=info)
        except IntegrityError:
            continue                       # another run inserted the row first: look again
        except SQLAlchemyError as exc:
            raise database_error(cfg.database_url, exc) from None
    info = read_lock(cfg)
    return Acquired(None, holder=info)


def overtime_minutes(info: LockInfo, cfg: Config) -> float | None:
    """Minutes past maxruntime for a live holder, or None when it is within time."""
    over = info.age_minutes() - cfg.settings.maxruntime
    return over if over > 0 else None


__all__ = ["LockInfo", "read_lock", "acquire", "Acquired", "EngineLockHandle", "pid_exists", "hostname",
           "overtime_minutes"]
