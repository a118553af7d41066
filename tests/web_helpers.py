"""Helpers for the web console tests: an environment with files, the console served on a free port in
this process (werkzeug's threaded server: it stops cleanly between tests; ``botsq web`` itself, with
waitress, is tested as a process), and logged-in HTTP sessions (requests)."""
from __future__ import annotations

import dataclasses
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

import requests
from sqlalchemy import func, insert, select
from werkzeug.serving import make_server

from conftest import Env, free_port
from engine.config.webserver import load_webserver_settings
from engine.db import session_scope
from engine.models import Incoming, Outgoing, Run, utcnow
from ops.web.app import create_app

USERS = "ops:ops-secret-pw, viewer:viewer-secret-pw"
WEB_INI = """
[settings]
maxruntime = 60
whencleanup = never

[jobqueue]
enabled = {enabled}
broker = {broker}
connect_timeout = 3

[webserver]
users = {users}
readonly = {readonly}
"""

# two routes on their own in-channels, so filters by route and channel narrow
WEB_ROUTES = """
[channels.orders_in]
type = "file"
path = "data/in/orders"
filemask = "*"
remove = true

[channels.orders_out]
type = "file"
path = "data/out/orders"
filename = "{infile}"

[channels.invoices_in]
type = "file"
path = "data/in/invoices"
filemask = "*"
remove = true

[channels.invoices_out]
type = "file"
path = "data/out/invoices"
filename = "{infile}"

[routes.orders]
[[routes.orders.parts]]
fromchannel = "orders_in"
translate = "passthrough"
tochannel = "orders_out"

[routes.invoices]
[[routes.invoices.parts]]
fromchannel = "invoices_in"
translate = "passthrough"
tochannel = "invoices_out"
"""

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def web_ini(broker: str = "amqp://guest:guest@127.0.0.1:1//", enabled: bool = False, users: str = USERS,
            extra: str = "", readonly: str | None = None) -> str:
    if readonly is None:
        readonly = "viewer" if "viewer:" in users else ""
    return WEB_INI.format(broker=broker, enabled=enabled, users=users, readonly=readonly) + extra


def make_web_env(make_env: Callable[..., Env], **kw: object) -> Env:
    extra_routes = str(kw.pop("routes_extra", ""))
    env = make_env(ini=web_ini(**kw), routes=WEB_ROUTES + extra_routes)  # type: ignore[arg-type]
    for d in ("data/in/orders", "data/in/invoices", "data/out/orders", "data/out/invoices"):
        env.path(d).mkdir(parents=True, exist_ok=True)
    return env


def run_engine(env: Env, files: dict[str, bytes | str], *argv: str) -> None:
    """Drop ``files`` (relative path -> content) and run bots-engine over them."""
    for rel, content in files.items():
        env.drop(rel, content)
    res = env.run(*argv)
    assert res.returncode in (0, 2), res.stdout + res.stderr


@contextmanager
def serve(env: Env, clock: Callable[[], float] | None = None, **settings_kw: object) -> Iterator[str]:
    """The console of ``env`` on a free 127.0.0.1 port in a thread; yields its base URL."""
    cfg = env.config()
    settings = dataclasses.replace(load_webserver_settings(cfg, "127.0.0.1", free_port()), **settings_kw)
    app = create_app(cfg, settings, clock=clock or time.monotonic)
    server = make_server("127.0.0.1", settings.port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{settings.port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def csrf_of(html: str) -> str:
    m = CSRF.search(html)
    assert m, "no CSRF token on the page"
    return m.group(1)


def login(base: str, user: str = "ops", password: str = "ops-secret-pw") -> requests.Session:
    s = requests.Session()
    page = s.get(f"{base}/login", timeout=30)
    r = s.post(f"{base}/login", data={"username": user, "password": password, "csrf_token": csrf_of(page.text)},
               allow_redirects=False, timeout=30)
    assert r.status_code == 303, (r.status_code, r.text[:500])
    return s


def token(s: requests.Session, base: str, path: str = "/") -> str:
    """A CSRF token of the session (from any page with a form)."""
    return csrf_of(s.get(f"{base}{path}", timeout=30).text)


def seed_history(url: str, days: int = 30, seed: int = 7) -> int:
    """Records of earlier runs over ``days`` days (a busy day shape, a few errors), so the charts,
    lists and pages have a history to show; returns the number of incoming files added. Records
    only (no stored content): the pages say so for these files."""
    rnd = random.Random(seed)
    now = utcnow()
    with session_scope(url) as s:
        rid = (s.scalar(select(func.max(Run.id))) or 0) + 1
        iid = (s.scalar(select(func.max(Incoming.id))) or 0) + 1
        oid = (s.scalar(select(func.max(Outgoing.id))) or 0) + 1
    runs: list[dict] = []
    ins: list[dict] = []
    outs: list[dict] = []
    t = now - timedelta(days=days)
    while t < now - timedelta(hours=1):
        busy = 1.0 if 6 <= t.hour <= 17 else 0.3
        n = max(0, int(rnd.gauss(8 * busy, 3)))
        route = rnd.choice(["orders", "invoices"])
        errors = 0
        for _ in range(n):
            failed = rnd.random() < 0.03
            errors += failed
            name = f"PO_{rnd.randint(40000, 99999)}.edi" if route == "orders" else f"INV_{rnd.randint(6000, 9999)}.edi"
            ins.append(dict(id=iid, run_id=rid, route=route, channel=f"{route}_in", filename=name,
                            size=rnd.randint(400, 9000), status="error" if failed else "done", times_processed=1,
                            error="mapping: segment NAD+BY missing" if failed else "",
                            created=t, updated=t + timedelta(seconds=1)))
            if not failed:
                lost = rnd.random() < 0.01
                errors += lost
                outs.append(dict(id=oid, run_id=rid, incoming_id=iid, route=route, channel=f"{route}_out",
                                 filename=name, size=rnd.randint(300, 8000), store_path=f"outfiles/{oid}",
                                 commstatus="failed" if lost else "sent", attempts=1,
                                 error="connection refused" if lost else "", created=t + timedelta(seconds=1),
                                 sent_at=None if lost else t + timedelta(seconds=2)))
                oid += 1
            iid += 1
        if n:
            runs.append(dict(id=rid, commands="new", routes=route if rnd.random() < 0.3 else "", host="edi-01",
                             pid=rnd.randint(2000, 60000), started=t, ended=t + timedelta(seconds=rnd.uniform(0.3, 4)),
                             status="errors" if errors else "ok", returncode=2 if errors else 0, received=n,
                             processed=n, sent=n - errors, file_errors=errors, comm_errors=0))
            rid += 1
        t += timedelta(minutes=rnd.choice([20, 30, 40]))
    with session_scope(url) as s:
        for table, rows in ((Run, runs), (Incoming, ins), (Outgoing, outs)):
            for i in range(0, len(rows), 500):
                s.execute(insert(table), rows[i:i + 500])
    return len(ins)
