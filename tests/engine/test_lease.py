"""The lease rule (engine/lease.py): one is-alive decision for engine lock, beat lock, started jobs
and the directory monitor; named leases, one engine lock per lane."""
from __future__ import annotations

import pytest

import logging
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta

from engine import lease
from engine.lock import acquire, lease_name, read_lock
from engine.models import utcnow


def _zombie() -> subprocess.Popen:
    """A child that has exited but is not reaped yet."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{p.pid}/stat") as fh:
            if fh.read().rsplit(")", 1)[-1].split()[0] == "Z":
                return p
        time.sleep(0.02)
    raise AssertionError("the child did not exit")


@pytest.mark.procs
def test_the_rule_heartbeat_within_grace_and_a_live_process_on_this_host():
    now = utcnow()
    me = lease.hostname()
    assert lease.holder_alive(me, os.getpid(), now, grace=5, now=now)
    assert not lease.holder_alive(me, os.getpid(), now - timedelta(seconds=6), grace=5, now=now)   # silent
    assert lease.holder_alive("elsewhere.example", 1, now - timedelta(seconds=4), grace=5, now=now)  # heartbeat only
    zombie = _zombie()
    try:
        assert not lease.pid_exists(zombie.pid)
        assert not lease.holder_alive(me, zombie.pid, now, grace=5, now=now)    # ended, only not reaped
    finally:
        zombie.wait()
    assert not lease.holder_alive(me, os.getpid(), now, grace=5, now=now, this_process_counts=False)


def test_named_leases_refresh_release_and_take_over(make_env):
    cfg = make_env().config()
    url = cfg.database_url
    a = lease.acquire(url, "x", grace=5, token="A")
    assert a.lease is not None and a.holder is None
    b = lease.acquire(url, "x", grace=5, token="B")
    assert b.lease is None and b.holder.token == "A" and b.holder.alive
    again = lease.acquire(url, "x", grace=5, token="A")                  # the holder asking again
    assert again.lease is not None and again.holder.token == "A"
    assert lease.acquire(url, "y", grace=5).lease is not None             # another name: independent
    assert lease.refresh(url, "x", "A") and not lease.refresh(url, "x", "B")
    a.lease.release()
    assert lease.read(url, "x", grace=5) is None
    assert lease.acquire(url, "x", grace=0.01, token="B").lease is not None
    time.sleep(0.05)
    c = lease.acquire(url, "x", grace=0.01, token="C")                    # B went silent past the grace
    assert c.lease is not None and c.holder.token == "B" and not c.holder.alive
    assert not lease.refresh(url, "x", "B")                               # B notices at its next beat


def test_one_engine_lock_per_lane(make_env):
    cfg = make_env().config()
    log = logging.getLogger("test")
    assert (lease_name(), lease_name("default"), lease_name("edi")) == ("engine", "engine", "engine.edi")
    default = acquire(cfg, log)
    try:
        assert acquire(cfg, log).lock is None                              # the lane is busy
        edi = acquire(cfg, log, lane="edi")                                # another lane is not
        assert edi.lock is not None
        assert read_lock(cfg, "edi").pid == os.getpid()
        edi.lock.release()
        assert read_lock(cfg, "edi") is None and read_lock(cfg) is not None
    finally:
        default.lock.release()


def test_heartbeat_thread_beats_until_stopped():
    beats = []
    done = threading.Event()

    def beat():
        beats.append(1)
        if len(beats) >= 3:
            done.set()

    hb = lease.Heartbeat(beat, 0.01, "test-heartbeat").start()
    assert done.wait(5)
    hb.stop()
    n = len(beats)
    time.sleep(0.05)
    assert len(beats) == n
