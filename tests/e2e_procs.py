"""Helpers for end-to-end tests with real processes (worker, beat, monitor) on a real broker."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import bin_path


class Proc:
    """A child process with its output in a log file; stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path, logdir: Path) -> None:
        self.name = name
        self.log_path = logdir / f"{name}.out"
        logdir.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, env={**os.environ, **env}, cwd=cwd, stdout=self._fh,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._fh.close()
        return self.proc.returncode


def wait_for(pred: Callable[[], Any], timeout: float, what: str, procs: list[Proc] = ()) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        for p in procs:
            if not p.alive():
                raise AssertionError(f"{p.name} exited ({p.proc.returncode}) while waiting for {what}:\n{p.output()[-3000:]}")
        time.sleep(0.05)
    tails = "\n".join(f"--- {p.name}:\n{p.output()[-3000:]}" for p in procs)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{tails}")


def worker(env_root: Path, configdir: Path, broker: str, name: str = "worker") -> Proc:
    argv = [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-Q", "engine", "-c", "1",
            "--loglevel", "INFO", "-n", f"{name}-{os.getpid()}-{time.monotonic_ns()}@%h", "--without-gossip",
            "--without-mingle", "--without-heartbeat"]
    return Proc(name, argv, {"BOTSQ_CONFIG": str(configdir), "BOTSQ_BROKER_URL": broker}, env_root,
                env_root / "procs")


def beat(env_root: Path, configdir: Path, broker: str, name: str = "beat") -> Proc:
    argv = [sys.executable, "-m", "celery", "-A", "tasks", "beat", "--loglevel", "INFO"]
    return Proc(name, argv, {"BOTSQ_CONFIG": str(configdir), "BOTSQ_BROKER_URL": broker}, env_root,
                env_root / "procs")


def dirmonitor(env_root: Path, configdir: Path, broker: str, name: str = "dirmonitor") -> Proc:
    return Proc(name, [bin_path("bots-dirmonitor"), "-c", str(configdir)],
                {"BOTSQ_BROKER_URL": broker}, env_root, env_root / "procs")


def worker_ready(p: Proc) -> bool:
    return "ready." in p.output()
