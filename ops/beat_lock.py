"""The beat scheduler of botsq: one active beat per database, last runs kept in the database.

``celery -A tasks beat`` uses :class:`BotsScheduler` (``beat_scheduler =
"beat_schedule:BotsScheduler"``). It

* builds the jobs from bots.ini (:func:`beat_schedule.load_jobs`) and refuses to start, with
  one clear line, when a job names an unknown route or command;
* takes the beat lock, lease ``beat`` in the tracking database (:mod:`engine.lease`) refreshed by
  a heartbeat: a second beat started by mistake stays idle (and says so) until the first is gone
  by the lease rule - stopped, crashed on this machine (its pid is dead or a zombie), or silent
  for ``[settings] lock_grace`` seconds;
* keeps each job's last run in the database, so after downtime (or when the lock moves to the
  other beat) a missed run is made up once, never once per missed slot;
* publishes through ``tasks.submit.submit`` - the same path as bots-job2queue, so priorities
  and dedup (a waiting identical job is not added twice) apply unchanged. A failed publish
  (broker unreachable) keeps the job due and is retried every few seconds.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from celery.beat import ScheduleEntry, Scheduler
from sqlalchemy import Column, Float, MetaData, String, Table, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from engine import lease
from engine.db import create_tables, get_engine
from engine.errors import DatabaseError
from engine.lease import Holder

LEASE = "beat"
RETRY_SECONDS = 5.0

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


def _publish(cfg: Any, job: Any, priority: int) -> str:
    """Publish through the queue's one path (registry + broker); returns added|duplicate|..."""
    from tasks.submit import submit

    res = submit(cfg, job, priority=priority)
    return str(getattr(res, "status", res))


class BotsScheduler(Scheduler):
    """Celery beat scheduler for botsq (see the module doc)."""

    #: seconds between retries while another beat holds the lock
    idle_interval = 2.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.cfg: Any = None
        self.store: BeatStore | None = None
        self.jobs: dict[str, Any] = {}
        self.holder_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.locked = False
        self._last_heartbeat = 0.0
        self._last_idle_log = 0.0
        self._closed = False
        self._retry_at: dict[str, float] = {}
        self.log = logging.getLogger("botsq.beat")
        kwargs.pop("schedule_filename", None)       # state lives in the database, not a shelve file
        super().__init__(*args, **kwargs)

    # ------------------------------------------------------------------ set-up
    def _fail(self, msg: str) -> None:
        from engine.log import redact

        line = f"celery beat: error: {redact(msg)}"
        if self.log.handlers:                   # botsq's logger: beat.log and stderr
            self.log.critical(line)
        else:
            print(line, file=sys.stderr, flush=True)
        raise SystemExit(1)

    def setup_schedule(self) -> None:
        from beat_schedule import entry_for, load_jobs
        from engine.config import load_config
        from engine.errors import ConfigError
        from engine.log import component_logger

        try:
            self.cfg = load_config(None)
            self.log = component_logger("beat", self.cfg)
            jobs = load_jobs(self.cfg)
            self.store = BeatStore(self.cfg.database_url)
            state = self.store.load_state()
        except (ConfigError, DatabaseError) as exc:
            self._fail(str(exc))
            return
        if not self.cfg.jobqueue.enabled:
            self._fail(f"{self.cfg.ini_path}: [jobqueue] enabled: the queue is disabled; beat has nothing to send to")
        self.jobs = {j.name: j for j in jobs}
        self.data = {}
        for j in jobs:
            e = entry_for(j)
            self.data[j.name] = ScheduleEntry(name=j.name, app=self.app, last_run_at=state.get(j.name), **e)
        self.heartbeat_every = max(0.2, float(self.cfg.settings.lock_heartbeat))
        self.grace = max(self.heartbeat_every * 2, float(self.cfg.settings.lock_grace))
        names = ", ".join(f"{j.name} ({j.describe()}, p{j.priority})" for j in jobs) or "none"
        self.log.info("beat: %d scheduled job(s) from %s: %s", len(jobs), self.cfg.ini_path, names)

    def install_default_entries(self, data: Any) -> None:  # no celery.backend_cleanup entry
        pass

    @property
    def info(self) -> str:
        return "    . state -> tracking database (botsq_beat_state), lock: lease 'beat' (table leases)"

    # ------------------------------------------------------------------ the lock
    def _ensure_lock(self) -> bool:
        assert self.store is not None
        now = time.monotonic()
        try:
            if self.locked:
                if now - self._last_heartbeat < self.heartbeat_every:
                    return True
                if self.store.heartbeat(self.holder_id):
                    self._last_heartbeat = now
                    return True
                self.locked = False
                self.log.warning("beat: lost the beat lock to another beat; staying idle")
            ok, row = self.store.try_acquire(self.holder_id, self.grace)
        except DatabaseError as exc:
            self.log.error("beat: database unreachable (%s); not sending until it answers", exc)
            return False
        if ok:
            self.locked = True
            self._last_heartbeat = now
            if row is not None and row["holder"] != self.holder_id:
                self.log.warning("beat: took over the beat lock from %s (pid %s), gone since %.0f s",
                                 row["host"], row["pid"], time.time() - row["heartbeat_at"])
            else:
                self.log.info("beat: holding the beat lock (%s)", self.holder_id)
            self._reload_state()
            return True
        if now - self._last_idle_log > 60 or not self._last_idle_log:
            self._last_idle_log = now
            who = f"{row['host']} (pid {row['pid']})" if row else "another beat"
            self.log.warning("beat: another beat is running on %s; this one stays idle until it is gone", who)
        return False

    def _reload_state(self) -> None:
        """Take last runs from the database (the other beat may have run jobs meanwhile)."""
        assert self.store is not None
        state = self.store.load_state()
        for name, entry in self.data.items():
            if name in state:
                entry.last_run_at = state[name]

    # ------------------------------------------------------------------ ticking
    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self._ensure_lock():
            return min(self.idle_interval, self.heartbeat_every)
        wait = self.heartbeat_every
        due = []
        for name, entry in self.data.items():
            try:
                is_due, nxt = entry.is_due()
            except Exception:  # noqa: BLE001
                self.log.exception("beat: cannot calculate the next run of %s", name)
                continue
            if is_due:
                due.append((self.jobs[name].priority, name, entry, nxt))
            else:
                wait = min(wait, nxt)
        now = time.monotonic()
        for _prio, name, entry, nxt in sorted(due, key=lambda d: (d[0], d[1])):
            retry_at = self._retry_at.get(name, 0.0)
            if now < retry_at:                        # its last publish failed: not yet again
                wait = min(wait, retry_at - now)
            elif self.send(name, entry):
                self._retry_at.pop(name, None)
                wait = min(wait, nxt)
            else:
                self._retry_at[name] = time.monotonic() + RETRY_SECONDS
                wait = min(wait, RETRY_SECONDS)
        return max(wait, 0.0)

    def send(self, name: str, entry: ScheduleEntry) -> bool:
        """Publish one due job; True when done (added or discarded as a duplicate)."""
        job = self.jobs[name]
        now = entry.schedule.now()
        try:
            result = _publish(self.cfg, job.job, job.priority)
        except Exception as exc:  # noqa: BLE001 - QueueError and broker errors: retry, keep it due
            self.log.error("beat: %s not sent (%s); trying again in %.0f s",
                           name, str(exc).splitlines()[0] if str(exc) else type(exc).__name__, RETRY_SECONDS)
            return False
        entry.last_run_at = now
        entry.total_run_count += 1
        if result == "duplicate":
            self.log.info("beat: %s: duplicate job, not added (an identical one is waiting)", name)
        else:
            self.log.info("beat: %s: %s job %s (priority %d)", name, result, " ".join(job.argv), job.priority)
        try:
            assert self.store is not None
            self.store.save_run(name, now, result)
        except SQLAlchemyError as exc:
            self.log.error("beat: cannot record the run of %s: %s", name, str(exc).splitlines()[0])
        return True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.locked and self.store is not None:
            try:
                self.store.release(self.holder_id)
                self.log.info("beat: released the beat lock")
            except DatabaseError:
                pass
            self.locked = False
        super().close()
