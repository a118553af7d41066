"""Helpers for the job queue tests: an environment whose commands record what ran, real worker
processes, and small waits."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import DEFAULT_ROUTES, Env, bin_path
from e2e_procs import Proc
from e2e_procs import wait_for as _wait_for

PY = sys.executable

# A command that records "start NAME t" / "end NAME t" lines in a file; with a number it sleeps that
# long, with @PATH it waits until PATH exists (at most 120 s), with !kill it SIGKILLs its parent
# (the worker's pool process) - a worker lost mid-job.
REC = r'''
import os, sys, time, signal
log, name = sys.argv[1], sys.argv[2]
arg = sys.argv[3] if len(sys.argv) > 3 else ""
def line(what):
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f"{what} {name} {time.time():.6f}\n".encode())
    os.close(fd)
line("start")
print(f"rec {name}: hello from a job", flush=True)
if arg.startswith("@"):
    end = time.time() + 120
    while not os.path.exists(arg[1:]) and time.time() < end:
        time.sleep(0.05)
elif arg == "!kill":
    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(5)
elif arg.replace(".", "", 1).isdigit():
    time.sleep(float(arg))
line("end")
'''

# A mapping that sleeps as many seconds as the file says (engine jobs that take a while), and
# records its start and end with the route it ran for.
SLOW_MAPPING = r'''
import os, time
def run(content, meta):
    log = os.environ.get("BOTSQ_TEST_TRACE") or os.path.join(os.path.dirname(__file__), "..", "..", "trace.log")
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f"start {meta.get('route')} {time.time():.6f}\n".encode())
    try:
        secs = float(content.decode().strip() or 0)
    except ValueError:
        secs = 0
    time.sleep(secs)
    os.write(fd, f"end {meta.get('route')} {time.time():.6f}\n".encode())
    os.close(fd)
    return content
'''

SLOW_ROUTES = DEFAULT_ROUTES + """
[channels.sin]
type = "file"
path = "data/sin"
filemask = "*"
remove = true

[channels.sin2]
type = "file"
path = "data/sin2"
filemask = "*"
remove = true

[channels.sout]
type = "file"
path = "data/sout"
filename = "{infile}"

[routes.slow]
[[routes.slow.parts]]
fromchannel = "sin"
translate = "slow.run"
tochannel = "sout"

[routes.slow2]
[[routes.slow2.parts]]
fromchannel = "sin2"
translate = "slow.run"
tochannel = "sout"
"""


QUEUE_INI = """
[settings]
maxruntime = 60
whencleanup = never
lock_heartbeat = 0.5
lock_grace = 4
{settings}

[jobqueue]
enabled = True
broker = {broker}
connect_timeout = 3
max_retries = 2
stale_after = 1
{extra}

[jobqueue.commands]
rec = {py} {root}/rec.py {root}/order.log
{commands}
"""


def queue_ini(broker: str, extra: str = "", commands: str = "", settings: str = "", root: str = "") -> str:
    return QUEUE_INI.format(broker=broker, extra=extra, commands=commands, settings=settings, py=PY, root=root)


def make_queue_env(root: Path, broker: str, extra: str = "", commands: str = "", settings: str = "") -> Env:
    root.mkdir(parents=True, exist_ok=True)
    ini = queue_ini(broker, extra, commands, settings, str(root))
    env = Env(root).write(ini, SLOW_ROUTES)
    (root / "rec.py").write_text(REC, encoding="utf-8")
    maps = root / "usersys" / "mappings"
    maps.mkdir(parents=True, exist_ok=True)
    (maps / "slow.py").write_text(SLOW_MAPPING, encoding="utf-8")
    for d in ("data/in", "data/out", "data/sin", "data/sin2", "data/sout"):
        (root / d).mkdir(parents=True, exist_ok=True)
    return env


def proc_vars(env: Env, broker: str) -> dict[str, str]:
    """What a process of the environment gets on top of ours."""
    return {"BOTSQ_CONFIG": str(env.configdir), "BOTSQ_BROKER_URL": broker,
            "BOTSQ_TEST_TRACE": str(env.root / "trace.log")}


def proc_env(env: Env, broker: str) -> dict[str, str]:
    return {**os.environ, **proc_vars(env, broker)}


# --------------------------------------------------------------------------- records

def events(env: Env, name: str = "order.log") -> list[tuple[str, str, float]]:
    p = env.root / name
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        parts = line.split(" ")
        if len(parts) >= 3:
            out.append((parts[0], " ".join(parts[1:-1]), float(parts[-1])))
    return out


def started(env: Env, name: str = "order.log") -> list[str]:
    return [n for what, n, _t in events(env, name) if what == "start"]


def ended(env: Env, name: str = "order.log") -> list[str]:
    return [n for what, n, _t in events(env, name) if what == "end"]


def wait_for(pred: Callable[[], Any], timeout: float, what: str, worker: Proc | None = None) -> Any:
    """:func:`e2e_procs.wait_for`, failing at once (with its output) if ``worker`` (or another
    process: a monitor) exits."""
    return _wait_for(pred, timeout, what, [worker] if worker is not None else [])


def jobqueue_log(env: Env) -> str:
    p = env.root / "botssys" / "logging" / "jobqueue.log"
    return p.read_text(encoding="utf-8", errors="replace") if p.exists() else ""


# --------------------------------------------------------------------------- commands

def job2queue(env: Env, broker: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([bin_path("bots-job2queue"), "-c", str(env.configdir), *argv], cwd=env.root,
                          env=proc_env(env, broker), capture_output=True, text=True, timeout=timeout)


def celery_call(env: Env, broker: str, task: str, kwargs: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([bin_path("celery"), "-A", "tasks", "call", task, "-k", json.dumps(kwargs)],
                          cwd=env.root, env=proc_env(env, broker), capture_output=True, text=True, timeout=60)


def botsq(env: Env, broker: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([bin_path("botsq"), *argv, "-c", str(env.configdir)], cwd=env.root,
                          env=proc_env(env, broker), capture_output=True, text=True, timeout=60)


def in_process(env: Env, broker: str) -> Any:
    """The env's config with the test broker (as BOTSQ_BROKER_URL would give it)."""
    before = os.environ.get("BOTSQ_BROKER_URL")
    os.environ["BOTSQ_BROKER_URL"] = broker
    try:
        return env.config()
    finally:
        if before is None:
            del os.environ["BOTSQ_BROKER_URL"]
        else:
            os.environ["BOTSQ_BROKER_URL"] = before


# --------------------------------------------------------------------------- workers

class Worker(Proc):
    """``bots-jobqueueserver`` (or ``celery -A tasks worker``) as a child process."""

    def __init__(self, env: Env, broker: str, name: str | None = None, celery_cli: bool = False) -> None:
        self.env, self.broker = env, broker
        name = name or f"w{uuid.uuid4().hex[:6]}"
        if celery_cli:
            argv = [bin_path("celery"), "-A", "tasks", "worker", "-Q", "engine", "-c", "1", "-P", "prefork", "-E",
                    "--without-mingle", "--without-gossip", "-l", "INFO", "-n", f"{name}@%h"]
        else:
            argv = [bin_path("bots-jobqueueserver"), "-c", str(env.configdir), "-n", f"{name}@%h"]
        super().__init__(f"worker-{name}", argv, proc_vars(env, broker), env.root, env.root)

    def wait_ready(self, timeout: float = 30) -> "Worker":
        wait_for(lambda: " ready." in self.output(), timeout, f"{self.name} ready", self)
        return self

    def children(self) -> list[int]:
        try:
            raw = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return []
        return [int(x) for x in raw.split()]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int:
        """Cold shutdown first (SIGQUIT): a test stops a worker only when no job of its own runs."""
        if self.alive():
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        return super().stop(timeout)


def purge(env: Env, broker: str) -> None:
    """Empty queue engine and the registry (a clean start for a test)."""
    r = botsq(env, broker, "queue", "clear")
    assert r.returncode == 0, r.stderr
