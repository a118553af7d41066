"""Beat end to end: `celery -A tasks beat` and a worker as real processes on a real RabbitMQ,
with a per-second test cadence; a second beat stays idle until the first is gone."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from e2e_procs import beat, wait_for, worker, worker_ready

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

ROUTES = """
[channels.a_in]
type = "file"
path = "data/in/a"
remove = true
[channels.a_out]
type = "file"
path = "data/out/a"
filename = "{infile}"
[routes.ra]
notindefaultrun = true
[[routes.ra.parts]]
fromchannel = "a_in"
tochannel = "a_out"
"""


def runs_started_since(cfg, since) -> int:  # type: ignore[no-untyped-def]
    from sqlalchemy import func, select

    from engine.db import session_scope
    from engine.models import Run

    with session_scope(cfg.database_url) as s:
        return s.scalar(select(func.count()).select_from(Run).where(Run.started > since))


def runs(cfg) -> list[tuple[str, str]]:
    from sqlalchemy import select

    from engine.db import session_scope
    from engine.models import Run

    with session_scope(cfg.database_url) as s:
        return [(r.commands, r.routes) for r in s.scalars(select(Run)).all()]


def test_beat_runs_the_schedule_and_a_second_beat_stays_idle(make_env, module_vhost):
    ini = f"""
    [settings]
    whencleanup = never
    lock_heartbeat = 0.5
    lock_grace = 30
    [jobqueue]
    enabled = True
    broker = {module_vhost}
    [schedule]
    timezone = Europe/Amsterdam
    [schedule.tick]
    cadence = interval
    seconds = 1
    job = bots-engine --new ra
    priority = 2
    [schedule.nightly]
    cadence = daily
    time = 01:00
    job = bots-engine --cleanup
    priority = 9
    """
    env = make_env(ini=ini, routes=ROUTES)
    for d in ("data/in/a", "data/out/a"):
        env.path(d).mkdir(parents=True, exist_ok=True)
    cfg = env.config()
    w = worker(env.root, env.configdir, module_vhost)
    b1 = beat(env.root, env.configdir, module_vhost, "beat1")
    procs = [w, b1]
    b2 = None
    try:
        wait_for(lambda: worker_ready(w), 60, "the worker", procs)
        beatlog = env.root / "botssys/logging/beat.log"
        wait_for(lambda: beatlog.exists() and "holding the beat lock" in beatlog.read_text(), 30, "beat 1", procs)

        # the per-second job picks up each file dropped, run by the worker
        for i in range(3):
            env.drop(f"data/in/a/f{i}.edi", b"x")
            wait_for(lambda: env.path(f"data/out/a/f{i}.edi").exists(), 20, f"f{i} processed by a beat job", procs)
        assert {r for r in runs(cfg)} <= {("new", "ra")}
        assert len(runs(cfg)) >= 3

        # a second beat: idle while the first runs
        b2 = beat(env.root, env.configdir, module_vhost, "beat2")
        procs.append(b2)
        wait_for(lambda: "this one stays idle" in b2.output(), 30, "beat 2 to say it is idle", procs)
        from ops.beat_lock import BeatStore
        store = BeatStore(cfg.database_url)
        assert store.holder()["pid"] == b1.proc.pid

        # the first stops: the second takes over and the schedule goes on
        assert b1.stop() == 0
        procs.remove(b1)
        wait_for(lambda: (store.holder() or {}).get("pid") == b2.proc.pid, 10, "beat 2 to take the lock", procs)
        # a run that was already under way at the hand-over may take the next file, so what
        # proves the schedule goes on is a run *started* after beat 2 took the lock
        from engine.models import utcnow
        handed_over = utcnow()
        env.drop("data/in/a/after.edi", b"x")
        wait_for(lambda: env.path("data/out/a/after.edi").exists(), 20, "a file processed after the hand-over", procs)
        wait_for(lambda: runs_started_since(cfg, handed_over) > 0, 20, "a run published by beat 2", procs)
        # the daily job was not due: it never ran
        assert all(c == "new" for c, _r in runs(cfg))
        assert b2.stop() == 0
        assert store.holder() is None                # released on a clean stop
        assert "Traceback" not in beatlog.read_text()
    finally:
        for p in procs:
            p.stop()


def test_beat_refuses_a_schedule_naming_an_unknown_route(make_env):
    env = make_env(ini="[jobqueue]\nenabled = True\n[schedule.bad]\ncadence = hourly\njob = bots-engine nosuch\n",
                   routes=ROUTES)
    res = subprocess.run([sys.executable, "-m", "celery", "-A", "tasks", "beat"], cwd=env.root, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "BOTSQ_CONFIG": str(env.configdir)})
    assert res.returncode == 1
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if "celery beat: error:" in ln]
    assert lines and all("[schedule.bad] job: unknown route 'nosuch'" in ln for ln in lines)


def test_beat_job_identical_to_a_waiting_one_is_discarded(make_env, module_vhost):
    """No worker: the per-second job waits in the queue, so beat's next sends are duplicates."""
    ini = f"""
    [jobqueue]
    enabled = True
    broker = {module_vhost}
    [schedule.tick]
    cadence = interval
    seconds = 0.5
    job = bots-engine --new ra
    """
    env = make_env(ini=ini, routes=ROUTES)
    b = beat(env.root, env.configdir, module_vhost)
    try:
        beatlog = env.root / "botssys/logging/beat.log"
        wait_for(lambda: beatlog.exists() and beatlog.read_text().count("duplicate job, not added") >= 2, 30,
                 "duplicates", [b])
        text = beatlog.read_text()
        assert text.count("added job bots-engine --new ra") == 1
        from tasks.registry import PendingRegistry
        assert len(PendingRegistry(env.config()).waiting()) == 1
    finally:
        b.stop()
