"""The beat scheduler in process: the lock (a second beat stays idle), last runs in the
database (make-up runs, hand-over), publish failures kept due, bad schedules refused."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from celery import Celery

from sqlalchemy import insert, update

import ops.scheduler as scheduler_mod
from engine.models import Lease, utcnow
from ops.beat_lock import BeatStore
from ops.scheduler import BotsScheduler

ROUTES = """
[channels.in]
type = "file"
path = "data/in"
[routes.r1]
[[routes.r1.parts]]
fromchannel = "in"
[routes.r2]
[[routes.r2.parts]]
fromchannel = "in"
"""


@pytest.fixture
def published(monkeypatch):
    sent: list[tuple[str, str, int]] = []
    state = SimpleNamespace(fail=0, sent=sent)

    def publish(cfg, job, priority):
        if state.fail:
            state.fail -= 1
            raise ConnectionError("broker unreachable (test)")
        sent.append((job.task, job.describe(), priority))
        return "added"

    monkeypatch.setattr(scheduler_mod, "publish", publish)
    return state


def schedule_env(make_env, monkeypatch, jobs: str, db_ini: str = "", settings: str = ""):
    ini = f"[settings]\nlock_heartbeat = 0.2\nlock_grace = 2\n{settings}\n[jobqueue]\nenabled = True\n{db_ini}\n{jobs}"
    env = make_env(ini=ini, routes=ROUTES)
    monkeypatch.setenv("BOTSQ_CONFIG", str(env.configdir))
    return env


def scheduler() -> BotsScheduler:
    return BotsScheduler(app=Celery("t", set_as_current=False))


def tick_for(scheds: list[BotsScheduler], seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for s in scheds:
            s.tick()
        time.sleep(0.05)


FAST = "[schedule.fast]\ncadence = interval\nseconds = 0.3\njob = bots-engine r1\npriority = 2\n"


def test_store_lock_holders(db_kind, db_ini, make_env, monkeypatch):
    env = schedule_env(make_env, monkeypatch, "", db_ini)
    store = BeatStore(env.config().database_url)
    assert store.try_acquire("A", grace=5)[0]
    ok, row = store.try_acquire("B", grace=5)
    assert not ok and row["holder"] == "A" and row["pid"] == os.getpid()
    assert store.heartbeat("A") and not store.heartbeat("B")
    store.release("A")
    assert store.try_acquire("B", grace=5)[0]
    # a holder silent for longer than the grace is taken over; it notices at its next heartbeat
    with store.engine.begin() as conn:
        conn.execute(update(Lease).where(Lease.name == "beat").values(heartbeat=utcnow() - timedelta(seconds=10)))
    ok, row = store.try_acquire("C", grace=5)
    assert ok and row["holder"] == "B"
    assert not store.heartbeat("B")


@pytest.mark.procs
def test_store_takes_over_from_a_dead_process_on_this_host(make_env, monkeypatch):
    env = schedule_env(make_env, monkeypatch, "")
    store = BeatStore(env.config().database_url)
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    with store.engine.begin() as conn:
        conn.execute(insert(Lease).values(name="beat", token="dead", host=store.host, pid=p.pid, started=utcnow(),
                                          heartbeat=utcnow()))
    assert store.holder()["alive"] is False
    ok, row = store.try_acquire("me", grace=3600)
    assert ok and row["holder"] == "dead"


def test_second_beat_stays_idle_until_the_first_is_gone(published, make_env, monkeypatch):
    schedule_env(make_env, monkeypatch, FAST)
    a, b = scheduler(), scheduler()
    tick_for([a, b], 1.0)
    assert a.locked and not b.locked
    n_a = len(published.sent)
    assert 1 <= n_a <= 5
    a.close()                                        # the first beat stops: it releases the lock
    tick_for([b], 0.8)
    assert b.locked and len(published.sent) > n_a
    b.close()


@pytest.mark.slow
def test_crashed_beat_is_taken_over_after_the_grace(published, make_env, monkeypatch):
    schedule_env(make_env, monkeypatch, FAST)
    a, b = scheduler(), scheduler()
    a.tick()
    assert a.locked
    b.tick()
    assert not b.locked
    # a stops ticking without closing (hung, or its machine died): no more heartbeats
    t0 = time.monotonic()
    while not b.locked and time.monotonic() - t0 < 10:
        b.tick()
        time.sleep(0.1)
    assert b.locked and 1.8 < time.monotonic() - t0 < 8
    sent = len(published.sent)
    a.tick()                                         # a wakes up: it must notice and stay idle
    assert not a.locked and len(published.sent) == sent
    a.close()
    b.close()


def test_missed_run_made_up_once_and_state_survives_a_restart(published, make_env, monkeypatch):
    env = schedule_env(make_env, monkeypatch,
                       "[schedule.daily]\ncadence = daily\ntime = 01:00\njob = bots-engine r1\npriority = 3\n")
    store = BeatStore(env.config().database_url)
    store.save_run("daily", datetime.now(UTC) - timedelta(days=3), "added")
    s = scheduler()
    for _ in range(3):
        s.tick()
    assert published.sent == [("bots.engine", "bots-engine --new r1", 3)]
    s.close()
    last = store.load_state()["daily"]
    assert datetime.now(UTC) - last < timedelta(seconds=10)
    s2 = scheduler()                                  # restarted beat: nothing is due now
    s2.tick()
    assert len(published.sent) == 1
    s2.close()


def test_failed_publish_keeps_the_job_due_and_retries(published, make_env, monkeypatch):
    env = schedule_env(make_env, monkeypatch,
                       "[schedule.daily]\ncadence = daily\ntime = 01:00\njob = bots-engine r1\n")
    BeatStore(env.config().database_url).save_run("daily", datetime.now(UTC) - timedelta(days=1, hours=1), "added")
    published.fail = 1
    s = scheduler()
    s.tick()
    assert published.sent == [] and s._retry_at["daily"] > time.monotonic() + scheduler_mod.RETRY_SECONDS - 1
    s.tick()                                          # not hammering the broker: waits for the retry time
    assert published.sent == []
    s._retry_at["daily"] = 0.0
    s.tick()
    assert len(published.sent) == 1
    s.tick()
    assert len(published.sent) == 1
    s.close()


def test_simultaneous_jobs_are_sent_highest_priority_first(published, make_env, monkeypatch):
    jobs = "".join(f"[schedule.j{p}]\ncadence = hourly\njob = bots-engine --new r{1 + p % 2}\npriority = {p}\n"
                   for p in (7, 2, 9, 1))
    env = schedule_env(make_env, monkeypatch, jobs)
    store = BeatStore(env.config().database_url)
    for p in (7, 2, 9, 1):
        store.save_run(f"j{p}", datetime.now(UTC) - timedelta(hours=2), "added")
    s = scheduler()
    s.tick()
    assert [p for _t, _a, p in published.sent] == [1, 2, 7, 9]
    s.close()


@pytest.mark.parametrize("job,err", [
    ("bots-engine nosuchroute", r"\[schedule.bad\] job: .*nosuchroute"),
    ("rm -rf /", r"\[schedule.bad\] job: command not allowed"),
])
def test_unknown_route_or_command_refused_when_beat_starts(make_env, monkeypatch, job, err):
    env = schedule_env(make_env, monkeypatch, f"[schedule.bad]\ncadence = hourly\njob = {job}\n")
    with pytest.raises(SystemExit) as info:
        scheduler()
    assert info.value.code == 1
    lines = [ln for ln in (env.root / "botssys/logging/beat.log").read_text().splitlines() if "CRITICAL" in ln]
    assert len(lines) == 1 and "celery beat: error: " in lines[0]
    import re
    assert re.search(err, lines[0]), lines[0]


def test_beat_refuses_when_the_queue_is_disabled(published, make_env, monkeypatch):
    env = make_env(ini="[jobqueue]\nenabled = False\n", routes=ROUTES)
    monkeypatch.setenv("BOTSQ_CONFIG", str(env.configdir))
    with pytest.raises(SystemExit):
        scheduler()
    assert "[jobqueue] enabled" in (env.root / "botssys/logging/beat.log").read_text()


def test_botsq_schedule_shows_the_next_runs_beat_sends(published, make_env, monkeypatch, capsys):
    """Interval jobs count from their last run (or, never run, from when beat took the lock): the
    tester saw now + interval where beat sent at last + interval."""
    import argparse
    import json

    from ops import schedule as schedule_cmd

    jobs = ("[schedule.ran]\ncadence = interval\nseconds = 20\njob = bots-engine r1\n"
            "[schedule.fresh]\ncadence = interval\nseconds = 40\njob = bots-engine r2\n")
    env = schedule_env(make_env, monkeypatch, jobs)
    store = BeatStore(env.config().database_url)
    store.save_run("ran", datetime.now(UTC) - timedelta(seconds=5), "added")
    s = scheduler()
    s.tick()
    assert s.locked and published.sent == []
    time.sleep(1.0)                                  # shown a moment later: now + interval would differ
    schedule_cmd.run(argparse.Namespace(configdir=str(env.configdir), count=2, json=True))
    shown = {j["name"]: [datetime.fromisoformat(t) for t in j["next_runs"]]
             for j in json.loads(capsys.readouterr().out)["jobs"]}
    for name, seconds in (("ran", 20), ("fresh", 40)):
        beat_next = s.data[name].last_run_at + timedelta(seconds=seconds)
        assert abs((shown[name][0] - beat_next).total_seconds()) < 0.1, name
        assert shown[name][1] - shown[name][0] == timedelta(seconds=seconds)
    s.close()


def test_a_beat_taking_over_counts_a_never_run_job_from_then(published, make_env, monkeypatch):
    """What ``botsq schedule`` assumes (the holder's acquired_at), not the idle beat's start."""
    schedule_env(make_env, monkeypatch, "[schedule.slow]\ncadence = interval\nseconds = 3600\njob = bots-engine r1\n")
    a, b = scheduler(), scheduler()
    a.tick()
    b.tick()
    assert a.locked and not b.locked
    time.sleep(0.5)
    a.close()
    taken = datetime.now(UTC)
    b.tick()
    assert b.locked and b.data["slow"].last_run_at >= taken and published.sent == []
    b.close()
