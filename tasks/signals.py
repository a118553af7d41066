"""The queue's Celery signal handlers; :mod:`tasks.celeryapp` connects them (the one place that
wires signals and tasks together).

Publishing side (every process that sends a job with the ``tasks`` app: ``bots-job2queue``,
``celery call``, Flower, beat, the directory monitor):

* :func:`before_publish` maps the Bots priority (1..9; none given: Bots' default 5) to the broker's
  scale, exactly once per message, and carries the Bots priority in header
  :data:`tasks.priority.PRIORITY_HEADER`. A message that already carries it was sent by
  :func:`tasks.publish.publish`, which registered it; any other job (``celery call``, Flower) is
  placed in its lane (:func:`tasks.jobs.place`; the lane is written into its kwargs, so the worker
  and Flower see it) and registered here (:func:`tasks.registration.register`). A publish cannot be
  vetoed from a signal, so a duplicate of a waiting job is marked instead: its ``expires`` is set in
  the past and the worker drops it unrun, visibly (``jobqueue.log``, and "revoked (expired)" in Flower).
* :func:`publish_settled` learns how such a publish ended (from :class:`tasks.celeryapp.BotsqAMQP`,
  which wraps Celery's sender; Celery has no signal for a failed publish): sent, the entry is
  confirmed; failed (broker down or restarting), the entry is taken back at once - in Flower,
  which carries on, as in ``celery call``, whose process then ends - so a job sent again is not
  a duplicate of a message that never reached the broker.

Worker side: pooled database connections are not shared with forked pool processes; stale
registry entries are swept when the worker starts; dropped, revoked, failed and malformed
messages are written to ``jobqueue.log`` with the reason, and their registry entries go
(:func:`tasks.registration.forget_dropped`).
"""
from __future__ import annotations

import logging
import sys
import threading
from typing import Any

from celery import current_app
from celery.exceptions import TimeLimitExceeded, WorkerLostError

from engine.botsengine import check_bots_engine
from engine.db import dispose_all
from engine.errors import ConfigError, DatabaseError, ExitCode, one_line
from engine.log import redact
from engine.models import utcnow
from tasks import priority as prio
from engine.config import Config
from tasks.broker import queue_depth, queue_name
from tasks.context import config_for, configdir_of, queue_logger, worker_config, worker_log
from tasks.jobs import TASKS, Job, JobError, message_lane, place
from engine.log import mask_url
from tasks.registration import forget_dropped, register
from tasks.registry import (JobState, PendingRegistry, Registration, RegistrationStatus, StartedJobs,
                            forget_tables)

PAST = "2000-01-01T00:00:00+00:00"      # an ``expires`` that has passed: the worker drops the message
_fallback = logging.getLogger("botsq.jobqueue")
# registrations made by before_publish whose publish has not ended yet, by task id (Flower publishes
# from several threads): publish_settled confirms or takes back each one
_unsettled: dict[str, tuple[Config, Job, Registration, logging.Logger]] = {}
_unsettled_lock = threading.Lock()


def _body_parts(body: Any) -> tuple[Any, Any]:
    if isinstance(body, (tuple, list)) and len(body) >= 2:      # protocol 2: (args, kwargs, embed)
        return body[0], body[1]
    if isinstance(body, dict):                                   # protocol 1
        return body.get("args") or (), body.get("kwargs") or {}
    return (), {}


# --------------------------------------------------------------------------- publishing side

def before_publish(sender: str | None = None, body: Any = None, headers: dict | None = None,
                   properties: dict | None = None, **_: Any) -> None:
    """``before_task_publish``: map the priority once, carry it, register a job sent around submit()."""
    if sender not in TASKS or headers is None or properties is None:
        return
    if headers.get("retries"):
        return          # a retry sent by the worker keeps the (already mapped) priority it ran with
    app = current_app
    try:
        kind = prio.broker_kind(app.conf.broker_url or "")
    except ValueError:
        return
    carried = headers.get(prio.PRIORITY_HEADER)
    raw = properties.get("priority") if carried is None else carried
    bots = prio.DEFAULT if raw is None else prio.clamp(raw)
    properties["priority"] = prio.to_broker(bots, kind)
    headers[prio.PRIORITY_HEADER] = bots
    if carried is not None:
        return          # submit() registered it already
    try:
        _register_sent(app, sender, body, headers, properties, bots)
    except Exception:  # noqa: BLE001 - never break a publish; the job runs without dedup
        _fallback.exception("job queue: could not register %s[%s]; it is sent without dedup",
                            sender, headers.get("id"))


def all_lanes_depth(app: Any, cfg: Config) -> int:
    """Messages waiting in every lane's queue of ``cfg``."""
    return sum(queue_depth(app, queue=queue_name(lane)) for lane in cfg.lanes)


def _register_sent(app: Any, sender: str, body: Any, headers: dict, properties: dict, bots: int) -> None:
    args, kwargs = _body_parts(body)
    try:
        job = Job.from_message(sender, args, kwargs, configdir_of(app))
        cfg = config_for(job.configdir)
    except (JobError, ConfigError):
        return          # not a job we can name: the worker rejects it and logs why
    job = place(cfg, job)
    if job.lane is not None and isinstance(kwargs, dict) and "lane" not in kwargs:
        kwargs["lane"] = job.lane       # the published body: the worker and Flower see the lane it was placed in
    log = queue_logger(cfg)
    task_id = str(headers.get("id"))
    queue = queue_name(message_lane(cfg, job))
    try:
        reg = register(cfg, job, task_id, bots, lambda: queue_depth(app, queue=queue), log, sent_as=sender)
    except DatabaseError as exc:
        log.warning("registry unusable (%s): %s[%s] is sent without dedup", exc, sender, task_id)
        return
    if reg.status == RegistrationStatus.DUPLICATE:
        headers["expires"] = PAST
        return
    if reg.priority != bots:    # it took over an unconfirmed entry of a higher priority: it is sent at that one
        properties["priority"] = prio.to_broker(reg.priority, prio.broker_kind(app.conf.broker_url or ""))
        headers[prio.PRIORITY_HEADER] = reg.priority
    with _unsettled_lock:
        _unsettled[task_id] = (cfg, job, reg, log)


def publish_settled(task_id: str, broker_url: str, error: BaseException | None = None) -> None:
    """A publish ended (``error``: how it failed). A registration :func:`before_publish` made for it is
    confirmed, or - the message did not reach the broker - taken back and logged; never raises."""
    with _unsettled_lock:
        held = _unsettled.pop(task_id, None)
    if held is None:
        return          # not registered here (submit's own, a duplicate, another task)
    cfg, job, reg, log = held
    try:
        if error is None:
            PendingRegistry(cfg).confirm(job, task_id)
            return
        PendingRegistry(cfg).remove(job, reg)
        log.error("not added: %s: publish of %s to %s failed: %s (its registry entry was taken back)", job,
                  task_id, mask_url(broker_url), one_line(error) if str(error).strip() else type(error).__name__)
    except Exception as exc:  # noqa: BLE001 - an unconfirmed entry never makes a later job a duplicate
        log.warning("registry entry of %s (%s) not %s: %s", task_id, job, "confirmed" if error is None
                    else "taken back", one_line(exc))


# --------------------------------------------------------------------------- worker side

def fresh_connections(**_: Any) -> None:
    """``worker_process_init``: never share a parent's pooled database connections after fork."""
    dispose_all()
    forget_tables()


def check_engine(sender: Any = None, **_: Any) -> None:
    """``worker_init``: a worker whose Bots engine cannot be started (``[engine] kind = bots``: command
    missing, not found or not executable, configdir missing) does not start: one line, exit 1 -
    ``celery -A tasks worker`` as ``bots-jobqueueserver``. SystemExit passes Celery's signal dispatch."""
    app = getattr(sender, "app", None) or current_app
    try:
        check_bots_engine(worker_config(app), worker_log(app))
    except ConfigError as exc:
        print(f"celery worker: error: {redact(str(exc))}", file=sys.stderr, flush=True)
        worker_log(app).error("worker not started: %s", one_line(exc))
        raise SystemExit(ExitCode.SYSTEM) from None


class RejectedLines(logging.Filter):
    """Drops Celery's own line about a rejected job (``celery.app.trace``: a warning with the
    ``Reject``'s traceback): the task has already said in one line why (``jobqueue.log`` and the
    console, :mod:`tasks.runner`), and a refusal is bad input, not a crash."""

    def filter(self, record: logging.LogRecord) -> bool:
        data = getattr(record, "data", None)
        return not (isinstance(data, dict) and data.get("description") == "rejected" and data.get("name") in TASKS)


TRACE_LOGGER = "celery.app.trace"


def quiet_rejects(**_: Any) -> None:
    """``worker_init`` and ``worker_process_init``: :class:`RejectedLines` on Celery's trace logger (once)."""
    logger = logging.getLogger(TRACE_LOGGER)
    if not any(isinstance(f, RejectedLines) for f in logger.filters):
        logger.addFilter(RejectedLines())


def on_worker_ready(sender: Any = None, **_: Any) -> None:
    """``worker_ready``: sweep stale registry entries and old start records."""
    app = getattr(sender, "app", None) or current_app
    log = worker_log(app)
    try:
        cfg = worker_config(app)
        now = utcnow()
        stale = PendingRegistry(cfg).cleanup(now, queue_depth=lambda: all_lanes_depth(app, cfg))
        StartedJobs(cfg).cleanup(now)
        if stale:
            log.warning("cleared %d stale registry entr%s (queue empty, message gone)", stale,
                        "y" if stale == 1 else "ies")
    except Exception as exc:  # noqa: BLE001
        log.warning("registry sweep at start failed: %s", one_line(exc))
    try:
        queues = ", ".join(sorted(app.amqp.queues.consume_from)) or "?"
    except Exception:  # noqa: BLE001 - only for the log line
        queues = "?"
    log.info("worker ready: %s consuming queue %s", getattr(sender, "hostname", "?"), queues)


def _task_name(request: Any, sender: Any = None) -> str:
    # the request a signal gets is a Context: the task's name is its ``task`` header, not ``name``
    return (getattr(request, "name", None) or getattr(request, "task", None)
            or getattr(sender, "name", None) or "?")


def _job_of(request: Any, app: Any, sender: Any = None) -> Job | None:
    try:
        return Job.from_message(_task_name(request, sender), request.args or (), request.kwargs or {},
                                configdir_of(app))
    except Exception:  # noqa: BLE001
        return None


def on_revoked(sender: Any = None, request: Any = None, terminated: bool = False, signum: Any = None,
               expired: bool = False, **_: Any) -> None:
    """``task_revoked``: say why a message was dropped; its registry entry goes."""
    app = getattr(sender, "app", None) or getattr(request, "app", None) or current_app
    log = worker_log(app)
    job = _job_of(request, app, sender)
    what = job.describe() if job else _task_name(request, sender)
    task_id = getattr(request, "id", "?")
    if expired:
        log.info("dropped unrun %s (%s): duplicate of a waiting job, or expired", task_id, what)
    else:
        log.warning("revoked %s (%s)%s", task_id, what, " while running" if terminated else "")
    try:
        forget_dropped(worker_config(app), str(task_id), job)
    except Exception:  # noqa: BLE001 - the entry then ages out
        pass


def on_failure(sender: Any = None, task_id: str | None = None, exception: BaseException | None = None,
               args: Any = None, kwargs: Any = None, **_: Any) -> None:
    """``task_failure``: a failed message is not run again, so its registry entry goes (one is left
    when the job failed before it started: the worker's config or database unusable through every
    retry) - except after a lost worker, whose message the broker delivers again; a job killed by its
    time limit or with its worker is recorded as failed."""
    if getattr(sender, "name", None) not in TASKS:
        return
    app = sender.app
    try:
        job: Job | None = Job.from_message(sender.name, args or (), kwargs or {}, configdir_of(app))
    except Exception:  # noqa: BLE001 - a message that names no job: forgotten by its id alone
        job = None
    if not isinstance(exception, WorkerLostError):
        try:
            forget_dropped(worker_config(app), str(task_id), job)
        except Exception:  # noqa: BLE001 - the entry then ages out
            pass
    if not isinstance(exception, (TimeLimitExceeded, WorkerLostError)) or job is None:
        return      # failures inside the task are logged by the task itself
    reason = f"{type(exception).__name__}: {exception}"
    worker_log(app).error("job %s failed: %s", task_id, reason)
    try:
        StartedJobs(config_for(job.configdir)).finish(str(task_id), JobState.FAILED, reason)
    except Exception:  # noqa: BLE001 - the start record then ages out
        pass
