"""The two tasks the worker runs: ``bots.engine`` (one engine run) and ``bots.command`` (an
allow-listed command from ``[jobqueue.commands]``).

Every job goes through the same steps:

1. its kwargs are checked (unknown ones, positional args, unknown route or command: the
   message is rejected with the reason in ``jobqueue.log``; the worker carries on);
2. :func:`tasks.registry.begin` claims its registry entry and records the start, in one
   commit, before anything else - a superseded or already-run message is skipped here, and a
   message whose worker died is run again at most ``1 + [jobqueue] max_retries`` times;
3. the job runs while a heartbeat keeps its start record alive. An engine run that meets the
   engine lock of a live run elsewhere waits for it and runs afterwards; it is never dropped;
4. the outcome goes to ``jobqueue.log``, the start record and (as a task event) Flower.
"""
from __future__ import annotations

import shlex
import signal
import subprocess
import threading
import time
from typing import Any

from celery import Celery, Task
from celery.backends.base import DisabledBackend
from celery.exceptions import Reject

from engine.config import Config, JobQueue, load_config
from engine.errors import ConfigError, DatabaseError, ExitCode, UsageError
from engine.log import component_logger
from engine.report import send_report
from tasks import priority as prio
from tasks import registry
from tasks.jobs import COMMAND_TASK, ENGINE_TASK, Job, JobError, validate

DB_RETRY_SECONDS = 30       # a job that cannot reach the database is tried again after this


def register_tasks(app: Celery) -> None:
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


# --------------------------------------------------------------------------- configs

_cfg_cache: dict[str, tuple[tuple[float, ...], Config]] = {}


def _mtimes(configdir: str) -> tuple[float, ...]:
    import os

    out = []
    for name in ("bots.ini", "routes.toml"):
        try:
            out.append(os.stat(os.path.join(configdir, name)).st_mtime)
        except OSError:
            out.append(-1.0)
    return tuple(out)


def config_for(configdir: str) -> Config:
    """The config of a config dir, read again whenever bots.ini or routes.toml changed."""
    stamp = _mtimes(configdir)
    hit = _cfg_cache.get(configdir)
    if hit and hit[0] == stamp:
        return hit[1]
    cfg = load_config(configdir)
    _cfg_cache[configdir] = (stamp, cfg)
    return cfg


def worker_config(app: Celery) -> Config:
    from tasks.celeryapp import configdir_of

    return config_for(configdir_of(app))


# --------------------------------------------------------------------------- the steps

def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class _Watch:
    """Heartbeat of the start record; an error (and, for commands, a report) past maxruntime."""

    def __init__(self, cfg: Config, task_id: str, job: Job, log: Any) -> None:
        self.cfg, self.task_id, self.job, self.log = cfg, task_id, job, log
        self.t0 = time.monotonic()
        self.alerted = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="botsq-job-heartbeat", daemon=True)

    def __enter__(self) -> "_Watch":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        interval = max(0.2, self.cfg.settings.lock_heartbeat)
        while not self._stop.wait(interval):
            try:
                registry.heartbeat(self.cfg, self.task_id)
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried; the grace period covers it
                self.log.warning("job %s: heartbeat failed: %s", self.task_id, _one_line(exc))
            self.check_overtime()

    def restart(self) -> None:
        """Count from now: time spent waiting for the engine lock is not running time."""
        self.t0 = time.monotonic()

    def check_overtime(self) -> None:
        minutes = (time.monotonic() - self.t0) / 60
        if self.alerted or minutes <= self.cfg.settings.maxruntime:
            return
        self.alerted = True
        msg = (f"job {self.task_id} ({self.job.describe()}) has been running for {minutes:.0f} minutes, longer "
               f"than maxruntime ({self.cfg.settings.maxruntime}); it is not stopped")
        self.log.error(msg)
        if self.job.task == COMMAND_TASK:     # engine runs report this themselves (engine lock heartbeat)
            send_report(self.cfg, f"job {self.job.name} exceeds maxruntime", msg + "\n")


class _Progress:
    """Engine progress -> a ``task-progress`` event (Flower shows it as the task's result)."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.events = bool(task.app.conf.worker_send_task_events)
        self.backend = not isinstance(task.backend, DisabledBackend)

    def __call__(self, info: dict[str, Any]) -> None:
        meta = {k: info.get(k) for k in ("phase", "route", "part", "files_done", "files_total", "waiting")
                if info.get(k) is not None}
        done, total = meta.get("files_done"), meta.get("files_total")
        text = " ".join(str(x) for x in (meta.get("phase"), meta.get("route") and f"route {meta['route']}",
                                         meta.get("part") and f"part {meta['part']}") if x)
        if meta.get("waiting"):
            text = f"waiting: {meta['waiting']}"
        elif done is not None:
            text += f": {done}/{total} files" if total else f": {done} files"
        try:
            if self.events:
                self.task.send_event("task-progress", progress=meta, result=text)
            if self.backend:
                self.task.update_state(state="PROGRESS", meta=meta)
        except Exception:  # noqa: BLE001 - progress is best effort
            pass


def run_job(task: Task, name: str, args: Any, kwargs: Any) -> dict[str, Any]:
    req = task.request
    task_id = str(req.id)
    app = task.app
    from tasks.celeryapp import broker_kind_of, configdir_of

    try:
        base = worker_config(app)
    except ConfigError as exc:      # bots.ini broken while the worker runs: keep the job, try again
        import logging

        logging.getLogger("botsq.jobqueue").error("job %s waits, the worker's config cannot be read: %s; "
                                                  "trying again in %d s", task_id, _one_line(exc), DB_RETRY_SECONDS)
        raise task.retry(exc=exc, countdown=DB_RETRY_SECONDS, max_retries=JobQueue().max_retries) from None
    log = component_logger("jobqueue", base)
    t0 = time.monotonic()

    # 1. what job is this?
    try:
        job = Job.from_message(name, args, kwargs, configdir_of(app))
        cfg = base if job.configdir == str(base.configdir) else config_for(job.configdir)
    except (JobError, ConfigError) as exc:
        log.error("rejected %s[%s] %s: %s", name, task_id, _short(kwargs), _one_line(exc))
        raise Reject(_one_line(exc), requeue=False) from None
    priority = prio.from_broker((req.delivery_info or {}).get("priority"), broker_kind_of(app))

    # 2. claim its registry entry, record the start
    try:
        began = _begin(cfg, job, task_id, log)
    except DatabaseError as exc:
        log.error("job %s (%s) cannot start, the database is unusable: %s; trying again in %d s",
                  task_id, job.describe(), _one_line(exc), DB_RETRY_SECONDS)
        raise task.retry(exc=exc, countdown=DB_RETRY_SECONDS, max_retries=cfg.jobqueue.max_retries) from None
    if began.action == "skip":
        log.info("skipped %s (%s): %s", task_id, job.describe(), began.reason)
        return {"skipped": began.reason}
    if began.action == "giveup":
        msg = f"job {task_id} ({job.describe()}) not run again: {began.reason}"
        log.error(msg)
        send_report(cfg, f"job {job.describe()} given up", msg + f"\nconfig {job.configdir}\n")
        return {"gave_up": began.reason}
    if began.reason:
        log.warning("job %s (%s): %s", task_id, job.describe(), began.reason)
    if not began.registered and began.attempts == 1:
        log.info("job %s had no registry entry (sent around the registry, or the entry was cleared); running it",
                 task_id)

    # 3. run it
    try:
        validate(job, cfg)
    except JobError as exc:
        registry.finish(cfg, task_id, registry.FAILED, f"rejected: {exc}")
        log.error("rejected %s[%s] %s: %s", name, task_id, job.describe(), _one_line(exc))
        raise Reject(_one_line(exc), requeue=False) from None
    log.info("started %s: %s (priority %d, attempt %d)", task_id, job, priority, began.attempts)
    try:
        with _Watch(cfg, task_id, job, log) as watch:
            if job.task == ENGINE_TASK:
                result = _run_engine(task, cfg, job, log, watch)
            else:
                result = _run_command(cfg, job, task_id, log)
    except (ConfigError, UsageError) as exc:
        _finish(cfg, task_id, registry.FAILED, f"system error: {_one_line(exc)}", log)
        log.error("finished %s after %.1f s: system error: %s", task_id, time.monotonic() - t0, _one_line(exc))
        return {"exit_code": 1, "message": _one_line(exc)}
    except DatabaseError as exc:
        if (req.retries or 0) >= cfg.jobqueue.max_retries:
            _finish(cfg, task_id, registry.FAILED, f"database error: {_one_line(exc)}", log)
            log.error("job %s (%s) given up after %d database error(s): %s", task_id, job.describe(),
                      (req.retries or 0) + 1, _one_line(exc))
            send_report(cfg, f"job {job.describe()} given up", f"job {task_id} ({job}) failed "
                                                                f"{(req.retries or 0) + 1} time(s): {exc}\n")
            raise
        # state "retry": the retried message (same task id) runs again instead of "already ran"
        _finish(cfg, task_id, registry.RETRY, f"database error: {_one_line(exc)}", log)
        log.error("job %s (%s): %s; trying again in %d s", task_id, job.describe(), _one_line(exc), DB_RETRY_SECONDS)
        raise task.retry(exc=exc, countdown=DB_RETRY_SECONDS, max_retries=cfg.jobqueue.max_retries) from None
    except Exception as exc:
        _finish(cfg, task_id, registry.FAILED, f"crashed: {type(exc).__name__}: {_one_line(exc)}", log)
        log.exception("job %s (%s) crashed after %.1f s", task_id, job.describe(), time.monotonic() - t0)
        send_report(cfg, f"job {job.describe()} crashed", f"job {task_id} ({job}) crashed: "
                                                          f"{type(exc).__name__}: {exc}\n")
        raise
    elapsed = time.monotonic() - t0
    _finish(cfg, task_id, registry.DONE, result["message"], log)
    level = log.info if result.get("exit_code") in (0, None) else log.warning
    level("finished %s after %.1f s: %s (exit %s)", task_id, elapsed, result["message"], result.get("exit_code"))
    result["elapsed"] = round(elapsed, 3)
    return result


def _short(kwargs: Any) -> str:
    text = repr(kwargs)
    return text if len(text) <= 200 else text[:197] + "..."


def _begin(cfg: Config, job: Job, task_id: str, log: Any) -> registry.Begin:
    """registry.begin, waiting while the same message still runs on another worker."""
    max_attempts = 1 + max(0, cfg.jobqueue.max_retries)
    said = False
    while True:
        began = registry.begin(cfg, job, task_id, max_attempts)
        if began.action != "wait":
            return began
        if not said:
            log.info("job %s was delivered again while %s; waiting for that run to end", task_id, began.reason)
            said = True
        time.sleep(min(2.0, max(0.2, cfg.settings.lock_heartbeat / 2)))


def _finish(cfg: Config, task_id: str, state: str, result: str, log: Any) -> None:
    try:
        registry.finish(cfg, task_id, state, result)
    except DatabaseError as exc:
        log.error("job %s: could not record its end: %s", task_id, _one_line(exc))


def _run_engine(task: Task, cfg: Config, job: Job, log: Any, watch: _Watch | None = None) -> dict[str, Any]:
    from engine.run import run_engine

    progress = _Progress(task)
    poll = min(5.0, max(0.2, cfg.settings.lock_heartbeat / 2))
    waiting_since = None
    while True:
        if watch is not None:
            watch.restart()         # maxruntime counts from the attempt that gets the lock
        res = run_engine(cfg, job.commands, job.routes, progress=progress)
        if res.exit_code != ExitCode.LOCKED:
            break
        if waiting_since is None:
            waiting_since = time.monotonic()
            log.info("job %s waits for the engine: %s", task.request.id, res.message)
            progress({"waiting": res.message})
        time.sleep(poll)
    if waiting_since is not None:
        log.info("job %s: the engine is free after %.1f s; ran", task.request.id, time.monotonic() - waiting_since)
    return {"exit_code": res.exit_code, "run_id": res.run_id, "message": res.message, "counts": res.counts}


def _parent_death_signal() -> Any:
    """A pre-exec hook making a command die (SIGTERM) with the pool process that started it, so a
    job whose worker was killed never runs on beside its own rerun. Resolved here, not in the
    forked child: the child only makes the system call."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)         # PR_SET_PDEATHSIG


def _run_command(cfg: Config, job: Job, task_id: str, log: Any) -> dict[str, Any]:
    argv = [*cfg.jobqueue.commands[job.name], *job.args]
    log.info("job %s: running %s (in %s)", task_id, shlex.join(argv), cfg.envdir)
    try:
        proc = subprocess.Popen(argv, cwd=cfg.envdir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace",
                                preexec_fn=_parent_death_signal())  # noqa: PLW1509
    except OSError as exc:
        msg = f"{job.name}: cannot start {argv[0]}: {exc.strerror or exc}"
        log.error("job %s: %s", task_id, msg)
        return {"exit_code": 127, "message": msg}
    assert proc.stdout is not None
    for line in proc.stdout:
        log.info("job %s | %s: %s", task_id, job.name, line.rstrip("\n"))
    code = proc.wait()
    msg = f"{job.name}: exit status {code}"
    if code:
        log.error("job %s: %s", task_id, msg)
    return {"exit_code": code, "message": msg}
