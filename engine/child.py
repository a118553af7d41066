"""Child processes botsq starts (a Bots engine, a ``[jobqueue.commands]`` command): the one place
of how they are tied to the process that started them.

* :func:`start_tied` - starts a child that gets SIGTERM when the process (thread) that started it
  dies (Linux ``PR_SET_PDEATHSIG``), so a job whose worker was killed never runs on beside its own
  rerun, holding Bots' lock. Through util-linux's ``setpriv --pdeathsig`` where it exists: Python
  then starts the child with ``vfork`` (0.4 ms from a worker's pool process here) instead of the
  full ``fork`` a ``preexec_fn`` forces (14 ms: bench/bots_overhead.py); else the prctl hook;
* :func:`stop_group` - SIGTERM to the child's process group, SIGKILL after a grace: how a child
  is ended (hard time limit, Ctrl-C of ``bots-engine``).
"""
from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

PR_SET_PDEATHSIG = 1


@functools.cache
def _setpriv() -> str | None:
    """util-linux's ``setpriv`` when it knows ``--pdeathsig`` (util-linux 2.33+), else None."""
    path = shutil.which("setpriv")
    if path is None:
        return None
    try:
        out = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return path if "--pdeathsig" in out else None


def start_tied(argv: Sequence[str], *, cwd: str | os.PathLike[str] | None = None,
               **popen: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen(argv, cwd=cwd, **popen)`` for a child that dies (SIGTERM) with the thread
    that started it (see the module's docstring). Raises OSError like Popen when ``argv[0]`` cannot
    be started - checked here before ``setpriv`` would report it as its own exit 127."""
    program = argv[0]
    if os.sep not in program:
        found = shutil.which(program, path=(popen.get("env") or os.environ).get("PATH"))
        if found is None:
            raise FileNotFoundError(2, "No such file or directory", program)
        program = found
    elif cwd is not None:
        program = os.path.join(cwd, program)
    if not os.access(program, os.X_OK) or os.path.isdir(program):
        err = 2 if not os.path.exists(program) else 13
        raise OSError(err, os.strerror(err), argv[0])
    setpriv = _setpriv()
    if setpriv is not None:
        return subprocess.Popen([setpriv, "--pdeathsig", "TERM", "--", *argv], cwd=cwd, **popen)
    return subprocess.Popen(argv, cwd=cwd, preexec_fn=parent_death_signal(), **popen)  # noqa: PLW1509


def parent_death_signal() -> Callable[[], Any] | None:
    """A pre-exec hook making the child die (SIGTERM) with the thread that started it (Linux
    ``PR_SET_PDEATHSIG``); None where the call does not exist. Resolved here, not in the forked
    child: the child only makes the system call."""
    import ctypes          # only where setpriv is missing
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


__all__ = ["start_tied", "parent_death_signal", "stop_group"]
