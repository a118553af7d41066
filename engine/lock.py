"""The engine lock: at most one engine run per lane, on any number of machines.

It is a lease (:mod:`engine.lease`) named ``engine`` for lane ``default`` and ``engine.<lane>``
for the others. A live holder refreshes its heartbeat from a thread and is never taken over,
however long it runs (past maxruntime it only raises an alert). A holder that is dead by the
lease rule - its process no longer exists on this host, or its heartbeat has been silent past
``[settings] lock_grace`` - is a crashed run: the next run records it, recovers its files and
takes over. A stale lock is never treated as a damaged database.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from engine import lease
from engine.config import Config
from engine.config.lanes import DEFAULT_LANE
from engine.errors import DatabaseError, one_line
from engine.lease import Holder
from engine.states import utcnow


def lease_name(lane: str = DEFAULT_LANE) -> str:
    """The lease of a lane's engine lock: ``engine`` (lane default) or ``engine.<lane>``."""
    return "engine" if lane == DEFAULT_LANE else f"engine.{lane}"


def read_lock(cfg: Config, lane: str = DEFAULT_LANE) -> Holder | None:
    """The run holding the lane's engine lock, or None when the engine is free; DatabaseError."""
    return lease.read(cfg.database_url, lease_name(lane), cfg.settings.lock_grace)


def overtime_minutes(holder: Holder, cfg: Config) -> float | None:
    """Minutes past maxruntime for a live holder, or None when it is within time."""
    over = holder.age() / 60 - cfg.settings.maxruntime
    return over if over > 0 else None


class EngineLockHandle:
    """An engine lock we hold: a heartbeat thread keeps it fresh until :meth:`release`, notices
    when it was taken over (``lost``) and calls ``on_overtime(minutes)`` once past maxruntime."""

    def __init__(self, cfg: Config, held: lease.Lease, log: logging.Logger,
                 on_overtime: Callable[[float], None] | None = None) -> None:
        self.cfg, self.lease, self.log, self.on_overtime = cfg, held, log, on_overtime
        self.started = held.started          # naive UTC; maxruntime counts from here
        self.lost = False
        self._alerted = False
        self._heartbeat: lease.Heartbeat | None = None

    def set_run(self, run_id: int) -> None:
        self.lease.set_run(run_id)

    def start_heartbeat(self) -> None:
        self._heartbeat = lease.Heartbeat(self.beat, max(0.05, self.cfg.settings.lock_heartbeat),
                                          "botsq-lock-heartbeat").start()

    def beat(self) -> None:
        """One heartbeat; notices a lost lock and an overlong run. Never raises."""
        try:
            if not self.lease.refresh() and not self.lost:
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

    def release(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
        try:
            self.lease.release()
        except DatabaseError as exc:
            self.log.error("could not release the engine lock: %s", exc)


@dataclass(frozen=True)
class Acquired:
    """The outcome of :func:`acquire`: ``lock`` (ours), or ``holder`` (a live run holds it)."""
    lock: EngineLockHandle | None
    holder: Holder | None = None
    crashed: Holder | None = None        # a dead holder we took over from


def acquire(cfg: Config, log: logging.Logger, on_overtime: Callable[[float], None] | None = None,
            lane: str = DEFAULT_LANE) -> Acquired:
    """Take the lane's engine lock, or name the live run holding it; DatabaseError."""
    claim = lease.acquire(cfg.database_url, lease_name(lane), cfg.settings.lock_grace)
    if claim.lease is None:
        return Acquired(None, holder=claim.holder)
    return Acquired(EngineLockHandle(cfg, claim.lease, log, on_overtime), crashed=claim.holder)


__all__ = ["DEFAULT_LANE", "lease_name", "read_lock", "acquire", "Acquired", "EngineLockHandle",
           "overtime_minutes"]
