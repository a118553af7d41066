"""Celery signal handlers of the queue.

Publishing side (every process that sends a job with the ``tasks`` app: ``bots-job2queue``,
``celery call``, Flower, beat, the directory monitor):

* a message without priority gets Bots' default 5, and the Bots priority (1..9) is mapped to
  the broker's scale here, exactly once (:mod:`tasks.priority`);
* a job published around :func:`tasks.submit.submit` (``celery call``, Flower) is registered
  in the pending-key registry here. A publish cannot be vetoed from a signal, so a duplicate
  of a waiting job is marked instead: its ``expires`` is set in the past and the worker drops
  it unrun, visibly (``jobqueue.log``, and "revoked (expired)" in Flower).

Worker side: pooled database connections are not shared with forked pool processes; stale
registry entries are swept when the worker starts; dropped, revoked, failed and malformed
messages are written to ``jobqueue.log`` with the reason.
"""
from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Any

from celery import current_app
from celery.signals import before_task_publish, task_failure, task_revoked, worker_process_init, worker_ready

from tasks import priority as prio
from tasks.jobs import TASKS, Job, JobError

PAST = "2000-01-01T00:00:00+00:00"      # an ``expires`` that has passed: the worker drops the message
_fallback = logging.getLogger("botsq.jobqueue")

#: set by :func:`tasks.submit.submit` around its own publish: {"app": app, "task_id": id}
submitting: ContextVar[dict[str, Any] | None] = ContextVar("botsq_submitting", default=None)


def _body_parts(body: Any) -> tuple[Any, Any]:
    if isinstance(body, (tuple, list)) and len(body) >= 2:      # protocol 2: (args, kwargs, embed)
        return body[0], body[1]
    if isinstance(body, dict):                                   # protocol 1
        return body.get("args") or (), body.get("kwargs") or {}
    return (), {}


@before_task_publish.connect(dispatch_uid="botsq-before-task-publish")
def before_publish(sender: str | None = None, body: Any = None, headers: dict | None = None,
                   properties: dict | None = None, **_: Any) -> None:
    if sender not in TASKS or headers is None or properties is None:
        return
    ctx = submitting.get()
    app = ctx["app"] if ctx else current_app
    from tasks.celeryapp import broker_kind_of

    try:
        kind = broker_kind_of(app)
    except ValueError:
        return
    if headers.get("retries"):
        return          # a retry sent by the worker keeps the (already mapped) priority it ran with
    raw = properties.get("priority")
    bots = prio.DEFAULT if raw is None else prio.clamp(raw)
    properties["priority"] = prio.to_broker(bots, kind)
    if ctx is not None and ctx.get("task_id") == headers.get("id"):
        return          # submit() registered it already
    try:
        _register_foreign(app, sender, body, headers, bots)
    except Exception:  # noqa: BLE001 - never break a publish; the job runs without dedup
        _fallback.exception("job queue: could not register %s[%s]; it is sent without dedup",
                            sender, headers.get("id"))


def _register_foreign(app: Any, sender: str, body: Any, headers: dict, bots: int) -> None:
    from engine.errors import ConfigError, DatabaseError
    from engine.log import component_logger
    from tasks import registry
    from tasks.celeryapp import configdir_of, queue_depth
    from tasks.engine_task import config_for

    args, kwargs = _body_parts(body)
    try:
        job = Job.from_message(sender, args, kwargs, configdir_of(app))
        cfg = config_for(job.configdir)
    except (JobError, ConfigError):
        return          # not a job we can name: the worker rejects it and logs why
    log = component_logger("jobqueue", cfg)
    task_id = str(headers.get("id"))
    try:
        reg = registry.register(cfg, job, task_id, bots, queue_depth=lambda: queue_depth(app))
    except DatabaseError as exc:
        log.warning("registry unusable (%s): %s[%s] is sent without dedup", str(exc), sender, task_id)
        return
    if reg.status == "duplicate":
        headers["expires"] = PAST
        log.info("duplicate discarded: %s (priority %d) is identical to waiting job %s (priority %d); "
                 "message %s expires unrun", job, bots, reg.task_id, reg.priority, task_id)
    elif reg.status == "raised":
        log.info("priority raised: %s from %d to %d (message %s supersedes %s)", job, reg.previous_priority,
                 bots, task_id, reg.previous)
    else:
        log.info("added %s priority %d: %s (sent as %s)%s", task_id, bots, job, sender,
                 " - replaced a stale registry entry" if reg.stale else "")


# --------------------------------------------------------------------------- worker side

def _worker_log(app: Any) -> logging.Logger:
    from engine.log import component_logger
    from tasks.engine_task import worker_config

    try:
        return component_logger("jobqueue", worker_config(app))
    except Exception:  # noqa: BLE001
        return _fallback


@worker_process_init.connect(dispatch_uid="botsq-worker-process-init")
def _fresh_connections(**_: Any) -> None:
    from engine.db import dispose_all

    dispose_all()           # never share a parent's pooled database connections after fork
    from tasks import registry

    registry._ready.clear()


@worker_ready.connect(dispatch_uid="botsq-worker-ready")
def _on_ready(sender: Any = None, **_: Any) -> None:
    app = getattr(sender, "app", None) or current_app
    log = _worker_log(app)
    try:
        from tasks import registry
        from tasks.celeryapp import queue_depth
        from tasks.engine_task import worker_config

        swept = registry.sweep(worker_config(app), queue_depth=lambda: queue_depth(app))
        if swept["stale"]:
            log.warning("cleared %d stale registry entr%s (queue empty, message gone)", swept["stale"],
                        "y" if swept["stale"] == 1 else "ies")
    except Exception as exc:  # noqa: BLE001
        log.warning("registry sweep at start failed: %s", str(exc).splitlines()[0] if str(exc) else exc)
    log.info("worker ready: %s consuming queue engine", getattr(sender, "hostname", "?"))


def _task_name(request: Any, sender: Any = None) -> str:
    # the request a signal gets is a Context: the task's name is its ``task`` header, not ``name``
    return (getattr(request, "name", None) or getattr(request, "task", None)
            or getattr(sender, "name", None) or "?")


def _job_of(request: Any, app: Any, sender: Any = None) -> Job | None:
    from tasks.celeryapp import configdir_of

    try:
        return Job.from_message(_task_name(request, sender), request.args or (), request.kwargs or {},
                                configdir_of(app))
    except Exception:  # noqa: BLE001
        return None


@task_revoked.connect(dispatch_uid="botsq-task-revoked")
def _on_revoked(sender: Any = None, request: Any = None, terminated: bool = False, signum: Any = None,
                expired: bool = False, **_: Any) -> None:
    app = getattr(sender, "app", None) or getattr(request, "app", None) or current_app
    log = _worker_log(app)
    job = _job_of(request, app, sender)
    what = job.describe() if job else _task_name(request, sender)
    task_id = getattr(request, "id", "?")
    if expired:
        log.info("dropped unrun %s (%s): duplicate of a waiting job, or expired", task_id, what)
    else:
        log.warning("revoked %s (%s)%s", task_id, what, " while running" if terminated else "")
    if job is not None:
        try:
            from tasks import registry
            from tasks.engine_task import config_for

            registry.forget(config_for(job.configdir), job.key, str(task_id))
        except Exception:  # noqa: BLE001
            pass


@task_failure.connect(dispatch_uid="botsq-task-failure")
def _on_failure(sender: Any = None, task_id: str | None = None, exception: BaseException | None = None,
                args: Any = None, kwargs: Any = None, **_: Any) -> None:
    if getattr(sender, "name", None) not in TASKS:
        return
    from celery.exceptions import TimeLimitExceeded, WorkerLostError

    if not isinstance(exception, (TimeLimitExceeded, WorkerLostError)):
        return      # failures inside the task are logged by the task itself
    app = sender.app
    log = _worker_log(app)
    reason = f"{type(exception).__name__}: {exception}"
    log.error("job %s failed: %s", task_id, reason)
    try:
        from tasks import registry
        from tasks.celeryapp import configdir_of
        from tasks.engine_task import config_for

        job = Job.from_message(sender.name, args or (), kwargs or {}, configdir_of(app))
        registry.finish(config_for(job.configdir), str(task_id), registry.FAILED, reason)
    except Exception:  # noqa: BLE001 - the start record then ages out
        pass
