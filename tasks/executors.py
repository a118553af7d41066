"""What a job does once it runs: an engine run (``bots.engine``) or an allow-listed command
(``bots.command``), watched by a heartbeat that keeps its start record alive and reports an
overlong job, with the engine's progress sent to Flower as task events.
"""
from __future__ import annotations

import logging
import shlex
import subprocess
import time
from collections.abc import Callable
from typing import Any

from celery import Task
from celery.backends.base import DisabledBackend

from engine.botsengine import bots_port_held, locked_wait_seconds, run_bots_engine
from engine.child import start_tied
from engine.config import Config
from engine.config.engine import bots_port
from engine.errors import ExitCode, one_line
from engine.lease import Heartbeat
from engine.report import send_report
from engine.run import run_engine
from engine.states import RunStatus
from tasks.jobs import COMMAND_TASK, Job
from tasks.registry import StartedJobs


class JobWatch:
    """While a job runs: the heartbeat of its start record, and an error (for commands also a report)
    once it runs longer than maxruntime. Engine runs report that themselves (engine lock heartbeat)."""

    def __init__(self, cfg: Config, task_id: str, job: Job, log: logging.Logger) -> None:
        self.cfg, self.task_id, self.job, self.log = cfg, task_id, job, log
        self.t0 = time.monotonic()
        self.alerted = False
        self._started = StartedJobs(cfg)
        self._heartbeat = Heartbeat(self.beat, max(0.2, cfg.settings.lock_heartbeat), "botsq-job-heartbeat")

    def __enter__(self) -> JobWatch:
        self._heartbeat.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._heartbeat.stop(timeout=10)

    def beat(self) -> None:
        try:
            self._started.heartbeat(self.task_id)
        except Exception as exc:  # noqa: BLE001 - a missed beat is retried; the grace period covers it
            self.log.warning("job %s: heartbeat failed: %s", self.task_id, one_line(exc))
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
        if self.job.task == COMMAND_TASK:
            send_report(self.cfg, f"job {self.job.name} exceeds maxruntime", msg + "\n")


class TaskProgress:
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


def run_engine_job(task: Task, cfg: Config, job: Job, log: logging.Logger,
                   watch: JobWatch | None = None) -> dict[str, Any]:
    """One engine run for the job, in its lane (one lane's part: :func:`tasks.jobs.split_job`). A live
    run holding the lane's engine lock elsewhere is waited for (the job is never dropped); maxruntime
    counts from the attempt that gets the lock. ``[engine] kind = bots``: :func:`run_bots_job`."""
    if cfg.engine.is_bots:
        return run_bots_job(task, cfg, job, log, watch)
    progress: Callable[[dict[str, Any]], None] = TaskProgress(task)
    poll = min(5.0, max(0.2, cfg.settings.lock_heartbeat / 2))
    waiting_since = None
    while True:
        if watch is not None:
            watch.restart()
        res = run_engine(cfg, job.commands, job.routes, lane=job.lane, progress=progress)
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


def run_bots_job(task: Task, cfg: Config, job: Job, log: logging.Logger,
                 watch: JobWatch | None = None) -> dict[str, Any]:
    """The job as a run of the Bots installation's engine (:func:`engine.botsengine.run_bots_engine`).

    Locked - botsq's engine lock held by a live run, or Bots' exit 3 (someone started Bots by hand,
    or Bots is recovering) - the job waits and runs again, waits growing from 1 s to 60 s
    (:func:`engine.botsengine.locked_wait_seconds`), never dropped while it waits; after waiting
    ``maxruntime`` minutes it gives up with a report (``{"exit_code": 3, "gave_up": true}``)."""
    task_id = str(task.request.id)
    progress = TaskProgress(task)
    label = f"job {task_id} | bots-engine"
    first = min(1.0, max(0.1, cfg.settings.lock_heartbeat / 2))
    waiting_since: float | None = None
    attempt = 0
    locked_run: int | None = None
    port: int | None = None
    while True:
        if watch is not None:
            watch.restart()
        res = run_bots_engine(cfg, job.commands, job.routes, log=log, label=label, locked_run=locked_run,
                              tries=attempt + 1)
        if res.exit_code != ExitCode.LOCKED:
            break
        if res.status == RunStatus.LOCKED:
            locked_run = res.run_id
        attempt += 1
        now = time.monotonic()
        if waiting_since is None:
            waiting_since = now
            port = bots_port(cfg.engine, cfg.configdir)         # read from Bots' bots.ini once a job waits
            log.info("job %s waits for the engine: %s", task_id, res.message)
            progress({"waiting": res.message})
        elif now - waiting_since >= cfg.settings.maxruntime * 60:
            msg = (f"job {task_id} ({job.describe()}) given up: the engine stayed locked for "
                   f"{(now - waiting_since) / 60:.1f} minutes (maxruntime {cfg.settings.maxruntime}): {res.message}")
            log.error(msg)
            send_report(cfg, f"job {job.describe()} given up", msg + f"\nconfig {job.configdir}\n", log)
            return {"exit_code": res.exit_code, "run_id": res.run_id, "message": msg, "counts": res.counts,
                    "gave_up": True}
        _wait_for_bots(locked_wait_seconds(attempt, first), port)
    if waiting_since is not None:
        log.info("job %s: the engine is free after %.1f s (%d tries); ran", task_id,
                 time.monotonic() - waiting_since, attempt + 1)
    return {"exit_code": res.exit_code, "run_id": res.run_id, "message": res.message, "counts": res.counts,
            "status": res.status, "command_line": res.command_line}


def _wait_for_bots(seconds: float, port: int | None, poll: float = 0.5) -> None:
    """Wait ``seconds`` before trying a locked Bots again - less when Bots' port was held (a Bots
    engine ran) and is free now: then the next try comes within ``poll`` seconds of its end."""
    deadline = time.monotonic() + seconds
    held = bots_port_held(port)
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(poll, left))
        if held and not bots_port_held(port):
            return


def run_command_job(cfg: Config, job: Job, task_id: str, log: logging.Logger) -> dict[str, Any]:
    """Run an allow-listed ``[jobqueue.commands]`` command as an argument list (no shell), in the
    environment folder, its output into ``jobqueue.log``."""
    argv = [*cfg.jobqueue.commands[job.name], *job.args]
    log.info("job %s: running %s (in %s)", task_id, shlex.join(argv), cfg.envdir)
    try:
        proc = start_tied(argv, cwd=cfg.envdir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace")
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
