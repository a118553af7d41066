"""``botsq stack``: worker, beat, monitor and Flower in the foreground, prefixed and coloured;
Ctrl-C stops them all; one of them failing stops the others."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest

from conftest import bin_path, free_port
from conftest import rabbit_vhost
from test_ops_procs import descendants, gone, wait_for

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

READY = {  # a line each child prints once it runs
    "worker": " ready.",
    "beat": "beat: Starting",
    "monitor": "watching",
    "flower": "Visit me at",
}


@pytest.fixture
def stack_env(rabbit_url: str, make_env):  # type: ignore[no-untyped-def]
    with rabbit_vhost("stack") as broker:

        def make(watch: str = "data/in") -> object:
            env = make_env(ini=f"""
                [settings]
                whencleanup = never

                [jobqueue]
                enabled = True
                broker = {broker}

                [dirmonitor1]
                path = {watch}
                route = r1

                [schedule.nightly]
                cadence = daily
                time = 03:00
                job = bots-engine --new r1
            """)
            env.path("data/in").mkdir(parents=True, exist_ok=True)
            return env

        yield make


def start_stack(env) -> subprocess.Popen[str]:  # type: ignore[no-untyped-def]
    penv = {**os.environ, "FORCE_COLOR": "1", "BOTSQ_FLOWER_PORT": str(free_port())}
    penv.pop("BOTSQ_BROKER_URL", None)
    return subprocess.Popen([bin_path("botsq"), "stack", "-c", str(env.configdir)], cwd=env.root, env=penv,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def plain(line: str) -> str:
    return re.sub(r"\033\[[0-9;]*m", "", line)


def test_stack_prefixes_each_child_and_ctrl_c_stops_all(stack_env) -> None:  # type: ignore[no-untyped-def]
    env = stack_env()
    proc = start_stack(env)
    assert proc.stdout is not None
    seen: dict[str, str] = {}
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while len(seen) < len(READY) and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.match(r"^(\033\[[0-9;]*m)?(\w+)\s*\|(\033\[0m)? (.*)$", line.rstrip("\n"))
        if m and m.group(2) in READY and READY[m.group(2)] in m.group(4):
            seen[m.group(2)] = line
    assert set(seen) == set(READY), "".join(lines)
    for name, line in seen.items():
        assert line.startswith("\033["), f"{name} line is not coloured: {line!r}"
        assert plain(line).startswith(f"{name:<7} | ")
    kids = descendants(proc.pid)
    assert len(kids) >= 5            # four children, and the worker's pool process
    # with the whole stack up, `botsq status` is healthy: worker, beat and monitor all seen
    status = subprocess.run([bin_path("botsq"), "status", "-c", str(env.configdir)], capture_output=True,
                            text=True, timeout=60, cwd=env.root)
    assert status.returncode == 0, status.stdout + status.stderr
    for check in ("worker    ok", "beat      ok", "1 scheduled job(s)", "monitor   ok"):
        assert check in status.stdout, status.stdout
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=90)[0]
    assert proc.returncode == 0, "".join(lines) + rest
    text = plain(rest)
    assert "botsq   | stopping flower, monitor, beat, worker" in text
    assert "botsq   | all stopped" in text
    assert "worker  | " in text and "Warm shutdown" in text
    assert wait_for(lambda: all(gone(k) for k in kids), 10), [k for k in kids if not gone(k)]


def test_a_child_that_fails_stops_the_others_with_exit_1(stack_env) -> None:  # type: ignore[no-untyped-def]
    env = stack_env(watch="data/missing")          # bots-dirmonitor refuses a missing path
    proc = start_stack(env)
    out = plain(proc.communicate(timeout=90)[0])
    assert proc.returncode == 1, out
    assert re.search(r"monitor +\| .*data/missing", out), out
    assert "botsq   | monitor exited with code 1: stopping the others" in out
    assert "botsq   | all stopped" in out


def test_stack_refuses_without_the_queue(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env()                                  # [jobqueue] enabled = False
    res = subprocess.run([bin_path("botsq"), "stack", "-c", str(env.configdir)], capture_output=True, text=True,
                         timeout=60, cwd=env.root)
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "[jobqueue] enabled is False" in res.stderr, res.stderr
