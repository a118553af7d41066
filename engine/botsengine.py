"""A run of a Bots installation's own engine (``[engine] kind = bots``): the one place of how botsq
starts Bots' ``bots-engine`` as a child, watches it and reads what it said.

``run_bots_engine(cfg, commands, routes, log=..., label=...) -> BotsResult``, for a queued job
(:mod:`tasks.executors`) and for ``bots-engine -c DIR`` alike:

1. the Bots engine must be startable (:func:`engine.config.engine.engine_problem`; ConfigError);
2. botsq's engine lock of lane ``default`` is taken (a live holder: exit 3, nothing started) and
   kept fresh by its heartbeat while the child runs, however long; past maxruntime an alert is
   logged and mailed; the run is recorded (kind ``bots``, the command line);
3. the child is ``command``, the run options (``--new`` ...), ``-c<Bots' config dir>`` and the
   routes, started in its own process group and tied to this process by
   :func:`engine.child.start_tied`; its output (stdout and stderr, bytes decoded with
   ``errors="replace"``, secrets redacted) goes line by line to ``log`` prefixed with ``label``;
4. ``[jobqueue] hardtimelimit`` ends it: SIGTERM to its group, SIGKILL after ``[engine] grace``;
5. the end is recorded: status, the child's exit code or the signal that ended it, its last lines
   and the counts of Bots' summary ("N files received/processed in run." ...).

The lock and the run record are plain SQL (:mod:`engine.dbapi`): ``bots-engine`` started only to
run Bots' engine never imports SQLAlchemy (its import alone took ~0.3 s here, more than a Bots
stand-in's whole run).

How the child's end maps to botsq's (``BotsResult.exit_code``, Bots' own exit codes):

=========================================  ===========  ===================
child                                      run status   exit code
=========================================  ===========  ===================
exit 0                                     ok           0
exit 2 (errors in the run)                 errors       2
exit 3 (Bots locked: port or mutex)        locked       3 (the job waits)
exit 0 after 'There is no (active) route'  failed       1
exit 1, or any other code                  failed       1
ended by a signal (hard limit, kill)       killed       1
=========================================  ===========  ===================

Bots prints its log to the console only with ``log_console`` (Bots' bots.ini); without it botsq
sees no summary and no unknown-route line, only the exit code.
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from logging import Logger
from typing import IO

from engine import dbapi
from engine.child import start_tied, stop_group
from engine.config import Config
from engine.config.engine import EngineKind, bots_console_problem, engine_problem
from engine.config.lanes import DEFAULT_LANE
from engine.errors import ConfigError, DatabaseError, ExitCode, one_line
from engine.lease import Holder, hostname
from engine.lock import EngineLockHandle, acquire
from engine.log import mask_url, redact
from engine.report import send_report
from engine.run.selection import normalise_commands
from engine.states import RunStatus, utcnow

TAIL_LINES = 40                 # the child's last lines kept in the run record
MAX_LINE = 2000                 # characters of one output line kept (a binary blob is not a line)

# Bots' summary lines (engine.py / automaticmaintenance.py, Bots 3.x and 4): "    3 files received/processed in run."
SUMMARY_LINES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (key, re.compile(rf"\b(\d+) {text}")) for key, text in (
        ("received", r"files received/processed in run"),
        ("processed", r"files without errors"),
        ("file_errors", r"files with errors"),
        ("stuck", r"files got stuck"),
        ("system_errors", r"system errors"),
        ("process_errors", r"errors in processes"),
        ("sent", r"files send in run"),
    ))
# Bots 4 logs it CRITICAL, Bots 3 as a warning (lower case "there"); it exits 0 either way
UNKNOWN_ROUTE = re.compile(r'there is no \(active\) route "([^"]*)"', re.IGNORECASE)


@dataclass
class BotsResult:
    """How a Bots engine run ended, in botsq's terms (the shape of :class:`engine.run.RunResult`)."""
    run_id: int | None
    exit_code: int                          # ExitCode: botsq's verdict (see the module's table)
    message: str                            # one line
    status: RunStatus | None = None         # None: nothing was started (botsq's own lock was held)
    child_exit: int | None = None           # the child's exit code; None when a signal ended it
    exit_signal: int | None = None
    command_line: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    locked_by: str | None = None


@dataclass
class OutputReader:
    """The child's output, line by line: to the log, the tail kept, Bots' summary and unknown routes noticed."""
    log: Logger
    label: str
    echo: IO[str] | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    counts: dict[str, int] = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)
    unknown_routes: list[str] = field(default_factory=list)

    def feed(self, raw: bytes) -> None:
        line = redact(raw.decode("utf-8", errors="replace").rstrip("\r\n"))[:MAX_LINE]
        self.tail.append(line)
        self.log.info("%s: %s", self.label, line)
        if self.echo is not None:
            print(line, file=self.echo, flush=True)
        for key, pattern in SUMMARY_LINES:
            m = pattern.search(line)
            if m:
                # one Bots process may print several reports (a crash recovery's, then the run's):
                # the run record counts what the whole process did
                self.counts[key] = self.counts.get(key, 0) + int(m.group(1))
                self.summary.append(line.strip())
                break
        m = UNKNOWN_ROUTE.search(line)
        if m and m.group(1) not in self.unknown_routes:
            self.unknown_routes.append(m.group(1))

    def read_all(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            self.feed(raw)


def bots_argv(cfg: Config, commands: Sequence[str], routes: Sequence[str]) -> list[str]:
    """The child's command line: ``[engine] command``, the run options in Bots' order, ``-c<dir>``
    (``[engine] configdir``, default the job's botsq config dir - so a job's own ``-C`` wins when
    its bots.ini names no other), then the routes. UsageError for an unknown run option."""
    bots_dir = cfg.engine.configdir or cfg.configdir
    return [*cfg.engine.command, *(f"--{c}" for c in normalise_commands(commands)), f"-c{bots_dir}",
            *dict.fromkeys(routes)]


def check_bots_engine(cfg: Config, log: Logger | None = None) -> None:
    """ConfigError (one line naming the key) when ``[engine] kind = bots`` cannot be started; a
    warning to ``log`` when Bots' console lines, which botsq reads, are off
    (:func:`engine.config.engine.bots_console_problem`)."""
    problem = engine_problem(cfg.engine, cfg.configdir)
    if problem:
        raise ConfigError(problem)
    warning = bots_console_problem(cfg.engine, cfg.configdir)
    if warning and log is not None:
        log.warning("%s", warning)


class BotsEngineRun:
    """One run of the Bots engine; see the module's docstring."""

    def __init__(self, cfg: Config, commands: Sequence[str], routes: Sequence[str], log: Logger,
                 label: str, echo: IO[str] | None, locked_run: int | None = None, tries: int = 1) -> None:
        self.cfg, self.log = cfg, log
        self.locked_run, self.tries = locked_run, tries
        self.routes = list(dict.fromkeys(routes))
        self.commands = normalise_commands(commands)
        self.argv = bots_argv(cfg, self.commands, self.routes)
        self.command_line = shlex.join(self.argv)
        self.reader = OutputReader(log, label, echo)
        self.label = label
        self.run_id: int | None = None

    # ------------------------------------------------------------------ the run
    def execute(self) -> BotsResult:
        check_bots_engine(self.cfg)
        got = acquire(self.cfg, self.log, on_overtime=self.overtime_alert, lane=DEFAULT_LANE)
        if got.lock is None:
            return self._locked(got.holder)
        lock = got.lock
        try:
            self.run_id = self._record_start(lock)
            lock.start_heartbeat()
            if got.crashed is not None:
                self.log.warning("%s: botsq's engine lock of %s (run %s) was stale; taking over", self.label,
                                 got.crashed.describe(), got.crashed.run_id)
                self._record_crashed(got.crashed)
            result = self._run_child()
        finally:
            lock.release()
        return result

    def _run_child(self) -> BotsResult:
        self.log.info("%s: run %s starts %s (in %s)", self.label, self.run_id, self.command_line, self.cfg.envdir)
        try:
            proc = start_tied(self.argv, cwd=self.cfg.envdir, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            msg = f"cannot start the Bots engine {self.argv[0]}: {exc.strerror or exc}"
            return self._finish(RunStatus.FAILED, ExitCode.SYSTEM, msg, None, None)
        assert proc.stdout is not None
        reader = threading.Thread(target=self.reader.read_all, args=(proc.stdout,), daemon=True,
                                  name="botsq-bots-output")
        reader.start()
        limit_hit = False
        try:
            limit_hit = self._wait(proc)
        except BaseException as exc:        # Ctrl-C or SIGTERM of bots-engine: the child goes with it
            stop_group(proc, self.cfg.engine.grace)
            reader.join(timeout=5)
            self._finish(RunStatus.KILLED, ExitCode.SYSTEM, f"interrupted ({type(exc).__name__}); the Bots engine "
                         f"was stopped", None, -proc.returncode if (proc.returncode or 0) < 0 else None)
            raise
        reader.join(timeout=5)      # a grandchild may hold the pipe open: the child's end is what counts
        proc.stdout.close()
        return self._judge(proc.returncode, limit_hit)

    def _wait(self, proc: subprocess.Popen[bytes]) -> bool:
        """Wait for the child; True when the hard time limit ended it."""
        hard = self.cfg.jobqueue.hardtimelimit * 60
        if hard <= 0:
            proc.wait()
            return False
        try:
            proc.wait(timeout=hard)
            return False
        except subprocess.TimeoutExpired:
            pass
        self.log.error("%s: run %s reached the hard time limit ([jobqueue] hardtimelimit = %g minutes): "
                       "SIGTERM, SIGKILL after %g s", self.label, self.run_id, self.cfg.jobqueue.hardtimelimit,
                       self.cfg.engine.grace)
        stop_group(proc, self.cfg.engine.grace)
        return True

    def _judge(self, code: int, limit_hit: bool) -> BotsResult:
        r = self.reader
        if code < 0:
            sig = -code
            name = _signal_name(sig)
            why = (f"ended by the hard time limit ({self.cfg.jobqueue.hardtimelimit:g} minutes), {name}"
                   if limit_hit else f"killed by signal {name}")
            return self._finish(RunStatus.KILLED, ExitCode.SYSTEM, f"the Bots engine was {why}", None, sig)
        if code == 0 and r.unknown_routes:
            names = ", ".join(r.unknown_routes)
            return self._finish(RunStatus.FAILED, ExitCode.SYSTEM,
                                f"Bots has no (active) route {names}: nothing ran for it (Bots exit 0)", code, None)
        waited = f" (try {self.tries}: Bots was locked before)" if self.tries > 1 else ""
        if code == ExitCode.OK:
            return self._finish(RunStatus.OK, ExitCode.OK, "ok" + waited, code, None)
        if code == ExitCode.RUN_ERRORS:
            return self._finish(RunStatus.ERRORS, ExitCode.RUN_ERRORS, "ran, with errors (Bots exit 2)" + waited,
                                code, None)
        if code == ExitCode.LOCKED:
            tries = f" (try {self.tries})" if self.tries > 1 else ""
            return self._finish(RunStatus.LOCKED, ExitCode.LOCKED, "Bots is locked (exit 3: another Bots engine "
                                f"runs, or Bots is recovering); nothing ran{tries}", code, None)
        last = next((line for line in reversed(r.tail) if line.strip()), "")
        detail = f": {last.strip()}" if last else ""
        return self._finish(RunStatus.FAILED, ExitCode.SYSTEM, f"failed (Bots exit {code}){detail}", code, None)

    # ------------------------------------------------------------------ records
    def _record_start(self, lock: EngineLockHandle) -> int:
        """Insert the run's record (every column the ORM's defaults would fill: the row reads the
        same through engine.models.Run) and name it in the lock; its id. DatabaseError."""
        row = {"kind": str(EngineKind.BOTS), "commands": ",".join(self.commands), "routes": ",".join(self.routes),
               "lane": DEFAULT_LANE, "host": hostname(), "pid": os.getpid(), "started": lock.started,
               "status": str(RunStatus.RUNNING), "command_line": redact(self.command_line), "received": 0,
               "processed": 0, "sent": 0, "file_errors": 0, "comm_errors": 0, "message": "", "summary": "",
               "output": ""}
        def insert(tx: dbapi.Transaction) -> int:
            run_id = None
            if self.locked_run is not None:     # a job trying again after Bots was locked: the same record
                reused = tx.execute(f"UPDATE runs SET {', '.join(f'{k} = :{k}' for k in row)}, ended = NULL, "
                                    f"returncode = NULL, exit_signal = NULL WHERE id = :id AND status = :locked",
                                    {**row, "id": self.locked_run, "locked": str(RunStatus.LOCKED)}).rowcount
                run_id = self.locked_run if reused == 1 else None
            if run_id is None:
                run_id = int(tx.execute(f"INSERT INTO runs ({', '.join(row)}) VALUES ({dbapi.placeholders(row)}) "
                                        f"RETURNING id", row).rows[0][0])
            lock.lease.set_run(run_id, tx)
            return run_id
        return dbapi.transact(self.cfg.database_url, insert)

    def _record_crashed(self, dead: Holder) -> None:
        """The run of a dead lock holder (its process killed, its host gone silent) never recorded
        its end: it is recorded ``crashed`` by this run, which took the lock over (as the built-in
        engine's recovery does). Bots' own crash recovery does the files (its next run)."""
        if dead.run_id is None:
            return
        message = (f"run {dead.run_id}: crashed - its process ({dead.describe()}) ended without recording an end; "
                   f"the engine lock was taken over by run {self.run_id}")
        try:
            n = dbapi.transact(self.cfg.database_url, lambda tx: tx.execute(
                "UPDATE runs SET status = :crashed, ended = :now, message = :message "
                "WHERE id = :id AND status = :running",
                {"crashed": str(RunStatus.CRASHED), "now": utcnow(), "message": message, "id": dead.run_id,
                 "running": str(RunStatus.RUNNING)})).rowcount
        except DatabaseError as exc:
            self.log.error("%s: could not record run %s as crashed: %s", self.label, dead.run_id, one_line(exc))
            return
        if n:
            self.log.warning("%s: %s", self.label, message)

    def _finish(self, status: RunStatus, code: int, what: str, child_exit: int | None,
                sig: int | None) -> BotsResult:
        r = self.reader
        message = f"run {self.run_id} (Bots engine): {what}"
        if r.summary:
            message += " - " + " ".join(r.summary)
        counts = dict(r.counts)
        values = {"ended": utcnow(), "status": str(status), "returncode": child_exit, "exit_signal": sig,
                  "message": message, "summary": " ".join(r.summary), "output": "\n".join(r.tail),
                  **{k: counts.get(k, 0) for k in ("received", "processed", "sent", "file_errors")}}
        try:
            dbapi.transact(self.cfg.database_url, lambda tx: tx.execute(
                f"UPDATE runs SET {', '.join(f'{k} = :{k}' for k in values)} WHERE id = :id",
                {**values, "id": self.run_id}))
        except DatabaseError as exc:
            self.log.error("%s: could not record the end of run %s: %s", self.label, self.run_id, one_line(exc))
        level = self.log.info if code in (ExitCode.OK, ExitCode.LOCKED) else self.log.warning
        level("%s: %s", self.label, message)
        if code == ExitCode.SYSTEM:
            send_report(self.cfg, f"Bots engine run {self.run_id} failed",
                        f"{message}\n\ncommand: {self.command_line}\nhost {hostname()}\n\nlast lines:\n"
                        + "\n".join(r.tail) + "\n", self.log)
        return BotsResult(self.run_id, code, message, status, child_exit, sig, self.command_line, counts)

    def _locked(self, holder: Holder | None) -> BotsResult:
        if holder is None:
            raise DatabaseError(f"database {mask_url(self.cfg.database_url)}: the engine lock could not be taken")
        msg = f"engine is locked by a running engine run: {holder.describe()}"
        self.log.info("%s: %s", self.label, msg)
        return BotsResult(None, ExitCode.LOCKED, msg, locked_by=holder.describe(), command_line=self.command_line)

    def overtime_alert(self, minutes: float) -> None:
        hard = self.cfg.jobqueue.hardtimelimit
        limit = f"[jobqueue] hardtimelimit = {hard:g} minutes" if hard else "none set"
        msg = (f"{self.label}: Bots engine run {self.run_id} has been running for {minutes:.0f} minutes, longer "
               f"than maxruntime ({self.cfg.settings.maxruntime}); botsq keeps its lock (hard time limit: {limit})")
        self.log.warning(msg)
        send_report(self.cfg, f"Bots engine run {self.run_id} exceeds maxruntime",
                    msg + f"\ncommand: {self.command_line}\nhost {hostname()} pid {os.getpid()}\n", self.log)


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"{sig}"


def run_bots_engine(cfg: Config, commands: Sequence[str] = ("new",), routes: Sequence[str] = (), *,
                    log: Logger, label: str = "bots-engine", echo: IO[str] | None = None,
                    locked_run: int | None = None, tries: int = 1) -> BotsResult:
    """One run of the Bots engine of ``cfg`` (``[engine] kind = bots``) under botsq's engine lock.

    ``log`` gets the child's lines prefixed with ``label`` (a job: ``job <id> | bots-engine``);
    ``echo``: a stream the lines are also printed to (``bots-engine`` run by hand). Raises ConfigError
    (the engine cannot be started), UsageError (an unknown run option) or DatabaseError; the child's
    outcome is the result (see the module's table), never an exception.

    ``locked_run``, ``tries``: a job trying again after Bots was locked (exit 3) - the record of
    that ``locked`` run is used again (one record per wait, its message counting the tries)."""
    return BotsEngineRun(cfg, commands, routes, log, label, echo, locked_run, tries).execute()


def bots_port_held(port: int | None) -> bool:
    """Is a Bots engine running on this host: is Bots' port bound on 127.0.0.1? Bots' own test
    (bots/botslib.py ``check_if_other_engine_is_running`` binds it for the whole run); the probe
    binds it for a moment. False when the port is unknown."""
    if port is None:
        return False
    import socket
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.bind(("127.0.0.1", port))
    except OSError:
        return True
    finally:
        probe.close()
    return False


LOCKED_WAIT_LONGEST = 60.0      # seconds: the longest wait between two tries of a job that finds Bots locked


def locked_wait_seconds(attempt: int, first: float = 1.0, longest: float = LOCKED_WAIT_LONGEST) -> float:
    """Seconds to wait before the ``attempt``-th try (1-based) of a job that found Bots locked:
    ``first`` doubling up to ``longest`` - a manual Bots run is seldom long, a recovering one may be."""
    return min(longest, first * (2 ** max(0, attempt - 1)))


__all__ = ["run_bots_engine", "BotsResult", "bots_argv", "check_bots_engine", "locked_wait_seconds", "bots_port_held",
           "LOCKED_WAIT_LONGEST", "TAIL_LINES",
           "SUMMARY_LINES", "UNKNOWN_ROUTE"]
