"""Child-process supervision shared by ``botsq demo`` and ``botsq stack``.

A :class:`Supervisor` starts commands as children, copies their output line by line with a
coloured ``name |`` prefix (or into a log file), and stops them all cleanly: SIGTERM to each
(Celery's warm shutdown lets a running engine job finish), then SIGKILL to what is still there
after the grace period. Ctrl-C (SIGINT) and SIGTERM to the parent both lead to that stop;
a second Ctrl-C while stopping kills at once.

Children run in their own session, so a Ctrl-C on the terminal reaches only the parent, which
stops them in order; on Linux each child is also told to get SIGTERM if the parent dies.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from engine.log import redact

_COLOURS = ("\033[36m", "\033[33m", "\033[35m", "\033[32m", "\033[34m", "\033[91m")
_RESET = "\033[0m"


class Stopped(Exception):
    """SIGTERM reached the parent (Ctrl-C raises KeyboardInterrupt)."""


def use_colour(stream: IO[str]) -> bool:
    """ANSI colours on a terminal unless NO_COLOR is set; FORCE_COLOR forces them."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    return bool(getattr(stream, "isatty", lambda: False)())


def venv_command(name: str) -> str:
    """A console script installed beside the running Python (bots-engine, botsq ...)."""
    p = Path(sys.executable).parent / name
    return str(p) if p.exists() else name


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    colour: str
    reader: threading.Thread | None = None
    lines: list[str] = field(default_factory=list)   # its last lines, for a failure message

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None


class Supervisor:
    """Start children, prefix their output, stop them all.

    ``out`` receives the prefixed lines (default stdout); with ``log_dir`` each child's output
    goes to ``<log_dir>/<name>.out`` instead and nothing is printed (``botsq demo`` does this).
    """

    KEEP_LINES = 40

    def __init__(self, out: IO[str] | None = None, colour: bool | None = None,
                 log_dir: Path | None = None, width: int = 7, label: str = "botsq") -> None:
        self.out = out or sys.stdout
        self.label = label
        self.colour = use_colour(self.out) if colour is None else colour
        self.log_dir = log_dir
        self.width = width
        self.children: list[Child] = []
        self._write_lock = threading.Lock()

    # ------------------------------------------------------------------ start

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None,
              cwd: Path | str | None = None) -> Child:
        full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        if self.colour:
            full_env.setdefault("FORCE_COLOR", "1")
        self.width = max(self.width, len(name))
        logfile = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            logfile = open(self.log_dir / f"{name}.out", "ab")  # noqa: SIM115 - closed by the reader
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env,
            cwd=cwd, start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        child = Child(name, proc, _COLOURS[len(self.children) % len(_COLOURS)])
        self.children.append(child)        # before anything a Ctrl-C could interrupt: stop() sees it
        child.reader = threading.Thread(target=self._pump, args=(child, logfile), daemon=True,
                                        name=f"pump-{name}")
        child.reader.start()
        return child

    def _prefix(self, child: Child) -> str:
        label = f"{child.name:<{self.width}} |"
        return f"{child.colour}{label}{_RESET} " if self.colour else f"{label} "

    def _pump(self, child: Child, logfile: IO[bytes] | None) -> None:
        assert child.proc.stdout is not None
        try:
            for raw in iter(child.proc.stdout.readline, b""):
                line = redact(raw.decode("utf-8", "replace").rstrip("\r\n"))
                child.lines.append(line)
                del child.lines[:-self.KEEP_LINES]
                if logfile is not None:
                    logfile.write((line + "\n").encode("utf-8"))
                    logfile.flush()
                else:
                    self.say(line, child)
        finally:
            child.proc.stdout.close()
            if logfile is not None:
                logfile.close()

    def say(self, line: str, child: Child | None = None) -> None:
        """Write one line, prefixed with the child's label (or the supervisor's own)."""
        if child is None and self.log_dir is not None:
            prefix = f"{self.label}: "                   # no child output on the console to align with
        elif child is None:
            label = f"{self.label:<{self.width}} |"
            prefix = f"\033[1m{label}{_RESET} " if self.colour else f"{label} "
        else:
            prefix = self._prefix(child)
        with self._write_lock:
            try:
                self.out.write(prefix + line + "\n")
                self.out.flush()
            except (ValueError, OSError):
                pass

    # ------------------------------------------------------------------ watch

    def exited(self) -> list[Child]:
        return [c for c in self.children if not c.alive()]

    def wait(self, until: Callable[[], bool] | None = None, timeout: float | None = None,
             poll: float = 0.2) -> Child | None:
        """Block until a child exits (returned), ``until()`` is true or the timeout passes (None)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            gone = self.exited()
            if gone:
                return gone[0]
            if until is not None and until():
                return None
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(poll)

    # ------------------------------------------------------------------ stop

    def stop(self, grace: float = 30.0, announce: bool = True) -> None:
        """SIGTERM every live child (last started first), wait up to ``grace`` s, then SIGKILL.

        A Ctrl-C (or SIGTERM) during the wait kills the remaining children at once and is raised
        again once they are gone, so the caller ends as interrupted (exit 130), not as finished.
        """
        live = [c for c in reversed(self.children) if c.alive()]
        interrupted: BaseException | None = None
        try:              # from the announcement on: a Ctrl-C right after it must still end the children
            if announce and live:
                self.say(f"stopping {', '.join(c.name for c in live)}")
            for c in live:
                self._signal(c, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while any(c.alive() for c in live) and time.monotonic() < deadline:
                time.sleep(0.1)
        except (KeyboardInterrupt, Stopped) as exc:
            interrupted = exc
        for c in live:
            if c.alive():
                why = "interrupted while stopping" if interrupted is not None else f"did not stop within {grace:.0f}s"
                self.say(f"{c.name} {why}: killed")
                self._signal(c, signal.SIGKILL)
        for c in self.children:
            try:
                c.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL'd children exit
                pass
            if c.reader is not None and c.reader.ident is not None:   # started (a signal may cut start())
                c.reader.join(timeout=5)
        if interrupted is not None:
            raise interrupted

    @staticmethod
    def _signal(child: Child, sig: int) -> None:
        """Signal the child's whole process group (a worker's pool children too on SIGKILL)."""
        try:
            if sig == signal.SIGKILL:
                os.killpg(child.pid, sig)
            else:
                child.proc.send_signal(sig)
        except (ProcessLookupError, PermissionError):
            pass

    # ------------------------------------------------------------------ context

    @contextmanager
    def running(self, grace: float = 30.0) -> Iterator["Supervisor"]:
        """Children started inside are stopped on leaving, whatever the reason.

        SIGTERM to the parent raises :class:`Stopped`; Ctrl-C raises KeyboardInterrupt.
        """
        def on_term(signum: int, _frame: object) -> None:
            raise Stopped(signum)

        previous = signal.signal(signal.SIGTERM, on_term) if _main_thread() else None
        try:
            yield self
        finally:
            try:
                self.stop(grace)
            finally:
                if previous is not None:
                    signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
