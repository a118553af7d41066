"""Child processes botsq starts (a Bots engine, a ``[jobqueue.commands]`` command): the one place
of how they are tied to the process that started them.

* :func:`parent_death_signal` - the child gets SIGTERM when the process (thread) that started it
  dies, so a job whose worker was killed never runs on beside its own rerun, holding Bots' lock;
* :func:`stop_group` - SIGTERM to the child's process group, SIGKILL after a grace: how a child
  is ended (hard time limit, Ctrl-C of ``bots-engine``).
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from collections.abc import Callable
from typing import Any

PR_SET_PDEATHSIG = 1


def parent_death_signal() -> Callable[[], Any] | None:
    """A pre-exec hook making the child die (SIGTERM) with the thread that started it (Linux
    ``PR_SET_PDEATHSIG``); None where the call does not exist. Resolved here, not in the forked
    child: the child only makes the system call."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _signal_group(proc: subprocess.Popen[Any], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)          # the child leads its own group (start_new_session=True)
    except ProcessLookupError:
        pass
    except PermissionError:
        proc.send_signal(sig)


def stop_group(proc: subprocess.Popen[Any], grace: float) -> bool:
    """End a child started with ``start_new_session=True`` and everything it started: SIGTERM to its
    process group, SIGKILL after ``grace`` seconds. True when SIGKILL was needed."""
    if proc.poll() is not None:
        return False
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
        return False
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()
        return True


__all__ = ["parent_death_signal", "stop_group"]
