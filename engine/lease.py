"""Leases: who holds a named role, and the one rule that decides whether that holder is alive.

A lease is a row of table ``leases`` (:class:`engine.models.Lease`): name, the holder's secret
token, host, pid, start and heartbeat (naive UTC, :func:`engine.models.utcnow`). The engine lock
of a lane (lease ``engine``; ``engine.<lane>`` for other lanes, :mod:`engine.lock`) and the beat
lock (lease ``beat``, :mod:`ops.beat_lock`) are leases.

**The is-alive rule** (:func:`holder_alive`): a holder is alive while its heartbeat is at most
``grace`` seconds old AND, when it runs on this host, its process exists and is not a zombie. A
holder on another host is judged by its heartbeat alone. A live holder is never taken over,
however long it has held the lease; a dead one is taken over by the next claimant. The same rule
judges the queue's started-job records (:mod:`tasks.registry`, a table of their own) and the
directory monitor's heartbeat file (:mod:`ops.dirmonitor.heartbeat`).

Claiming is race-safe on SQLite and PostgreSQL: a free lease is taken by inserting its row (a
second inserter gets a key conflict); a dead holder's row is taken over by an update conditional
on its token and heartbeat, so of two claimants noticing the same death only one wins. The
statements are plain SQL (:mod:`engine.dbapi`): taking a lease never imports SQLAlchemy.
"""
from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from engine import dbapi
from engine.states import iso_utc, utcnow


def hostname() -> str:
    return socket.gethostname()


def pid_exists(pid: int) -> bool:
    """A process with this pid exists on this host and has not ended (a zombie has ended: its
    parent just has not reaped it yet)."""
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
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def process_gone(host: str, pid: int, *, this_process_counts: bool = True) -> bool:
    """The holder ran on this host and its process has ended (half of the is-alive rule).

    ``this_process_counts=False``: a record naming this very process counts as gone - used where
    this process asks about a job it is not running (a redelivered message of its own).
    """
    if host != hostname():
        return False
    if pid == os.getpid() and not this_process_counts:
        return True
    return not pid_exists(pid)


def holder_alive(host: str, pid: int, heartbeat: datetime, grace: float, now: datetime | None = None, *,
                 this_process_counts: bool = True) -> bool:
    """The one is-alive rule (see the module doc). ``heartbeat`` and ``now``: naive UTC;
    ``grace`` in seconds."""
    silent = ((now or utcnow()) - heartbeat).total_seconds()
    return silent <= grace and not process_gone(host, pid, this_process_counts=this_process_counts)


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, as read from its row; ``alive`` by the rule at the time of reading."""
    name: str
    token: str
    host: str
    pid: int
    started: datetime                    # naive UTC
    heartbeat: datetime                  # naive UTC
    run_id: int | None
    alive: bool

    def describe(self) -> str:
        """``host H pid P since 2026-01-31T12:00:00+00:00``."""
        return f"host {self.host} pid {self.pid} since {iso_utc(self.started)}"

    def age(self, now: datetime | None = None) -> float:
        """Seconds since the holder took the lease."""
        return ((now or utcnow()) - self.started).total_seconds()

    def silence(self, now: datetime | None = None) -> float:
        """Seconds since the holder's last heartbeat."""
        return ((now or utcnow()) - self.heartbeat).total_seconds()


_COLUMNS = "name, token, host, pid, started, heartbeat, run_id"
_SELECT = f"SELECT {_COLUMNS} FROM leases WHERE name = :name"
_BEAT = "UPDATE leases SET heartbeat = :now WHERE name = :name AND token = :token"
_SET_RUN = "UPDATE leases SET run_id = :run_id WHERE name = :name AND token = :token"


def _holder(row: tuple[Any, ...], grace: float, now: datetime) -> Holder:
    name, token, host, pid, started, heartbeat, run_id = row
    started, heartbeat = dbapi.as_datetime(started), dbapi.as_datetime(heartbeat)
    assert started is not None and heartbeat is not None
    return Holder(name, token, host, int(pid), started, heartbeat, run_id,
                  holder_alive(host, int(pid), heartbeat, grace, now))


class Lease:
    """A lease this process holds (see :func:`acquire`)."""

    def __init__(self, url: str, name: str, token: str, started: datetime) -> None:
        self.url, self.name, self.token, self.started = url, name, token, started

    def refresh(self) -> bool:
        """One heartbeat; False when the lease is no longer ours (taken over). DatabaseError when
        the database fails (a missed beat: the grace period covers a few)."""
        return refresh(self.url, self.name, self.token)

    def set_run(self, run_id: int, tx: dbapi.Transaction | None = None) -> None:
        """Name the engine run holding the lease (``botsq status`` shows it): in ``tx`` (the
        transaction recording the run), else in one of its own. DatabaseError."""
        params = {"run_id": run_id, "name": self.name, "token": self.token}
        if tx is not None:
            tx.execute(_SET_RUN, params)
        else:
            dbapi.transact(self.url, lambda t: t.execute(_SET_RUN, params))

    def release(self) -> None:
        """Give the lease up (only while it is still ours); DatabaseError."""
        release(self.url, self.name, self.token)


@dataclass(frozen=True)
class Claim:
    """The outcome of :func:`acquire`: ``lease`` when we hold it now; ``holder`` is whoever held it
    when we looked (None: it was free) - a live holder when refused, a dead one we took over, or
    ourselves when we already held it."""
    lease: Lease | None
    holder: Holder | None = None


def read(url: str, name: str, grace: float) -> Holder | None:
    """The current holder of lease ``name``, or None when it is free. DatabaseError when the
    database cannot be used."""
    rows = dbapi.transact(url, lambda tx: tx.execute(_SELECT, {"name": name}).rows, write=False)
    return _holder(rows[0], grace, utcnow()) if rows else None


def acquire(url: str, name: str, grace: float, *, token: str | None = None) -> Claim:
    """Take lease ``name``, or name the live holder. A given ``token`` that already holds the
    lease refreshes it (a holder asking again). DatabaseError when the database cannot be used."""
    token = token or os.urandom(16).hex()          # 128 random bits (uuid's import costs more than it)
    me = {"name": name, "token": token, "host": hostname(), "pid": os.getpid()}

    def attempt(tx: dbapi.Transaction) -> Claim | None:
        now = utcnow()
        rows = tx.execute(_SELECT, {"name": name}).rows
        if not rows:
            tx.execute(f"INSERT INTO leases ({_COLUMNS}) VALUES (:name, :token, :host, :pid, :now, :now, NULL)",
                       {**me, "now": now})
            return Claim(Lease(url, name, token, now))
        found = _holder(rows[0], grace, now)
        if found.token == token:
            tx.execute(_BEAT, {"name": name, "token": token, "now": now})
            return Claim(Lease(url, name, token, found.started), found)
        if found.alive:
            return Claim(None, found)
        # the dead holder's row, exactly as read (its stored heartbeat): of two claimants only one wins
        n = tx.execute("UPDATE leases SET token = :token, host = :host, pid = :pid, started = :now, "
                       "heartbeat = :now, run_id = NULL "
                       "WHERE name = :name AND token = :old_token AND heartbeat = :old_heartbeat",
                       {**me, "now": now, "old_token": rows[0][1], "old_heartbeat": rows[0][5]}).rowcount
        return Claim(Lease(url, name, token, now), found) if n == 1 else None

    for _attempt in range(5):
        try:
            claim = dbapi.transact(url, attempt)
        except dbapi.Conflict:
            continue                       # another claimant inserted the row first: look again
        if claim is not None:
            return claim
    return Claim(None, read(url, name, grace))


def refresh(url: str, name: str, token: str) -> bool:
    """Heartbeat of lease ``name`` held with ``token``; False when it is not (any more) ours.
    DatabaseError."""
    return dbapi.transact(url, lambda tx: tx.execute(
        _BEAT, {"now": utcnow(), "name": name, "token": token}).rowcount) == 1


def release(url: str, name: str, token: str) -> None:
    """Delete lease ``name`` if ``token`` still holds it; DatabaseError."""
    dbapi.transact(url, lambda tx: tx.execute("DELETE FROM leases WHERE name = :name AND token = :token",
                                              {"name": name, "token": token}))


class Heartbeat:
    """A daemon thread calling ``beat()`` every ``interval`` seconds until :meth:`stop` - the one
    heartbeat thread of botsq (engine lock, running jobs). ``beat`` must not raise."""

    def __init__(self, beat: Callable[[], None], interval: float, name: str) -> None:
        self.beat, self.interval = beat, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=timeout)

    def __enter__(self) -> "Heartbeat":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["hostname", "pid_exists", "process_gone", "holder_alive", "Holder", "Lease", "Claim", "read",
           "acquire", "refresh", "release", "Heartbeat"]
