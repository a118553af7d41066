"""``botsq init``, ``botsq files`` and ``botsq runs``: a working environment, marking files, listing runs."""
from __future__ import annotations

import pytest

import json
import subprocess

from conftest import bin_path
from engine.cli.init import init_environment
from engine.config import load_config


def botsq(*argv: str, cwd=None) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run([bin_path("botsq"), *argv], capture_output=True, text=True, cwd=cwd, timeout=60)


def engine(configdir, *argv: str) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run([bin_path("bots-engine"), "-c", str(configdir), *argv], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.procs
def test_init_writes_a_working_environment(tmp_path):
    configdir = init_environment(tmp_path / "env", demo=False)
    assert configdir == tmp_path / "env" / "config"
    cfg = load_config(configdir)
    assert cfg.jobqueue.enabled and cfg.jobqueue.broker == "amqp://guest:guest@127.0.0.1:5672//"
    assert cfg.database_url == f"sqlite:///{tmp_path / 'env' / 'botssys' / 'sqlitedb' / 'botsdb.sqlite'}"
    assert cfg.email.managers == ()
    (tmp_path / "env" / "data" / "in" / "x.txt").write_text("X")
    r = engine(configdir)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "env" / "data" / "out" / "x.txt").read_text() == "X"


@pytest.mark.procs
def test_init_demo_runs_clean_and_never_overwrites(tmp_path):
    r = botsq("init", str(tmp_path / "demo"), "--demo")
    assert r.returncode == 0, r.stderr
    configdir = tmp_path / "demo" / "config"
    assert {"invoices", "orders"} <= set(load_config(configdir).routes)
    assert (tmp_path / "demo" / "usersys" / "mappings" / "demo_orders.py").is_file()
    assert len(list((tmp_path / "demo" / "data" / "in").rglob("*.edi"))) == 3
    r = engine(configdir)
    assert r.returncode == 0, r.stderr
    assert "3 received, 3 processed, 4 sent" in r.stdout
    orders = sorted((tmp_path / "demo" / "data" / "out" / "orders").iterdir())
    assert len(orders) == 3 and orders[0].read_text().startswith("order;item;quantity\nPO1001;")
    # a user's edits survive a second init
    (configdir / "bots.ini").write_text((configdir / "bots.ini").read_text() + "\n; mine\n")
    init_environment(tmp_path / "demo", demo=True)
    assert (configdir / "bots.ini").read_text().endswith("; mine\n")


@pytest.mark.procs
def test_files_list_mark_rereceive_resend_and_runs(tmp_path):
    configdir = init_environment(tmp_path / "e", demo=True)
    c = str(configdir)
    assert engine(configdir).returncode == 0
    r = botsq("files", "list", "-c", c, "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    ins = [x for x in rows if x["kind"] == "in"]
    outs = [x for x in rows if x["kind"] == "out"]
    assert len(ins) == 3 and len(outs) == 4 and all(o["commstatus"] == "sent" for o in outs)
    r = botsq("files", "list", "-c", c, "--kind", "in", "--route", "invoices")
    assert r.returncode == 0 and "invoice_5001.edi" in r.stdout and "order_1001" not in r.stdout

    # mark by id: rereceive
    inv = next(x for x in ins if x["route"] == "invoices")
    r = botsq("files", "rereceive", "-c", c, str(inv["id"]))
    assert r.returncode == 0 and "1 incoming file(s) marked for rereceive" in r.stdout
    # mark by filter: resend every outgoing file of route orders since yesterday
    r = botsq("files", "resend", "-c", c, "--route", "orders", "--since", "2000-01-01", "--json")
    assert r.returncode == 0 and len(json.loads(r.stdout)["marked"]) == 3
    # no ids and no filter: refused
    r = botsq("files", "resend", "-c", c)
    assert r.returncode == 1 and "give file ids" in r.stderr
    r = botsq("files", "rereceive", "-c", c, "99999")
    assert r.returncode == 1 and "not found" in r.stdout
    # a status or limit that cannot match anything is a mistake, not an empty list
    r = botsq("files", "list", "-c", c, "--status", "sennt")
    assert r.returncode == 1 and "unknown status 'sennt'" in r.stderr and r.stdout == ""
    r = botsq("files", "resend", "-c", c, "--status", "sennt")
    assert r.returncode == 1 and "unknown status 'sennt'" in r.stderr
    r = botsq("files", "list", "-c", c, "--limit", "0")
    assert r.returncode == 1 and "--limit must be at least 1" in r.stderr

    r = engine(configdir, "--rereceive", "--resend")
    assert r.returncode == 0, r.stderr
    assert "1 rereceived" in r.stdout and "3 resent" in r.stdout

    # the table shows each outgoing file's delivery attempts: the 3 resent ones went twice, the
    # invoice once (its rereceive made a new outgoing file, also sent once)
    r = botsq("files", "list", "-c", c, "--kind", "out")
    assert r.returncode == 0 and "tries" in r.stdout.splitlines()[0]
    tries = {int(ln.split()[1]): int(ln.split()[5]) for ln in r.stdout.splitlines()[1:]}
    assert {o["id"]: tries[o["id"]] for o in outs} == {o["id"]: 2 if o["route"] == "orders" else 1
                                                                   for o in outs}
    assert sorted(tries.values()) == [1, 1, 2, 2, 2]

    r = botsq("runs", "-c", c, "--json")
    assert r.returncode == 0
    runs = json.loads(r.stdout)
    assert [x["commands"] for x in runs] == ["resend,rereceive", "new"]
    assert runs[0]["status"] == "ok" and runs[0]["returncode"] == 0 and runs[0]["sent"] == 4
    r = botsq("runs", "-c", c)
    assert r.returncode == 0 and "resend,rereceive" in r.stdout
    r = botsq("runs", "-c", c, "--status", "errors", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == []
    r = botsq("runs", "-c", c, "--status", "error")
    assert r.returncode == 1 and "unknown run status 'error'" in r.stderr
    r = botsq("files", "list", "-c", c, "--status", "error")
    assert r.returncode == 0 and r.stdout.strip() == "no files"


@pytest.mark.procs
def test_init_again_says_it_kept_the_files_and_quotes_the_hint(tmp_path):
    """A second init wrote nothing yet said "environment written", and its hint broke on a space."""
    target = tmp_path / "a b"
    first = botsq("init", str(target))
    assert first.returncode == 0 and first.stdout.startswith(f"environment written: {target} (")
    (target / "config" / "bots.ini").write_text("[settings]\n")
    again = botsq("init", str(target))
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"environment kept: {target} (its files exist; --force overwrites them)")
    assert f"bots-engine -c '{target / 'config'}'" in again.stdout
    assert (target / "config" / "bots.ini").read_text() == "[settings]\n"
