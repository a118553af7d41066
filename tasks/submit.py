"""Publishing a job: the one path (``bots-job2queue``, beat, the directory monitor, ``botsq demo``).

``submit(cfg, job, priority)``:

1. refuses (:class:`~tasks.broker.QueueError`, one line) when the queue is disabled, the priority
   is not 1..9, the job cannot run (unknown route or command), or the broker does not answer within
   ``[jobqueue] connect_timeout`` - checked *before* the registry is touched, so a broker that is
   down leaves no entry behind;
2. registers the job in the pending-key registry (:func:`tasks.registration.register`): an identical
   waiting job makes it a duplicate (nothing is published) or, at a higher priority, raises that job;
3. publishes it with its Bots priority in the message header (the publish handler maps it to the
   broker's scale and knows the job is registered); publisher confirms on RabbitMQ: "added" means
   the broker has it. If the publish fails, the registry entry is taken back.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from engine.config import Config
from engine.log import mask_url
from tasks import priority as prio
from tasks.broker import QUEUE, QueueError, connect, queue_depth
from tasks.celeryapp import app_for
from tasks.context import queue_logger
from tasks.jobs import Job, JobError, validate
from tasks.registration import register
from tasks.registry import PendingRegistry, RegistrationStatus

BUSY_CACHE = 1.0     # seconds a non-empty queue answer is reused (a burst of duplicates asks once)
_busy_until: dict[str, float] = {}


@dataclass(frozen=True)
class SubmitResult:
    status: RegistrationStatus
    task_id: str                # the message standing for the waiting job
    priority: int = prio.DEFAULT

    def __str__(self) -> str:
        return self.status


def check_enabled(cfg: Config) -> None:
    """QueueError unless ``[jobqueue] enabled``."""
    if not cfg.jobqueue.enabled:
        raise QueueError(f"the job queue is disabled ([jobqueue] enabled = False in {cfg.ini_path})")


def _depth(app: Any, conn: Any) -> int:
    """Messages waiting in queue engine; a non-empty answer is remembered for BUSY_CACHE s."""
    url = app.conf.broker_url
    if _busy_until.get(url, 0.0) > time.monotonic():
        return 1
    depth = queue_depth(app, conn)
    if depth:
        _busy_until[url] = time.monotonic() + BUSY_CACHE
    return depth


def submit(cfg: Config, job: Job, priority: int = prio.DEFAULT) -> SubmitResult:
    """Queue ``job`` at Bots priority 1 (highest) .. 9; see the module doc."""
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
        reg = register(jcfg, job, task_id, p, lambda: _depth(app, conn), log)
        if reg.status == RegistrationStatus.DUPLICATE:
            return SubmitResult(reg.status, reg.task_id, reg.priority)
        try:
            app.send_task(job.task, kwargs=job.kwargs, task_id=task_id, headers={prio.PRIORITY_HEADER: p},
                          queue=QUEUE, connection=conn, retry=True,
                          retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5,
                                        "interval_max": 1})
        except Exception as exc:  # noqa: BLE001
            reason = " ".join(str(exc).split()) or type(exc).__name__
            try:
                PendingRegistry(jcfg).remove(job, reg)
            finally:
                log.error("not added: %s: publish to %s failed: %s", job, mask_url(app.conf.broker_url), reason)
            raise QueueError(f"cannot publish to broker {mask_url(app.conf.broker_url)}: {reason}") from None
    finally:
        conn.release()
    return SubmitResult(reg.status, task_id, p)
