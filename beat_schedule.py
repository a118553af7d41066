"""The beat schedule of botsq, built from bots.ini: the top-level entry Celery beat and ``botsq
schedule`` use (``build_schedule(cfg)``, ``load_jobs(cfg)``).

Each ``[schedule.NAME]`` section (read by :mod:`engine.config.schedule`) becomes a job: its
schedule in wall-clock time of the configured zone (:class:`ops.cron.ZonedCron`) and, checked
against the routes and ``[jobqueue.commands]``, the queue's job (:func:`tasks.jobs.job_from_argv`).
The scheduler that publishes them is :class:`ops.scheduler.BotsScheduler`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from engine.config import Config
from engine.config.schedule import ScheduleEntry, load_schedule
from engine.errors import ConfigError, UsageError, one_line
from ops.cron import ZonedCron
from tasks.broker import QUEUE, queue_name
from tasks.jobs import Job, job_from_argv, message_lane


@dataclass
class ScheduledJob:
    name: str
    cadence: str
    schedule: ZonedCron
    argv: list[str]
    priority: int
    task: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)
    job: Job | None = None               # set when validated
    entry: ScheduleEntry | None = None
    queue: str = QUEUE                   # its lane's queue; a job over several lanes is split when published

    def describe(self) -> str:
        s = self.schedule
        if s.expr is None:
            return f"every {s.seconds:g} s"
        return {"5min": "every 5 minutes"}.get(self.cadence, "") or f"{self.cadence} ({s.expr.text})"


def _zoned(entry: ScheduleEntry, tzname: str) -> ZonedCron:
    """The entry's schedule in zone ``tzname``; ConfigError when its cron text is wrong or never comes."""
    if entry.seconds is not None:
        return ZonedCron(seconds=entry.seconds, timezone=tzname)
    try:
        sched = ZonedCron(cron=entry.cron, timezone=tzname)
    except ValueError as exc:
        raise ConfigError(f"{entry.where('cron')}: {exc}") from None
    try:
        sched.next_after(datetime.now(UTC))
    except ValueError:
        raise ConfigError(f"{entry.where('cron' if entry.cadence == 'cron' else 'day')}: "
                          f"{sched.cron_text!r} never comes (no such date)") from None
    return sched


def load_jobs(cfg: Config, validate: bool = True) -> list[ScheduledJob]:
    """Every enabled ``[schedule.NAME]`` job with its schedule; ``validate`` also checks the job line
    against the routes and ``[jobqueue.commands]``. ConfigError (one line) on any problem."""
    schedule = load_schedule(cfg)
    jobs: list[ScheduledJob] = []
    for entry in schedule.entries:
        sj = ScheduledJob(name=entry.name, cadence=entry.cadence, schedule=_zoned(entry, schedule.timezone),
                          argv=list(entry.argv), priority=entry.priority, entry=entry)
        if validate:
            try:
                sj.job = job_from_argv(cfg, sj.argv, from_config=True)
            except UsageError as exc:           # JobError: the route or command is refused
                raise ConfigError(f"{entry.where('job')}: {one_line(exc)}") from None
            sj.task, sj.kwargs = sj.job.task, sj.job.kwargs
            sj.queue = queue_name(message_lane(cfg, sj.job))
        jobs.append(sj)
    return jobs


def entry_for(job: ScheduledJob) -> dict[str, Any]:
    return {
        "task": job.task,
        "schedule": job.schedule,
        "args": (),
        "kwargs": job.kwargs,
        # the Bots priority (1 = highest); the queue's publish handler maps it to the broker's
        "options": {"priority": job.priority, "queue": job.queue},
    }


def build_schedule(cfg: Config) -> dict[str, dict[str, Any]]:
    """Celery's ``beat_schedule`` from the config; raises ConfigError on an invalid schedule."""
    return {job.name: entry_for(job) for job in load_jobs(cfg)}
