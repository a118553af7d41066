#!/usr/bin/env python3
"""Lanes: head-of-line blocking and throughput, each against its floor measured in the same run.

(a) Head-of-line blocking. Lane ``fast`` gets a job every second while lane ``slow`` runs jobs of
    ``--slow`` seconds back to back (the next one is queued when the previous one ended), for
    ``--duration`` seconds. Fast's publish -> start (from just before ``submit()`` to the job's
    start as the worker records it, its registry claim) p50 / p99 with lanes (``bots-jobqueueserver``
    serving lanes default, fast and slow: a worker each) against the same load in one lane (one
    worker, today's behaviour). The floor: fast's idle latency - one job at a time, nothing else
    running - on the lanes setup. Goal: with lanes, fast's p99 within 2x its idle p99.
    The jobs are ``[jobqueue.commands]`` jobs (``fastjob`` = /bin/true, ``slowjob`` sleeps), put in
    their lanes with ``[jobqueue.commands.lanes]``: what is measured is the queue, not the engine,
    and commands with a tag argument never meet a waiting duplicate.
(b) Throughput. 4 lanes x N/4 files (2 KB, file -> passthrough -> file, one route per lane) on two
    ``bots-jobqueueservers`` of two lanes each, against 1 lane x N files on one worker: from the
    first submit to the last run's end, in alternating rounds (the disk of a shared machine swings),
    medians reported.

    .venv/bin/python bench/lanes.py                                   # 20 s slow jobs for 60 s, 10,000 files
    .venv/bin/python bench/lanes.py --slow 60 --duration 180          # the issue's 60 s jobs
    .venv/bin/python bench/lanes.py --brokers redis --files 2000 --rounds 1 --json lanes.json
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
BIN = Path(sys.executable).parent

HOL_INI = """
[settings]
whencleanup = never

[jobqueue]
enabled = True
broker = {broker}

[jobqueue.commands]
fastjob = /bin/true
slowjob = {py} -c "import sys, time; time.sleep(float(sys.argv[1]))"
{lanes}
"""

FILES_INI = """
[settings]
whencleanup = never
maxfilesizeincoming = 100000000

[jobqueue]
enabled = True
broker = {broker}
"""


def files_routes(lanes: int) -> str:
    out = '[channels.out]\ntype = "file"\npath = "data/out"\nfilename = "{infile}"\n'
    for i in range(lanes):
        lane = f'lane = "l{i}"\n' if lanes > 1 else ""
        out += (f'[channels.in{i}]\ntype = "file"\npath = "data/in{i}"\nfilemask = "*.edi"\nremove = true\n'
                f'[routes.r{i}]\n{lane}[[routes.r{i}.parts]]\nfromchannel = "in{i}"\ntranslate = "passthrough"\n'
                f'tochannel = "out"\n')
    return out


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def ms(x: float) -> float:
    return round(x * 1000, 1)


# --------------------------------------------------------------------------- brokers

@contextmanager
def rabbit_vhost() -> Iterator[str]:
    vhost = f"botsq-bench-lanes-{uuid.uuid4().hex[:6]}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, capture_output=True)
    try:
        subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], check=True,
                       capture_output=True)
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True)


@contextmanager
def redis_db() -> Iterator[str]:
    """A Redis database no test session or other benchmark holds (the tests' lock files), flushed."""
    import redis

    for db in range(15, 0, -1):
        fh = open(Path(tempfile.gettempdir()) / f"botsq-test-redis-db-{db}.lock", "w")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            continue
        client = redis.Redis(host="127.0.0.1", port=6379, db=db)
        client.flushdb()
        try:
            yield f"redis://127.0.0.1:6379/{db}"
        finally:
            client.flushdb()
            fh.close()
        return
    raise RuntimeError("every Redis database 1..15 is held")


def broker_url(name: str) -> Any:
    return rabbit_vhost() if name == "rabbitmq" else redis_db()


# --------------------------------------------------------------------------- environments and workers

class Env:
    def __init__(self, root: Path, broker: str, ini: str, routes: str = "") -> None:
        self.root, self.broker = root, broker
        (root / "config").mkdir(parents=True)
        (root / "config" / "bots.ini").write_text(ini)
        (root / "config" / "routes.toml").write_text(routes)
        self.vars = {"BOTSQ_CONFIG": str(root / "config"), "BOTSQ_BROKER_URL": broker}
        os.environ.update(self.vars)
        from engine.config import load_config
        self.cfg = load_config(root / "config")
        self.servers: list[subprocess.Popen[bytes]] = []

    def serve(self, *lanes: str) -> None:
        """Start a bots-jobqueueserver for ``lanes`` (none: every lane) and wait until its workers are ready."""
        want = self._ready() + len(lanes or self.cfg.lanes)
        argv = [str(BIN / "bots-jobqueueserver"), "-c", str(self.cfg.configdir), "-l", "WARNING",
                "-n", f"b{len(self.servers)}@%h", *(a for lane in lanes for a in ("--lane", lane))]
        log = open(self.root / f"server{len(self.servers)}.out", "wb")
        self.servers.append(subprocess.Popen(argv, env={**os.environ, **self.vars}, cwd=self.root, stdout=log,
                                             stderr=subprocess.STDOUT, start_new_session=True))
        self._wait(lambda: self._ready() >= want, 90, "the workers to be ready")

    def _ready(self) -> int:
        qlog = self.root / "botssys" / "logging" / "jobqueue.log"
        return qlog.read_text(errors="replace").count("worker ready") if qlog.exists() else 0

    def _wait(self, pred: Callable[[], Any], timeout: float, what: str) -> Any:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got = pred()
            if got:
                return got
            if any(s.poll() is not None for s in self.servers):
                raise RuntimeError(f"a server exited while waiting for {what}: see {self.root}")
            time.sleep(0.02)
        raise TimeoutError(f"timed out waiting for {what}")

    def stop(self) -> None:
        from kombu import pools

        from tasks.celeryapp import close_connections

        close_connections()
        pools.reset()           # kombu keys its pools by URL: the next environment on this broker gets fresh ones
        for s in self.servers:
            s.terminate()
        for s in self.servers:
            try:
                s.wait(60)
            except subprocess.TimeoutExpired:
                s.kill()

    def submit(self, argv: list[str]) -> str:
        from tasks.jobs import job_from_argv
        from tasks.submit import submit

        return submit(self.cfg, job_from_argv(self.cfg, argv)).task_id

    def started_ended(self, task_id: str) -> tuple[datetime, datetime | None] | None:
        from engine.db import session_scope
        from tasks.registry import StartedJob

        with session_scope(self.cfg.database_url) as s:
            row = s.get(StartedJob, task_id)
            if row is None:
                return None
            ended = row.ended.replace(tzinfo=timezone.utc) if row.ended else None
            return row.started.replace(tzinfo=timezone.utc), ended

    def wait_started(self, task_id: str, timeout: float = 300) -> datetime:
        return self._wait(lambda: (self.started_ended(task_id) or (None,))[0], timeout, f"job {task_id}")

    def ended(self, task_id: str) -> bool:
        got = self.started_ended(task_id)
        return bool(got and got[1])


# --------------------------------------------------------------------------- (a) head-of-line blocking

def idle_latency(env: Env, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = datetime.now(timezone.utc)
        task = env.submit(["fastjob", f"idle{i}"])
        out.append((env.wait_started(task, 60) - t0).total_seconds())
        env._wait(lambda: env.ended(task), 60, "an idle job to end")
    return out


def loaded_latency(env: Env, slow: float, duration: float) -> list[float]:
    """A fast job every second for ``duration`` s while slow jobs run back to back; fast's latencies."""
    published: dict[str, datetime] = {}
    slow_job = env.submit(["slowjob", str(slow), "s0"])
    env.wait_started(slow_job, 60)
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < duration:
        due = start + i
        time.sleep(max(0.0, due - time.monotonic()))
        t0 = datetime.now(timezone.utc)
        published[env.submit(["fastjob", f"f{i}"])] = t0
        if env.ended(slow_job):
            slow_job = env.submit(["slowjob", str(slow), f"s{i}"])
        i += 1
    lat = [(env.wait_started(task, 2 * slow + 60) - t0).total_seconds() for task, t0 in published.items()]
    env._wait(lambda: env.ended(slow_job), 2 * slow + 60, "the last slow job")
    return lat


def bench_hol(broker: str, workdir: Path, slow: float, duration: float, idle_n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode, lanes in (("lanes", "[jobqueue.commands.lanes]\nfastjob = fast\nslowjob = slow\n"), ("one_lane", "")):
        with broker_url(broker) as url:
            env = Env(workdir / f"hol-{broker}-{mode}", url, HOL_INI.format(broker=url, py=sys.executable,
                                                                          lanes=lanes))
            try:
                env.serve()
                idle_latency(env, 5)                        # warm-up
                idle = idle_latency(env, idle_n)
                loaded = loaded_latency(env, slow, duration)
            finally:
                env.stop()
        out[mode] = {"idle_p50_ms": ms(pct(idle, 50)), "idle_p99_ms": ms(pct(idle, 99)),
                     "fast_p50_ms": ms(pct(loaded, 50)), "fast_p99_ms": ms(pct(loaded, 99)),
                     "fast_max_ms": ms(max(loaded)), "fast_jobs": len(loaded)}
    floor = out["lanes"]["idle_p99_ms"]
    out["p99_over_idle_p99"] = {m: round(out[m]["fast_p99_ms"] / floor, 2) for m in ("lanes", "one_lane")}
    out["goal_lanes_p99_within_2x_idle"] = out["p99_over_idle_p99"]["lanes"] <= 2
    return out


# --------------------------------------------------------------------------- (b) throughput

def write_files(folder: Path, n: int, size: int, prefix: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    body = (b"UNA:+.? '" + b"X" * size)[:size]
    for i in range(n):
        (folder / f"{prefix}{i:06d}.edi").write_bytes(body)


def one_round(broker: str, workdir: Path, lanes: int, files: int, size: int) -> float:
    """Seconds from the first submit to the end of the last run, for ``files`` over ``lanes`` routes."""
    from sqlalchemy import func, select

    from engine.db import session_scope
    from engine.models import Run, RunStatus

    with broker_url(broker) as url:
        env = Env(workdir / f"tp-{broker}-{lanes}-{uuid.uuid4().hex[:4]}", url, FILES_INI.format(broker=url),
                  files_routes(lanes))
        try:
            if lanes == 1:
                env.serve("default")
            else:                                           # two servers of lanes/2 lanes each
                names = [f"l{i}" for i in range(lanes)]
                env.serve(*names[: lanes // 2])
                env.serve(*names[lanes // 2:])
            for i in range(lanes):
                write_files(env.root / f"data/in{i}", files // lanes, size, f"{i}-")
            (env.root / "data/out").mkdir(parents=True, exist_ok=True)
            subprocess.run(["sync"], check=False)
            t0 = time.monotonic()
            env.submit(["bots-engine", "--new", *(f"r{i}" for i in range(lanes))])

            def done() -> bool:
                with session_scope(env.cfg.database_url) as s:
                    finished = s.scalar(select(func.count()).select_from(Run).where(Run.status != RunStatus.RUNNING))
                    return finished == lanes
            env._wait(done, 900, "the runs to end")
            seconds = time.monotonic() - t0
            assert len(os.listdir(env.root / "data/out")) == files
            return seconds
        finally:
            env.stop()
            shutil.rmtree(env.root, ignore_errors=True)


def bench_throughput(broker: str, workdir: Path, files: int, size: int, rounds: int) -> dict[str, Any]:
    times: dict[int, list[float]] = {1: [], 4: []}
    for _ in range(rounds):                                 # alternated: the disk's swings hit both alike
        for lanes in (1, 4):
            times[lanes].append(one_round(broker, workdir, lanes, files, size))
    one, four = statistics.median(times[1]), statistics.median(times[4])
    return {"files": files, "rounds": rounds, "one_lane_s": [round(t, 2) for t in times[1]],
            "four_lanes_s": [round(t, 2) for t in times[4]], "one_lane_files_per_s": round(files / one),
            "four_lanes_files_per_s": round(files / four), "four_over_one": round(one / four, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--brokers", default="rabbitmq,redis")
    ap.add_argument("--slow", type=float, default=20.0, help="seconds of each slow job (default 20; the issue: 60)")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds fast jobs are sent (default 60)")
    ap.add_argument("--idle", type=int, default=30, help="idle fast jobs for the floor (default 30)")
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--skip", choices=["hol", "throughput"], action="append", default=[])
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="botsq-bench-lanes-"))
    results: dict[str, Any] = {}
    try:
        for broker in args.brokers.split(","):
            res: dict[str, Any] = {}
            results[broker] = res
            if "hol" not in args.skip:
                res["hol"] = bench_hol(broker, workdir, args.slow, args.duration, args.idle)
            if "throughput" not in args.skip:
                res["throughput"] = bench_throughput(broker, workdir, args.files, args.size, args.rounds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for broker, res in results.items():
        if "hol" in res:
            h = res["hol"]
            print(f"{broker}: fast publish->start with slow jobs of {args.slow:g} s running, ms (idle p50/p99 | "
                  f"loaded p50/p99/max)")
            for mode in ("lanes", "one_lane"):
                m = h[mode]
                print(f"  {mode:<9} idle {m['idle_p50_ms']:>7} / {m['idle_p99_ms']:<7} | loaded {m['fast_p50_ms']:>9} /"
                      f" {m['fast_p99_ms']:>9} / {m['fast_max_ms']:>9}   p99 / idle p99 (lanes) = "
                      f"{h['p99_over_idle_p99'][mode]}")
            print(f"  goal (lanes p99 within 2x idle p99): {h['goal_lanes_p99_within_2x_idle']}")
        if "throughput" in res:
            t = res["throughput"]
            print(f"{broker}: {t['files']} files: 1 lane on 1 worker {t['one_lane_files_per_s']} files/s "
                  f"{t['one_lane_s']} s; 4 lanes on 2 servers {t['four_lanes_files_per_s']} files/s {t['four_lanes_s']}"
                  f" s; 4 lanes / 1 lane = {t['four_over_one']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
