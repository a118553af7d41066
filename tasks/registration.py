"""Registering a job about to be published: the one function that does it, and says so in
``jobqueue.log`` - for ``tasks.submit.submit`` (job2queue, beat, the monitor, the demo) and for
the publish handler (``celery call``, Flower), which cannot veto a publish and therefore makes a
duplicate's message expire unrun instead.

And its end for a message the worker drops unrun (:func:`forget_dropped`): a rejected, revoked,
expired or undecodable message takes its entry with it, so no queue listing shows a job that
will never run.
"""
from __future__ import annotations

import logging

from engine.config import Config
from engine.errors import ConfigError
from tasks.context import config_for
from tasks.jobs import Job, serves_configdir
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
        replaced = (f" (replaced stale registry entry {reg.previous})" if reg.stale else
                    f" (took over registry entry {reg.previous}, whose message the broker had not confirmed; "
                    f"priority {reg.priority})" if reg.unconfirmed else "")
        log.info("added %s priority %d: %s%s%s", task_id, priority, job, f" (sent as {sent_as})" if sent_as else "",
                 replaced)
    return reg


def forget_dropped(worker: Config, task_id: str, job: Job | None = None) -> bool:
    """Remove the registry entry of message ``task_id``, which the worker of config ``worker`` drops
    unrun; True if one went. DatabaseError.

    By task id in the worker's own database (the job's key may be unknown: a message that cannot be
    read, or one whose lane depends on a config the worker does not read), and, for a job of another
    config dir the worker serves (``[jobqueue] configdirs``), in that one's database too. The
    bots.ini of a config dir the worker does not serve is never read (:func:`tasks.jobs.check_trusted`):
    an entry in such an environment's own database stays until its own sweep (stale entries).
    """
    gone = PendingRegistry(worker).forget_message(task_id)
    if job is not None and job.configdir != str(worker.configdir) and serves_configdir(worker, job.configdir):
        try:
            other = config_for(job.configdir)
        except ConfigError:
            return gone
        if other.database_url != worker.database_url:
            gone = PendingRegistry(other).forget_message(task_id) or gone
    return gone
