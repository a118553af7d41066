"""Ready files -> their route's engine job: coalesced for ``debounce`` seconds, then published
through the queue's one path, retried with back-off while the broker is away (never dropped).

Every time is the monitor's clock (``now``, seconds), passed in.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from engine.config import Config, DirMonitor
from engine.errors import one_line
from tasks.jobs import Job, job_from_argv
from tasks.submit import submit

RETRY_MIN, RETRY_MAX = 0.5, 15.0        # seconds between publish attempts: doubling from min to max
Submit = Callable[[str, int], str]      # (route, Bots priority) -> added | duplicate | raised


class JobSender:
    """The route's job (``bots-engine --new ROUTE``; no route: the default run), published with
    :func:`tasks.submit.submit`."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._jobs: dict[str, Job] = {}

    def job(self, route: str) -> Job:
        """The route's job; JobError when the route cannot run (checked once, at start)."""
        if route not in self._jobs:
            self._jobs[route] = job_from_argv(self.cfg, ["bots-engine", "--new", *([route] if route else [])])
        return self._jobs[route]

    def __call__(self, route: str, priority: int) -> str:
        return str(submit(self.cfg, self.job(route), priority=priority).status)


@dataclass
class Trigger:
    """A route's job waiting to go out, and the files it is for."""
    route: str
    priority: int                       # the highest (lowest number) of the monitors that added files
    due: float
    files: set[str] = field(default_factory=set)
    attempts: int = 0                   # failed publishes
    next_try: float = 0.0
    failing_since: float | None = None


class Triggers:
    def __init__(self, send: Submit, log: logging.Logger) -> None:
        self.send, self.log = send, log
        self.pending: dict[str, Trigger] = {}           # by route
        self.jobs_sent = 0
        self.last_job_at: str | None = None
        self.broker_ok = True

    def add(self, mon: DirMonitor, path: str, now: float) -> None:
        """A ready file joins its route's job (due ``debounce`` seconds after its first file)."""
        t = self.pending.get(mon.route)
        if t is None:
            t = self.pending[mon.route] = Trigger(mon.route, mon.priority, now + mon.debounce)
        t.priority = min(t.priority, mon.priority)
        t.files.add(path)

    def fire(self, now: float, flush: bool = False) -> float:
        """Publish the jobs that are due (``flush``: all of them, once); seconds until the next is due."""
        nxt = float("inf")
        for route, t in list(self.pending.items()):
            if not flush and (now < t.due or now < t.next_try):
                nxt = min(nxt, max(t.due, t.next_try) - now)
                continue
            if not any(os.path.exists(p) for p in t.files):
                # every file is gone already: a running engine job took them
                del self.pending[route]
                continue
            try:
                status = self.send(route, t.priority)
            except Exception as exc:  # noqa: BLE001 - QueueError, broker errors: keep it, retry
                nxt = min(nxt, self._failed(t, exc, now, flush))
                continue
            del self.pending[route]
            self._sent(t, status)
        return nxt

    def _failed(self, t: Trigger, exc: Exception, now: float, flush: bool) -> float:
        label = t.route or "(default run)"
        t.attempts += 1
        delay = min(RETRY_MAX, RETRY_MIN * 2 ** (t.attempts - 1))
        t.next_try = now + delay
        if t.failing_since is None:
            t.failing_since = now
        level = logging.WARNING if t.attempts in (1, 2, 4, 8) or t.attempts % 20 == 0 else logging.DEBUG
        self.log.log(level, "route %s: job not queued (%s); %d file(s) waiting, retrying in %.1f s",
                     label, one_line(exc), len(t.files), delay)
        self.broker_ok = False
        if flush:
            self.log.error("route %s: stopping with the job not queued; its %d file(s) stay in the "
                           "folder and are picked up at the next start", label, len(t.files))
        return delay

    def _sent(self, t: Trigger, status: str) -> None:
        label = t.route or "(default run)"
        self.broker_ok = True
        self.jobs_sent += 1
        self.last_job_at = datetime.now(UTC).isoformat()
        extra = f" after {t.attempts} failed attempt(s)" if t.attempts else ""
        if status == "duplicate":
            self.log.info("route %s: %d file(s) ready; an identical job is already waiting%s",
                          label, len(t.files), extra)
        else:
            self.log.info("route %s: %d file(s) ready; job %s (priority %d)%s",
                          label, len(t.files), status, t.priority, extra)
