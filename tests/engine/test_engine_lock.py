"""The engine lock: exit 3 for a live holder, heartbeat, maxruntime alert, crashed-run takeover and recovery."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
from conftest import bin_path, file_routes
from engine_helpers import smtp  # noqa: F401  (fixture)
from sqlalchemy import select

from engine.db import session_scope
from engine.lock import read_lock
from engine.models import Incoming, Lease, Outgoing, Run, utcnow
from engine.run import run_engine

INI = """
[settings]
sendreportiferror = True
maxruntime = 60
whencleanup = never
lock_heartbeat = 0.1
lock_grace = 30
"""

ROUTES = file_routes(translate="slow.run")

SLOW = '''
import os, signal, time
from pathlib import Path

def run(content, meta):
    marker = Path(__file__).with_name("KILL")
    if content.startswith(b"KILL") and marker.exists():
        marker.unlink()
        os.kill(os.getpid(), signal.SIGKILL)        # a real crash, half-way through a run
    if content.startswith(b"SLOW"):
        time.sleep(float(content.split()[1]))
    return content
'''


@pytest.fixture
def env(make_env, db_ini):
    e = make_env(ini=INI + db_ini, routes=ROUTES)
    e.drop("usersys/mappings/slow.py", SLOW)
    e.path("data/in").mkdir(parents=True)
    e.path("data/out").mkdir(parents=True)
    return e


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _put_lock(cfg, host, pid, started_ago=0.0, heartbeat_ago=0.0, run_id=None):
    from engine.db import get_engine
    get_engine(cfg.database_url)
    now = utcnow()
    with session_scope(cfg.database_url) as s:
        s.add(Lease(name="engine", token="x" * 32, host=host, pid=pid, started=now - timedelta(seconds=started_ago),
                         heartbeat=now - timedelta(seconds=heartbeat_ago), run_id=run_id))


@pytest.mark.procs
def test_live_holder_gives_exit_3_naming_host_pid_and_start(env):
    cfg = env.config()
    _put_lock(cfg, socket.gethostname(), os.getpid(), started_ago=60)
    res = run_engine(cfg)
    assert res.exit_code == 3 and res.run_id is None
    assert res.locked_by.startswith(f"host {socket.gethostname()} pid {os.getpid()} since 20")
    assert res.locked_by in res.message
    info = read_lock(cfg)
    assert info.alive and info.pid == os.getpid()
    # through the command line too: exit 3 and the holder on stderr/stdout
    r = env.run()
    assert r.returncode == 3, r.stderr
    assert f"pid {os.getpid()}" in r.stdout + r.stderr


def test_live_holder_past_maxruntime_is_only_an_alert(env):
    cfg = env.config()
    _put_lock(cfg, socket.gethostname(), os.getpid(), started_ago=3 * 3600)   # 3 h > maxruntime 60 min
    res = run_engine(cfg)
    assert res.exit_code == 3                      # never taken over while alive
    log = (cfg.directories.logging / "engine.log").read_text()
    assert "longer than maxruntime" in log and "not taken over" in log
    with session_scope(cfg.database_url) as s:
        assert s.get(Lease, "engine").pid == os.getpid()
    assert "damaged" not in log


def test_other_host_with_fresh_heartbeat_is_live(env):
    cfg = env.config()
    _put_lock(cfg, "elsewhere.example", 12345, started_ago=10, heartbeat_ago=1)
    assert run_engine(cfg).exit_code == 3


def test_heartbeat_keeps_the_lock_fresh_and_second_run_is_refused(env):
    env.drop("data/in/a", "SLOW 1.2")
    cfg = env.config()
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("r", run_engine(cfg)))
    t.start()
    try:
        deadline = time.monotonic() + 10
        beat_seen = False
        while time.monotonic() < deadline and not beat_seen:
            info = read_lock(cfg)
            if info and (info.heartbeat - info.started).total_seconds() >= 0.3:
                beat_seen = info.alive
            time.sleep(0.05)
        assert beat_seen, "heartbeat did not advance while the run was busy"
        second = run_engine(cfg)
        assert second.exit_code == 3 and f"pid {os.getpid()}" in second.locked_by
    finally:
        t.join(30)
    assert result["r"].exit_code == 0
    assert read_lock(cfg) is None                   # released at the end


def test_holder_alerts_once_when_past_maxruntime(env, smtp, monkeypatch):  # noqa: F811
    (env.configdir / "bots.ini").write_text(INI + smtp.ini())
    env.drop("data/in/a", "SLOW 0.6")
    cfg = env.config()
    import engine.lock as lock_mod
    real_start = lock_mod.EngineLockHandle.start_heartbeat

    def start_heartbeat(self):
        self.started -= timedelta(hours=2)          # the run "is" 2 h old: past maxruntime (60 min)
        real_start(self)

    monkeypatch.setattr(lock_mod.EngineLockHandle, "start_heartbeat", start_heartbeat)
    res = run_engine(cfg)
    assert res.exit_code == 0                      # the alert does not stop or fail the run
    log = (cfg.directories.logging / "engine.log").read_text()
    assert log.count("longer than maxruntime") == 1
    msgs = smtp.wait(1)
    assert any("exceeds maxruntime" in m["Subject"] for m in msgs)


@pytest.mark.procs
def test_dead_pid_on_this_host_is_a_crashed_run_taken_over(env, smtp):  # noqa: F811
    (env.configdir / "bots.ini").write_text(INI + smtp.ini())
    cfg = env.config()
    from engine.db import get_engine
    get_engine(cfg.database_url)
    with session_scope(cfg.database_url) as s:
        run = Run(commands="new", host=socket.gethostname(), pid=_dead_pid(), status="running")
        s.add(run)
        s.flush()
        crashed_id = run.id
        # a file the crashed run had archived and recorded but not processed
        archive = cfg.directories.archive / "19990101"
        archive.mkdir(parents=True)
        (archive / "1-1").write_text("HALF")
        s.add(Incoming(run_id=crashed_id, route="r1", part=1, channel="in", filename="half.txt", size=4,
                       checksum="", archive_path="data/19990101/1-1", status="received"))
    pid = _dead_pid()
    _put_lock(cfg, socket.gethostname(), pid, started_ago=5, heartbeat_ago=0.5, run_id=crashed_id)
    res = run_engine(cfg)
    assert res.exit_code == 0, res.message
    assert res.counts["recovered"] == 1
    assert (env.path("data/out/half.txt")).read_text() == "HALF"
    with session_scope(cfg.database_url) as s:
        crashed = s.get(Run, crashed_id)
        assert crashed.status == "crashed" and crashed.ended is not None and "crashed" in crashed.message
    log = (cfg.directories.logging / "engine.log").read_text()
    assert f"pid {pid}" in log and "crashed" in log and "damaged" not in log
    msgs = smtp.wait(1)
    assert any("crash recovery" in m["Subject"] and m["Subject"].strip().startswith("[botsq-test]") for m in msgs)
    body = next(m for m in msgs if "crash recovery" in m["Subject"]).get_content()
    assert "half.txt" in body and f"pid {pid}" in body


def test_silent_heartbeat_past_grace_is_a_crashed_run(env):
    cfg = env.config()
    _put_lock(cfg, "elsewhere.example", 4242, started_ago=600, heartbeat_ago=300)   # grace is 30 s
    res = run_engine(cfg)
    assert res.exit_code == 0
    assert read_lock(cfg) is None


@pytest.mark.procs
def test_real_crash_mid_run_loses_nothing(env):
    """SIGKILL inside a run (after the sources are removed): the next run recovers every file."""
    for name in ("a", "b", "c"):
        env.drop(f"data/in/{name}", "KILL" if name == "b" else name.upper())
    env.drop("usersys/mappings/KILL", "")
    r = env.run(timeout=60)
    assert r.returncode == -9, (r.returncode, r.stderr)
    cfg = env.config()
    info = read_lock(cfg)
    assert info is not None and not info.alive          # the dead holder's lock is still there
    assert os.listdir(env.path("data/in")) == []        # sources gone: only the archive has them now
    r2 = env.run(timeout=60)
    assert r2.returncode == 0, r2.stderr
    assert "crash" in r2.stderr
    out = {p.name: p.read_text() for p in env.path("data/out").iterdir()}
    assert out == {"a": "A", "b": "KILL", "c": "C"}
    with session_scope(cfg.database_url) as s:
        runs = list(s.scalars(select(Run).order_by(Run.id)))
        assert [r.status for r in runs] == ["crashed", "ok"]
        assert all(o.commstatus == "sent" for o in s.scalars(select(Outgoing)))
        assert {i.status for i in s.scalars(select(Incoming))} == {"done"}


@pytest.mark.procs
def test_sigterm_releases_the_lock_and_the_next_run_finishes_the_files(env):
    import signal
    env.drop("data/in/a", "SLOW 30")
    env.drop("data/in/b", "B")
    p = subprocess.Popen([bin_path("bots-engine"), "-c", str(env.configdir)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=env.root)
    cfg = env.config()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and os.listdir(env.path("data/in")):
        time.sleep(0.05)                             # wait until both are received (sources removed)
    time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 1, err
    assert "Traceback" not in err, err               # stopped from outside, as with Ctrl-C: not a crash
    assert [line for line in err.splitlines() if "bots-engine: error:" in line] == [
        "bots-engine: error: terminated (SIGTERM); the lock is released, the next run finishes the files"], err
    assert read_lock(cfg) is None                    # released on the way out: no stale lock
    with session_scope(cfg.database_url) as s:
        assert [r.status for r in s.scalars(select(Run))] == ["failed"]
    env.drop("usersys/mappings/slow.py", SLOW.replace("time.sleep(float(content.split()[1]))", "pass"))
    res = run_engine(cfg)
    assert res.exit_code == 0 and res.counts["recovered"] == 2
    assert sorted(os.listdir(env.path("data/out"))) == ["a", "b"]


def test_two_runs_racing_for_a_free_or_crashed_lock_only_one_wins(env):
    import logging

    from engine.lock import acquire
    cfg = env.config()
    from engine.db import get_engine
    get_engine(cfg.database_url)
    log = logging.getLogger("test")
    for setup in (lambda: None, lambda: _put_lock(cfg, "gone.example", 1, started_ago=900, heartbeat_ago=600)):
        setup()
        barrier = threading.Barrier(4)
        results = []

        def grab():
            barrier.wait()
            results.append(acquire(cfg, log))

        threads = [threading.Thread(target=grab) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        winners = [r for r in results if r.lock is not None]
        assert len(results) == 4 and len(winners) == 1
        assert all(r.holder is not None and r.holder.alive for r in results if r.lock is None)
        winners[0].lock.release()
        assert read_lock(cfg) is None
