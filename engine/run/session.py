"""One engine run, start to end: the session.

1. take the engine lock (a live holder: exit 3, nothing done);
2. record the run, start the lock's heartbeat;
3. recover what earlier runs left half-way (:mod:`engine.run.recovery`);
4. do the commands in Bots' order (:mod:`engine.run.commands`), then the daily cleanup;
5. record the end (status, counts, message), release the lock, mail a report when asked to.

``run_engine`` raises ConfigError / UsageError / DatabaseError for system errors (exit 1)
and never raises for file or communication errors (exit 2).
"""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy.exc import SQLAlchemyError

from engine.config import Config, Settings
from engine.errors import ConfigError, DatabaseError, ExitCode, database_error, one_line
from engine.lease import Holder, hostname
from engine.lock import Acquired, acquire, overtime_minutes
from engine.log import component_logger, mask_url
from engine.models import RunStatus, iso_utc
from engine.report import send_report
from engine.run.commands import Commands
from engine.run.context import LockLost, ProgressCallback, RunContext
from engine.run.deliver import Deliverer, check_filename_templates
from engine.run.recovery import recover
from engine.run.selection import normalise_commands, select_routes


@dataclass
class RunResult:
    run_id: int | None
    exit_code: int              # ExitCode: OK, RUN_ERRORS (file/communication errors) or LOCKED
    message: str                # one-line summary
    locked_by: str | None = None
    counts: dict[str, int] = field(default_factory=dict)   # engine.run.context.Counts as a dict


def report_wanted(settings: Settings, file_errors: int, comm_errors: int) -> bool:
    """Bots' report rule: ``sendreportiferror`` mails on any error, ``sendreportifprocesserror``
    also when the errors are only communication errors."""
    return bool((settings.sendreportiferror and (file_errors or comm_errors))
                or (settings.sendreportifprocesserror and comm_errors))


class RunSession:
    def __init__(self, cfg: Config, commands: list[str], route_names: Sequence[str],
                 progress: ProgressCallback | None) -> None:
        self.cfg = cfg
        self.commands = commands
        self.route_names = list(route_names)
        try:
            log = component_logger("engine", cfg)
        except OSError as exc:
            raise ConfigError(f"{cfg.directories.logging}: cannot write the engine log: {exc.strerror or exc}") \
                from None
        self.ctx = RunContext(cfg, log, progress)
        self.deliverer = Deliverer(self.ctx)
        self.log = log

    # ------------------------------------------------------------------ the session
    def execute(self) -> RunResult:
        t0 = time.monotonic()
        got = acquire(self.cfg, self.log, on_overtime=self.overtime_alert)
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
            if "cleanup" not in self.commands and commands.cleanup_due():
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
            self.log.error(message, exc_info=not isinstance(exc, (KeyboardInterrupt, SystemExit)))
            raise
        finally:
            code = self._finish(status, message)
        self.log.info(message)
        if status == RunStatus.ERRORS:
            self.maybe_report(message)
        return RunResult(ctx.run_id, code, message, counts=ctx.counts.as_dict())

    def _locked(self, holder: Holder | None) -> RunResult:
        if holder is None:
            raise DatabaseError(f"database {mask_url(self.cfg.database_url)}: the engine lock could not be taken")
        msg = f"engine is locked by a running engine run: {holder.describe()}"
        over = overtime_minutes(holder, self.cfg)
        if over is not None:
            self.log.warning("%s; it has run %.0f minutes, longer than maxruntime (%d), but it is alive "
                             "(heartbeat %s), so it is not taken over", msg, holder.age() / 60,
                             self.cfg.settings.maxruntime, iso_utc(holder.heartbeat))
        else:
            self.log.info(msg)
        return RunResult(None, ExitCode.LOCKED, msg, locked_by=holder.describe())

    def _start(self, got: Acquired) -> None:
        ctx, lock = self.ctx, got.lock
        assert lock is not None
        ctx.run_id = ctx.tracker.start_run(self.commands, self.route_names, hostname(), os.getpid(), lock.started)
        lock.set_run(ctx.run_id)
        lock.start_heartbeat()
        if got.crashed is not None:
            self.log.warning("engine lock of %s (run %s) is stale: that run crashed; taking over",
                             got.crashed.describe(), got.crashed.run_id)
        self.log.info("run %d started: %s%s", ctx.run_id, " ".join(f"--{c}" for c in self.commands),
                      (" routes " + ", ".join(self.route_names)) if self.route_names else "")
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
               progress: ProgressCallback | None = None) -> RunResult:
    """One engine run. Raises ConfigError / UsageError / DatabaseError (exit 1); never for file or
    communication errors (exit 2); a live run holding the lock gives exit 3."""
    cmds = normalise_commands(commands)
    select_routes(cfg, cmds, routes)          # unknown route names: UsageError before anything happens
    check_filename_templates(cfg)
    return RunSession(cfg, cmds, routes, progress).execute()
