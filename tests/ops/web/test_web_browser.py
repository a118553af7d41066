"""The web console in a real browser: Debian's chromium, driven by Playwright's Python package.

The operator's morning: log in, find a file by name, tick it, mark it for rereceive, start the
rereceive from the run menu (a real worker on RabbitMQ runs it) and see the new outgoing file.
A read-only user has no action buttons and is refused if it posts anyway. Every page renders
without a browser console error (a CSP violation would be one) and is saved as a screenshot;
``BOTSQ_WEB_SCREENSHOTS=docs/img`` copies them where README shows them.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from engine.records import FileFilter, count_files
from queue_helpers import Worker, purge, wait_for
from web_helpers import make_web_env, run_engine, seed_history, serve

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium's own connections are refused on this closed network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS_ENV = "BOTSQ_WEB_SCREENSHOTS"

pytestmark = [pytest.mark.browser, pytest.mark.procs, pytest.mark.slow]     # chromium is a process


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run installs it)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):  # type: ignore[no-untyped-def]
    ctx = browser.new_context(viewport={"width": 1440, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(30_000)
    pg.console_errors = []  # type: ignore[attr-defined]
    pg.on("console", lambda m: pg.console_errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.console_errors.append(str(e)))
    yield pg
    ctx.close()


def log_in(page, base: str, user: str, password: str, back: str = "/") -> None:  # type: ignore[no-untyped-def]
    """Log in from the login page the browser is sent to (it returns to ``back``)."""
    if not page.url.startswith(f"{base}/login"):
        page.goto(f"{base}{back}")
    assert page.url.startswith(f"{base}/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}{back}")


def shoot(page, tmp_path: Path, name: str) -> Path:  # type: ignore[no-untyped-def]
    """A full-page screenshot; copied to $BOTSQ_WEB_SCREENSHOTS (e.g. docs/img) when set."""
    out = tmp_path / f"console-{name}.png"
    page.screenshot(path=str(out), full_page=True)
    assert out.stat().st_size > 10_000
    if os.environ.get(SHOTS_ENV):
        dest = Path(os.environ[SHOTS_ENV])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(out, dest / out.name)
    return out


@pytest.mark.rabbitmq
def test_find_tick_mark_and_rereceive_a_file_with_a_real_worker(make_env, own_vhost: str, page,  # type: ignore[no-untyped-def]
                                                                 tmp_path: Path) -> None:
    env = make_web_env(make_env, enabled=True, broker=own_vhost)
    seed_history(env.config().database_url)
    run_engine(env, {"data/in/orders/PO_1001.edi": "UNA:+.? 'UNB+UNOC:3+BUYER+SELLER'UNH+1+ORDERS'BGM+220+1001'",
                     "data/in/orders/PO_1002.edi": "UNA:+.? 'UNB+UNOC:3+BUYER+SELLER'UNH+1+ORDERS'BGM+220+1002'",
                     "data/in/invoices/INV_5001.edi": "UNB+UNOC:3+SELLER+BUYER'UNH+1+INVOIC'"})
    purge(env, own_vhost)
    worker = None
    try:
        with serve(env) as base:
            page.goto(f"{base}/run")                        # not logged in: the login page, then back here
            log_in(page, base, "ops", "ops-secret-pw", back="/run")

            def queue_job(command: str, priority: str, routes: tuple[str, ...] = ()) -> str:
                page.goto(f"{base}/run")
                page.check(f"form#run-form input[name=command][value={command}]")
                for route in routes:
                    page.check(f"form#run-form input[name=routes][value={route}]")
                page.select_option("form#run-form select[name=priority]", priority)
                page.click("form#run-form button[type=submit]")
                page.wait_for_selector(".flash")
                return page.inner_text(".flash")

            # two jobs wait (no worker yet), in priority order; the same job again is a duplicate
            assert "OK, job is added to queue: bots-engine --new (priority 7)." in queue_job("new", "7")
            assert "added to queue: bots-engine --new invoices (priority 3)." in queue_job("new", "3", ("invoices",))
            assert "Duplicate job, not added" in queue_job("new", "7")
            page.click("nav >> text=Queue")
            waiting = page.locator("tr[data-id]")
            assert [waiting.nth(i).locator("td").nth(1).inner_text() for i in range(waiting.count())] == \
                ["bots-engine --new invoices", "bots-engine --new"]
            shoot(page, tmp_path, "queue")

            worker = Worker(env, own_vhost).wait_ready()

            def queue_empty() -> bool:
                page.goto(f"{base}/queue")
                return page.locator("tr[data-id]").count() == 0

            wait_for(queue_empty, 60, "the waiting jobs to run", worker)

            # find the file by name, tick it, mark it for rereceive
            page.click("nav >> text=Incoming")
            page.fill("input[name=name]", "PO_1002")
            page.click("form.filters button[type=submit]")
            rows = page.locator("tr[data-id]")
            assert rows.count() == 1 and "PO_1002.edi" in rows.first.inner_text()
            rows.first.locator("input[name=ids]").check()
            assert page.inner_text("[data-ticked]") == "1 ticked"
            page.click("button[name=action][value=rereceive]")
            page.wait_for_selector(".flash.success")
            assert "1 incoming file marked for rereceive." in page.inner_text(".flash")
            assert "marked for rereceive" in page.locator("tr[data-id]").first.inner_text()

            # start the rereceive from the run menu
            page.click("nav >> text=Run menu")
            page.check("form#run-form input[name=command][value=rereceive]")
            page.select_option("form#run-form select[name=priority]", "5")
            assert page.inner_text("[data-cmdline]") == "bots-job2queue -p5 bots-engine --rereceive"
            shoot(page, tmp_path, "run-menu")
            page.click("form#run-form button[type=submit]")
            page.wait_for_selector(".flash")
            assert "OK, job is added to queue: bots-engine --rereceive (priority 5)." in page.inner_text(".flash")

            # the worker runs it: a second outgoing PO_1002.edi appears, from the rereceive run
            def two_outputs() -> bool:
                page.goto(f"{base}/outgoing?name=PO_1002")
                return page.locator("tr[data-id]").count() == 2

            wait_for(two_outputs, 90, "the rereceived file's new output", worker)
            newest_run = page.locator("tr[data-id]").first.locator("td").last.inner_text()
            page.click(f"text={newest_run}")
            assert "--rereceive" in page.inner_text("main")
            assert "PO_1002.edi" in page.inner_text("main")
            shoot(page, tmp_path, "run")

            # the mark was used up: the file is no longer marked
            page.goto(f"{base}/incoming?name=PO_1002")
            assert "marked for rereceive" not in page.locator("tr[data-id]").first.inner_text()
            page.locator("tr[data-id] a").first.click()
            page.wait_for_selector("pre.content")
            assert "BGM+220+1002'" in page.inner_text("pre.content")
            shoot(page, tmp_path, "file")
            page.goto(f"{base}/incoming")
            shoot(page, tmp_path, "incoming")

            # the dashboard: health fills itself in (htmx under the console's CSP) and sees the worker
            page.goto(f"{base}/")
            page.wait_for_selector("#health .checks", timeout=60_000)
            assert "Everything is running" in page.inner_text("#health")
            shoot(page, tmp_path, "dashboard")
            assert page.console_errors == []
    finally:
        if worker is not None:
            worker.stop()


def test_every_page_renders_without_a_browser_error(make_env, page, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = make_web_env(make_env)
    seed_history(env.config().database_url, days=3)
    run_engine(env, {"data/in/orders/<b>bold<b>.edi": "<script>document.title='owned'</script>"})
    with serve(env) as base:
        log_in(page, base, "ops", "ops-secret-pw")
        for path in ("/", "/runs", "/runs/1", "/incoming", "/incoming/1", "/outgoing", "/outgoing/1", "/queue",
                     "/run", "/runs?status=errors"):
            page.goto(base + path)
            page.wait_for_load_state("networkidle")
            assert page.locator("h1").count() == 1, path
            assert page.title() != "owned" and "owned" not in page.title()
        # ticking every file on a page at once
        page.goto(f"{base}/incoming")
        page.check("input[data-select-all]")
        ticked = page.locator("tr[data-id] input[name=ids]:checked").count()
        assert ticked == page.locator("tr[data-id]").count() > 1
        assert page.console_errors == [], page.console_errors


def test_a_read_only_user_has_no_action_buttons_and_is_refused_if_it_posts(make_env, page) -> None:  # type: ignore[no-untyped-def]
    env = make_web_env(make_env)
    run_engine(env, {"data/in/orders/PO_2001.edi": "UNB+x'"})
    with serve(env) as base:
        log_in(page, base, "viewer", "viewer-secret-pw")
        for path in ("/incoming", "/outgoing", "/incoming/1", "/outgoing/1", "/run"):
            page.goto(base + path)
            assert page.locator("button[name=action]").count() == 0, path
            assert page.locator("input[name=ids]").count() == 0, path
        assert page.locator("form#run-form button[type=submit]").count() == 0
        assert "read-only" in page.inner_text(".topbar")
        # posting anyway, with the page's own CSRF token, is refused
        page.goto(f"{base}/incoming")
        status = page.evaluate("""async () => {
            const token = document.querySelector("input[name=csrf_token]").value;
            const body = new URLSearchParams({csrf_token: token, action: "rereceive", ids: "1"});
            const r = await fetch("/incoming/mark", {method: "POST", body});
            return r.status;
        }""")
        assert status == 403
    assert count_files(env.config().database_url, "in", FileFilter(marked=True)) == 0
