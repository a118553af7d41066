"""The beat scheduler of botsq: ``celery -A tasks beat`` uses :class:`BotsScheduler`
(``beat_scheduler = "ops.scheduler:BotsScheduler"``, set by :mod:`tasks.celeryapp`). It

* builds the jobs from bots.ini (:func:`beat_schedule.load_jobs`) and refuses to start, with
  one clear line, when a job names an unknown route or command;
* holds the beat lock and keeps each job's last run in the database (:mod:`ops.beat_lock`): a
  second beat stays idle (and says so) until the first is gone; a missed run is made up once;
* publishes through :func:`tasks.submit.submit` - the same path as bots-job2queue, so priorities
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
from sqlalchemy.exc import SQLAlchemyError

from beat_schedule import ScheduledJob, entry_for, load_jobs
from engine.config import Config, load_config
from engine.errors import ConfigError, DatabaseError, one_line
from engine.log import component_logger, redact
from ops.beat_lock import BeatStore
from tasks.jobs import Job
from tasks.submit import submit

RETRY_SECONDS = 5.0


def publish(cfg: Config, job: Job, priority: int) -> str:
    """Publish through the queue's one path (registry + broker); returns added|duplicate|raised."""
    return str(submit(cfg, job, priority=priority).status)


class BotsScheduler(Scheduler):
    """Celery beat scheduler for botsq (see the module doc)."""

    #: seconds between retries while another beat holds the lock
    idle_interval = 2.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.cfg: Config | None = None
        self.store: BeatStore | None = None
        self.jobs: dict[str, ScheduledJob] = {}
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
        line = f"celery beat: error: {redact(msg)}"
        if self.log.handlers:                   # botsq's logger: beat.log and stderr
            self.log.critical(line)
        else:
            print(line, file=sys.stderr, flush=True)
        raise SystemExit(1)

    def setup_schedule(self) -> None:
        try:
            cfg = self.cfg = load_config(None)
            self.log = component_logger("beat", cfg)
            jobs = load_jobs(cfg)
            self.store = BeatStore(cfg.database_url)
            state = self.store.load_state()
        except (ConfigError, DatabaseError) as exc:
            self._fail(str(exc))
            return
        if not cfg.jobqueue.enabled:
            self._fail(f"{cfg.ini_path}: [jobqueue] enabled: the queue is disabled; beat has nothing to send to")
        self.jobs = {j.name: j for j in jobs}
        self.data = {}
        for j in jobs:
            self.data[j.name] = ScheduleEntry(name=j.name, app=self.app, last_run_at=state.get(j.name), **entry_for(j))
        self.heartbeat_every = max(0.2, float(cfg.settings.lock_heartbeat))
        self.grace = max(self.heartbeat_every * 2, float(cfg.settings.lock_grace))
        names = ", ".join(f"{j.name} ({j.describe()}, p{j.priority})" for j in jobs) or "none"
        self.log.info("beat: %d scheduled job(s) from %s: %s", len(jobs), cfg.ini_path, names)

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
        """Take last runs from the database (the other beat may have run jobs meanwhile). A job
        that never ran counts from now, when this beat took the lock: ``botsq schedule`` counts it
        from the lock holder's ``acquired_at``, so both show the same next run."""
        assert self.store is not None
        state = self.store.load_state()
        taken = datetime.now(UTC)
        for name, entry in self.data.items():
            entry.last_run_at = state.get(name, taken)

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
            assert job.job is not None
            result = publish(self.cfg, job.job, job.priority)
        except Exception as exc:  # noqa: BLE001 - QueueError and broker errors: retry, keep it due
            self.log.error("beat: %s not sent (%s); trying again in %.0f s", name, one_line(exc), RETRY_SECONDS)
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
            self.log.error("beat: cannot record the run of %s: %s", name, one_line(exc))
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
