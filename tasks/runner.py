"""The two tasks the worker runs - ``bots.engine`` (one engine run) and ``bots.command`` (an
allow-listed command from ``[jobqueue.commands]``) - and the steps every job goes through:

1. its kwargs are checked (unknown ones, positional args, unknown route or command, a config dir
   the worker does not serve - :func:`tasks.jobs.check_trusted`: the message is rejected with the
   reason in one line in ``jobqueue.log`` and on the console, and its registry entry goes; the
   worker carries on);
2. :meth:`tasks.registry.StartedJobs.begin` records the start and claims its registry entry, in
   one commit, before anything else - a superseded or already-run message is skipped here, and a
   message whose worker died is run again at most ``1 + [jobqueue] max_retries`` times;
3. the job is split by lane as the config says now (:func:`tasks.jobs.split_job`): the part of the
   message's own lane runs here, the parts of other lanes (a job over several lanes sent by
   ``celery call`` or Flower, a route moved to another lane while the job waited) are forwarded to
   their lanes through the publish path, deduplicated there like any job;
4. the job runs (:mod:`tasks.executors`) while a heartbeat keeps its start record alive;
5. the outcome goes to ``jobqueue.log``, the start record and (as a task event) Flower.

A step that ends the job early raises an outcome (:mod:`tasks.outcomes`); :func:`run_job` is the
one place that turns them into Celery's terms.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from celery import Celery, Task
from celery.exceptions import Reject

from engine.config import Config, JobQueue
from engine.errors import ConfigError, DatabaseError, ExitCode, UsageError, one_line
from engine.report import send_report
from tasks import priority as prio
from tasks.broker import QueueError
from tasks.context import config_for, configdir_of, queue_logger, worker_config
from tasks.executors import JobWatch, run_command_job, run_engine_job
from tasks.jobs import (COMMAND_TASK, ENGINE_TASK, Job, JobError, check_trusted, message_lane, place, split_job,
                        validate)
from tasks.outcomes import GiveUp, RejectMessage, RetryLater, SkipMessage
from tasks.publish import publish
from tasks.registration import forget_dropped
from tasks.registry import Begin, BeginAction, JobState, StartedJobs

DB_RETRY_SECONDS = 30       # a job that cannot reach the database (or read its config) is tried again after this


def register_tasks(app: Celery) -> None:
    """Register ``bots.engine`` and ``bots.command`` on ``app`` (late ack, requeued when the worker is lost)."""
    opts = {"bind": True, "acks_late": True, "reject_on_worker_lost": True, "typing": False,
            "ignore_result": True, "max_retries": None, "Request": "tasks.consumer:Request"}
    app.task(name=ENGINE_TASK, **opts)(engine_job)
    app.task(name=COMMAND_TASK, **opts)(command_job)


def engine_job(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """bots.engine(commands=[...], routes=[...], configdir=None): one engine run."""
    return run_job(self, ENGINE_TASK, args, kwargs)


def command_job(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """bots.command(name=..., args=[...], configdir=None): an allow-listed command."""
    return run_job(self, COMMAND_TASK, args, kwargs)


def run_job(task: Task, name: str, args: Any, kwargs: Any) -> dict[str, Any]:
    """Run one message; the outcomes of :mod:`tasks.outcomes` become Celery's here, and only here."""
    try:
        return _run(task, name, args, kwargs)
    except SkipMessage as out:
        return {"skipped": out.reason}
    except GiveUp as out:
        return {"gave_up": out.reason}
    except RejectMessage as out:
        raise Reject(out.reason, requeue=False) from None
    except RetryLater as out:
        raise task.retry(exc=out.cause, countdown=out.countdown, max_retries=out.max_retries) from None


def _run(task: Task, name: str, args: Any, kwargs: Any) -> dict[str, Any]:
    task_id = str(task.request.id)
    base = _worker_config(task)
    log = queue_logger(base)
    t0 = time.monotonic()
    job, cfg = _identify(task, base, name, args, kwargs, log)
    began = _begin(cfg, job, task_id, log)
    try:
        validate(job, cfg)
        own = _own_part(task, cfg, job, log)
    except JobError as exc:
        StartedJobs(cfg).finish(task_id, JobState.FAILED, f"rejected: {exc}")
        log.error("rejected %s[%s] %s: %s", name, task_id, job.describe(), one_line(exc))
        raise RejectMessage(one_line(exc)) from None
    if own is None:
        _finish(cfg, task_id, JobState.DONE, "forwarded to its lanes", log)
        log.info("finished %s: nothing of %s is in lane %s; forwarded to its lanes", task_id, job.describe(),
                 message_lane(cfg, job))
        return {"forwarded": True}
    log.info("started %s: %s (%s, attempt %d)", task_id, own, _priority_text(task), began.attempts)
    return _execute(task, cfg, own, log, t0)


def _own_part(task: Task, cfg: Config, job: Job, log: logging.Logger) -> Job | None:
    """The part of the job this message's lane runs (None: none); the other lanes' parts are forwarded
    through the publish path at the message's priority. A forward that fails is tried again with the
    whole message (RetryLater): a part already forwarded then meets its waiting copy (a duplicate)."""
    lane = message_lane(cfg, job)
    parts = split_job(cfg, job)
    own = next((p for p in parts if p.lane == lane), None)
    task_id = str(task.request.id)
    for part in parts:
        if part is own:
            continue
        try:
            res = publish(task.app, cfg, part, _bots_priority(task) or prio.DEFAULT, log)
        except (QueueError, DatabaseError) as exc:
            _finish(cfg, task_id, JobState.RETRY, f"forward failed: {one_line(exc)}", log)
            log.error("job %s (%s): cannot forward its lane %s part: %s; trying again in %d s", task_id,
                      job.describe(), part.lane, one_line(exc), DB_RETRY_SECONDS)
            raise RetryLater(one_line(exc), exc, DB_RETRY_SECONDS, cfg.jobqueue.max_retries) from None
        log.info("job %s (%s, lane %s): forwarded %s to lane %s: %s", task_id, job.describe(), lane,
                 part.describe(), part.lane, res.status)
    return own


def _worker_config(task: Task) -> Config:
    try:
        return worker_config(task.app)
    except ConfigError as exc:      # bots.ini broken while the worker runs: keep the job, try again
        logging.getLogger("botsq.jobqueue").error("job %s waits, the worker's config cannot be read: %s; "
                                                  "trying again in %d s", task.request.id, one_line(exc),
                                                  DB_RETRY_SECONDS)
        raise RetryLater(one_line(exc), exc, DB_RETRY_SECONDS, JobQueue().max_retries) from None


def _identify(task: Task, base: Config, name: str, args: Any, kwargs: Any,
              log: logging.Logger) -> tuple[Job, Config]:
    """The job a message stands for, and the config it runs with."""
    try:
        job = Job.from_message(name, args, kwargs, configdir_of(task.app))
        check_trusted(base, job)        # before another config dir's bots.ini is even read
        cfg = base if job.configdir == str(base.configdir) else config_for(job.configdir)
        return place(cfg, job), cfg
    except (JobError, ConfigError) as exc:
        log.error("rejected %s[%s] %s: %s", name, task.request.id, _short(kwargs), one_line(exc))
        _forget(base, str(task.request.id), log)
        raise RejectMessage(one_line(exc)) from None


def _forget(base: Config, task_id: str, log: logging.Logger) -> None:
    """A message rejected before it claimed its registry entry takes the entry with it: no listing
    shows a job that will never run."""
    try:
        forget_dropped(base, task_id)
    except DatabaseError as exc:
        log.warning("rejected %s: its registry entry stays until the stale sweep: %s", task_id, one_line(exc))


def _bots_priority(task: Task) -> int | None:
    """The job's Bots priority, as its message header carries it (mapped back only for a message
    sent without the header); None when it cannot be told."""
    req = task.request
    carried = getattr(req, prio.PRIORITY_HEADER, None)
    if carried is not None:
        return prio.clamp(carried)
    try:
        return prio.from_broker((req.delivery_info or {}).get("priority"), prio.broker_kind(
            task.app.conf.broker_url or ""))
    except ValueError:
        return None


def _priority_text(task: Task) -> str:
    p = _bots_priority(task)
    return "priority unknown" if p is None else f"priority {p}"


def _short(kwargs: Any) -> str:
    text = repr(kwargs)
    return text if len(text) <= 200 else text[:197] + "..."


def _begin(cfg: Config, job: Job, task_id: str, log: logging.Logger) -> Begin:
    """StartedJobs.begin, waiting while the same message still runs on another worker; skips and
    give-ups are outcomes."""
    max_attempts = 1 + max(0, cfg.jobqueue.max_retries)
    started = StartedJobs(cfg)
    said = False
    while True:
        try:
            began = started.begin(job, task_id, max_attempts)
        except DatabaseError as exc:
            log.error("job %s (%s) cannot start, the database is unusable: %s; trying again in %d s",
                      task_id, job.describe(), one_line(exc), DB_RETRY_SECONDS)
            raise RetryLater(one_line(exc), exc, DB_RETRY_SECONDS, cfg.jobqueue.max_retries) from None
        if began.action != BeginAction.WAIT:
            break
        if not said:
            log.info("job %s was delivered again while %s; waiting for that run to end", task_id, began.reason)
            said = True
        time.sleep(min(2.0, max(0.2, cfg.settings.lock_heartbeat / 2)))
    if began.action == BeginAction.SKIP:
        log.info("skipped %s (%s): %s", task_id, job.describe(), began.reason)
        raise SkipMessage(began.reason)
    if began.action == BeginAction.GIVEUP:
        msg = f"job {task_id} ({job.describe()}) not run again: {began.reason}"
        log.error(msg)
        send_report(cfg, f"job {job.describe()} given up", msg + f"\nconfig {job.configdir}\n")
        raise GiveUp(began.reason)
    if began.reason:
        log.warning("job %s (%s): %s", task_id, job.describe(), began.reason)
    if not began.registered and began.attempts == 1:
        log.info("job %s had no registry entry (sent around the registry, or the entry was cleared); running it",
                 task_id)
    return began


def _finish(cfg: Config, task_id: str, state: JobState, result: str, log: logging.Logger) -> None:
    try:
        StartedJobs(cfg).finish(task_id, state, result)
    except DatabaseError as exc:
        log.error("job %s: could not record its end: %s", task_id, one_line(exc))


def _execute(task: Task, cfg: Config, job: Job, log: logging.Logger, t0: float) -> dict[str, Any]:
    """Run the job and record how it ended."""
    req = task.request
    task_id = str(req.id)
    try:
        with JobWatch(cfg, task_id, job, log) as watch:
            if job.task == ENGINE_TASK:
                result = run_engine_job(task, cfg, job, log, watch)
            else:
                result = run_command_job(cfg, job, task_id, log)
    except (ConfigError, UsageError) as exc:
        _finish(cfg, task_id, JobState.FAILED, f"system error: {one_line(exc)}", log)
        log.error("finished %s after %.1f s: system error: %s", task_id, time.monotonic() - t0, one_line(exc))
        return {"exit_code": 1, "message": one_line(exc)}
    except DatabaseError as exc:
        tries = (req.retries or 0) + 1
        if tries > cfg.jobqueue.max_retries:
            _finish(cfg, task_id, JobState.FAILED, f"database error: {one_line(exc)}", log)
            log.error("job %s (%s) given up after %d database error(s): %s", task_id, job.describe(), tries,
                      one_line(exc))
            send_report(cfg, f"job {job.describe()} given up", f"job {task_id} ({job}) failed {tries} time(s): "
                                                                f"{exc}\n")
            raise
        # state "retry": the retried message (same task id) runs again instead of "already ran"
        _finish(cfg, task_id, JobState.RETRY, f"database error: {one_line(exc)}", log)
        log.error("job %s (%s): %s; trying again in %d s", task_id, job.describe(), one_line(exc), DB_RETRY_SECONDS)
        raise RetryLater(one_line(exc), exc, DB_RETRY_SECONDS, cfg.jobqueue.max_retries) from None
    except Exception as exc:
        _finish(cfg, task_id, JobState.FAILED, f"crashed: {one_line(exc, with_type=True)}", log)
        log.exception("job %s (%s) crashed after %.1f s", task_id, job.describe(), time.monotonic() - t0)
        send_report(cfg, f"job {job.describe()} crashed", f"job {task_id} ({job}) crashed: "
                                                          f"{type(exc).__name__}: {exc}\n")
        raise
    elapsed = time.monotonic() - t0
    # an engine run that ended in a system error (a Bots engine's exit 1, an unknown route) is a failed job
    failed = job.task == ENGINE_TASK and result.get("exit_code") == ExitCode.SYSTEM
    # a job that waited maxruntime for a locked Bots engine and stopped trying ran nothing: not "done"
    state = JobState.GAVE_UP if result.get("gave_up") else JobState.FAILED if failed else JobState.DONE
    _finish(cfg, task_id, state, result["message"], log)
    level = log.info if result.get("exit_code") in (0, None) else log.warning
    level("finished %s after %.1f s: %s (exit %s)", task_id, elapsed, result["message"], result.get("exit_code"))
    result["elapsed"] = round(elapsed, 3)
    return result
