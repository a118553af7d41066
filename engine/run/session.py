"""One engine run, start to end: the session.

1. take the engine lock of the run's lane (a live holder: exit 3, nothing done);
2. record the run, start the lock's heartbeat;
3. recover what earlier runs left half-way (:mod:`engine.run.recovery`);
4. do the commands in Bots' order (:mod:`engine.run.commands`), then the daily cleanup;
5. record the end (status, counts, message), release the lock, mail a report when asked to.

``run_engine`` raises ConfigError / UsageError / DatabaseError for system errors (exit 1)
and never raises for file or communication errors (exit 2). Without a lane it runs the job lane
after lane (:func:`engine.run.selection.lane_plan`), each lane under its own lock.
"""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy.exc import SQLAlchemyError

from engine.config import Config
from engine.config.lanes import DEFAULT_LANE
from engine.errors import INTERRUPTIONS, ConfigError, DatabaseError, ExitCode, UsageError, database_error, one_line
from engine.lease import Holder, hostname
from engine.lock import Acquired, acquire, overtime_minutes
from engine.log import component_logger, mask_url
from engine.models import RunStatus, iso_utc
from engine.report import report_wanted, send_report
from engine.run.commands import Commands
from engine.run.context import LockLost, ProgressCallback, RunContext
from engine.run.deliver import Deliverer, check_filename_templates
from engine.run.recovery import recover
from engine.run.selection import LanePart, lane_plan, normalise_commands, select_routes

# A run over several lanes ends with the most serious of its lanes' exit codes: a system error, then
# a lane that was locked (its work is not done), then file or communication errors, then ok.
SEVERITY = (ExitCode.SYSTEM, ExitCode.LOCKED, ExitCode.RUN_ERRORS, ExitCode.OK)


@dataclass
class RunResult:
    run_id: int | None
    exit_code: int              # ExitCode: OK, RUN_ERRORS (file/communication errors) or LOCKED (SYSTEM: see lanes)
    message: str                # one-line summary (one line per lane when the run went over several)
    locked_by: str | None = None
    counts: dict[str, int] = field(default_factory=dict)   # engine.run.context.Counts as a dict
    lane: str = DEFAULT_LANE
    lanes: list[RunResult] = field(default_factory=list)   # a run over several lanes: each lane's result


class RunSession:
    def __init__(self, cfg: Config, commands: list[str], route_names: Sequence[str],
                 progress: ProgressCallback | None, lane: str = DEFAULT_LANE) -> None:
        self.cfg = cfg
        self.commands = commands
        self.route_names = list(route_names)
        self.lane = lane
        try:
            log = component_logger("engine", cfg)
        except OSError as exc:
            raise ConfigError(f"{cfg.directories.logging}: cannot write the engine log: {exc.strerror or exc}") \
                from None
        self.ctx = RunContext(cfg, log, progress, lane)
        self.deliverer = Deliverer(self.ctx)
        self.log = log

    # ------------------------------------------------------------------ the session
    def execute(self) -> RunResult:
        t0 = time.monotonic()
        got = acquire(self.cfg, self.log, on_overtime=self.overtime_alert, lane=self.lane)
        if got.lock is None:
            return self._locked(got.holder)
        ctx = self.ctx
        ctx.lock = got.lock
        status, message = RunStatus.FAILED, "run failed"
        try:
            self._start(got)
            recover(ctx, self.deliverer, got.crashed)
            commands = Commands(ctx, self.deliverer, self.route_names)
            for command in self.commands:
                ctx.check_lock()
                commands.by_name(command)()
            if "cleanup" not in self.commands and commands.claim_daily_cleanup():
                self.log.info("daily cleanup (first run of the day)")
                commands.cleanup()
            status = RunStatus.ERRORS if ctx.counts.file_errors or ctx.counts.comm_errors else RunStatus.OK
            message = self.summary(time.monotonic() - t0)
        except LockLost:
            status = RunStatus.ERRORS
            message = f"run {ctx.run_id}: stopped, the engine lock was taken over by another run"
            self.log.error(message)
        except SQLAlchemyError as exc:
            raise database_error(self.cfg.database_url, exc) from None
        except BaseException as exc:
            message = (f"run {ctx.run_id}: interrupted ({type(exc).__name__}); files left half-way are finished "
                       f"by the next run")
            self.log.error(message, exc_info=not isinstance(exc, INTERRUPTIONS))
            raise
        finally:
            code = self._finish(status, message)
        self.log.info(message)
        if status == RunStatus.ERRORS:
            self.maybe_report(message)
        return RunResult(ctx.run_id, code, message, counts=ctx.counts.as_dict(), lane=self.lane)

    def _locked(self, holder: Holder | None) -> RunResult:
        if holder is None:
            raise DatabaseError(f"database {mask_url(self.cfg.database_url)}: the engine lock could not be taken")
        msg = f"engine is locked by a running engine run: {holder.describe()}"
        if self.lane != DEFAULT_LANE:
            msg = f"lane {self.lane}: {msg}"
        over = overtime_minutes(holder, self.cfg)
        if over is not None:
            self.log.warning("%s; it has run %.0f minutes, longer than maxruntime (%d), but it is alive "
                             "(heartbeat %s), so it is not taken over", msg, holder.age() / 60,
                             self.cfg.settings.maxruntime, iso_utc(holder.heartbeat))
        else:
            self.log.info(msg)
        return RunResult(None, ExitCode.LOCKED, msg, locked_by=holder.describe(), lane=self.lane)

    def _start(self, got: Acquired) -> None:
        ctx, lock = self.ctx, got.lock
        assert lock is not None
        ctx.run_id = ctx.tracker.start_run(self.commands, self.route_names, hostname(), os.getpid(), lock.started,
                                           self.lane)
        lock.set_run(ctx.run_id)
        lock.start_heartbeat()
        if got.crashed is not None:
            self.log.warning("engine lock of %s (run %s) is stale: that run crashed; taking over",
                             got.crashed.describe(), got.crashed.run_id)
        self.log.info("run %d started: %s%s%s", ctx.run_id, " ".join(f"--{c}" for c in self.commands),
                      (" routes " + ", ".join(self.route_names)) if self.route_names else "",
                      f" (lane {self.lane})" if self.lane != DEFAULT_LANE else "")
        if not self.cfg.routes:
            routes_toml = self.cfg.configdir / "routes.toml"
            self.log.warning("no routes in %s (%s): this run only does what needs no route", routes_toml,
                             "the file is empty" if routes_toml.exists() else "the file does not exist")
        for name in self.route_names:
            if not self.cfg.routes[name].active:
                self.log.warning("route %s is not active (active = false in routes.toml): skipped", name)

    def _finish(self, status: RunStatus, message: str) -> ExitCode:
        """Close channels, record the end of the run, release the lock; the exit code."""
        ctx = self.ctx
        ctx.channels.close()
        ctx.tracker.close()
        code = ExitCode.OK if status == RunStatus.OK else ExitCode.RUN_ERRORS
        if ctx.run_id:
            try:
                ctx.tracker.finish_run(ctx.run_id, status, code if status != RunStatus.FAILED else ExitCode.SYSTEM,
                                       message, ctx.counts.as_dict())
            except SQLAlchemyError as exc:
                self.log.error("could not record the end of run %s: %s", ctx.run_id, one_line(exc))
        assert ctx.lock is not None
        ctx.lock.release()                  # deletes the lock row only while it is still ours
        return code

    # ------------------------------------------------------------------ words
    def summary(self, seconds: float) -> str:
        c = self.ctx.counts
        parts = [f"{c.received} received", f"{c.processed} processed", f"{c.sent} sent"]
        for n, label in ((c.rereceived, "rereceived"), (c.resent, "resent"), (c.retried, "retried"),
                         (c.recovered, "recovered"), (c.cleaned, "cleaned up"),
                         (c.removed_late, "already received (only removed at the source)")):
            if n:
                parts.append(f"{n} {label}")
        parts += [f"{c.file_errors} file error(s)", f"{c.comm_errors} communication error(s)"]
        return f"run {self.ctx.run_id}: " + ", ".join(parts) + f" in {seconds:.1f} s"

    def overtime_alert(self, minutes: float) -> None:
        msg = (f"engine run {self.ctx.run_id} has been running for {minutes:.0f} minutes, longer than maxruntime "
               f"({self.cfg.settings.maxruntime}); it is alive and keeps the lock")
        self.log.warning(msg)
        send_report(self.cfg, f"run {self.ctx.run_id} exceeds maxruntime",
                    msg + f"\nhost {hostname()} pid {os.getpid()}\n")

    def maybe_report(self, message: str) -> None:
        """Mail the run's errors to the managers when bots.ini asks for it (:func:`report_wanted`)."""
        ctx = self.ctx
        fe, ce = ctx.counts.file_errors, ctx.counts.comm_errors
        if not report_wanted(self.cfg.settings, fe, ce):
            return
        subject = f"run {ctx.run_id} had errors: {fe} file error(s), {ce} communication error(s)"
        lines = [message, "", "Errors:"]
        for e in ctx.errors:
            lines.append(f"  [{e.kind}] route {e.route}, file {e.file}: {e.reason}")
        if fe + ce > len(ctx.errors):
            lines.append(f"  ... and {fe + ce - len(ctx.errors)} more (see botssys/logging/engine.log and "
                         f"'botsq files list --status error')")
        lines += ["", f"Commands: {', '.join(self.commands)}; routes: {', '.join(self.route_names) or '(default run)'}",
                  f"Host {hostname()}, config {self.cfg.configdir}"]
        send_report(self.cfg, subject, "\n".join(lines) + "\n")


def run_engine(cfg: Config, commands: Sequence[str] = ("new",), routes: Sequence[str] = (), *,
               lane: str | None = None, progress: ProgressCallback | None = None) -> RunResult:
    """One engine run. Raises ConfigError / UsageError / DatabaseError (exit 1); never for file or
    communication errors (exit 2); a live run holding the lock gives exit 3.

    ``lane``: a run in that lane, under its lock (named routes must be in it; no routes: the lane's
    default run). None: the job split by lane (:func:`~engine.run.selection.lane_plan`) and run lane
    after lane, each under its own lock - one run for a config without lanes. Over several lanes a
    lane's system error does not stop the others: it becomes that lane's result (exit 1, its one
    line), and the whole ends with the most serious exit code (:data:`SEVERITY`)."""
    cmds = normalise_commands(commands)
    check_filename_templates(cfg)
    if lane is not None:
        select_routes(cfg, cmds, routes, lane)    # unknown route, or one of another lane: UsageError first
        return RunSession(cfg, cmds, routes, progress, lane).execute()
    plan = lane_plan(cfg, cmds, routes)           # unknown route names: UsageError before anything happens
    if len(plan) == 1:
        part = plan[0]
        return RunSession(cfg, list(part.commands), part.routes, progress, part.lane).execute()
    return _run_lanes(cfg, plan, progress)


def _run_lanes(cfg: Config, plan: list[LanePart], progress: ProgressCallback | None) -> RunResult:
    results: list[RunResult] = []
    for part in plan:
        try:
            res = RunSession(cfg, list(part.commands), part.routes, progress, part.lane).execute()
        except (ConfigError, UsageError, DatabaseError) as exc:
            res = RunResult(None, ExitCode.SYSTEM, one_line(exc), lane=part.lane)
        prefix = f"lane {part.lane}: "
        if not res.message.startswith(prefix):
            res.message = prefix + res.message
        results.append(res)
    worst = min(results, key=lambda r: SEVERITY.index(ExitCode(r.exit_code)))
    counts: dict[str, int] = {}
    for res in results:
        for key, n in res.counts.items():
            counts[key] = counts.get(key, 0) + n
    return RunResult(worst.run_id, worst.exit_code, "\n".join(r.message for r in results), locked_by=worst.locked_by,
                     counts=counts, lane=worst.lane, lanes=results)
