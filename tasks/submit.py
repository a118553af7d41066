"""Publishing a job: the one path (``bots-job2queue``, beat, the directory monitor, ``botsq demo``).

``submit(cfg, job, priority)``:

1. refuses (:class:`QueueError`, one line) when the queue is disabled, the priority is not
   1..9, the job cannot run (unknown route or command), or the broker does not answer within
   ``[jobqueue] connect_timeout`` - checked *before* the registry is touched, so a broker
   that is down leaves no entry behind;
2. registers the job in the pending-key registry (unique insert): an identical waiting job
   makes it a duplicate (nothing is published) or, at a higher priority, raises that job;
3. publishes it (publisher confirms on RabbitMQ: "added" means the broker has it); if the
   publish fails, the registry entry is taken back.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from engine.config import Config
from engine.errors import UsageError
from engine.log import mask_url
from tasks import priority as prio
from tasks import registry
from tasks.jobs import Job, JobError, validate


class QueueError(UsageError):
    """The job cannot be queued (queue disabled, broker unreachable, job refused); one line."""


@dataclass
class SubmitResult:
    status: str                 # added | duplicate | raised
    task_id: str                # the message standing for the waiting job
    priority: int = prio.DEFAULT

    def __str__(self) -> str:
        return self.status


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def check_enabled(cfg: Config) -> None:
    if not cfg.jobqueue.enabled:
        raise QueueError(f"the job queue is disabled ([jobqueue] enabled = False in {cfg.ini_path})")


def connect(app: Any, timeout: float) -> Any:
    """A (pooled) broker connection, established within ``timeout`` seconds, or QueueError.

    Release it when done; long-lived callers (beat, the directory monitor) reuse it that way.
    """
    try:
        conn = app.pool.acquire(block=True, timeout=timeout)
    except Exception as exc:  # noqa: BLE001
        raise QueueError(f"broker {mask_url(app.conf.broker_url)}: no connection free: {_reason(exc)}") from None
    try:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
        return conn
    except Exception as exc:  # noqa: BLE001 - every transport has its own errors
        conn.release()
        if type(exc).__name__ in _REFUSALS:     # it answered, and said no: waiting longer will not help
            raise QueueError(f"broker {mask_url(app.conf.broker_url)} refused the connection: "
                             f"{_reason(exc)}") from None
        raise QueueError(f"broker {mask_url(app.conf.broker_url)} cannot be reached within {timeout:g} s: "
                         f"{_reason(exc)}") from None


# wrong user or password, unknown vhost (py-amqp), failed AUTH (redis-py)
_REFUSALS = ("AccessRefused", "NotAllowed", "AuthenticationError", "AuthenticationWrongNumberOfArgsError")


_busy_until: dict[str, float] = {}
BUSY_CACHE = 1.0     # seconds a non-empty queue answer is reused (a burst of duplicates asks once)


def _depth(app: Any, conn: Any) -> int:
    """Messages waiting in queue engine; a non-empty answer is remembered for BUSY_CACHE s."""
    from tasks.celeryapp import queue_depth

    url = app.conf.broker_url
    if _busy_until.get(url, 0.0) > time.monotonic():
        return 1
    depth = queue_depth(app, conn)
    if depth:
        _busy_until[url] = time.monotonic() + BUSY_CACHE
    return depth


def submit(cfg: Config, job: Job, priority: int = prio.DEFAULT) -> SubmitResult:
    """Queue ``job`` at Bots priority 1 (highest) .. 9; see the module doc."""
    from tasks.celeryapp import QUEUE, app_for, queue_logger
    from tasks.signals import submitting

    check_enabled(cfg)
    try:
        p = prio.check(priority)
    except ValueError as exc:
        raise QueueError(str(exc)) from None
    try:
        jcfg = validate(job, cfg)
    except JobError as exc:
        raise QueueError(str(exc)) from None
    app = app_for(cfg)
    log = queue_logger(cfg, console=False)      # the caller prints its own outcome
    task_id = str(uuid.uuid4())
    conn = connect(app, cfg.jobqueue.connect_timeout)
    try:
        reg = registry.register(jcfg, job, task_id, p, queue_depth=lambda: _depth(app, conn))
        if reg.status == "duplicate":
            log.info("duplicate discarded: %s (priority %d) is identical to waiting job %s (priority %d)",
                     job, p, reg.task_id, reg.priority)
            return SubmitResult("duplicate", reg.task_id, reg.priority)
        token = submitting.set({"app": app, "task_id": task_id})
        try:
            app.send_task(job.task, kwargs=job.kwargs, task_id=task_id, priority=p, queue=QUEUE, connection=conn,
                          retry=True, retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5,
                                                    "interval_max": 1})
        except Exception as exc:  # noqa: BLE001
            try:
                registry.unregister(jcfg, job, reg)
            finally:
                log.error("not added: %s: publish to %s failed: %s", job, mask_url(app.conf.broker_url), _reason(exc))
            raise QueueError(f"cannot publish to broker {mask_url(app.conf.broker_url)}: {_reason(exc)}") from None
        finally:
            submitting.reset(token)
    finally:
        conn.release()
    if reg.status == "raised":
        log.info("priority raised: %s from %d to %d (message %s supersedes %s)", job, reg.previous_priority, p,
                 task_id, reg.previous)
    else:
        log.info("added %s priority %d: %s%s", task_id, p, job,
                 f" (replaced stale registry entry {reg.previous})" if reg.stale else "")
    return SubmitResult(reg.status, task_id, p)
