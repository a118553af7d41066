#!/usr/bin/env python3
"""The overhead botsq adds around a Bots installation's engine (``[engine] kind = bots``), with the
Bots stand-in of the tests (tests/bots_standin.py), against floors measured in the same run:

(a) job published -> engine started, one job at a time on RabbitMQ with a real worker
    (``bots-jobqueueserver``): for ``kind = bots`` the moment the child runs - its command is a
    two-line bash script that stamps ``$EPOCHREALTIME`` (no interpreter start-up of its own, which
    a Python stand-in would add: Bots' own start-up is Bots' cost, not botsq's) - for the built-in
    engine the start of its run record (lock taken, run recorded); p50/p90;
(b) wall time of ``bots-engine -c DIR`` through botsq (lock, run record, child, record) against the
    stand-in called directly with the same arguments: median of N, rounds alternated; beside them the
    floor of any Python wrapper (an interpreter that only imports the stdlib modules one needs).

    .venv/bin/python bench/bots_overhead.py                 # 200 jobs, 20 wall-time rounds
    .venv/bin/python bench/bots_overhead.py --jobs 50 --rounds 10
    .venv/bin/python bench/bots_overhead.py --only b --rounds 40    # one of the two
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
BIN = Path(sys.executable).parent
STANDIN = REPO / "tests" / "bots_standin.py"

from dispatch import rabbit_vhost  # noqa: E402

INI = """
[settings]
lock_heartbeat = 1
[jobqueue]
enabled = True
broker = {broker}
{engine}
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
translate = "passthrough"
tochannel = "out"
"""


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


STAMP = "#!/bin/bash\necho \"$EPOCHREALTIME $*\" >> \"$(dirname \"$0\")/starts.txt\"\n"


def make_env(root: Path, broker: str, bots: bool) -> Path:
    cdir = root / "config"
    cdir.mkdir(parents=True)
    engine = ""
    if bots:                          # the child: a bash script stamping the moment it runs
        stamp = cdir / "stamp-engine"
        stamp.write_text(STAMP)
        stamp.chmod(0o755)
        engine = f"[engine]\nkind = bots\ncommand = {stamp}\n"
    (cdir / "bots.ini").write_text(INI.format(broker=broker, engine=engine))
    if not bots:
        (cdir / "routes.toml").write_text(ROUTES)
        for d in ("data/in", "data/out"):
            (root / d).mkdir(parents=True)
    return cdir


def run_started(url: str, run_id: int) -> float | None:
    from engine.db import session_scope
    from engine.models import Run
    with session_scope(url) as s:
        r = s.get(Run, run_id)
        return None if r is None or r.ended is None else r.started.replace(tzinfo=timezone.utc).timestamp()


def latency(root: Path, broker: str, bots: bool, n: int) -> list[float]:
    cdir = make_env(root, broker, bots)
    env = {**os.environ, "BOTSQ_CONFIG": str(cdir), "BOTSQ_BROKER_URL": broker}
    os.environ.update(BOTSQ_BROKER_URL=broker)
    from engine.config import load_config
    from tasks.jobs import Job
    from tasks.submit import submit
    from sqlalchemy import func, select
    from engine.db import session_scope
    from engine.models import Run
    cfg = load_config(cdir)
    worker = subprocess.Popen([str(BIN / "bots-jobqueueserver"), "-c", str(cdir), "-l", "WARNING"], env=env,
                              cwd=root, stdout=open(root / "worker.out", "wb"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    qlog = root / "botssys" / "logging" / "jobqueue.log"
    deadline = time.monotonic() + 60
    while not (qlog.exists() and "worker ready" in qlog.read_text(errors="replace")):
        if time.monotonic() > deadline or worker.poll() is not None:
            raise RuntimeError((root / "worker.out").read_text()[-2000:])
        time.sleep(0.1)
    out: list[float] = []
    try:
        for i in range(n + 5):                                   # 5 warm-up jobs
            route = f"b{i}"
            t0 = time.time()
            submit(cfg, Job.engine(cdir, ["new"], [route] if bots else []))
            while True:                                          # wait for the run's record to end
                with session_scope(cfg.database_url) as s:
                    done = s.execute(select(func.count()).select_from(Run).where(Run.ended.is_not(None))).scalar()
                if done == i + 1:
                    break
                time.sleep(0.005)
            if bots:
                lines = (cdir / "starts.txt").read_text().splitlines()
                start = next(float(x.split()[0]) for x in lines if x.split()[-1] == route)
            else:
                start = run_started(cfg.database_url, i + 1)
            if i >= 5:
                out.append((start - t0) * 1000)
    finally:
        worker.terminate()
        worker.wait(30)
    return out


# The least any Python wrapper around a child costs: the interpreter's start and the stdlib modules such a
# wrapper needs (its command line, bots.ini, a log, the lock's database, the child, a heartbeat thread).
WRAPPER_FLOOR = "import argparse, configparser, logging, sqlite3, subprocess, threading"


def walltime(root: Path, rounds: int) -> tuple[list[float], list[float], list[float]]:
    """(through botsq, the stand-in directly, the Python wrapper floor) in ms, rounds alternated."""
    cdir = root / "config"
    cdir.mkdir(parents=True)
    (cdir / "bots.ini").write_text(f"[engine]\nkind = bots\ncommand = {sys.executable} {STANDIN}\n")
    via, direct, floor = [], [], []
    for i in range(rounds + 2):
        t0 = time.perf_counter()
        subprocess.run([str(BIN / "bots-engine"), "-c", str(cdir)], check=True, capture_output=True, cwd=root)
        t1 = time.perf_counter()
        subprocess.run([sys.executable, str(STANDIN), "--new", f"-c{cdir}"], check=True, capture_output=True,
                       cwd=root)
        t2 = time.perf_counter()
        subprocess.run([sys.executable, "-c", WRAPPER_FLOOR], check=True, capture_output=True, cwd=root)
        t3 = time.perf_counter()
        if i >= 2:
            via.append((t1 - t0) * 1000)
            direct.append((t2 - t1) * 1000)
            floor.append((t3 - t2) * 1000)
    return via, direct, floor


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--only", choices=("a", "b"), help="measure only (a) or only (b)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="botsq-bench-bots-") as tmp:
        if args.only != "a":
            via, direct, floor = walltime(Path(tmp) / "wall", args.rounds)
            added = statistics.median(via) - statistics.median(direct)
            print(f"(b) wall time, median of {args.rounds}: bots-engine through botsq {statistics.median(via):.0f} ms, "
                  f"stand-in directly {statistics.median(direct):.0f} ms, botsq adds {added:.0f} ms; "
                  f"a Python process only importing what a wrapper needs ({WRAPPER_FLOOR[7:]}) "
                  f"{statistics.median(floor):.0f} ms, so botsq's own code adds "
                  f"{added - statistics.median(floor):.0f} ms")
        if args.only == "b":
            return 0
        broker, drop = rabbit_vhost()
        try:
            builtin = latency(Path(tmp) / "builtin", broker, False, args.jobs)
            bots = latency(Path(tmp) / "bots", broker, True, args.jobs)
        finally:
            drop()
        print(f"(a) published -> engine started over {args.jobs} jobs (RabbitMQ): built-in p50 "
              f"{pct(builtin, 50):.1f} ms p90 {pct(builtin, 90):.1f} ms; Bots stand-in p50 {pct(bots, 50):.1f} ms "
              f"p90 {pct(bots, 90):.1f} ms; difference of p50s {pct(bots, 50) - pct(builtin, 50):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
