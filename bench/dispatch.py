#!/usr/bin/env python3
"""Job queue dispatch speed on RabbitMQ and on Redis, each against its floor.

For each broker, with a real worker (``bots-jobqueueserver``) on a vhost / database of its own:

(a) idle-worker latency: N jobs, one at a time (each after the previous ended), from just before
    ``submit()`` (registry insert + publish, publisher confirm on RabbitMQ) to the job's start as
    the worker records it (its registry claim, the first step of every job): p50 / p99;
(b) gap: N jobs queued while the worker is busy, then run back to back: the median time from
    one job's recorded end to the next one's recorded start;
(c) the floor: a bare kombu publish -> consume loop on the same broker (a consumer process,
    prefetch 1, manual ack - the same delivery mode), measured the same two ways;
(d) ``bots-job2queue`` wall time (a fresh process), median of 10;
(e) the worker's RSS (main process + pool process) after the runs.

The jobs are ``bots.command`` jobs running ``/bin/true`` (the engine is not what is measured).

    .venv/bin/python bench/dispatch.py                       # 500 jobs, RabbitMQ and Redis
    .venv/bin/python bench/dispatch.py --jobs 200 --brokers redis --json dispatch.json
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
BIN = Path(sys.executable).parent

INI = """
[settings]
whencleanup = never

[jobqueue]
enabled = True
broker = {broker}

[jobqueue.commands]
noop = /bin/true
hold = /bin/sleep
"""

ROUTES = """
[channels.in]
type = "file"
path = "data/in"
[channels.out]
type = "file"
path = "data/out"
[routes.r1]
[[routes.r1.parts]]
fromchannel = "in"
tochannel = "out"
"""


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def ms(x: float) -> float:
    return round(x * 1000, 2)


# --------------------------------------------------------------------------- brokers

def rabbit_vhost() -> tuple[str, callable]:
    vhost = f"botsq-bench-{uuid.uuid4().hex[:6]}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], check=True,
                   capture_output=True)
    return (f"amqp://guest:guest@127.0.0.1:5672/{vhost}",
            lambda: subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True))


def redis_db(db: int) -> tuple[str, callable]:
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=db)
    client.flushdb()
    return f"redis://127.0.0.1:6379/{db}", client.flushdb


# --------------------------------------------------------------------------- the floor

def _floor_consumer(url: str, transport_options: dict, queue: str, conn_pipe, mode: str, n: int) -> None:
    from kombu import Connection, Queue

    times: list[tuple[float, float]] = []
    got = [0]
    with Connection(url, transport_options=transport_options) as conn:
        q = Queue(queue, routing_key=queue, queue_arguments={"x-max-priority": 10})

        def on_message(body, message):  # noqa: ANN001
            t_recv = time.time()
            message.ack()
            t_ack = time.time()
            got[0] += 1
            if mode == "latency":
                conn_pipe.send(t_recv)
            else:
                times.append((t_recv, t_ack))

        consumer = conn.Consumer(q, callbacks=[on_message], accept=["json"])
        consumer.qos(prefetch_count=1)          # as the worker: one unacknowledged message at a time
        consumer.consume()
        conn_pipe.send("ready")
        while got[0] < n:
            conn.drain_events(timeout=30)
        consumer.cancel()
    if mode == "gap":
        conn_pipe.send(times)


def floor(url: str, transport_options: dict, n: int) -> dict[str, float]:
    from kombu import Connection, Producer, Queue

    queue = f"floor-{uuid.uuid4().hex[:6]}"
    out: dict[str, float] = {}
    ctx = multiprocessing.get_context("fork")
    with Connection(url, transport_options=transport_options) as conn:
        q = Queue(queue, routing_key=queue, queue_arguments={"x-max-priority": 10})
        q(conn.default_channel).declare()
        prod = Producer(conn, serializer="json")
        # latency: one message at a time to an idle consumer
        a, b = ctx.Pipe()
        p = ctx.Process(target=_floor_consumer, args=(url, transport_options, queue, b, "latency", n))
        p.start()
        assert a.recv() == "ready"
        lat = []
        for i in range(n):
            t0 = time.time()
            prod.publish({"i": i}, routing_key=queue, exchange="", priority=5)
            lat.append(a.recv() - t0)
        p.join(30)
        # gap: n messages waiting, then consumed back to back
        for i in range(n):
            prod.publish({"i": i}, routing_key=queue, exchange="", priority=5)
        a, b = ctx.Pipe()
        p = ctx.Process(target=_floor_consumer, args=(url, transport_options, queue, b, "gap", n))
        p.start()
        assert a.recv() == "ready"
        times = a.recv()
        p.join(30)
        try:
            q(conn.default_channel).delete()
        except Exception:  # noqa: BLE001
            pass
    gaps = [times[i + 1][0] - times[i][1] for i in range(len(times) - 1)]
    out.update(p50=ms(pct(lat, 50)), p99=ms(pct(lat, 99)), gap=ms(statistics.median(gaps)))
    return out


# --------------------------------------------------------------------------- botsq

def started_ended(cfg, task_id: str) -> tuple[datetime, datetime] | None:
    from tasks import registry
    from engine.db import session_scope

    with session_scope(cfg.database_url) as s:
        row = s.get(registry.StartedJob, task_id)
        if row is None or row.ended is None:
            return None
        return row.started.replace(tzinfo=timezone.utc), row.ended.replace(tzinfo=timezone.utc)


def wait_done(cfg, task_id: str, timeout: float = 60) -> tuple[datetime, datetime]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = started_ended(cfg, task_id)
        if got:
            return got
        time.sleep(0.001)
    raise TimeoutError(f"job {task_id} did not finish")


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def bench_broker(name: str, url: str, n: int, workdir: Path) -> dict:
    root = workdir / name
    (root / "config").mkdir(parents=True)
    (root / "config" / "bots.ini").write_text(INI.format(broker=url))
    (root / "config" / "routes.toml").write_text(ROUTES)
    env = {**os.environ, "BOTSQ_CONFIG": str(root / "config"), "BOTSQ_BROKER_URL": url}
    os.environ.update({"BOTSQ_CONFIG": str(root / "config"), "BOTSQ_BROKER_URL": url})
    from engine.config import load_config
    from tasks.celeryapp import app_for, transport_options
    from tasks.jobs import Job
    from tasks.submit import submit

    cfg = load_config(root / "config")
    log = open(root / "worker.out", "wb")
    worker = subprocess.Popen([str(BIN / "bots-jobqueueserver"), "-c", str(cfg.configdir), "-l", "WARNING"],
                              env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    result: dict = {"broker": name}
    try:
        qlog = root / "botssys" / "logging" / "jobqueue.log"
        deadline = time.monotonic() + 60
        while not (qlog.exists() and "worker ready" in qlog.read_text(errors="replace")):
            if time.monotonic() > deadline or worker.poll() is not None:
                raise RuntimeError(f"worker did not start: {(root / 'worker.out').read_text()[-2000:]}")
            time.sleep(0.1)

        def job(i: int | str) -> Job:
            return Job.command(cfg.configdir, "noop", (str(i),))

        for i in range(20):                               # warm-up
            wait_done(cfg, submit(cfg, job(f"w{i}")).task_id)
        # (a) latency
        lat, pub = [], []
        for i in range(n):
            t0 = datetime.now(timezone.utc)
            res = submit(cfg, job(f"l{i}"))
            pub.append((datetime.now(timezone.utc) - t0).total_seconds())
            st, _en = wait_done(cfg, res.task_id)
            lat.append((st - t0).total_seconds())
        result["latency"] = {"p50": ms(pct(lat, 50)), "p99": ms(pct(lat, 99)), "publish_p50": ms(pct(pub, 50))}
        # (b) gap: the worker busy with a 3 s job while n jobs are queued
        hold = submit(cfg, Job.command(cfg.configdir, "hold", ("3",)))
        ids = [submit(cfg, job(f"g{i}")).task_id for i in range(n)]
        spans = sorted(wait_done(cfg, t, 120) for t in ids)
        gaps = [(spans[i + 1][0] - spans[i][1]).total_seconds() for i in range(len(spans) - 1)]
        wait_done(cfg, hold.task_id)
        result["gap"] = {"median": ms(statistics.median(gaps)), "p99": ms(pct(gaps, 99)),
                         "jobs_per_s": round(len(spans) / (spans[-1][1] - spans[0][0]).total_seconds(), 1)}
        # (d) bots-job2queue wall time
        walls = []
        for i in range(10):
            t0 = time.monotonic()
            r = subprocess.run([str(BIN / "bots-job2queue"), "-c", str(cfg.configdir), "noop", f"cli{i}"],
                               env=env, capture_output=True, text=True)
            walls.append(time.monotonic() - t0)
            assert r.returncode == 0, r.stderr
        result["job2queue_wall_ms"] = ms(statistics.median(walls))
        # (e) worker RSS
        time.sleep(0.5)
        result["worker_rss_mb"] = {"main": round(rss_kb(worker.pid) / 1024, 1),
                                   "pool": round(sum(rss_kb(c) for c in children(worker.pid)) / 1024, 1)}
        # (c) the floor, same broker
        result["floor"] = floor(url, transport_options(cfg), n)
        app_for(cfg).pool.force_close_all()
    finally:
        worker.terminate()
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
        log.close()
    f = result["floor"] if "floor" in result else None
    if f:
        result["goal"] = {"p50_within_2x_floor_plus_5ms": result["latency"]["p50"] <= 2 * f["p50"] + 5,
                          "gap_under_10ms": result["gap"]["median"] < 10}
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=500)
    ap.add_argument("--brokers", default="rabbitmq,redis")
    ap.add_argument("--redis-db", type=int, default=12, help="Redis database to use (flushed!)")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="botsq-bench-dispatch-"))
    results = []
    try:
        for name in args.brokers.split(","):
            url, cleanup = rabbit_vhost() if name == "rabbitmq" else redis_db(args.redis_db)
            try:
                results.append(bench_broker(name, url, args.jobs, workdir))
            finally:
                cleanup()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{'broker':<9} {'publish->start p50/p99 ms':>26} {'floor p50/p99':>14} {'gap ms':>7} {'floor gap':>9} "
          f"{'jobs/s':>7} {'job2queue ms':>12} {'worker RSS MB':>14}")
    for r in results:
        lat, f, g = r["latency"], r["floor"], r["gap"]
        print(f"{r['broker']:<9} {lat['p50']:>12} / {lat['p99']:<11} {f['p50']:>6} / {f['p99']:<5} {g['median']:>7} "
              f"{f['gap']:>9} {g['jobs_per_s']:>7} {r['job2queue_wall_ms']:>12} "
              f"{r['worker_rss_mb']['main']:>6}+{r['worker_rss_mb']['pool']:<6}  goals {r['goal']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
