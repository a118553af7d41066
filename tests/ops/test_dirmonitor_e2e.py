"""Directory monitor end to end: bots-dirmonitor and a Celery worker as real processes on a real
RabbitMQ; files written slowly, moved in, dropped in a burst; each processed once by its route."""
from __future__ import annotations

import json
import os
import time
from collections import Counter

import pytest

from e2e_procs import dirmonitor, wait_for, worker, worker_ready

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

ROUTES = """
[channels.a_in]
type = "file"
path = "data/in/a"
filemask = "*.edi"
remove = true
[channels.a_out]
type = "file"
path = "data/out/a"
filename = "{infile}"
[channels.b_in]
type = "file"
path = "data/in/b"
remove = true
[channels.b_out]
type = "file"
path = "data/out/b"
filename = "{infile}"

[routes.ra]
notindefaultrun = true
[[routes.ra.parts]]
fromchannel = "a_in"
tochannel = "a_out"
[routes.rb]
notindefaultrun = true
[[routes.rb.parts]]
fromchannel = "b_in"
tochannel = "b_out"
"""


def incoming(cfg) -> list[tuple[str, str, int | None]]:
    from sqlalchemy import select

    from engine.db import session_scope
    from engine.models import Incoming

    with session_scope(cfg.database_url) as s:
        return [(r.filename, r.route, r.run_id) for r in s.scalars(select(Incoming)).all()]


def runs(cfg) -> list[tuple[int, str, float]]:
    from sqlalchemy import select

    from engine.db import session_scope
    from engine.models import Run

    with session_scope(cfg.database_url) as s:
        return [(r.id, r.routes, r.started.replace(tzinfo=__import__("datetime").UTC).timestamp())
                for r in s.scalars(select(Run)).all()]


def test_files_slow_moved_and_burst_each_processed_once_by_its_route(make_env, module_vhost, tmp_path):
    ini = f"""
    [settings]
    whencleanup = never
    [jobqueue]
    enabled = True
    broker = {module_vhost}
    [dirmonitor1]
    path = data/in/a
    filemask = *.edi
    route = ra
    priority = 3
    debounce = 0.3
    [dirmonitor2]
    path = data/in/b
    route = rb
    debounce = 0.3
    """
    env = make_env(ini=ini, routes=ROUTES)
    for d in ("data/in/a", "data/in/b", "data/out/a", "data/out/b"):
        env.path(d).mkdir(parents=True, exist_ok=True)
    cfg = env.config()
    w = worker(env.root, env.configdir, module_vhost)
    m = dirmonitor(env.root, env.configdir, module_vhost)
    procs = [w, m]
    try:
        wait_for(lambda: worker_ready(w), 60, "the worker", procs)
        hb = env.root / "botssys" / "dirmonitor.heartbeat"
        wait_for(lambda: hb.exists() and json.loads(hb.read_text())["state"] == "running", 30, "the monitor", procs)

        # 1. written slowly in chunks: no run before the writer closes it
        content = b"".join(b"UNB+chunk %d'\n" % i for i in range(3))
        with open(env.path("data/in/a/slow.edi"), "wb") as fh:
            for i in range(3):
                fh.write(b"UNB+chunk %d'\n" % i)
                fh.flush()
                time.sleep(0.5)
            assert runs(cfg) == [], "a run started while the file was still being written"
        closed = time.time()
        wait_for(lambda: env.path("data/out/a/slow.edi").exists(), 30, "slow.edi processed", procs)
        assert env.path("data/out/a/slow.edi").read_bytes() == content
        first = min(started for _id, _r, started in runs(cfg))
        assert first >= closed - 0.05

        # 2. moved in from another folder (watchdog: a bare "created") and renamed inside
        outside = tmp_path / "outside"
        outside.mkdir()
        for name in ("m1.dat", "m2.dat"):
            (outside / name).write_bytes(name.encode())
            os.rename(outside / name, env.path(f"data/in/b/{name}"))
        env.drop("data/in/a/r1.tmp", b"renamed")
        os.rename(env.path("data/in/a/r1.tmp"), env.path("data/in/a/r1.edi"))

        # 3. a burst
        burst = [f"b{i:04d}.edi" for i in range(300)]
        for name in burst:
            env.drop(f"data/in/a/{name}", name.encode())

        want_a = {"slow.edi", "r1.edi", *burst}
        wait_for(lambda: len(os.listdir(env.path("data/out/a"))) == len(want_a)
                 and len(os.listdir(env.path("data/out/b"))) == 2, 90, "every file processed", procs)
        time.sleep(1.0)                                  # anything left to run twice would show now
        rows = incoming(cfg)
        counts = Counter(name for name, _route, _run in rows)
        assert {n for n, c in counts.items() if c != 1} == set()
        assert {(n, r) for n, r, _ in rows} == {(n, "ra") for n in want_a} | {("m1.dat", "rb"), ("m2.dat", "rb")}
        assert set(os.listdir(env.path("data/in/a"))) == set() and set(os.listdir(env.path("data/in/b"))) == set()
        ra_runs = [r for r in runs(cfg) if r[1] == "ra"]
        assert len(ra_runs) <= 12, f"{len(ra_runs)} runs for 300 files"

        # 4. SIGTERM: a clean stop
        assert m.stop() == 0
        assert json.loads(hb.read_text())["state"] == "stopped"
        log = (env.root / "botssys/logging/dirmonitor.log").read_text()
        assert "stopped" in log and "Traceback" not in log
    finally:
        for p in procs:
            p.stop()


def test_broker_down_at_first_the_trigger_is_kept(make_env, module_vhost):
    """Nothing answers at the broker's address: the monitor logs it and retries; once the broker
    answers there (a TCP forwarder to the real RabbitMQ, started later) the job is queued."""
    import socket
    import threading

    from conftest import free_port

    port = free_port()
    url = f"amqp://guest:guest@127.0.0.1:{port}/{module_vhost.rsplit('/', 1)[1]}"
    ini = f"""
    [jobqueue]
    enabled = True
    broker = {url}
    connect_timeout = 1
    [dirmonitor1]
    path = data/in/a
    filemask = *.edi
    route = ra
    debounce = 0.2
    """
    env = make_env(ini=ini, routes=ROUTES)
    env.path("data/in/a").mkdir(parents=True)
    m = dirmonitor(env.root, env.configdir, url)
    stop = threading.Event()
    try:
        hb = env.root / "botssys" / "dirmonitor.heartbeat"
        wait_for(lambda: hb.exists(), 30, "the monitor", [m])
        env.drop("data/in/a/x.edi", b"x")
        log = env.root / "botssys/logging/dirmonitor.log"
        wait_for(lambda: log.exists() and "not queued" in log.read_text(), 20, "a logged publish failure", [m])

        # the broker "comes back": forward the port to the real RabbitMQ
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", port))
        srv.listen(16)
        srv.settimeout(0.2)

        def pipe(a: socket.socket, b: socket.socket) -> None:
            try:
                while not stop.is_set():
                    data = a.recv(65536)
                    if not data:
                        break
                    b.sendall(data)
            except OSError:
                pass
            finally:
                for s in (a, b):
                    try:
                        s.close()
                    except OSError:
                        pass

        def serve() -> None:
            while not stop.is_set():
                try:
                    c, _ = srv.accept()
                except OSError:
                    continue
                u = socket.create_connection(("127.0.0.1", 5672))
                threading.Thread(target=pipe, args=(c, u), daemon=True).start()
                threading.Thread(target=pipe, args=(u, c), daemon=True).start()
            srv.close()

        threading.Thread(target=serve, daemon=True).start()
        wait_for(lambda: "job added" in log.read_text(), 40, "the job queued after the broker came back", [m])
        assert "failed attempt" in log.read_text()
    finally:
        stop.set()
        m.stop()
