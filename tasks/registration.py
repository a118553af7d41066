"""Registering a job about to be published: the one function that does it, and says so in
``jobqueue.log`` - for ``tasks.submit.submit`` (job2queue, beat, the monitor, the demo) and for
the publish handler (``celery call``, Flower), which cannot veto a publish and therefore makes a
duplicate's message expire unrun instead.
"""
from __future__ import annotations

import logging

from engine.config import Config
from tasks.jobs import Job
from tasks.registry import PendingRegistry, QueueDepth, Registration, RegistrationStatus


def register(cfg: Config, job: Job, task_id: str, priority: int, queue_depth: QueueDepth | None,
             log: logging.Logger, *, sent_as: str | None = None) -> Registration:
    """Add ``job`` (message ``task_id``, Bots ``priority``) to the pending-key registry and log the outcome.

    ``sent_as``: the message is published whatever the outcome (the publish handler's case, named
    by its task); a duplicate's message then expires unrun, which the log line says. DatabaseError.
    """
    reg = PendingRegistry(cfg).add(job, task_id, priority, queue_depth=queue_depth)
    if reg.status == RegistrationStatus.DUPLICATE:
        log.info("duplicate discarded: %s (priority %d) is identical to waiting job %s (priority %d)%s",
                 job, priority, reg.task_id, reg.priority,
                 f"; message {task_id} expires unrun" if sent_as else "")
    elif reg.status == RegistrationStatus.RAISED:
        log.info("priority raised: %s from %d to %d (message %s supersedes %s)", job, reg.previous_priority,
                 priority, task_id, reg.previous)
    else:
        log.info("added %s priority %d: %s%s%s", task_id, priority, job, f" (sent as {sent_as})" if sent_as else "",
                 f" (replaced stale registry entry {reg.previous})" if reg.stale else "")
    return reg
