"""The web console's parts without a server: throttle, users, content preview, charts, the chart cache;
a Bots site's pages through Flask's test client."""
from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert

from engine.config.webserver import WebServerSettings, WebUser
from engine.db import session_scope
from engine.models import Incoming, utcnow
from engine.records import Bucket, activity
from ops.web import charts
from ops.web.preview import preview
from ops.web.queries import ActivityCache
from ops.web.throttle import LoginThrottle
from ops.web.users import Users, hash_password


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_throttle_waits_longer_after_each_failure_and_forgets_after_the_window() -> None:
    clock = Clock()
    t = LoginThrottle(clock, free=3, base=1.0, ceiling=8.0, window=60.0)
    keys = ["user:a", "addr:1"]
    for _ in range(2):
        t.failed(keys)
        assert t.wait(keys) == 0
    t.failed(keys)                                    # the 3rd failure: 1 s
    assert t.wait(keys) == 1.0
    assert t.wait(["user:b", "addr:1"]) == 1.0        # the address waits for any name
    assert t.wait(["user:a", "addr:2"]) == 1.0        # the name waits from any address
    clock.now += 1
    t.failed(keys)                                    # 4th: 2 s, 5th: 4 s, then at most 8 s
    assert t.wait(keys) == 2.0
    for _ in range(5):
        t.failed(keys)
    assert t.wait(keys) == 8.0
    clock.now += 61
    assert t.wait(keys) == 0
    t.failed(keys)
    assert t.wait(keys) == 0                          # a fresh count
    t.succeeded(keys)
    assert t.wait(keys) == 0


def test_users_compare_plain_and_hashed_passwords(tmp_path: Path) -> None:
    users = Users(WebServerSettings(users=(WebUser("ops", "pw-1"), WebUser("view", hash_password("pw-2"), readonly=True))),
                  tmp_path)
    assert users.verify("ops", "pw-1").name == "ops"  # type: ignore[union-attr]
    assert users.verify("view", "pw-2").readonly      # type: ignore[union-attr]
    assert users.verify("ops", "pw-2") is None and users.verify("view", "pw-1") is None
    assert users.verify("nobody", "pw-1") is None and users.verify("ops", "") is None
    assert users.verify("ops", "pw-1\udcff") is None  # undecodable input is just wrong
    assert users.plain_passwords() == ["pw-1"] and users.generated is None


def test_preview_splits_edi_segments_and_dumps_binary(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"UNA:+.? 'UNB+UNOC:3+A+B'BGM+220+PO?'1'UNZ+1'")
    p = preview(f)
    assert p.kind == "edifact" and p.text.splitlines() == ["UNA:+.? '", "UNB+UNOC:3+A+B'", "BGM+220+PO?'1'", "UNZ+1'"]
    isa = "ISA*00*          *00*          *ZZ*SENDER         *ZZ*RECEIVER       *250101*1200*U*00401*000000001*0*P*>~"
    f.write_text(isa + "GS*PO*A*B~ST*850*1~")
    assert preview(f).kind == "x12" and preview(f).text.splitlines()[1:] == ["GS*PO*A*B~", "ST*850*1~"]
    f.write_bytes("Grüße\nline 2\n".encode("latin-1"))
    p = preview(f)
    assert p.kind == "text" and p.encoding == "Latin-1" and p.text.startswith("Grüße")
    f.write_bytes(bytes(range(256)))
    p = preview(f)
    assert p.kind == "binary" and p.text.startswith("00000000  00 01 02 03")
    f.write_bytes("é".encode() * 40_000)
    p = preview(f, limit=1001)                         # cut inside a character: still UTF-8
    assert p.encoding == "UTF-8" and p.truncated and p.text == "é" * 500
    assert preview(None).kind == "missing" and preview(tmp_path / "gone").kind == "missing"


def test_charts_place_bars_on_a_round_scale() -> None:
    now = datetime(2025, 3, 10, 14, 25)
    hour = now.replace(minute=0)
    buckets = {hour: Bucket(hour, 37, 30, 2), hour - timedelta(hours=5): Bucket(hour - timedelta(hours=5), 1, 0, 0),
               hour - timedelta(days=3): Bucket(hour - timedelta(days=3), 100, 90, 10)}
    day = charts.hourly(buckets, now)
    assert len(day.slots) == 24 and day.slots[-1].start == hour
    assert day.totals == {"received": 38, "sent": 30, "errors": 2}
    assert [g[1] for g in day.grid] == ["0", "10", "20", "30", "40"]
    tallest = day.slots[-1].bars[0]
    assert tallest.series == "received" and tallest.y + tallest.h == pytest.approx(day.bottom_edge)
    assert day.slots[-6].bars[0].h >= 1.5                  # one file still shows
    assert "14:00-15:00: 37 received, 30 sent, 2 errors" in day.slots[-1].title
    month = charts.daily(buckets, now)
    assert len(month.slots) == 30 and month.totals == {"received": 138, "sent": 120, "errors": 12}
    assert month.slots[-4].title.endswith("100 received, 90 sent, 10 errors")
    assert charts.nice_ceiling(0) == (4, 1) and charts.nice_ceiling(137) == (150, 50)
    assert charts.nice_ceiling(9_999) == (10_000, 2_500)


def test_the_chart_cache_counts_old_hours_once_and_new_ones_each_time(make_env) -> None:  # type: ignore[no-untyped-def]
    url = make_env().config().database_url
    now = utcnow()

    def add(when: datetime, n: int = 1) -> None:
        with session_scope(url) as s:
            s.execute(insert(Incoming), [dict(route="r", channel="c", filename="f", status="done", created=when)
                                         for _ in range(n)])

    add(now - timedelta(days=2), 3)
    clock = Clock()
    cache = ActivityCache(url, ttl=60, clock=clock)
    first = cache.get(now, 60)
    assert {k: v.received for k, v in first.items()} == {k: v.received for k, v in
                                                        activity(url, now - timedelta(days=30), 60).items()}
    add(now - timedelta(days=2))                      # an old hour changes: seen after ttl
    add(now)                                          # the current hour: seen at once
    second = cache.get(now, 60)
    assert sum(b.received for b in second.values()) == 4
    clock.now += 61                                   # stale: this request still has the kept counts ...
    assert sum(b.received for b in cache.get(now, 60).values()) == 4
    cache.settle()                                    # ... while they are counted again in the background
    assert sum(b.received for b in cache.get(now, 60).values()) == 5
    assert sum(b.received for b in cache.get(now, 90).values()) == 5      # another offset counts afresh
    # chart_cache = 0: everything counted in every request
    every = ActivityCache(url, ttl=0, clock=clock)
    assert sum(b.received for b in every.get(now, 60).values()) == 5
    add(now - timedelta(days=3))
    assert sum(b.received for b in every.get(now, 60).values()) == 6
    # started ahead (botsq web's start-up): the first request uses that count
    warm = ActivityCache(url, ttl=60, clock=clock)
    warm.warm(now, 60)
    warm.settle()
    add(now - timedelta(days=4))
    assert sum(b.received for b in warm.get(now, 60).values()) == 6


def test_a_bots_site_console_counts_runs_names_its_routes_and_the_user(make_env) -> None:  # type: ignore[no-untyped-def]
    """[engine] kind = bots (tester finding 13): the dashboard counts Bots' run summaries instead of
    showing zeros for file records botsq does not have; the run menu takes route names typed (Bots
    has the routes); web.log names the user who queued or marked, not only the address."""
    from bots_helpers import BOTS_OWN_KEYS, engine_section
    from engine.config.webserver import load_webserver_settings
    from engine.models import Run
    from ops.web.app import create_app
    from web_helpers import csrf_of

    ini = (BOTS_OWN_KEYS.replace("[webserver]\nport = 8080\n", "[webserver]\nport = 8080\nusers = ops:ops-secret-pw\n")
           + engine_section() + "\n[jobqueue]\nenabled = True\nbroker = memory://\n")
    env = make_env(ini=ini, routes=None)
    cfg = env.config()
    now = utcnow()
    with session_scope(cfg.database_url) as s:
        for hours, received, sent, errors in ((1, 7, 6, 1), (5, 13, 13, 0), (24 * 3, 100, 90, 10)):
            s.add(Run(kind="bots", started=now - timedelta(hours=hours), ended=now, status="ok", returncode=0,
                      received=received, sent=sent, file_errors=errors))
    app = create_app(cfg, load_webserver_settings(cfg, "127.0.0.1", 1))
    client = app.test_client()
    r = client.post("/login", data={"username": "ops", "password": "ops-secret-pw",
                                    "csrf_token": csrf_of(client.get("/login").get_data(as_text=True))})
    assert r.status_code == 303
    page = client.get("/").get_data(as_text=True)
    assert "Received · 24 h · runs" in page and "Sent · 24 h · runs" in page
    values = re.findall(r'<span class="value">([^<]*)</span>', page)
    assert values[:3] == ["20", "19", "1"]               # the runs of the last 24 h; 30 days below them
    assert "120 in 30 days" in page and "109 in 30 days" in page
    assert "botsq keeps no file records of Bots' runs" in page and "No files in this period" not in page
    menu = client.get("/run").get_data(as_text=True)
    assert "No routes in routes.toml" not in menu and "its routes are in Bots" in menu
    r = client.post("/run", data={"command": "new", "routes": "myfirstroute  other", "priority": "2",
                                  "csrf_token": csrf_of(menu)})
    assert r.status_code == 303
    r = client.post("/run", data={"command": "new", "routes": "--cleanup", "priority": "2",
                                  "csrf_token": csrf_of(menu)})
    assert r.status_code == 400 and "is not a route name" in r.get_data(as_text=True)
    log = (env.root / "botssys" / "logging" / "web.log").read_text()
    assert "run menu: bots-engine --new myfirstroute other at priority 2 by 'ops' from 127.0.0.1: added" in log
