#!/usr/bin/env python3
"""The web console with 100,000 incoming and 100,000 outgoing records, on SQLite and PostgreSQL.

For each database: records over 30 days (10 routes and channels, ~3 % errors, runs of ~20 files)
are written straight into a fresh tracking database, ``botsq web`` is started as its own process
(waitress, as in production), a user logs in, and each request below is made ``--rounds`` times;
the time is the server's own (its ``Server-Timing`` header), so the client does not count.

* floor: ``/incoming`` unfiltered, page 1 (the newest 50 by primary key: the cheapest list page);
* filtered, paged lists of incoming and outgoing files: by route, by status ``error``/``failed``,
  by part of a name, by channel and route, by a date range, page 40 of a route, marked files;
* ``/api/incoming`` with a filter (the JSON of the same query);
* the dashboard (files per hour over 30 days, the last runs, lanes): the first request of a new
  process (its month was counted at start-up, in the background), the ones after it (hours long
  past kept and counted again in the background every ``[webserver] chart_cache`` = 300 s, the
  last ones counted in each request), and - a second console with ``chart_cache = 0`` - counting
  all 30 days in every request (for comparison);
* the console's resident memory (VmRSS) after all of it.

Goals (issue 13): filtered list p95 < 200 ms, dashboard p95 < 300 ms, RSS < 120 MB. Each p95 is
also printed as a ratio to the floor measured in the same run.

    .venv/bin/python bench/web.py                          # 100,000 + 100,000 records, SQLite and PostgreSQL
    .venv/bin/python bench/web.py --files 20000 --databases sqlite --rounds 10    # a quick one
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
BIN = Path(sys.executable).parent
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
ROUTES = [f"route{i:02d}" for i in range(10)]

INI = """
[settings]
whencleanup = never

[jobqueue]
enabled = False

[webserver]
users = bench:bench-password
chart_cache = {chart_cache}

{database}
"""


def routes_toml() -> str:
    out = []
    for r in ROUTES:
        out.append(f'[channels.{r}_in]\ntype = "file"\npath = "data/in/{r}"\n'
                   f'[channels.{r}_out]\ntype = "file"\npath = "data/out/{r}"\n'
                   f'[routes.{r}]\n[[routes.{r}.parts]]\nfromchannel = "{r}_in"\ntochannel = "{r}_out"\n')
    return "\n".join(out)


def seed(url: str, files: int) -> None:
    """``files`` incoming and as many outgoing records over 30 days, in runs of about 20."""
    from sqlalchemy import insert

    from engine.db import session_scope
    from engine.models import Incoming, Outgoing, Run, utcnow

    rnd = random.Random(13)
    now = utcnow()
    span = timedelta(days=30).total_seconds()
    runs, ins, outs = [], [], []
    run_id = 0
    for i in range(1, files + 1):
        if i % 20 == 1:
            run_id += 1
            started = now - timedelta(seconds=span * (1 - i / files))
            runs.append(dict(id=run_id, commands="new", routes="", host="bench", pid=1, started=started,
                             ended=started + timedelta(seconds=2), status="ok", returncode=0, received=20,
                             processed=20, sent=20))
        created = now - timedelta(seconds=span * (1 - i / files))
        route = ROUTES[rnd.randrange(len(ROUTES))]
        failed = rnd.random() < 0.03
        name = f"{'ORDERS' if rnd.random() < 0.5 else 'INVOIC'}_{rnd.randrange(10**7):07d}.edi"
        ins.append(dict(id=i, run_id=run_id, route=route, channel=f"{route}_in", filename=name, size=2048,
                        checksum="0" * 64, archive_path=f"data/x/{i}", status="error" if failed else "done",
                        error="bench error" if failed else "", rereceive=rnd.random() < 0.001, times_processed=1,
                        created=created, updated=created))
        out_failed = rnd.random() < 0.03
        outs.append(dict(id=i, run_id=run_id, incoming_id=i, route=route, channel=f"{route}_out", filename=name,
                         size=2048, checksum="", store_path=f"data/x/{i}",
                         commstatus="failed" if out_failed else "sent",
                         attempts=1, error="refused" if out_failed else "", resend=False, created=created,
                         sent_at=None if out_failed else created))
    with session_scope(url) as s:
        for table, rows in ((Run, runs), (Incoming, ins), (Outgoing, outs)):
            for k in range(0, len(rows), 2000):
                s.execute(insert(table), rows[k:k + 2000])
    if url.startswith("postgresql"):       # what autovacuum does soon after such a load: the planner's statistics
        from sqlalchemy import text

        from engine.db import get_engine

        with get_engine(url).connect() as conn:
            conn.execute(text("ANALYZE"))
            conn.commit()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, int(round(0.95 * len(values))) - 1)]


def server_ms(resp) -> float:  # type: ignore[no-untyped-def]
    m = re.search(r"dur=([\d.]+)", resp.headers.get("Server-Timing", ""))
    if resp.status_code != 200 or not m:
        raise RuntimeError(f"{resp.url}: HTTP {resp.status_code} {resp.text[:200]}")
    return float(m.group(1))


class Console:
    """``botsq web`` as its own process, with a logged-in session."""

    def __init__(self, configdir: Path) -> None:
        import requests

        port = free_port()
        self.proc = subprocess.Popen([str(BIN / "botsq"), "web", "-c", str(configdir), "--port", str(port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{port}"
        self.session = requests.Session()
        deadline = time.monotonic() + 60
        while True:
            try:
                page = self.session.get(f"{self.base}/login", timeout=5)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("botsq web did not start") from None
                time.sleep(0.2)
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        self.session.post(f"{self.base}/login", allow_redirects=False, timeout=30,
                          data={"username": "bench", "password": "bench-password", "csrf_token": token})

    def ms(self, path: str) -> float:
        return server_ms(self.session.get(self.base + path, timeout=60))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def bench_database(kind: str, files: int, rounds: int, root: Path) -> dict:
    from engine.config import load_config
    from engine.db import dispose_all

    env = root / kind
    (env / "config").mkdir(parents=True)
    db_name = ""
    database = ""
    if kind == "postgres":
        import psycopg

        db_name = f"botsq_bench_web_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{db_name}"')
        database = f"[database]\nurl = postgresql+psycopg://postgres@127.0.0.1:5432/{db_name}\n"
    ini = env / "config" / "bots.ini"
    ini.write_text(INI.format(database=database, chart_cache=300))
    (env / "config" / "routes.toml").write_text(routes_toml())
    con = None
    try:
        cfg = load_config(env / "config")
        t0 = time.perf_counter()
        seed(cfg.database_url, files)
        dispose_all()
        print(f"  {kind}: {files:,} incoming + {files:,} outgoing records written in {time.perf_counter() - t0:.0f} s",
              flush=True)
        con = Console(env / "config")
        day = (time.strftime("%Y-%m-%d", time.localtime(time.time() - 3 * 86400)))
        lists = {
            "route": "/incoming?route=route03",
            "status error": "/incoming?status=error",
            "name part": "/incoming?name=_00042",
            "channel + route": "/incoming?route=route05&channel=route05_in",
            "last 3 days": f"/incoming?since={day}",
            "route, page 40": "/incoming?route=route07&page=40",
            "marked": "/incoming?marked=1",
            "out: failed": "/outgoing?status=failed",
            "out: route + name": "/outgoing?route=route02&name=INVOIC",
            "api: route + status": "/api/incoming?route=route04&status=done&limit=100",
        }
        first = con.ms("/")                                         # a new process: templates, connections, 30 days
        for path in ["/incoming", "/", *lists.values()]:          # warm-up: connections, templates, caches
            con.ms(path)
        floor = [con.ms("/incoming") for _ in range(rounds)]
        per: dict[str, list[float]] = {name: [] for name in lists}
        dash: list[float] = []
        for _ in range(rounds):                                     # rounds interleave the requests
            for name, path in lists.items():
                per[name].append(con.ms(path))
            dash.append(con.ms("/"))
        everything = [v for vs in per.values() for v in vs]
        memory = rss_mb(con.proc.pid)
        con.stop()
        # the dashboard counting all 30 days at every request ([webserver] chart_cache = 0): the worst case
        ini.write_text(INI.format(database=database, chart_cache=0))
        con = Console(env / "config")
        con.ms("/")
        uncached = [con.ms("/") for _ in range(rounds)]
        return {
            "database": kind, "files": files, "rounds": rounds,
            "floor_p95_ms": round(p95(floor), 1),
            "lists": {name: {"p50_ms": round(statistics.median(vs), 1), "p95_ms": round(p95(vs), 1)}
                      for name, vs in per.items()},
            "lists_p95_ms": round(p95(everything), 1),
            "dashboard_first_ms": round(first, 1),
            "dashboard_p50_ms": round(statistics.median(dash), 1), "dashboard_p95_ms": round(p95(dash), 1),
            "dashboard_uncached_p50_ms": round(statistics.median(uncached), 1),
            "dashboard_uncached_p95_ms": round(p95(uncached), 1),
            "rss_mb": round(memory, 1),
        }
    finally:
        if con is not None:
            con.stop()
        dispose_all()
        if db_name:
            import psycopg

            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


def report(r: dict) -> None:
    floor = r["floor_p95_ms"]
    print(f"\n{r['database']}: {r['files']:,} incoming + {r['files']:,} outgoing records, {r['rounds']} rounds, "
          f"server-side ms")
    print(f"  {'request':<22} {'p50':>7} {'p95':>7} {'p95/floor':>10}")
    print(f"  {'floor: /incoming p1':<22} {'':>7} {floor:>7.1f} {1:>10.1f}")
    for name, v in r["lists"].items():
        print(f"  {name:<22} {v['p50_ms']:>7.1f} {v['p95_ms']:>7.1f} {v['p95_ms'] / floor:>10.1f}")
    ok = lambda good: "ok" if good else "MISSED"  # noqa: E731
    print(f"  dashboard: first request of a new process {r['dashboard_first_ms']:.1f}; then p50 "
          f"{r['dashboard_p50_ms']:.1f} / p95 {r['dashboard_p95_ms']:.1f} "
          f"({r['dashboard_p95_ms'] / floor:.1f}x floor); "
          f"with chart_cache = 0 (30 days counted in every request) p50 {r['dashboard_uncached_p50_ms']:.1f} / p95 "
          f"{r['dashboard_uncached_p95_ms']:.1f} ({r['dashboard_uncached_p95_ms'] / floor:.1f}x floor)")
    print(f"  goals: filtered lists p95 {r['lists_p95_ms']:.1f} ms < 200 {ok(r['lists_p95_ms'] < 200)}; "
          f"dashboard p95 {r['dashboard_p95_ms']:.1f} ms < 300 {ok(r['dashboard_p95_ms'] < 300)} "
          f"(first request {ok(r['dashboard_first_ms'] < 300)}); "
          f"console RSS {r['rss_mb']:.0f} MB < 120 {ok(r['rss_mb'] < 120)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100_000, help="incoming records, and as many outgoing (100,000)")
    ap.add_argument("--rounds", type=int, default=30, help="requests of each kind (30)")
    ap.add_argument("--databases", default="sqlite,postgres", help="sqlite, postgres or both (default)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="botsq-bench-web-"))
    results = []
    try:
        for kind in args.databases.split(","):
            results.append(bench_database(kind.strip(), args.files, args.rounds, root))
            report(results[-1])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.pop("BOTSQ_WEB_USERS", None)
    sys.exit(main())
