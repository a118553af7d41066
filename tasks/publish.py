"""Publishing a job on a given app: the one publish path (:func:`tasks.submit.submit` picks the app;
the worker forwards the parts of a message that belong to other lanes through here too).

A job is split by lane (:func:`tasks.jobs.split_job`); each part is registered in the pending-key
registry (:func:`tasks.registration.register`: a duplicate of a waiting job is not published, one
at a higher priority raises it) and published to its lane's queue with its Bots priority in the
message header; once the broker has it (publisher confirms on RabbitMQ) the entry is confirmed
(:meth:`tasks.registry.PendingRegistry.confirm`). If a publish fails, that part's registry entry is
taken back and QueueError says which lanes were queued before it.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from engine.config import Config
from engine.errors import DatabaseError, one_line
from engine.log import mask_url
from tasks import priority as prio
from tasks.broker import QueueError, connect, engine_queue, queue_depth
from tasks.jobs import Job, split_job
from tasks.registration import register
from tasks.registry import PendingRegistry, RegistrationStatus

BUSY_CACHE = 1.0     # seconds a non-empty queue answer is reused (a burst of duplicates asks once)
_busy_until: dict[tuple[str, str], float] = {}


@dataclass(frozen=True)
class LaneSubmit:
    """What happened to one lane's part of a job."""
    lane: str
    job: Job
    status: RegistrationStatus
    task_id: str                # the message standing for the waiting job
    priority: int

    def describe(self) -> str:
        """``lane slow: added (bots-engine --new orders)``, ``... duplicate, not added (...)``,
        ``... priority of the waiting job raised to 2 (...)``."""
        what = {RegistrationStatus.ADDED: "added", RegistrationStatus.DUPLICATE: "duplicate, not added",
                RegistrationStatus.RAISED: f"priority of the waiting job raised to {self.priority}"}[self.status]
        return f"lane {self.lane}: {what} ({self.job.describe()})"


@dataclass(frozen=True)
class SubmitResult:
    """What happened to a job: one :class:`LaneSubmit` per lane it was split into."""
    parts: tuple[LaneSubmit, ...]

    @property
    def status(self) -> RegistrationStatus:
        """``added`` when any part was added, else ``raised`` when any raised a waiting job, else ``duplicate``."""
        found = {p.status for p in self.parts}
        for status in (RegistrationStatus.ADDED, RegistrationStatus.RAISED):
            if status in found:
                return status
        return RegistrationStatus.DUPLICATE

    @property
    def task_id(self) -> str:
        """The message of the first part that was queued (else of the first part)."""
        return next((p.task_id for p in self.parts if p.status != RegistrationStatus.DUPLICATE),
                    self.parts[0].task_id)

    @property
    def priority(self) -> int:
        return min(p.priority for p in self.parts)

    def __str__(self) -> str:
        return self.status


def _depth(app: Any, conn: Any, queue: str) -> int:
    """Messages waiting in ``queue``; a non-empty answer is remembered for BUSY_CACHE s."""
    key = (app.conf.broker_url, queue)
    if _busy_until.get(key, 0.0) > time.monotonic():
        return 1
    depth = queue_depth(app, conn, queue)
    if depth:
        _busy_until[key] = time.monotonic() + BUSY_CACHE
    return depth


def publish(app: Any, cfg: Config, job: Job, priority: int, log: logging.Logger, *,
            timeout: float | None = None) -> SubmitResult:
    """Split ``job`` by lane (``cfg``: the job's own config), register and publish each part at Bots
    ``priority`` (already checked) on ``app``'s broker; QueueError (one line) when the broker cannot be
    reached within ``timeout`` seconds (default ``[jobqueue] connect_timeout``) or a publish fails.
    DatabaseError when the registry cannot be used."""
    parts = split_job(cfg, job)
    conn = connect(app, cfg.jobqueue.connect_timeout if timeout is None else timeout)
    done: list[LaneSubmit] = []
    try:
        for part in parts:
            done.append(_publish_part(app, cfg, conn, part, priority, log, done))
    finally:
        conn.release()
    return SubmitResult(tuple(done))


def _publish_part(app: Any, cfg: Config, conn: Any, job: Job, priority: int, log: logging.Logger,
                  before: list[LaneSubmit]) -> LaneSubmit:
    assert job.lane is not None         # split_job names every part's lane
    lane = job.lane
    queue = engine_queue(lane)
    task_id = str(uuid.uuid4())
    reg = register(cfg, job, task_id, priority, lambda: _depth(app, conn, queue.name), log)
    if reg.status == RegistrationStatus.DUPLICATE:
        return LaneSubmit(lane, job, reg.status, reg.task_id, reg.priority)
    try:
        # the Queue itself, not its name: declared with x-max-priority even when the app's task_queues
        # were made before this lane existed (a long-running beat or monitor)
        app.send_task(job.task, kwargs=job.kwargs, task_id=task_id, headers={prio.PRIORITY_HEADER: reg.priority},
                      queue=queue, connection=conn, retry=True,
                      retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1})
    except Exception as exc:  # noqa: BLE001
        reason = " ".join(str(exc).split()) or type(exc).__name__
        try:
            PendingRegistry(cfg).remove(job, reg)
        finally:
            log.error("not added: %s: publish to %s failed: %s", job, mask_url(app.conf.broker_url), reason)
        queued = "; ".join(p.describe() for p in before)
        raise QueueError(f"cannot publish to broker {mask_url(app.conf.broker_url)}: {reason}"
                         + (f" (already queued: {queued})" if queued else "")) from None
    try:
        PendingRegistry(cfg).confirm(job, task_id)
    except DatabaseError as exc:     # the job is queued; its entry only stays takeable (never a lost job)
        log.warning("queued %s (%s), but its registry entry could not be confirmed: %s", task_id, job, one_line(exc))
    return LaneSubmit(lane, job, reg.status, task_id, reg.priority)
