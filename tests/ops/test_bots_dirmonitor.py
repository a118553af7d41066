"""``bots-dirmonitor`` with ``[engine] kind = bots`` (issue 11): a Bots site's own bots.ini - its
``[dirmonitorN]`` sections as Bots writes them (``path``, ``filemask``, ``recursive``, ``route``),
Bots' bare ``[dirmonitor]`` settings section beside them, no routes.toml - and real processes:
the monitor, a worker, and the Bots stand-in (tests/bots_standin.py) as the engine. A file dropped
in a watched folder queues a job that runs the stand-in with that section's route."""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from bots_helpers import BOTS_OWN_KEYS, engine_section, standin_started
from conftest import Env
from e2e_procs import dirmonitor, wait_for
from queue_helpers import Worker, purge

pytestmark = [pytest.mark.rabbitmq, pytest.mark.redis, pytest.mark.procs, pytest.mark.slow]


def bots_site_ini(broker: str, orders: str, invoices: str) -> str:
    """Bots 4's bots.ini layout (env/config/bots.ini of a fresh ``bots-configure``): the bare
    [dirmonitor] with Bots' monitor settings, then one [dirmonitorN] per folder with Bots' keys only."""
    return BOTS_OWN_KEYS + engine_section() + f"""
[jobqueue]
enabled = True
broker = {broker}
connect_timeout = 3
stale_after = 1

[dirmonitor]
#settings for directory monitoring; settings for each directory are below (dirmonitor1, etc)
process_existing = True
log_level = INFO
log_console = True
log_console_level = STARTINFO
log_file_level = INFO
log_file_number = 30

[dirmonitor1]
path = {orders}
recursive = False
filemask = *.edi
route = ordersin

[dirmonitor2]
path = {invoices}
recursive = True
filemask = *.xml
route =
"""


@pytest.fixture(params=["rabbitmq", "redis"])
def site(request: pytest.FixtureRequest, tmp_path) -> Iterator[SimpleNamespace]:  # type: ignore[no-untyped-def]
    broker = request.getfixturevalue("rabbit_url" if request.param == "rabbitmq" else "redis_url")
    orders, invoices = tmp_path / "edi" / "orders", tmp_path / "edi" / "invoices"
    (invoices / "partner1").mkdir(parents=True)
    orders.mkdir(parents=True)
    env = Env(tmp_path).write(bots_site_ini(broker, str(orders), str(invoices)))
    assert not (env.configdir / "routes.toml").exists()
    purge(env, broker)
    worker = Worker(env, broker)
    monitor = dirmonitor(env.root, env.configdir, broker)
    try:
        worker.wait_ready(60)
        hb = env.root / "botssys" / "dirmonitor.heartbeat"
        wait_for(lambda: hb.exists() and json.loads(hb.read_text())["state"] == "running", 30, "the monitor",
                 [worker, monitor])
        yield SimpleNamespace(env=env, broker=broker, worker=worker, procs=[worker, monitor], orders=orders,
                              invoices=invoices)
    finally:
        monitor.stop()
        worker.stop()


def drop(path, content: bytes) -> None:  # type: ignore[no-untyped-def]
    """As a partner would: written under another name, renamed when complete."""
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(content)
    tmp.rename(path)


def test_a_file_in_a_bots_dirmonitor_folder_runs_the_bots_engine_with_that_route(site: SimpleNamespace) -> None:
    cdir = site.env.configdir
    drop(site.orders / "ignored.txt", b"not an order")              # not the section's filemask
    drop(site.orders / "po1.edi", b"UNB+UNOA:3+A+B'")
    [run] = wait_for(lambda: standin_started(cdir), 60, "the Bots engine to run for the orders folder",
                     site.procs)
    assert run["argv"] == ["--new", f"-c{cdir}", "ordersin"]

    # recursive = True: a file in a subfolder; route = (empty): Bots' default run, no route named
    drop(site.invoices / "partner1" / "inv1.xml", b"<invoice/>")
    started = wait_for(lambda: standin_started(cdir)[1:], 60, "the Bots engine to run for the invoices folder",
                       site.procs)
    assert [e["argv"] for e in started] == [["--new", f"-c{cdir}"]]

    time.sleep(1.5)               # a second job for either file, or one for ignored.txt, would show now
    assert len(standin_started(cdir)) == 2
    log = (site.env.root / "botssys" / "logging" / "dirmonitor.log").read_text()
    assert "[dirmonitor1] watching" in log and "[dirmonitor2] watching" in log and "(recursive)" in log
