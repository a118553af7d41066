"""The web console over real HTTP (waitress on a free port, requests): pages, actions, the JSON API,
and a test for each security point of the contract's "Web console"."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import requests
from sqlalchemy import update

from conftest import bin_path, free_port
from e2e_procs import wait_for
from engine.db import session_scope
from engine.models import Incoming, Outgoing
from queue_helpers import job2queue, purge
from web_helpers import login, make_web_env, run_engine, serve, token

pytestmark = pytest.mark.procs          # bots-engine and botsq run as commands

PAGES = ["/", "/runs", "/runs/1", "/incoming", "/incoming/1", "/incoming/1/download", "/outgoing", "/outgoing/1",
         "/outgoing/1/download", "/queue", "/run", "/partials/health", "/partials/lanes", "/partials/queue"]
API = ["/api/runs", "/api/incoming", "/api/outgoing", "/api/queue", "/api/status"]
POSTS = ["/incoming/mark", "/outgoing/mark", "/run", "/logout"]
XSS_NAME = "<img src=x onerror=alert(1)>.edi"
XSS_BODY = b'<script>alert("x")</script> UNB+UNOC:3'


class Clock:
    """A clock the test moves (seconds)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def env(make_env):  # type: ignore[no-untyped-def]
    e = make_web_env(make_env)
    run_engine(e, {"data/in/orders/PO_1001.edi": "UNB+order 1001'", "data/in/orders/PO_1002.edi": "UNB+order 1002'",
                   "data/in/invoices/INV_5001.edi": "UNB+invoice 5001'", f"data/in/orders/{XSS_NAME}": XSS_BODY})
    return e


def cli_json(env, *argv: str):  # type: ignore[no-untyped-def]
    res = subprocess.run([bin_path("botsq"), *argv, "--json", "-c", str(env.configdir)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def file_id(env, kind: str, name: str) -> int:  # type: ignore[no-untyped-def]
    rows = cli_json(env, "files", "list", "--kind", kind)
    return next(r["id"] for r in rows if r["filename"] == name)


# --------------------------------------------------------------------------- login required everywhere

def test_every_page_and_api_call_needs_a_login(env) -> None:  # type: ignore[no-untyped-def]
    with serve(env) as base:
        for path in PAGES:
            r = requests.get(base + path, allow_redirects=False, timeout=30)
            assert r.status_code == 302 and r.headers["Location"].startswith("/login?next="), path
        for path in API:
            r = requests.get(base + path, timeout=30)
            assert r.status_code == 401, path
            assert r.headers["WWW-Authenticate"].startswith("Basic ")
            assert r.json()["error"].startswith("log in first")
        anon = requests.Session()
        tok = token(anon, base, "/login")                  # an anonymous session's CSRF token
        for path in POSTS[:-1]:
            r = anon.post(base + path, data={"csrf_token": tok, "action": "rereceive", "ids": ["1"],
                                             "command": "new"}, allow_redirects=False, timeout=30)
            assert r.status_code == 401, path
        assert not any(f["rereceive"] for f in cli_json(env, "files", "list", "--kind", "in"))
        # the API also takes HTTP basic auth (scripts), and refuses a wrong password
        assert requests.get(base + "/api/runs", auth=("ops", "ops-secret-pw"), timeout=30).status_code == 200
        assert requests.get(base + "/api/runs", auth=("ops", "wrong"), timeout=30).status_code == 401
        # after login every page answers
        s = login(base)
        for path in PAGES + API:
            r = s.get(base + path, timeout=60)
            assert r.status_code == 200, (path, r.status_code, r.text[:300])


def test_the_session_cookie_is_signed_httponly_and_samesite(env) -> None:  # type: ignore[no-untyped-def]
    with serve(env) as base:
        s = requests.Session()
        page = s.get(f"{base}/login", timeout=30)
        tok = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        r = s.post(f"{base}/login", data={"username": "ops", "password": "ops-secret-pw", "csrf_token": tok},
                   allow_redirects=False, timeout=30)
        cookie = r.headers["Set-Cookie"]
        assert cookie.startswith("botsq_session=")
        for flag in ("HttpOnly", "SameSite=Lax", "Path=/", "Expires="):
            assert flag in cookie, cookie
        assert "Secure" not in cookie                       # plain http on 127.0.0.1 by default
        assert s.get(f"{base}/", timeout=30).status_code == 200
        # a cookie changed by hand is not a login
        value = s.cookies["botsq_session"]
        forged = requests.Session()
        forged.cookies.set("botsq_session", value[:-3] + ("AAA" if not value.endswith("AAA") else "BBB"))
        assert forged.get(f"{base}/", allow_redirects=False, timeout=30).status_code == 302
        # logging out ends the session
        s.post(f"{base}/logout", data={"csrf_token": token(s, base)}, timeout=30)
        assert s.get(f"{base}/", allow_redirects=False, timeout=30).status_code == 302
    with serve(env, secure_cookie=True) as base:              # behind a TLS proxy: the cookie is Secure
        assert "; Secure" in requests.get(f"{base}/login", timeout=30).headers["Set-Cookie"]


def test_login_returns_only_to_a_local_page(env) -> None:  # type: ignore[no-untyped-def]
    with serve(env) as base:
        for nxt, where in (("/runs?status=ok", "/runs?status=ok"), ("https://evil.example/", "/"),
                           ("//evil.example/x", "/"), ("/\\evil.example", "/")):
            s = requests.Session()
            tok = token(s, base, "/login")
            r = s.post(f"{base}/login", data={"username": "ops", "password": "ops-secret-pw", "csrf_token": tok,
                                              "next": nxt}, allow_redirects=False, timeout=30)
            assert r.status_code == 303 and r.headers["Location"] == where, nxt


# --------------------------------------------------------------------------- CSRF

def test_every_action_needs_the_csrf_token_of_its_session(env) -> None:  # type: ignore[no-untyped-def]
    fid = file_id(env, "in", "PO_1001.edi")
    with serve(env) as base:
        s = login(base)
        other = login(base)
        form = {"action": "rereceive", "ids": [str(fid)]}
        r = s.post(f"{base}/incoming/mark", data=form, timeout=30)
        assert r.status_code == 400 and "CSRF" in r.text
        r = s.post(f"{base}/incoming/mark", data={**form, "csrf_token": token(other, base)}, timeout=30)
        assert r.status_code == 400
        r = s.post(f"{base}/run", data={"command": "new", "priority": "5"}, timeout=30)
        assert r.status_code == 400
        assert not any(f["rereceive"] for f in cli_json(env, "files", "list", "--kind", "in"))
        r = s.post(f"{base}/incoming/mark", data={**form, "csrf_token": token(s, base)}, allow_redirects=False,
                   timeout=30)
        assert r.status_code == 303
        assert [f["id"] for f in cli_json(env, "files", "list", "--kind", "in") if f["rereceive"]] == [fid]


# --------------------------------------------------------------------------- throttling

def test_repeated_failed_logins_slow_down(env) -> None:  # type: ignore[no-untyped-def]
    clock = Clock()
    with serve(env, clock=clock) as base:
        def attempt(user: str, password: str, s: requests.Session | None = None) -> requests.Response:
            s = s or requests.Session()
            return s.post(f"{base}/login", data={"username": user, "password": password,
                                                 "csrf_token": token(s, base, "/login")},
                          allow_redirects=False, timeout=30)

        for _ in range(5):
            assert attempt("ops", "guess").status_code == 401
        r = attempt("ops", "ops-secret-pw")                 # right, but too soon: not even checked
        assert r.status_code == 429 and r.headers["Retry-After"] == "2"
        assert "Too many failed logins" in r.text
        clock.now += 2
        assert attempt("ops", "ops-secret-pw").status_code == 303
        # the count is per address too: guessing other names from here waits as well, longer each time
        for name in ("a", "b", "c", "d", "e"):
            assert attempt(name, "guess").status_code == 401
        assert attempt("viewer", "viewer-secret-pw").status_code == 429
        clock.now += 2
        assert attempt("f", "guess").status_code == 401
        r = attempt("viewer", "viewer-secret-pw")
        assert r.status_code == 429 and r.headers["Retry-After"] == "4"
        # the API's basic auth counts against the same keys
        r = requests.get(f"{base}/api/runs", auth=("viewer", "viewer-secret-pw"), timeout=30)
        assert r.status_code == 429 and r.json()["error"].startswith("Too many failed logins")
        clock.now += 16 * 60                                # a quiet quarter of an hour forgets the failures
        assert attempt("viewer", "viewer-secret-pw").status_code == 303


# --------------------------------------------------------------------------- markup shown as text

def test_markup_in_file_names_and_content_is_shown_as_text(env) -> None:  # type: ignore[no-untyped-def]
    fid = file_id(env, "in", XSS_NAME)
    oid = file_id(env, "out", XSS_NAME)
    with serve(env) as base:
        s = login(base)
        for path in ("/incoming", f"/incoming/{fid}", "/outgoing", f"/outgoing/{oid}", "/runs/1",
                     "/incoming?name=%3Cimg"):
            body = s.get(base + path, timeout=30).text
            assert "<img src=x" not in body, path
            assert "&lt;img src=x onerror=alert(1)&gt;.edi" in body, path
        detail = s.get(f"{base}/incoming/{fid}", timeout=30)
        assert '<script>alert("x")' not in detail.text
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in detail.text
        assert "script-src 'self'" in detail.headers["Content-Security-Policy"]
        # the API returns the name as data, never as a page
        api = s.get(f"{base}/api/incoming?name=onerror", timeout=30)
        assert api.headers["Content-Type"] == "application/json"
        assert [r["filename"] for r in api.json()] == [XSS_NAME]


def test_pages_carry_the_security_headers(env) -> None:  # type: ignore[no-untyped-def]
    with serve(env) as base:
        s = login(base)
        for path in ("/", "/incoming", "/api/runs", "/login"):
            h = s.get(base + path, timeout=30).headers
            assert "frame-ancestors 'none'" in h["Content-Security-Policy"], path
            assert h["X-Frame-Options"] == "DENY" and h["X-Content-Type-Options"] == "nosniff"
            assert h["Cache-Control"] == "no-store"


# --------------------------------------------------------------------------- downloads

def test_downloads_come_only_from_recorded_paths_under_botssys(env) -> None:  # type: ignore[no-untyped-def]
    fid = file_id(env, "in", "PO_1001.edi")
    oid = file_id(env, "out", "PO_1001.edi")
    with serve(env) as base:
        s = login(base)
        r = s.get(f"{base}/incoming/{fid}/download", timeout=30)
        assert r.status_code == 200 and r.content == b"UNB+order 1001'"
        assert r.headers["Content-Type"] == "application/octet-stream"
        assert r.headers["Content-Disposition"] == "attachment; filename=PO_1001.edi"
        r = s.get(f"{base}/outgoing/{oid}/download", timeout=30)
        assert r.status_code == 200 and r.content == b"UNB+order 1001'"
        # a stored HTML file is an attachment too: never rendered in the console's origin
        xid = file_id(env, "in", XSS_NAME)
        r = s.get(f"{base}/incoming/{xid}/download", timeout=30)
        assert r.headers["Content-Type"] == "application/octet-stream" and r.content == XSS_BODY
        # a record whose path leads out of botssys (a crafted or damaged record) gives nothing
        url = env.config().database_url
        for crafted in ("../config/bots.ini", str(env.configdir / "bots.ini"), "data/../../config/bots.ini"):
            with session_scope(url) as db:
                db.execute(update(Incoming).where(Incoming.id == fid).values(archive_path=crafted))
                db.execute(update(Outgoing).where(Outgoing.id == oid).values(store_path=crafted))
            for path in (f"/incoming/{fid}/download", f"/outgoing/{oid}/download"):
                r = s.get(base + path, timeout=30)
                assert r.status_code == 404 and "[webserver]" not in r.text, (crafted, path)
            assert "No stored content" in s.get(f"{base}/incoming/{fid}", timeout=30).text
        for path in ("/incoming/999/download", "/incoming/..%2f..%2fconfig%2fbots.ini/download",
                     "/incoming/-1/download"):
            assert s.get(base + path, timeout=30).status_code == 404, path


# --------------------------------------------------------------------------- secrets

SECRETS = ("mail-secret-123", "broker-secret-789", "ftp-secret-000", "ops-secret-pw", "viewer-secret-pw")


def test_no_secret_from_the_config_reaches_a_page_or_the_api(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_web_env(make_env, enabled=True, broker="amqp://guest:broker-secret-789@127.0.0.1:1//",
                       extra="\n[email]\npassword = mail-secret-123\n", routes_extra="""
[channels.partner_ftp]
type = "ftp"
host = "127.0.0.1"
port = 1
user = "edi"
password = "ftp-secret-000"
path = "out"

[routes.partner]
active = false
[[routes.partner.parts]]
fromchannel = "orders_in"
tochannel = "partner_ftp"
""")
    run_engine(env, {"data/in/orders/PO_7.edi": "x"})
    with serve(env) as base:
        s = login(base)
        seen = []
        for path in PAGES + API + ["/run?command=new", "/runs/1", "/incoming/1", "/outgoing/1"]:
            r = s.get(base + path, timeout=60)
            seen.append(r.text)
            assert not any(secret in r.text for secret in SECRETS), (path, [x for x in SECRETS if x in r.text])
        # the checks ran (the broker is down: its error is shown, its password masked)
        assert any("127.0.0.1:1/" in text and "***" in text for text in seen)
        # a refused job names the broker without its password
        r = s.post(f"{base}/run", data={"command": "new", "priority": "5", "csrf_token": token(s, base)}, timeout=60)
        assert r.status_code == 400 and "127.0.0.1:1" in r.text
        assert not any(secret in r.text for secret in SECRETS)
    log = (env.root / "botssys" / "logging" / "web.log").read_text()
    assert "login by 'ops'" in log and not any(secret in log for secret in SECRETS)


# --------------------------------------------------------------------------- read-only users

def test_a_read_only_user_sees_no_action_and_is_refused_if_it_posts(env) -> None:  # type: ignore[no-untyped-def]
    fid = file_id(env, "in", "PO_1001.edi")
    oid = file_id(env, "out", "PO_1001.edi")
    with serve(env) as base:
        s = login(base, "viewer", "viewer-secret-pw")
        for path in ("/incoming", "/outgoing", f"/incoming/{fid}", f"/outgoing/{oid}", "/run"):
            body = s.get(base + path, timeout=30).text
            assert 'name="action"' not in body and 'name="ids"' not in body, path
            assert "read-only" in body
        assert "Put on the queue" not in s.get(f"{base}/run", timeout=30).text
        tok = token(s, base)
        for path, form in (("/incoming/mark", {"action": "rereceive", "ids": [str(fid)]}),
                           ("/outgoing/mark", {"action": "resend", "ids": [str(oid)]}),
                           ("/run", {"command": "new", "priority": "5"})):
            r = s.post(base + path, data={**form, "csrf_token": tok}, timeout=30)
            assert r.status_code == 403 and "may look but not act" in r.text, path
        assert not any(f.get("rereceive") or f.get("resend") for f in cli_json(env, "files", "list"))
        r = s.post(f"{base}/logout", data={"csrf_token": tok}, allow_redirects=False, timeout=30)
        assert r.status_code == 303


# --------------------------------------------------------------------------- marks, shared with the CLI

def test_marks_made_in_the_console_and_on_the_command_line_are_the_same(env) -> None:  # type: ignore[no-untyped-def]
    fid = file_id(env, "in", "PO_1002.edi")
    oid = file_id(env, "out", "INV_5001.edi")
    with serve(env) as base:
        s = login(base)
        r = s.post(f"{base}/incoming/mark", data={"action": "rereceive", "ids": [str(fid)],
                                                  "csrf_token": token(s, base)}, timeout=30)
        assert "1 incoming file marked for rereceive." in r.text
        assert "bots-engine --rereceive" in r.text and "Start it now" in r.text      # the matching run, one click
        assert [f["id"] for f in cli_json(env, "files", "list", "--kind", "in") if f["rereceive"]] == [fid]
        res = subprocess.run([bin_path("botsq"), "files", "resend", str(oid), "-c", str(env.configdir)],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        marked = s.get(f"{base}/outgoing?marked=1", timeout=30).text
        assert re.findall(r'<tr data-id="(\d+)"', marked) == [str(oid)]
        assert "marked for resend" in marked
        # all files matching the filter, not only the ticked ones
        r = s.post(f"{base}/incoming/mark", data={"action": "rereceive", "scope": "matching", "route": "orders",
                                                  "csrf_token": token(s, base)}, timeout=30)
        assert "3 incoming files marked for rereceive." in r.text
        assert "bots-engine --rereceive orders" in r.text
        marked_in = {f["filename"] for f in cli_json(env, "files", "list", "--kind", "in") if f["rereceive"]}
        assert marked_in == {"PO_1001.edi", "PO_1002.edi", XSS_NAME}
        r = s.post(f"{base}/incoming/mark", data={"action": "unrereceive", "ids": [str(fid)],
                                                  "csrf_token": token(s, base)}, timeout=30)
        assert "1 incoming file unmarked for rereceive." in r.text
        # the wrong action for the list, no files ticked, a bad id
        tok = token(s, base)
        assert s.post(f"{base}/incoming/mark", data={"action": "resend", "ids": [str(fid)], "csrf_token": tok},
                      timeout=30).status_code == 400
        assert "Tick one or more files first" in s.post(f"{base}/incoming/mark", data={
            "action": "rereceive", "csrf_token": tok}, timeout=30).text
        r = s.post(f"{base}/incoming/mark", data={"action": "rereceive", "ids": ["1;drop"], "csrf_token": tok},
                   timeout=30)
        assert r.status_code == 400 and "expected file numbers" in r.text


# --------------------------------------------------------------------------- lists, filters, API

def test_lists_filter_and_page_and_the_api_has_the_clis_shapes(env) -> None:  # type: ignore[no-untyped-def]
    with serve(env) as base:
        s = login(base)
        for kind in ("in", "out"):
            api = s.get(f"{base}/api/{'incoming' if kind == 'in' else 'outgoing'}", timeout=30)
            assert api.json() == cli_json(env, "files", "list", "--kind", kind)
            assert api.headers["X-Total-Count"] == "4"
        assert s.get(f"{base}/api/runs", timeout=30).json() == cli_json(env, "runs")
        assert [r["filename"] for r in s.get(f"{base}/api/incoming?route=invoices", timeout=30).json()] == \
            ["INV_5001.edi"]
        assert len(s.get(f"{base}/api/incoming?channel=orders_in&limit=2", timeout=30).json()) == 2
        page2 = s.get(f"{base}/api/incoming?limit=2&offset=2", timeout=30)
        assert len(page2.json()) == 2 and page2.headers["X-Total-Count"] == "4"
        for query, error in (("status=bogus", "unknown status 'bogus'"), ("limit=0", "limit: expected 1..1000"),
                             ("since=yesterday", "bad date 'yesterday'"), ("run=x", "run: expected a whole number")):
            r = s.get(f"{base}/api/incoming?{query}", timeout=30)
            assert r.status_code == 400 and r.json()["error"].startswith(error), (query, r.text)
        assert s.get(f"{base}/incoming?status=bogus", timeout=30).status_code == 400
        # the HTML list: rows with the stable hooks, filtered by name
        body = s.get(f"{base}/incoming?name=po_100", timeout=30).text
        rows = re.findall(r'<tr data-id="(\d+)">\s*<td class="check"><input type="checkbox" name="ids" value="(\d+)"',
                          body)
        assert len(rows) == 2 and all(a == b for a, b in rows)
        assert 'button class="btn primary small" type="submit" name="action" value="rereceive"' in body
        assert 'name="action" value="resend"' in s.get(f"{base}/outgoing", timeout=30).text
        status = s.get(f"{base}/api/status", timeout=60).json()
        assert {"database", "broker", "healthy", "problems", "last_runs"} <= set(status)


def test_dashboard_shows_counts_chart_runs_lanes_and_health(env) -> None:  # type: ignore[no-untyped-def]
    with serve(env) as base:
        s = login(base)
        body = s.get(f"{base}/", timeout=30).text
        received = re.search(r"Received · 24 h</span>\s*<span class=\"value\">(\d+)", body)
        assert received and received.group(1) == "4"
        assert body.count('<svg class="chart"') == 2
        assert len(re.findall(r'class="bar received"', body)) == 2      # one slot of each chart holds the files
        assert 'href="/runs/1"' in body and "default" in body
        health = s.get(f"{base}/partials/health", timeout=60).text
        assert "Database" in health and "job queue disabled" in health
        run = s.get(f"{base}/runs/1", timeout=30).text
        assert "run 1 started" in run and "PO_1001.edi" in run         # the engine log's lines of this run


def test_each_lane_shows_its_own_engine_lock(make_env) -> None:  # type: ignore[no-untyped-def]
    """With lanes, the dashboard's and the queue's lane panels show each lane's lock, not lane default's."""
    import logging

    from conftest import lane_route
    from engine.lock import acquire

    env = make_web_env(make_env, routes_extra=lane_route("slowroute", "slowin", lane="slow")
                       + '[channels.out]\ntype = "file"\npath = "data/out/slow"\n')
    cfg = env.config()
    held = acquire(cfg, logging.getLogger("test"), lane="slow")
    assert held.lock is not None
    try:
        with serve(env) as base:
            s = login(base)
            for path in ("/partials/lanes", "/queue"):
                body = s.get(f"{base}{path}", timeout=30).text
                default, slow = body.split('lane-tag">slow<', 1)
                assert 'lane-tag">default<' in default and "engine running" not in default, path
                assert "engine running" in slow or "held by run" in slow, path
    finally:
        held.lock.release()


def test_a_missing_run_or_file_is_404(env) -> None:  # type: ignore[no-untyped-def]
    with serve(env) as base:
        s = login(base)
        for path in ("/runs/99", "/incoming/99", "/outgoing/99", "/nothing"):
            r = s.get(base + path, timeout=30)
            assert r.status_code == 404, path
        assert s.get(f"{base}/api/nothing", timeout=30).json()["error"]


# --------------------------------------------------------------------------- run menu

def test_the_run_menu_refuses_bad_input_with_one_line(env) -> None:  # type: ignore[no-untyped-def]
    with serve(env) as base:
        s = login(base)
        tok = token(s, base)
        for form, message in (({"command": "new", "priority": "5"}, "the job queue is disabled"),
                              ({"command": "rm -rf", "priority": "5"}, "Unknown command"),
                              ({"command": "new", "priority": "0"}, "Priority must be 1 (highest) to 9"),
                              ({"command": "new", "priority": "x"}, "Priority must be 1 (highest) to 9")):
            r = s.post(f"{base}/run", data={**form, "csrf_token": tok}, timeout=30)
            assert r.status_code == 400 and message in r.text, (form, r.text[:2000])


@pytest.mark.rabbitmq
def test_the_run_menu_queues_through_job2queues_path_and_reports_a_duplicate(make_env, module_vhost: str) -> None:  # type: ignore[no-untyped-def]
    env = make_web_env(make_env, enabled=True, broker=module_vhost)
    purge(env, module_vhost)
    try:
        with serve(env) as base:
            s = login(base)
            form = {"command": "new", "routes": ["orders"], "priority": "3", "csrf_token": token(s, base, "/run")}
            r = s.post(f"{base}/run", data=form, timeout=60)
            assert "OK, job is added to queue: bots-engine --new orders (priority 3)." in r.text
            r = s.post(f"{base}/run", data=form, timeout=60)
            assert "Duplicate job, not added: bots-engine --new orders is already waiting (priority 3)." in r.text
            # bots-job2queue sees the same waiting job, and the console sees its priority raise
            assert job2queue(env, module_vhost, "-p5", "bots-engine", "--new", "orders").returncode == 4
            assert job2queue(env, module_vhost, "-p1", "bots-engine", "--new", "orders").returncode == 0
            queue = s.get(f"{base}/api/queue", timeout=60).json()
            assert [(w["job"], w["priority"]) for w in queue["waiting"]] == [("bots-engine --new orders", 1)]
            page = s.get(f"{base}/queue", timeout=60).text
            assert "bots-engine --new orders" in page and 'class="prio p1"' in page
            r = s.post(f"{base}/run", data={**form, "routes": ["nosuch"]}, timeout=60)
            assert r.status_code == 400 and "unknown route &#39;nosuch&#39;" in r.text
    finally:
        purge(env, module_vhost)


# --------------------------------------------------------------------------- users and passwords

def test_without_users_admin_logs_in_with_the_generated_password(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_web_env(make_env, users="")
    with serve(env) as base:
        page = requests.get(f"{base}/login", timeout=30).text
        pw_file = env.root / "botssys" / "web" / "admin-password"
        assert str(pw_file) in page and pw_file.stat().st_mode & 0o777 == 0o600
        password = pw_file.read_text().strip()
        assert len(password) >= 20
        assert login(base, "admin", password).get(f"{base}/", timeout=30).status_code == 200
    secret = env.root / "botssys" / "web" / "secret_key"
    assert secret.stat().st_mode & 0o777 == 0o600


def test_a_hashed_password_works_and_its_clear_text_is_nowhere(make_env) -> None:  # type: ignore[no-untyped-def]
    res = subprocess.run([bin_path("botsq"), "web", "--hash-password"], input="hunter2-long\n", capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    hashed = res.stdout.strip()
    assert hashed.startswith(("scrypt:", "pbkdf2:")) and "hunter2" not in hashed
    env = make_web_env(make_env, users=f"ops:{hashed}")
    with serve(env) as base:
        login(base, "ops", "hunter2-long")
        s = requests.Session()
        r = s.post(f"{base}/login", data={"username": "ops", "password": "hunter2", "csrf_token": token(s, base,
                                                                                                         "/login")},
                   timeout=30)
        assert r.status_code == 401


# --------------------------------------------------------------------------- botsq web

def botsq_web(env, *argv: str, extra_env: dict[str, str] | None = None, timeout: float = 60):  # type: ignore[no-untyped-def]
    penv = {**os.environ, **(extra_env or {})}
    return subprocess.run([bin_path("botsq"), "web", "-c", str(env.configdir), *argv], capture_output=True, text=True,
                          timeout=timeout, env=penv)


@pytest.mark.parametrize("argv, extra, message", [
    (["--address", "0.0.0.0"], {}, "[webserver] refusing to listen on 0.0.0.0 without users"),
    ([], {"BOTSQ_WEB_USERS": "ops"}, "BOTSQ_WEB_USERS: expected name:password"),
    ([], {"BOTSQ_WEB_USERS": "ops:a, ops:b"}, "user 'ops' is listed twice"),
    (["--port", "70000"], {}, "expected a port number 1..65535"),
    ([], {"BOTSQ_WEB_PORT": "eighty"}, "BOTSQ_WEB_PORT: expected a port number, got 'eighty'"),
])
def test_botsq_web_refuses_bad_settings_with_one_line(make_env, argv, extra, message) -> None:  # type: ignore[no-untyped-def]
    env = make_web_env(make_env, users="")
    res = botsq_web(env, *argv, extra_env=extra)
    assert res.returncode == 1, res.stdout + res.stderr
    assert res.stderr.count("\n") == 1 and message in res.stderr, res.stderr


def test_readonly_must_name_a_user(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_web_env(make_env, users="ops:x", readonly="viewer")
    res = botsq_web(env)
    assert res.returncode == 1 and "[webserver] readonly: no user named 'viewer'" in res.stderr, res.stderr


def test_botsq_web_serves_until_sigterm_and_refuses_a_port_in_use(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_web_env(make_env)
    port = free_port()
    proc = subprocess.Popen([bin_path("botsq"), "web", "-c", str(env.configdir), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ})
    try:
        def answers() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{port}/login", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(answers, 30, "botsq web to answer", [])
        busy = botsq_web(env, "--port", str(port))
        assert busy.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in busy.stderr, busy.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, out
    assert f"console on http://127.0.0.1:{port}/ (users ops, viewer (read-only))" in out
    assert "ops-secret-pw" not in out
    with socket.socket() as sock:                                   # the port is free again
        sock.bind(("127.0.0.1", port))


def test_the_web_log_records_logins_and_actions(env) -> None:  # type: ignore[no-untyped-def]
    fid = file_id(env, "in", "PO_1001.edi")
    with serve(env) as base:
        s = login(base)
        s.post(f"{base}/incoming/mark", data={"action": "rereceive", "ids": [str(fid)], "csrf_token": token(s, base)},
               timeout=30)
        anon = requests.Session()
        anon.post(f"{base}/login", data={"username": "ops", "password": "nope",
                                         "csrf_token": token(anon, base, "/login")}, timeout=30)
    log = Path(env.root / "botssys" / "logging" / "web.log").read_text()
    assert "login by 'ops' from 127.0.0.1" in log
    assert "login by form for 'ops' from 127.0.0.1 failed" in log
    assert "marked 1 incoming file(s) for rereceive" in log
