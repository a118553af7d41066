"""Submitting a job: what ``bots-job2queue``, beat, the directory monitor and ``botsq demo`` call.

``submit(cfg, job, priority)``:

1. refuses (:class:`~tasks.broker.QueueError`, one line) when the queue is disabled, the priority
   is not 1..9, the job cannot run (unknown route or command), or the broker does not answer within
   ``[jobqueue] connect_timeout`` - checked *before* the registry is touched, so a broker that is
   down leaves no entry behind;
2. splits the job by lane and, per lane, registers it in the pending-key registry and publishes it
   to the lane's queue (:func:`tasks.publish.publish`): an identical waiting job makes that part a
   duplicate (nothing is published) or, at a higher priority, raises that job. Publisher confirms on
   RabbitMQ: "added" means the broker has it. If a publish fails, its registry entry is taken back.

The result (:class:`~tasks.publish.SubmitResult`) says what happened in each lane.
"""
from __future__ import annotations

from engine.config import Config
from tasks import priority as prio
from tasks.broker import QueueError
from tasks.celeryapp import app_for
from tasks.context import queue_logger
from tasks.jobs import Job, JobError, validate
from tasks.publish import LaneSubmit, SubmitResult, publish


def check_enabled(cfg: Config) -> None:
    """QueueError unless ``[jobqueue] enabled``."""
    if not cfg.jobqueue.enabled:
        raise QueueError(f"the job queue is disabled ([jobqueue] enabled = False in {cfg.ini_path})")


def submit(cfg: Config, job: Job, priority: int = prio.DEFAULT) -> SubmitResult:
    """Queue ``job`` at Bots priority 1 (highest) .. 9, one job per lane; see the module doc."""
    check_enabled(cfg)
    try:
        p = prio.check(priority)
    except ValueError as exc:
        raise QueueError(str(exc)) from None
    try:
        jcfg = validate(job, cfg)
    except JobError as exc:
        raise QueueError(str(exc)) from None
    log = queue_logger(cfg, console=False)      # the caller prints its own outcome
    return publish(app_for(cfg), jcfg, job, p, log, timeout=cfg.jobqueue.connect_timeout)


__all__ = ["submit", "check_enabled", "SubmitResult", "LaneSubmit"]
