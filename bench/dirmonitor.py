"""Directory monitor speed: from a file's close to the start of its engine job.

    .venv/bin/python bench/dirmonitor.py [--files 200] [--burst 10000] [--debounce 0.5]
                                         [--broker amqp://guest:guest@127.0.0.1:5672//]

It writes a throw-away environment (one passthrough route, ``[dirmonitor1]`` on its in-folder),
starts a Celery worker (``celery -A tasks worker -Q engine -c 1``) and ``bots-dirmonitor`` as
real processes on a real broker (a vhost of its own on RabbitMQ), then

1. drops ``--files`` files one at a time (the next one after the previous one's run ended) and
   measures, per file, close -> start of the engine run that received it (``runs.started``);
2. drops ``--burst`` files at once and measures the time until the last one is processed
   (in the out-folder), with the number of engine runs it took.

The result is printed beside Bots' design floor (a fixed 2 s debounce plus up to 5 s until the
job queue server launches the job) and written as JSON with ``--json FILE``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ROUTES = """
[channels.in]
type = "file"
path = "data/in"
filemask = "*.edi"
remove = true
[channels.out]
type = "file"
path = "data/out"
filename = "{infile}"
[routes.bench]
notindefaultrun = true
[[routes.bench.parts]]
fromchannel = "in"
translate = "passthrough"
tochannel = "out"
"""


def ini(broker: str, debounce: float) -> str:
    return f"""[settings]
whencleanup = never
[jobqueue]
enabled = True
broker = {broker}
[dirmonitor1]
path = data/in
filemask = *.edi
route = bench
priority = 5
debounce = {debounce}
"""


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(p / 100 * (len(s) - 1))))
    return s[k]


class Stack:
    def __init__(self, root: Path, broker: str) -> None:
        self.root, self.broker = root, broker
        self.cdir = root / "config"
        env = {**os.environ, "BOTSQ_CONFIG": str(self.cdir), "BOTSQ_BROKER_URL": broker}
        bindir = Path(sys.executable).parent
        (root / "procs").mkdir(exist_ok=True)
        self.logs = [open(root / "procs" / f"{n}.out", "wb") for n in ("worker", "dirmonitor")]
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-Q", "engine", "-c", "1", "--loglevel", "INFO",
             "-n", f"bench-{uuid.uuid4().hex[:6]}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat"],
            env=env, cwd=root, stdout=self.logs[0], stderr=subprocess.STDOUT)
        self.monitor = subprocess.Popen([str(bindir / "bots-dirmonitor"), "-c", str(self.cdir)], env=env, cwd=root,
                                        stdout=self.logs[1], stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        hb = self.root / "botssys" / "dirmonitor.heartbeat"
        while time.monotonic() < end:
            out = (self.root / "procs" / "worker.out").read_text(errors="replace")
            if "ready." in out and hb.exists():
                return
            for p in (self.worker, self.monitor):
                if p.poll() is not None:
                    raise SystemExit(f"a process exited early; see {self.root / 'procs'}")
            time.sleep(0.1)
        raise SystemExit(f"worker/monitor not ready in {timeout} s; see {self.root / 'procs'}")

    def stop(self) -> None:
        for p in (self.monitor, self.worker):
            if p.poll() is None:
                p.terminate()
        for p in (self.monitor, self.worker):
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        for fh in self.logs:
            fh.close()


def run_started_for(cfg, filename: str) -> tuple[float, bool, float] | None:
    """(start of the run that received ``filename``, whether it ended, when it was received) or None."""
    from sqlalchemy import select

    from engine.db import session_scope
    from engine.models import Incoming, Run

    with session_scope(cfg.database_url) as s:
        row = s.execute(select(Run.started, Run.ended, Incoming.created).join(Incoming, Incoming.run_id == Run.id)
                        .where(Incoming.filename == filename)).first()
    if row is None:
        return None
    return row[0].replace(tzinfo=UTC).timestamp(), row[1] is not None, row[2].replace(tzinfo=UTC).timestamp()


def count_runs(cfg) -> int:
    from sqlalchemy import func, select

    from engine.db import session_scope
    from engine.models import Run

    with session_scope(cfg.database_url) as s:
        return int(s.scalar(select(func.count()).select_from(Run)) or 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--burst", type=int, default=10000)
    ap.add_argument("--debounce", type=float, default=0.5)
    ap.add_argument("--broker", default=os.environ.get("BOTSQ_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"))
    ap.add_argument("--settle", type=float, default=None,
                    help="the in-channel's settle (seconds; default: its type's, engine/channels/types.py)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures here")
    ap.add_argument("--keep", action="store_true", help="keep the environment folder")
    args = ap.parse_args()

    vhost = None
    broker = args.broker
    if broker.startswith("amqp") and shutil.which("rabbitmqctl"):
        vhost = f"botsq-bench-{uuid.uuid4().hex[:8]}"
        subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, capture_output=True)
        subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
                       check=True, capture_output=True)
        host_end = broker.find("/", broker.index("://") + 3)
        broker = (broker if host_end < 0 else broker[:host_end]) + "/" + vhost
    root = Path(tempfile.mkdtemp(prefix="botsq-bench-"))
    (root / "config").mkdir()
    (root / "config" / "bots.ini").write_text(ini(broker, args.debounce))
    (root / "config" / "routes.toml").write_text(
        ROUTES if args.settle is None else ROUTES.replace("[channels.out]", f"settle = {args.settle}\n\n[channels.out]"))
    for d in ("data/in", "data/out"):
        (root / d).mkdir(parents=True)
    os.environ["BOTSQ_BROKER_URL"] = broker
    from engine.config import load_config

    cfg = load_config(root / "config")
    stack = Stack(root, broker)
    result: dict = {"debounce_s": args.debounce, "files": args.files, "burst": args.burst}
    ok = False
    try:
        stack.wait_ready()
        # warm-up: the first run creates tables, imports the engine
        for name in ("warmup1.edi", "warmup2.edi"):
            (root / "data/in" / name).write_bytes(b"x")
            while (r := run_started_for(cfg, name)) is None or not r[1]:
                time.sleep(0.02)

        lat: list[float] = []
        got: list[float] = []
        for i in range(args.files):
            name = f"one{i:05d}.edi"
            with open(root / "data/in" / name, "wb") as fh:
                fh.write(b"UNB+bench'%d\n" % i)
            closed = time.time()
            deadline = time.monotonic() + 60
            while True:
                r = run_started_for(cfg, name)
                if r is not None and r[1]:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"{name} not processed in 60 s; see {root / 'procs'}")
                time.sleep(0.01)
            lat.append(r[0] - closed)
            got.append(r[2] - closed)
            time.sleep(0.05)
        result["one_at_a_time"] = {
            "p50_s": round(statistics.median(lat), 4), "p99_s": round(pct(lat, 99), 4),
            "min_s": round(min(lat), 4), "max_s": round(max(lat), 4), "goal_p50_s": args.debounce + 0.05,
        }
        result["one_at_a_time"]["received_p50_s"] = round(statistics.median(got), 4)
        print(f"one at a time ({args.files} files): close -> engine run start  p50 {statistics.median(lat):.3f} s  "
              f"p99 {pct(lat, 99):.3f} s  (min {min(lat):.3f}, max {max(lat):.3f}; goal p50 < {args.debounce + 0.05:.2f} s)")
        print(f"  close -> file received by that run (after readiness's settle)  p50 {statistics.median(got):.3f} s")

        if args.burst:
            runs_before = count_runs(cfg)
            out = root / "data/out"
            already = len(os.listdir(out))
            t0 = time.time()
            for i in range(args.burst):
                with open(root / "data/in" / f"burst{i:06d}.edi", "wb") as fh:
                    fh.write(b"UNB+burst'%d\n" % i)
            written = time.time() - t0
            deadline = time.monotonic() + 1800
            while len(os.listdir(out)) < already + args.burst:
                if time.monotonic() > deadline:
                    raise SystemExit("burst not processed in 30 min")
                time.sleep(0.1)
            took = time.time() - t0
            time.sleep(max(2 * args.debounce, 1.0))
            runs = count_runs(cfg) - runs_before
            result["burst_result"] = {"files": args.burst, "written_in_s": round(written, 2),
                                      "last_processed_after_s": round(took, 2), "engine_runs": runs,
                                      "files_per_s": round(args.burst / took, 1)}
            print(f"burst of {args.burst} files (written in {written:.1f} s): last processed after {took:.1f} s "
                  f"({args.burst / took:.0f} files/s) in {runs} engine runs")
        result["bots_design_floor_s"] = {"debounce": 2.0, "launch_wait_max": 5.0, "min": 2.0, "max": 7.0}
        print("Bots' design floor: 2 s fixed debounce + up to 5 s job-queue launch wait = 2.0 .. 7.0 s per file")
        ok = True
    finally:
        stack.stop()
        if vhost:
            subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True)
        if ok and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"environment kept: {root}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
