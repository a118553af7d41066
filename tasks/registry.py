"""The queue's memory in the SQL tracking database: which jobs wait, which ones ran.

Two stores, one class each (after rq's registries), on :class:`engine.models.Base` (tables created
on first use, SQLite and PostgreSQL alike):

:class:`PendingRegistry` - tables ``jobqueue_pending`` and ``jobqueue_skip``: one row per *waiting*
    job identity (:attr:`tasks.jobs.Job.key`, unique) naming the message (task id) that stands for
    it. A submission adds the row before it publishes, *unconfirmed*, and confirms it once the
    broker has the message (:meth:`PendingRegistry.confirm`; a failed publish takes it back,
    :meth:`PendingRegistry.remove`). A unique-key conflict with a confirmed row means "an
    identical job is waiting": discard the new one, or - when it asks for a higher priority -
    point the row at the new message and mark the old one superseded (Bots raises the waiting
    job's priority the same way). A conflict with an *unconfirmed* row is never a duplicate: its
    message may never reach the broker (a publish that fails later, a publisher killed). The new
    job waits until the row settles (milliseconds), or takes it over when it does not within
    ``UNCONFIRMED_WAIT`` (at the higher of both priorities; the old message, should it arrive
    after all, is superseded). Superseded messages are dropped unrun.
:class:`StartedJobs` - table ``jobqueue_started``: one row per message the worker started:
    attempts, holder (host, pid, heartbeat), state. It makes a redelivered message harmless: a job
    that finished is not run again (RabbitMQ's consumer timeout, Redis' visibility timeout), one
    still running elsewhere is waited for (alive by the lease rule, :func:`engine.lease.holder_alive`),
    and one whose worker died is run again a bounded number of times.

The first step of a job (:meth:`StartedJobs.begin`) records its start and compare-and-deletes its
pending row in one commit, before the engine scans its inputs, so a file arriving after that
queues a new job and no wake-up is lost. Everything fails open: no row means "run it"; an entry
whose message is gone (queue purged, broker data lost, a publisher killed between insert and
publish) is detected - the queue holds no message and the entry is older than ``[jobqueue]
stale_after`` seconds - and replaced or swept, so the registry never blocks a job forever.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import Boolean, DateTime, Integer, String, Text, delete, func, select, true, update
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Mapped, Session, mapped_column

from engine.config import Config
from engine.config.lanes import DEFAULT_LANE, MAX_LANE_LENGTH
from engine.db import create_tables, get_engine, session_scope
from engine.errors import DatabaseError, database_error
from engine.lease import holder_alive, hostname
from engine.log import redact
from engine.log import mask_url
from engine.models import Base, utcnow
from tasks.jobs import Job

KEEP_FINISHED = timedelta(days=2)   # started-job rows kept after they end (redeliveries come sooner)
QueueDepth = Callable[[], "int | None"]   # messages waiting in the queue, asked only when it matters
T = TypeVar("T")
# seconds an identical job waits for an unconfirmed entry to settle before it takes the entry over: a
# publish normally settles in milliseconds (one broker round trip); one that fails takes its entry back
# itself; only a hung or killed publisher makes a job wait this long (the takeover is safe either way)
UNCONFIRMED_WAIT = 2.0
SKIP_REASONS = {   # jobqueue_skip.reason -> why the worker drops that message unrun
    "raised": "superseded by a copy queued at a higher priority",
    "unconfirmed": "superseded by an identical job queued before the broker had confirmed this one",
}


class RegistrationStatus(StrEnum):
    ADDED = "added"
    DUPLICATE = "duplicate"         # an identical job is waiting: nothing is published
    RAISED = "raised"               # an identical job was waiting at a lower priority: it is superseded


class BeginAction(StrEnum):
    RUN = "run"
    SKIP = "skip"                   # superseded, a duplicate, or it already ran
    WAIT = "wait"                   # the same message still runs on a live worker
    GIVEUP = "giveup"               # its worker was lost too many times


class JobState(StrEnum):
    """``jobqueue_started.state``."""
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    GAVE_UP = "gaveup"
    RETRY = "retry"                 # ended by a database error; the worker sent the same message again


class PendingJob(Base):
    __tablename__ = "jobqueue_pending"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    task_id: Mapped[str] = mapped_column(String(64))
    task: Mapped[str] = mapped_column(String(40))
    job: Mapped[str] = mapped_column(Text)                  # readable command line
    kwargs: Mapped[str] = mapped_column(Text)               # JSON
    priority: Mapped[int] = mapped_column(Integer)          # Bots 1..9
    created: Mapped[datetime] = mapped_column(DateTime)     # first queued (naive UTC)
    updated: Mapped[datetime] = mapped_column(DateTime)     # last raise / takeover
    # the broker has the row's message (publisher confirm): only then does the row make a later identical
    # job a duplicate. Rows of databases made before this column count as confirmed (server default).
    confirmed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=true())


class SkippedMessage(Base):
    __tablename__ = "jobqueue_skip"

    task_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(40))
    created: Mapped[datetime] = mapped_column(DateTime, index=True)


class StartedJob(Base):
    __tablename__ = "jobqueue_started"

    task_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), index=True)
    task: Mapped[str] = mapped_column(String(40))
    job: Mapped[str] = mapped_column(Text)
    # added with lanes: older databases gain it on first use (engine.db.add_missing_columns)
    lane: Mapped[str] = mapped_column(String(MAX_LANE_LENGTH), default=DEFAULT_LANE, server_default=DEFAULT_LANE)
    state: Mapped[str] = mapped_column(String(10), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started: Mapped[datetime] = mapped_column(DateTime)
    heartbeat: Mapped[datetime] = mapped_column(DateTime)
    ended: Mapped[datetime | None] = mapped_column(DateTime, nullable=True, index=True)
    result: Mapped[str] = mapped_column(Text, default="")


_TABLES = [PendingJob.__table__, SkippedMessage.__table__, StartedJob.__table__]
_ready: set[str] = set()            # database URLs whose tables this process has made sure of


def forget_tables() -> None:
    """After fork: a pool process checks the tables again on its own connections."""
    _ready.clear()


class _Changed(Exception):
    """The row changed between reading and a conditional update: look again."""


class _Store:
    """The registry's tables in one environment's database."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.url = cfg.database_url
        if self.url not in _ready:
            try:
                create_tables(get_engine(self.url), tables=_TABLES)
            except SQLAlchemyError as exc:
                raise database_error(self.url, exc) from None
            _ready.add(self.url)

    def _transaction(self, fn: Callable[[Session], T]) -> T:
        """``fn(session)`` in one transaction, again on a key conflict, a row changed meanwhile or a
        busy SQLite; DatabaseError otherwise."""
        for attempt in range(20):
            try:
                with session_scope(self.url) as s:
                    return fn(s)
            except (IntegrityError, _Changed):
                continue
            except OperationalError as exc:
                if "locked" in str(exc).lower() or "busy" in str(exc).lower():
                    time.sleep(0.01 * (attempt + 1))
                    continue
                raise database_error(self.url, exc) from None
            except SQLAlchemyError as exc:
                raise database_error(self.url, exc) from None
        raise DatabaseError(f"database {mask_url(self.url)}: the job registry stayed busy")


# --------------------------------------------------------------------------- waiting jobs

@dataclass(frozen=True)
class Registration:
    status: RegistrationStatus
    task_id: str                        # the message that now stands for the waiting job
    priority: int                       # its Bots priority
    previous: str | None = None         # raised / stale takeover: the message it replaced
    previous_priority: int | None = None
    stale: bool = False                 # the replaced entry's message was gone
    unconfirmed: bool = False           # the replaced entry's message had not reached the broker (yet)


@dataclass(frozen=True)
class Waiting:
    key: str
    task_id: str
    task: str
    job: str
    kwargs: dict[str, Any]
    priority: int
    created: datetime
    age: float                          # seconds since first queued
    confirmed: bool = True              # the broker confirmed its message (False: a publish under way or failed)

    @property
    def lane(self) -> str:
        """The lane the job waits in (its kwarg ``lane``; a job over several lanes waits in lane default)."""
        return str(self.kwargs.get("lane") or DEFAULT_LANE)

    def as_dict(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "task": self.task, "job": self.job, "lane": self.lane, "kwargs": self.kwargs,
                "priority": self.priority, "queued": self.created.isoformat(timespec="seconds") + "Z",
                "age_s": round(self.age, 1), "confirmed": self.confirmed}


class PendingRegistry(_Store):
    """Waiting jobs by identity: ``add`` / ``confirm`` / ``remove`` / ``forget`` / ``forget_message`` /
    ``cleanup(now)``."""

    def _is_stale(self, row: PendingJob, now: datetime, queue_depth: QueueDepth | None) -> bool:
        if queue_depth is None or (now - row.updated).total_seconds() < self.cfg.jobqueue.stale_after:
            return False
        try:
            depth = queue_depth()
        except Exception:  # noqa: BLE001 - cannot tell: keep the entry
            return False
        return depth == 0

    def add(self, job: Job, task_id: str, priority: int, queue_depth: QueueDepth | None = None) -> Registration:
        """Record a job about to be published, unconfirmed (race-free: the key is unique; every
        change of a row is a compare-and-set on its task id).

        An identical confirmed entry makes it a duplicate (or, asked at a higher priority, raises
        that entry). An identical *unconfirmed* entry is no ground for either: its publish is under
        way, and may still fail. ``add`` waits for it to settle - confirmed (then as above), or taken
        back (then this job is added) - and when the same unconfirmed entry is still there after
        :data:`UNCONFIRMED_WAIT` seconds (its publisher hangs or was killed) takes it over: the new
        message stands for the job, at the higher of both priorities (the publisher sends it at
        :attr:`Registration.priority`), and the old message is superseded. ``queue_depth`` returns
        the number of messages waiting in the queue; it is asked only when an identical entry is
        older than ``stale_after``, to tell a stale one.
        """
        key = job.key
        seen: tuple[str, float] | None = None       # the unconfirmed entry waited for, and since when (monotonic)
        delay = 0.002
        while True:
            take = seen[0] if seen is not None and time.monotonic() - seen[1] >= UNCONFIRMED_WAIT else None
            out = self._transaction(lambda s: self._add(s, job, key, task_id, priority, queue_depth, take))
            if isinstance(out, Registration):
                return out
            if seen is None or seen[0] != out:      # a new unconfirmed entry (another publisher took over)
                seen = (out, time.monotonic())
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _add(self, s: Session, job: Job, key: str, task_id: str, priority: int, queue_depth: QueueDepth | None,
             take: str | None) -> Registration | str:
        """One try of :meth:`add`: a Registration, or the task id of the unconfirmed entry to wait for
        (``take``: the one waited for long enough, taken over)."""
        now = utcnow()
        row = s.get(PendingJob, key)
        if row is None:
            s.add(PendingJob(key=key, task_id=task_id, task=job.task, job=job.describe(),
                             kwargs=json.dumps(job.shown_kwargs), priority=priority, created=now, updated=now,
                             confirmed=False))
            s.flush()
            return Registration(RegistrationStatus.ADDED, task_id, priority)
        old_id, old_priority = row.task_id, row.priority
        if not row.confirmed:
            if old_id != take:
                return old_id
            best = min(priority, old_priority)
            if not self._repoint(s, key, old_id, now, "unconfirmed", task_id=task_id, priority=best):
                raise _Changed
            return Registration(RegistrationStatus.ADDED, task_id, best, previous=old_id,
                                previous_priority=old_priority, unconfirmed=True)
        if self._is_stale(row, now, queue_depth):
            if not self._repoint(s, key, old_id, now, None, task_id=task_id, priority=priority, created=now):
                raise _Changed
            return Registration(RegistrationStatus.ADDED, task_id, priority, previous=old_id,
                                previous_priority=old_priority, stale=True)
        if priority < old_priority:
            if not self._repoint(s, key, old_id, now, "raised", task_id=task_id, priority=priority):
                raise _Changed
            return Registration(RegistrationStatus.RAISED, task_id, priority, previous=old_id,
                                previous_priority=old_priority)
        return Registration(RegistrationStatus.DUPLICATE, old_id, old_priority)

    @staticmethod
    def _repoint(s: Session, key: str, old_id: str, now: datetime, skip: str | None, **values: Any) -> bool:
        """Point entry ``key`` at another message, unconfirmed, if it still names ``old_id`` (the
        compare-and-set every change of an entry is); ``skip`` (a :data:`SKIP_REASONS` key): the old
        message is to be dropped unrun. False when the entry changed meanwhile."""
        n = s.execute(update(PendingJob).where(PendingJob.key == key, PendingJob.task_id == old_id)
                      .values(updated=now, confirmed=False, **values)).rowcount
        if n != 1:
            return False
        if skip is not None:
            s.add(SkippedMessage(task_id=old_id, key=key, reason=skip, created=now))
            s.flush()
        return True

    def confirm(self, job: Job, task_id: str) -> bool:
        """The broker has message ``task_id``: its entry now makes identical jobs duplicates. False
        when the entry no longer names it (taken over, or already claimed by the worker)."""
        def confirm(s: Session) -> bool:
            return s.execute(update(PendingJob).where(PendingJob.key == job.key, PendingJob.task_id == task_id)
                             .values(confirmed=True)).rowcount > 0

        return self._transaction(confirm)

    def remove(self, job: Job, reg: Registration) -> None:
        """Undo :meth:`add` after the publish failed (nothing is left behind): a raise or a takeover
        of an unconfirmed entry gives the entry back to the message it had (which is no longer
        superseded), an added entry goes."""
        def remove(s: Session) -> None:
            if reg.previous and (reg.status == RegistrationStatus.RAISED or reg.unconfirmed):
                n = s.execute(update(PendingJob).where(PendingJob.key == job.key, PendingJob.task_id == reg.task_id)
                              .values(task_id=reg.previous, priority=reg.previous_priority,
                                      confirmed=not reg.unconfirmed)).rowcount
                if n:
                    s.execute(delete(SkippedMessage).where(SkippedMessage.task_id == reg.previous))
            elif reg.status == RegistrationStatus.ADDED:
                s.execute(delete(PendingJob).where(PendingJob.key == job.key, PendingJob.task_id == reg.task_id))

        self._transaction(remove)

    def forget(self, key: str, task_id: str) -> bool:
        """Drop the entry of a message that will never run (revoked, expired); True if one was removed."""
        def forget(s: Session) -> bool:
            n = s.execute(delete(PendingJob).where(PendingJob.key == key, PendingJob.task_id == task_id)).rowcount
            n += s.execute(delete(SkippedMessage).where(SkippedMessage.task_id == task_id)).rowcount
            return n > 0

        return self._transaction(forget)

    def forget_message(self, task_id: str) -> bool:
        """Drop the entry of message ``task_id`` whatever job it is for: the worker dropped the message
        unrun before it could name its job (rejected, not decodable); True if one was removed."""
        def forget(s: Session) -> bool:
            n = s.execute(delete(PendingJob).where(PendingJob.task_id == task_id)).rowcount
            s.execute(delete(SkippedMessage).where(SkippedMessage.task_id == task_id))
            return n > 0

        return self._transaction(forget)

    def clear(self) -> int:
        """Forget every waiting job (``botsq queue clear``, after purging the queue)."""
        def clear(s: Session) -> int:
            n = s.execute(delete(PendingJob)).rowcount
            s.execute(delete(SkippedMessage))
            return n

        return self._transaction(clear)

    def cleanup(self, now: datetime, queue_depth: QueueDepth | None = None) -> int:
        """Entries older than ``stale_after`` whose messages are gone (the queue is empty) go; their number."""
        try:
            depth = queue_depth() if queue_depth is not None else None
        except Exception:  # noqa: BLE001 - cannot tell: keep them
            depth = None
        if depth != 0:
            return 0
        cutoff = now - timedelta(seconds=self.cfg.jobqueue.stale_after)

        def cleanup(s: Session) -> int:
            n = s.execute(delete(PendingJob).where(PendingJob.updated < cutoff)).rowcount
            s.execute(delete(SkippedMessage).where(SkippedMessage.created < cutoff))
            return n

        return self._transaction(cleanup)

    def waiting(self) -> list[Waiting]:
        """Waiting jobs, in the order they will run (priority, then age)."""
        now = utcnow()
        with session_scope(self.url) as s:
            rows = s.scalars(select(PendingJob).order_by(PendingJob.priority, PendingJob.updated)).all()
            return [Waiting(r.key, r.task_id, r.task, r.job, json.loads(r.kwargs or "{}"), r.priority, r.created,
                            (now - r.created).total_seconds(), bool(r.confirmed)) for r in rows]

    def count(self) -> int:
        with session_scope(self.url) as s:
            return int(s.scalar(select(func.count()).select_from(PendingJob)) or 0)


# --------------------------------------------------------------------------- started jobs

@dataclass(frozen=True)
class Begin:
    action: BeginAction
    reason: str = ""
    attempts: int = 1
    registered: bool = True     # the message had its registry entry (False: a fail-open run)


class StartedJobs(_Store):
    """Messages the worker started: ``begin`` / ``heartbeat`` / ``finish`` / ``cleanup(now)``."""

    def _alive(self, row: StartedJob, now: datetime) -> bool:
        # a record naming this very process is not a live holder: this process would not be asking
        return holder_alive(row.host, row.pid, row.heartbeat, self.cfg.settings.lock_grace, now,
                            this_process_counts=False)

    def begin(self, job: Job, task_id: str, max_attempts: int) -> Begin:
        """The first step of a job, one transaction: record the start, claim its pending entry.

        * a message whose run ended in a database error (state ``retry``): Celery's retry, run it;
        * a message already started before (a redelivery): skip it when that run ended, wait while
          its holder is alive, run it again when the holder died (at most ``max_attempts`` in all);
        * else compare-and-delete the pending entry: a message superseded by a priority raise, or
          one whose identical job is waiting under another message, is skipped;
        * no entry at all: run anyway (fail open).
        """
        me_host, me_pid = hostname(), os.getpid()

        def begin(s: Session) -> Begin:
            now = utcnow()
            st = s.get(StartedJob, task_id)
            if st is not None:
                if st.state == JobState.RETRY:      # Celery's retry of this message (bounded by its max_retries)
                    st.attempts += 1
                    st.state, st.ended, st.result = JobState.RUNNING, None, ""
                    st.host, st.pid, st.heartbeat = me_host, me_pid, now
                    return Begin(BeginAction.RUN, f"run again after a database error (attempt {st.attempts})",
                                 st.attempts)
                if st.state != JobState.RUNNING:
                    return Begin(BeginAction.SKIP, f"this message already ran (state {st.state}, attempt "
                                                   f"{st.attempts})", st.attempts)
                if self._alive(st, now):
                    return Begin(BeginAction.WAIT, f"it is running on {st.host} pid {st.pid}", st.attempts)
                if st.attempts >= max_attempts:
                    st.state, st.ended = JobState.GAVE_UP, now
                    st.result = f"gave up: the worker running it was lost {st.attempts} time(s)"
                    return Begin(BeginAction.GIVEUP, st.result, st.attempts)
                st.attempts += 1
                st.host, st.pid, st.heartbeat = me_host, me_pid, now
                return Begin(BeginAction.RUN, f"run again: the worker running it was lost (attempt {st.attempts})",
                             st.attempts)
            n = s.execute(delete(PendingJob).where(PendingJob.key == job.key, PendingJob.task_id == task_id)).rowcount
            if n == 0:
                skipped = s.get(SkippedMessage, task_id)
                if skipped is not None:
                    s.delete(skipped)
                    return Begin(BeginAction.SKIP, SKIP_REASONS.get(skipped.reason, "superseded"))
                other = s.get(PendingJob, job.key)
                if other is not None:
                    return Begin(BeginAction.SKIP, f"an identical job is waiting ({other.task_id})")
            s.add(StartedJob(task_id=task_id, key=job.key, task=job.task, job=job.describe(),
                             lane=job.lane or DEFAULT_LANE, state=JobState.RUNNING, attempts=1, host=me_host,
                             pid=me_pid, started=now, heartbeat=now))
            s.flush()
            return Begin(BeginAction.RUN, "", 1, registered=n == 1)

        return self._transaction(begin)

    def heartbeat(self, task_id: str) -> None:
        with session_scope(self.url) as s:
            s.execute(update(StartedJob).where(StartedJob.task_id == task_id, StartedJob.state == JobState.RUNNING)
                      .values(heartbeat=utcnow()))

    def finish(self, task_id: str, state: JobState, result: str) -> None:
        def finish(s: Session) -> None:
            s.execute(update(StartedJob).where(StartedJob.task_id == task_id)
                      .values(state=state, ended=utcnow(), heartbeat=utcnow(), result=redact(result)[:2000]))

        self._transaction(finish)

    def cleanup(self, now: datetime) -> int:
        """Start records older than KEEP_FINISHED go (ended ones by their end, silent ones by their heartbeat)."""
        old = now - KEEP_FINISHED

        def cleanup(s: Session) -> int:
            return s.execute(delete(StartedJob).where(
                ((StartedJob.state != JobState.RUNNING) & (StartedJob.ended < old))
                | ((StartedJob.state == JobState.RUNNING) & (StartedJob.heartbeat < old)))).rowcount

        return self._transaction(cleanup)

    def get(self, task_id: str) -> dict[str, Any] | None:
        """``{"state", "attempts", "result"}`` of a started message, or None."""
        with session_scope(self.url) as s:
            r = s.get(StartedJob, task_id)
            return None if r is None else {"state": r.state, "attempts": r.attempts, "result": r.result}

    def running(self) -> list[dict[str, Any]]:
        """Jobs recorded as running (``botsq queue --json``'s ``running``), oldest first."""
        now = utcnow()
        with session_scope(self.url) as s:
            rows = s.scalars(select(StartedJob).where(StartedJob.state == JobState.RUNNING)
                             .order_by(StartedJob.started)).all()
            return [{"task_id": r.task_id, "task": r.task, "job": r.job, "lane": r.lane, "attempt": r.attempts,
                     "host": r.host,
                     "pid": r.pid, "started": r.started.isoformat(timespec="seconds") + "Z",
                     "running_s": round((now - r.started).total_seconds(), 1), "alive": self._alive(r, now)}
                    for r in rows]


__all__ = ["PendingRegistry", "StartedJobs", "Registration", "RegistrationStatus", "Begin", "BeginAction",
           "JobState", "Waiting", "PendingJob", "SkippedMessage", "StartedJob", "forget_tables", "QueueDepth"]
