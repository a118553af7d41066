"""The queue's memory in the SQL tracking database: which jobs wait, which ones ran.

Three tables on :class:`engine.db.Base` (created on first use, SQLite and PostgreSQL alike):

``jobqueue_pending`` - the pending-key registry, one row per *waiting* job identity
    (:attr:`tasks.jobs.Job.key`, unique) naming the message (task id) that stands for it.
    A submission inserts the row before it publishes; a unique-key conflict means "an
    identical job is waiting": discard the new one, or - when it asks for a higher priority -
    point the row at the new message and mark the old one superseded (Bots raises the waiting
    job's priority the same way).
``jobqueue_skip`` - messages superseded by a priority raise; the worker drops them unrun.
``jobqueue_started`` - one row per message the worker started: attempts, holder (host, pid,
    heartbeat), state. It makes a redelivered message harmless: a job that finished is not
    run again (RabbitMQ's consumer timeout, Redis' visibility timeout), one still running
    elsewhere is waited for, and one whose worker died is run again a bounded number of times.

The first step of a job (:func:`begin`) is a compare-and-delete of its pending row, committed
before the engine scans its inputs, so a file arriving after that queues a new job and no
wake-up is lost. Everything fails open: no row means "run it"; an entry whose message is gone
(queue purged, broker data lost, a publisher killed between insert and publish) is detected -
the queue holds no message and the entry is older than ``[jobqueue] stale_after`` seconds - and
replaced or swept, so the registry never blocks a job forever.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import DateTime, Integer, String, Text, delete, func, select, update
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Mapped, mapped_column

from engine.config import Config
from engine.db import create_tables, get_engine, session_scope
from engine.errors import DatabaseError, database_error
from engine.log import mask_url
from engine.lease import holder_alive, hostname
from engine.models import Base, utcnow
from tasks.jobs import Job

KEEP_FINISHED = timedelta(days=2)   # started-job rows kept after they end (redeliveries come sooner)

RUNNING, DONE, FAILED, GAVE_UP = "running", "done", "failed", "gaveup"
RETRY = "retry"     # ended by a database error; the worker sent the same message again (task.retry)


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
    state: Mapped[str] = mapped_column(String(10), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started: Mapped[datetime] = mapped_column(DateTime)
    heartbeat: Mapped[datetime] = mapped_column(DateTime)
    ended: Mapped[datetime | None] = mapped_column(DateTime, nullable=True, index=True)
    result: Mapped[str] = mapped_column(Text, default="")


_TABLES = [PendingJob.__table__, SkippedMessage.__table__, StartedJob.__table__]
_ready: set[str] = set()


def _url(cfg: Config) -> str:
    """The database URL, the registry's tables created."""
    url = cfg.database_url
    if url not in _ready:
        try:
            create_tables(get_engine(url), tables=_TABLES)
        except SQLAlchemyError as exc:
            raise database_error(cfg.database_url, exc) from None
        _ready.add(url)
    return url


class _Changed(Exception):
    """The row changed between reading and a conditional update: look again."""


def _retrying(cfg: Config, fn: Callable[[], Any]) -> Any:
    """Run a transaction, again on a key conflict or a busy SQLite; DatabaseError otherwise."""
    for attempt in range(20):
        try:
            return fn()
        except (IntegrityError, _Changed):
            continue
        except OperationalError as exc:
            if "locked" in str(exc).lower() or "busy" in str(exc).lower():
                time.sleep(0.01 * (attempt + 1))
                continue
            raise database_error(cfg.database_url, exc) from None
        except SQLAlchemyError as exc:
            raise database_error(cfg.database_url, exc) from None
    raise DatabaseError(f"database {mask_url(cfg.database_url)}: the job registry stayed busy")


# --------------------------------------------------------------------------- submitting

@dataclass
class Registration:
    status: str                         # added | duplicate | raised
    task_id: str                        # the message that now stands for the waiting job
    priority: int                       # its Bots priority
    previous: str | None = None         # raised / stale takeover: the message it replaced
    previous_priority: int | None = None
    stale: bool = False                 # the replaced entry's message was gone


def _is_stale(cfg: Config, row: PendingJob, now: datetime, queue_depth: Callable[[], int | None] | None) -> bool:
    if queue_depth is None or (now - row.updated).total_seconds() < cfg.jobqueue.stale_after:
        return False
    try:
        depth = queue_depth()
    except Exception:  # noqa: BLE001 - cannot tell: keep the entry
        return False
    return depth == 0


def register(cfg: Config, job: Job, task_id: str, priority: int,
             queue_depth: Callable[[], int | None] | None = None) -> Registration:
    """Record a job about to be published (race-free: the key is unique).

    ``queue_depth`` returns the number of messages waiting in queue ``engine``; it is asked
    only when an identical entry is older than ``stale_after``, to tell a stale one.
    """
    url = _url(cfg)
    key = job.key

    def attempt() -> Registration:
        now = utcnow()
        with session_scope(url) as s:
            row = s.get(PendingJob, key)
            if row is None:
                s.add(PendingJob(key=key, task_id=task_id, task=job.task, job=job.describe(),
                                 kwargs=json.dumps(job.kwargs), priority=priority, created=now, updated=now))
                s.flush()
                return Registration("added", task_id, priority)
            old_id, old_priority = row.task_id, row.priority
            if _is_stale(cfg, row, now, queue_depth):
                n = s.execute(update(PendingJob).where(PendingJob.key == key, PendingJob.task_id == old_id)
                              .values(task_id=task_id, priority=priority, created=now, updated=now)).rowcount
                if n == 1:
                    return Registration("added", task_id, priority, previous=old_id, previous_priority=old_priority,
                                        stale=True)
                raise _Changed
            if priority < old_priority:
                n = s.execute(update(PendingJob).where(PendingJob.key == key, PendingJob.task_id == old_id)
                              .values(task_id=task_id, priority=priority, updated=now)).rowcount
                if n == 1:
                    s.add(SkippedMessage(task_id=old_id, key=key, reason="raised", created=now))
                    s.flush()
                    return Registration("raised", task_id, priority, previous=old_id, previous_priority=old_priority)
                raise _Changed
            return Registration("duplicate", old_id, old_priority)

    return _retrying(cfg, attempt)


def unregister(cfg: Config, job: Job, reg: Registration) -> None:
    """Undo :func:`register` after the publish failed (nothing is left behind)."""
    url = _url(cfg)

    def attempt() -> None:
        with session_scope(url) as s:
            if reg.status == "raised" and reg.previous:
                s.execute(update(PendingJob).where(PendingJob.key == job.key, PendingJob.task_id == reg.task_id)
                          .values(task_id=reg.previous, priority=reg.previous_priority))
                s.execute(delete(SkippedMessage).where(SkippedMessage.task_id == reg.previous))
            elif reg.status == "added":
                s.execute(delete(PendingJob).where(PendingJob.key == job.key, PendingJob.task_id == reg.task_id))

    _retrying(cfg, attempt)


def forget(cfg: Config, key: str, task_id: str) -> bool:
    """Drop the entry of a message that will never run (e.g. revoked/expired); True if one was removed."""
    url = _url(cfg)

    def attempt() -> bool:
        with session_scope(url) as s:
            n = s.execute(delete(PendingJob).where(PendingJob.key == key, PendingJob.task_id == task_id)).rowcount
            n += s.execute(delete(SkippedMessage).where(SkippedMessage.task_id == task_id)).rowcount
            return n > 0

    return _retrying(cfg, attempt)


# --------------------------------------------------------------------------- the worker's side

@dataclass
class Begin:
    action: str                 # run | skip | wait | giveup
    reason: str = ""
    attempts: int = 1
    registered: bool = True     # the message had its registry entry (False: fail-open run)


def _alive(cfg: Config, row: StartedJob, now: datetime) -> bool:
    # a record naming this very process is not a live holder: this process would not be asking
    return holder_alive(row.host, row.pid, row.heartbeat, cfg.settings.lock_grace, now, this_process_counts=False)


def begin(cfg: Config, job: Job, task_id: str, max_attempts: int) -> Begin:
    """The first step of a job, one transaction: claim its registry entry, record the start.

    * a message whose run ended in a database error (state ``retry``): Celery's retry, run it;
    * a message already started before (a redelivery): skip it when that run ended, wait while
      its holder is alive, run it again when the holder died (at most ``max_attempts`` in all);
    * else compare-and-delete the pending entry: a message superseded by a priority raise, or
      one whose identical job is waiting under another message, is skipped;
    * no entry at all: run anyway (fail open).
    """
    url = _url(cfg)
    me_host, me_pid = hostname(), os.getpid()

    def attempt() -> Begin:
        now = utcnow()
        with session_scope(url) as s:
            st = s.get(StartedJob, task_id)
            if st is not None:
                if st.state == RETRY:           # Celery's retry of this message (bounded by its max_retries)
                    st.attempts += 1
                    st.state, st.ended, st.result = RUNNING, None, ""
                    st.host, st.pid, st.heartbeat = me_host, me_pid, now
                    return Begin("run", f"run again after a database error (attempt {st.attempts})", st.attempts)
                if st.state != RUNNING:
                    return Begin("skip", f"this message already ran (state {st.state}, attempt {st.attempts})",
                                 st.attempts)
                if _alive(cfg, st, now):
                    return Begin("wait", f"it is running on {st.host} pid {st.pid}", st.attempts)
                if st.attempts >= max_attempts:
                    st.state, st.ended = GAVE_UP, now
                    st.result = f"gave up: the worker running it was lost {st.attempts} time(s)"
                    return Begin("giveup", st.result, st.attempts)
                st.attempts += 1
                st.host, st.pid, st.heartbeat = me_host, me_pid, now
                return Begin("run", f"run again: the worker running it was lost (attempt {st.attempts})",
                             st.attempts)
            n = s.execute(delete(PendingJob).where(PendingJob.key == job.key, PendingJob.task_id == task_id)).rowcount
            if n == 0:
                if s.execute(delete(SkippedMessage).where(SkippedMessage.task_id == task_id)).rowcount:
                    return Begin("skip", "superseded by a copy queued at a higher priority")
                other = s.get(PendingJob, job.key)
                if other is not None:
                    return Begin("skip", f"an identical job is waiting ({other.task_id})")
            s.add(StartedJob(task_id=task_id, key=job.key, task=job.task, job=job.describe(), state=RUNNING,
                             attempts=1, host=me_host, pid=me_pid, started=now, heartbeat=now))
            s.flush()
            return Begin("run", "", 1, registered=n == 1)

    return _retrying(cfg, attempt)


def heartbeat(cfg: Config, task_id: str) -> None:
    with session_scope(_url(cfg)) as s:
        s.execute(update(StartedJob).where(StartedJob.task_id == task_id, StartedJob.state == RUNNING)
                  .values(heartbeat=utcnow()))


def finish(cfg: Config, task_id: str, state: str, result: str) -> None:
    url = _url(cfg)

    def attempt() -> None:
        with session_scope(url) as s:
            s.execute(update(StartedJob).where(StartedJob.task_id == task_id)
                      .values(state=state, ended=utcnow(), heartbeat=utcnow(), result=result[:2000]))

    _retrying(cfg, attempt)


# --------------------------------------------------------------------------- looking and cleaning

@dataclass
class Waiting:
    key: str
    task_id: str
    task: str
    job: str
    kwargs: dict[str, Any]
    priority: int
    created: datetime
    age: float                  # seconds since first queued

    def as_dict(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "task": self.task, "job": self.job, "kwargs": self.kwargs,
                "priority": self.priority, "queued": self.created.isoformat(timespec="seconds") + "Z",
                "age_s": round(self.age, 1)}


def waiting_jobs(cfg: Config) -> list[Waiting]:
    """Waiting jobs, in the order they will run (priority, then age)."""
    now = utcnow()
    with session_scope(_url(cfg)) as s:
        rows = s.scalars(select(PendingJob).order_by(PendingJob.priority, PendingJob.updated)).all()
        return [Waiting(r.key, r.task_id, r.task, r.job, json.loads(r.kwargs or "{}"), r.priority, r.created,
                        (now - r.created).total_seconds()) for r in rows]


def running_jobs(cfg: Config) -> list[dict[str, Any]]:
    now = utcnow()
    with session_scope(_url(cfg)) as s:
        rows = s.scalars(select(StartedJob).where(StartedJob.state == RUNNING).order_by(StartedJob.started)).all()
        return [{"task_id": r.task_id, "task": r.task, "job": r.job, "attempt": r.attempts, "host": r.host,
                 "pid": r.pid, "started": r.started.isoformat(timespec="seconds") + "Z",
                 "running_s": round((now - r.started).total_seconds(), 1), "alive": _alive(cfg, r, now)}
                for r in rows]


def started(cfg: Config, task_id: str) -> dict[str, Any] | None:
    with session_scope(_url(cfg)) as s:
        r = s.get(StartedJob, task_id)
        return None if r is None else {"state": r.state, "attempts": r.attempts, "result": r.result}


def clear(cfg: Config) -> int:
    """Forget every waiting job (``botsq queue clear``, after purging the queue)."""
    url = _url(cfg)

    def attempt() -> int:
        with session_scope(url) as s:
            n = s.execute(delete(PendingJob)).rowcount
            s.execute(delete(SkippedMessage))
            return n

    return _retrying(cfg, attempt)


def sweep(cfg: Config, queue_depth: Callable[[], int | None] | None = None) -> dict[str, int]:
    """Clear stale entries (the queue is empty, so their messages are gone) and old start records."""
    url = _url(cfg)
    now = utcnow()
    out = {"stale": 0, "old": 0}
    depth = None
    if queue_depth is not None:
        try:
            depth = queue_depth()
        except Exception:  # noqa: BLE001
            depth = None

    def attempt() -> None:
        with session_scope(url) as s:
            if depth == 0:
                cutoff = now - timedelta(seconds=cfg.jobqueue.stale_after)
                out["stale"] = s.execute(delete(PendingJob).where(PendingJob.updated < cutoff)).rowcount
                s.execute(delete(SkippedMessage).where(SkippedMessage.created < cutoff))
            old = now - KEEP_FINISHED
            out["old"] = s.execute(delete(StartedJob).where(
                ((StartedJob.state != RUNNING) & (StartedJob.ended < old))
                | ((StartedJob.state == RUNNING) & (StartedJob.heartbeat < old)))).rowcount

    _retrying(cfg, attempt)
    return out


def count_pending(cfg: Config) -> int:
    with session_scope(_url(cfg)) as s:
        return int(s.scalar(select(func.count()).select_from(PendingJob)) or 0)
