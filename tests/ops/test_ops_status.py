"""``botsq status`` without a live queue: exit codes, lock holder, last runs, no secret in output.

The checks against a live broker and worker (workers, queues, waiting jobs) are in
tests/ops/test_ops_live.py, which shares one worker with the Flower tests.
"""
from __future__ import annotations

import pytest

import json
import logging
import re
import subprocess

from conftest import Env, bin_path

CLOSED_BROKER = "amqp://botsq:broker-s3cret@127.0.0.1:1//"
SECRETS_INI = f"""
[settings]
whencleanup = never

[jobqueue]
enabled = True
broker = {CLOSED_BROKER}

[email]
host = 127.0.0.1
user = mailer
password = mail-s3cret

[schedule.new]
cadence = 5min
job = bots-engine --new
"""


def status(env: Env, *args: str) -> tuple[int, str]:
    res = subprocess.run([bin_path("botsq"), "status", "-c", str(env.configdir), *args],
                         capture_output=True, text=True, timeout=60, cwd=env.root)
    return res.returncode, res.stdout + res.stderr


@pytest.mark.procs
def test_unreachable_broker_is_unhealthy_and_no_secret_is_shown(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env(ini=SECRETS_INI)
    code, out = status(env)
    assert code == 1, out
    assert "broker    FAIL  broker amqp://botsq:***@127.0.0.1:1// cannot be reached" in out
    assert "UNHEALTHY: broker" in out
    assert "beat      FAIL  beat is not running (1 scheduled job(s))" in out
    code, out_json = status(env, "--json")
    assert code == 1
    report = json.loads(out_json)
    assert report["healthy"] is False and report["broker"]["ok"] is False
    for text in (out, out_json):
        assert "broker-s3cret" not in text and "mail-s3cret" not in text


@pytest.mark.procs
def test_a_bad_timeout_is_an_argument_error_and_botsq_queue_fails_without_its_broker(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env(ini=SECRETS_INI)
    code, out = status(env, "--timeout", "-1")
    assert (code, out) == (1, "botsq: error: argument --timeout: must be a number of seconds above 0, got -1\n")
    for extra in ((), ("--json",)):
        res = subprocess.run([bin_path("botsq"), "queue", "-c", str(env.configdir), *extra], capture_output=True,
                             text=True, timeout=60, cwd=env.root)
        assert res.returncode == 1, res.stdout + res.stderr          # was 0: the registry alone looked fine
        assert "cannot be reached" in res.stdout and "broker-s3cret" not in res.stdout + res.stderr


@pytest.mark.procs
def test_secret_from_environment_is_not_shown_either(make_env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("BOTSQ_BROKER_URL", "redis://:redis-s3cret@127.0.0.1:1/0")
    env = make_env(ini=SECRETS_INI)
    code, out = status(env, "--json")
    assert code == 1
    assert "redis-s3cret" not in out and "redis://:***@127.0.0.1:1/0" in out


@pytest.mark.procs
def test_queue_disabled_is_healthy_with_lock_holder_and_last_runs(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env()                                 # DEFAULT_INI: queue disabled
    env.drop("data/in/a.txt", "hello")
    env.path("data/out").mkdir()
    assert env.run().returncode == 0                 # one engine run
    cfg = env.config()
    from engine.lock import acquire

    got = acquire(cfg, logging.getLogger("test"))    # this process holds the lock, alive
    assert got.lock is not None
    try:
        code, out = status(env)
        assert code == 0, out
        assert "job queue disabled" in out
        assert "lock      held" in out and "alive" in out
        assert "#1" in out and "ok" in out and "1 in, 1 sent" in out
        assert out.strip().endswith("healthy")
        report = json.loads(status(env, "--json")[1])
        assert report["healthy"] is True
        assert report["lock"]["held"] and report["lock"]["alive"]
        assert report["last_runs"][0]["status"] == "ok"
    finally:
        got.lock.release()
    code, out = status(env)
    assert "lock      free" in out


@pytest.mark.procs
def test_unusable_database_is_unhealthy(make_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    env = make_env(ini=f"[database]\nurl = sqlite:///{blocker}/sub/db.sqlite\n")
    code, out = status(env)
    assert code == 1
    assert "database  FAIL" in out and "UNHEALTHY" in out


@pytest.mark.procs
def test_directory_monitor_heartbeat_missing_stale_or_fresh(make_env) -> None:  # type: ignore[no-untyped-def]
    """A configured monitor: no heartbeat or one older than 30 s is a problem; a fresh one is ok."""
    import os
    import socket
    import time

    env = make_env(ini=SECRETS_INI + "\n[dirmonitor1]\npath = data/in\n")
    env.path("data/in").mkdir(parents=True, exist_ok=True)
    beat_file = env.config().directories.botssys / "dirmonitor.heartbeat"
    beat_file.parent.mkdir(parents=True, exist_ok=True)

    def monitor(age: float | None) -> tuple[str, dict]:  # type: ignore[type-arg]
        if age is None:
            beat_file.unlink(missing_ok=True)
        else:                      # as bots-dirmonitor writes it; this live process stands for it
            beat_file.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                             "state": "running", "timestamp": time.time() - age}))
        code, out = status(env)
        assert code == 1, out                                 # the closed broker, whatever the monitor
        line = next(x for x in out.splitlines() if x.startswith("  monitor"))
        return line, json.loads(status(env, "--json")[1])

    line, report = monitor(None)
    assert line == "  monitor   FAIL  no heartbeat: bots-dirmonitor is not running", line
    assert "directory monitor: no heartbeat: bots-dirmonitor is not running" in report["problems"]
    line, report = monitor(95)
    assert re.fullmatch(r"  monitor   FAIL  heartbeat 9[5-9] s ago", line), line
    assert any(re.fullmatch(r"directory monitor: heartbeat 9[5-9] s old \(limit 30 s\)", p) for p in report["problems"])
    line, report = monitor(1)
    assert line.startswith("  monitor   ok"), line
    assert report["monitor"]["ok"] is True
    assert not any(p.startswith("directory monitor") for p in report["problems"])
