"""``botsq schedule [-c DIR] [-n N] [--json]``: the beat schedule with next run times, and whether
beat is running (it holds lease ``beat``)."""
from __future__ import annotations

import argparse
import json
import shlex
from datetime import UTC, datetime, tzinfo
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from beat_schedule import load_jobs
from engine.config import add_config_argument, load_config
from engine.config.schedule import load_schedule, resolve_timezone
from engine.errors import DatabaseError
from ops.beat_lock import BeatStore


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("-n", "--count", type=int, default=3, help="next run times per job (default 3)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _fmt(dt: datetime, zone: tzinfo) -> str:
    return dt.astimezone(zone).strftime("%a %Y-%m-%d %H:%M:%S %Z")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.configdir)
    jobs = load_jobs(cfg)
    tzname = load_schedule(cfg).timezone
    zone = resolve_timezone(tzname)[1]
    now = datetime.now(UTC)
    state: dict[str, Any] = {}
    holder = None
    try:
        store = BeatStore(cfg.database_url)
        state = store.load_state()
        holder = store.holder()
    except (DatabaseError, SQLAlchemyError):    # the schedule prints without the database
        pass
    count = max(1, args.count)
    # a job that never ran counts, as beat counts it, from when the running beat took its lock;
    # with no beat running, from now (beat starting now)
    since = datetime.fromtimestamp(holder["acquired_at"], UTC) if holder and holder.get("alive") else now
    rows = []
    for job in jobs:
        last = state.get(job.name)
        rows.append({
            "name": job.name, "cadence": job.describe(), "priority": job.priority, "job": shlex.join(job.argv),
            "task": job.task, "kwargs": job.kwargs,
            "last_run": last.isoformat() if last else None,
            "next_runs": [t.isoformat() for t in job.schedule.upcoming(last or since, now, count)],
        })
    if args.json:
        print(json.dumps({"timezone": tzname, "jobs": rows,
                          "beat": holder}, indent=2))
        return 0
    print(f"timezone: {tzname}   now: {_fmt(now, zone)}")
    if holder and holder.get("alive"):
        print(f"beat: running on {holder['host']} (pid {holder['pid']}), last heartbeat {holder['age']:.0f} s ago")
    else:
        print("beat: not running (start it with: celery -A tasks beat)")
    if not rows:
        print("no jobs: add [schedule.NAME] sections to bots.ini")
        return 0
    for r, job in zip(rows, jobs):
        print()
        print(f"{r['name']}  p{r['priority']}  {r['cadence']}")
        print(f"  job:  {r['job']}")
        if r["last_run"]:
            print(f"  last: {_fmt(state[job.name], zone)}")
        for i, t in enumerate(r["next_runs"]):
            print(f"  {'next:' if i == 0 else '     '} {_fmt(datetime.fromisoformat(t), zone)}")
    return 0
