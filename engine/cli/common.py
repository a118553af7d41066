"""Shared command-line behaviour: bad input gives one clear line and the right exit code; a
command whose output reader went away (``botsq files list | head``) stops quietly."""
from __future__ import annotations

import argparse
import os
import select
import signal
import sys
from collections.abc import Callable

from engine.errors import ConfigError, DatabaseError, ExitCode, UsageError
from engine.log import redact


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but bad arguments are a UsageError: one line and exit 1 (argparse's own 2
    would read as "ran, with errors" in Bots' exit codes)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def stdout_reader_gone() -> bool:
    """Is stdout a pipe (or socket) whose reading end is closed? (poll shows POLLERR on such a
    write end.) Tells that reader's going away apart from a BrokenPipeError of a socket - a broker
    or SMTP connection - which is an error to report, not a reason to stop quietly."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & select.POLLERR for _fd, ev in poller.poll(0))
    except (AttributeError, OSError, ValueError):       # no stdout, or not a file descriptor
        return False


def end_as_sigpipe() -> None:
    """End the process the way the platform ends a writer whose reader went away: killed by
    SIGPIPE (a shell shows exit 141, ``ExitCode.READER_GONE``), with no traceback and no
    "Exception ignored" line from flushing stdout at exit. Python ignores SIGPIPE (and raises
    BrokenPipeError instead), so the default action is put back first."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # nothing more to flush there
    except (AttributeError, OSError, ValueError):
        pass
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)
    sys.exit(ExitCode.READER_GONE)          # not reached where SIGPIPE ends a process


def run_cli(prog: str, main: Callable[[], int]) -> None:
    """Run ``main`` and exit with its code; known errors become one line on stderr and exit 1;
    when stdout's reader went away, the command stops quietly (:func:`end_as_sigpipe`). Every
    console script of botsq (``bots-engine``, ``bots-job2queue``, ``bots-jobqueueserver``,
    ``bots-dirmonitor``, ``botsq ...``) runs through here."""
    try:
        code = main()
        sys.stdout.flush()          # a reader gone shows here, not in Python's flush at exit
    except BrokenPipeError:
        if not stdout_reader_gone():
            raise
        end_as_sigpipe()
        return
    except (ConfigError, DatabaseError, UsageError) as exc:
        print(f"{prog}: error: {redact(str(exc))}", file=sys.stderr)
        code = ExitCode.SYSTEM
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        code = ExitCode.INTERRUPTED
    sys.exit(code)
