"""Every call the console makes into the rest of botsq, in one module.

The console reads the tracking records through :mod:`engine.records` (the filters, marks and
details ``botsq files``/``botsq runs`` use, so each sees the other's marks), the queue through
``tasks.cli.queue.collect`` and the registry (``PendingRegistry``, ``StartedJobs``), health
through ``ops.status``, and queues a job exactly as ``bots-job2queue`` does:
``tasks.jobs.job_from_argv`` then ``tasks.submit.submit``. Apart from the configuration
(``engine.config``, ``engine.config.webserver`` and ``ConfigError``, which ``botsq web`` reads and
passes around), nothing else in ``ops/web`` imports from ``engine``, ``tasks`` or ``ops``; when
those move, this is the one file to follow them.

Lanes: today every route is in lane ``default``. The views group locks, waiting and running jobs
by a ``lane`` key where the records carry one (``default`` otherwise), so lanes slot in.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from engine.config import Config
from engine.errors import UsageError
from engine.log import component_logger, lines_between, log_file, redact, redact_data, register_secrets
from engine.models import utcnow
from engine.records import (
    IN_STATUSES,
    OUT_STATUSES,
    RUN_STATUSES,
    Bucket,
    FileFilter,
    FilterError,
    RunFilter,
    activity,
    count_runs,
    file_detail,
    list_runs,
    mark_files,
    page_files,
    parse_when,
    run_detail,
    run_totals,
    stored_path,
)
from engine.run import ENGINE_COMMANDS
from tasks.lane_status import lock_status
from ops.status import collect as status_collect
from tasks.cli.queue import collect as queue_collect
from tasks.jobs import job_from_argv
from tasks.registry import PendingRegistry, RegistrationStatus, StartedJobs
from tasks.submit import check_enabled, submit

__all__ = [
    "IN_STATUSES", "OUT_STATUSES", "RUN_STATUSES", "Bucket", "FileFilter", "FilterError", "RunFilter", "UsageError",
    "ENGINE_COMMANDS", "DEFAULT_LANE", "ActivityCache", "HealthCache", "Lane", "Submitted", "component_logger",
    "count_runs", "file_detail", "lanes", "list_runs", "mark_files", "page_files", "parse_when", "queue_report",
    "redact", "redact_data", "register_secrets", "RegistrationStatus", "route_lane", "run_detail", "run_log", "run_totals", "stored_path", "submit_job", "utcnow",
    "utc_offset_minutes",
]

DEFAULT_LANE = "default"
LOG_SLACK = timedelta(seconds=2)       # the run's last log line is written just after its end is recorded


def utc_offset_minutes() -> int:
    """The server's UTC offset now, in minutes (the console shows the server's local time)."""
    off = datetime.now().astimezone().utcoffset()
    return int(off.total_seconds() // 60) if off else 0


def route_lane(route: Any) -> str:
    return getattr(route, "lane", None) or DEFAULT_LANE


# --------------------------------------------------------------------------- health

class HealthCache:
    """``botsq status``'s report (``ops.status.collect``), computed at most once per ``max_age`` s.

    Asking the workers takes the whole inspect timeout, so pages show the last report and ask
    for a fresh one in the background (the dashboard's health panel reloads itself).
    """

    def __init__(self, cfg: Config, timeout: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg, self.timeout, self.clock = cfg, timeout, clock
        self._report: dict[str, Any] | None = None
        self._at = 0.0
        self._lock = threading.Lock()

    def cached(self) -> tuple[dict[str, Any] | None, float]:
        """The last report and its age in seconds (None, 0 before the first)."""
        return self._report, (self.clock() - self._at) if self._report is not None else 0.0

    def get(self, max_age: float = 10.0) -> dict[str, Any]:
        with self._lock:                      # one check at a time; the others get its result
            if self._report is None or self.clock() - self._at > max_age:
                self._report = status_collect(self.cfg, self.timeout)
                self._at = self.clock()
            return self._report


# --------------------------------------------------------------------------- files per hour

class ActivityCache:
    """Files per hour over the last ``days`` days (:func:`engine.records.activity`) for the charts.

    Counting a month of records takes a while with 100,000s of them, and hours long past hardly
    change, so their counts are kept and each request counts only from the start of the previous
    hour. Every ``ttl`` seconds (``[webserver] chart_cache``) the kept counts are counted again in
    a background thread while requests go on with the ones they have, so a file of an older hour
    whose status changes later (rereceived, failed on a resend) shows within about ``ttl`` seconds
    and no request waits for a month's count but the very first (:meth:`warm` starts that one when
    the console starts). ``ttl`` 0 counts everything in every request.
    """

    def __init__(self, url: str, days: int = 30, ttl: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url, self.days, self.ttl, self.clock = url, days, ttl, clock
        self._old: dict[datetime, Bucket] = {}
        self._split: datetime | None = None        # naive UTC: _old holds everything before it
        self._offset = 0                            # the UTC offset (minutes) _old was counted for
        self._counted = 0.0                         # clock at that count
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _count(self, now: datetime, offset_minutes: int) -> None:
        split = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
        started = self.clock()
        old = activity(self.url, now - timedelta(days=self.days), offset_minutes, until=split)
        with self._lock:
            if self._split is None or started >= self._counted or offset_minutes != self._offset:
                self._old, self._split, self._offset, self._counted = old, split, offset_minutes, started

    def _background(self, now: datetime, offset_minutes: int) -> None:
        try:
            self._count(now, offset_minutes)
        except Exception:  # noqa: BLE001 - the next request counts again; a chart never breaks a page
            with self._lock:
                self._counted = self.clock() - self.ttl
        finally:
            with self._lock:
                self._thread = None

    def warm(self, now: datetime, offset_minutes: int) -> None:
        """Count in the background now (at start-up), so the first dashboard need not."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._background, args=(now, offset_minutes),
                                                name="botsq-web-chart-count", daemon=True)
                self._thread.start()

    def settle(self, timeout: float = 60.0) -> None:
        """Wait for a background count to end (tests; a clean stop)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def get(self, now: datetime, offset_minutes: int) -> dict[datetime, Bucket]:
        """Buckets keyed by local hour (see :func:`activity`) from ``now`` (naive UTC) - ``days``."""
        with self._lock:
            usable = self._split is not None and self._offset == offset_minutes and self.ttl > 0
            stale = usable and self.clock() - self._counted >= self.ttl
        if not usable:
            self.settle()                          # a count under way (start-up) may be the one needed
            with self._lock:
                usable = self._split is not None and self._offset == offset_minutes and self.ttl > 0
            if not usable:
                self._count(now, offset_minutes)
        elif stale:
            self.warm(now, offset_minutes)
        with self._lock:
            old, split = self._old, self._split
        assert split is not None
        merged = {k: Bucket(k, b.received, b.sent, b.errors) for k, b in old.items()}
        for k, b in activity(self.url, split, offset_minutes).items():   # an hour may straddle the split
            m = merged.setdefault(k, Bucket(k))
            m.received, m.sent, m.errors = m.received + b.received, m.sent + b.sent, m.errors + b.errors
        return merged


# --------------------------------------------------------------------------- queue and lanes

def queue_report(cfg: Config) -> dict[str, Any]:
    """``botsq queue --json``: waiting jobs (registry), running ones, the broker's message count."""
    return queue_collect(cfg)


@dataclass
class Lane:
    """One lane as the dashboard and the queue page show it."""
    name: str
    routes: list[str] = field(default_factory=list)
    lock: dict[str, Any] = field(default_factory=lambda: {"held": False})
    waiting: list[dict[str, Any]] = field(default_factory=list)
    running: list[dict[str, Any]] = field(default_factory=list)

    @property
    def by_priority(self) -> list[tuple[int, int]]:
        counts: dict[int, int] = {}
        for w in self.waiting:
            counts[w["priority"]] = counts.get(w["priority"], 0) + 1
        return sorted(counts.items())


def lanes(cfg: Config, waiting: list[dict[str, Any]] | None = None,
          running: list[dict[str, Any]] | None = None) -> list[Lane]:
    """Each lane with its routes, engine lock holder, waiting jobs (run order) and running jobs.

    ``waiting``/``running`` default to the registry's (no broker needed: this stays fast when the
    broker is down); pass ``queue_report``'s to reuse one read.
    """
    by_name: dict[str, Lane] = {lane: Lane(lane) for lane in cfg.lanes}
    for name, route in cfg.routes.items():
        by_name.setdefault(route_lane(route), Lane(route_lane(route))).routes.append(name)
    if waiting is None:
        waiting = [w.as_dict() for w in PendingRegistry(cfg).waiting()]
    if running is None:
        running = StartedJobs(cfg).running()
    for w in waiting:
        by_name.setdefault(w.get("lane") or DEFAULT_LANE, Lane(w.get("lane") or DEFAULT_LANE)).waiting.append(w)
    for r in running:
        by_name.setdefault(r.get("lane") or DEFAULT_LANE, Lane(r.get("lane") or DEFAULT_LANE)).running.append(r)
    for lane in by_name.values():
        lane.lock = lock_status(cfg, lane.name)
    return sorted(by_name.values(), key=lambda lane: (lane.name != DEFAULT_LANE, lane.name))


# --------------------------------------------------------------------------- the run menu

@dataclass
class Submitted:
    """What became of a job from the run menu: ``added``, ``duplicate`` or ``raised`` (bots-job2queue's
    outcomes), with the job's command line and the priority it waits at."""
    status: RegistrationStatus
    job: str
    priority: int


def submit_job(cfg: Config, argv: list[str], priority: int) -> Submitted:
    """Queue a Bots-style COMMAND line at ``priority`` the way ``bots-job2queue`` does; a UsageError
    (one line: ``tasks.jobs.JobError`` for a bad command line, ``tasks.broker.QueueError`` when the
    queue is disabled, the broker is down or the job is refused)."""
    check_enabled(cfg)
    job = job_from_argv(cfg, argv)
    res = submit(cfg, job, priority)
    return Submitted(res.status, job.describe(), res.priority)


# --------------------------------------------------------------------------- a run's log

def run_log(cfg: Config, run: dict[str, Any], limit: int = 1000) -> list[str]:
    """The engine log's lines written while ``run`` (a Run.as_dict()) ran.

    The engine log has one line stream for all runs; with lanes, runs of other lanes that overlap
    in time show their lines here too (each line names its route).
    """
    start = datetime.fromisoformat(run["started"]).replace(tzinfo=None)
    end = datetime.fromisoformat(run["ended"]).replace(tzinfo=None) + LOG_SLACK if run.get("ended") else None
    return lines_between(log_file(cfg, "engine"), start, end, limit)
