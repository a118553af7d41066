"""engine/records.py: the file and run filters, marks, detail, activity and stored paths that
``botsq files``/``botsq runs`` and the web console share (SQLite and PostgreSQL)."""
from __future__ import annotations

import json
import sqlite3
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert

from conftest import bin_path
from engine.db import dispose_all, session_scope
from engine.models import Incoming, Outgoing, Run, SourceRemoval, utcnow
from engine.records import (
    FileFilter,
    FilterError,
    RunFilter,
    activity,
    count_files,
    count_runs,
    file_detail,
    list_files,
    list_runs,
    mark_files,
    run_detail,
    stored_path,
)


def seed(url: str, now: datetime) -> None:
    """Two runs; incoming files on two routes and channels, one failed; their outputs."""
    with session_scope(url) as s:
        s.execute(insert(Run), [
            dict(id=1, commands="new", routes="", started=now - timedelta(hours=3), ended=now - timedelta(hours=3),
                 status="ok", returncode=0, received=3, processed=3, sent=2),
            dict(id=2, commands="new", routes="invoices,orders_x", started=now - timedelta(hours=1),
                 ended=now - timedelta(hours=1), status="errors", returncode=2, received=1, file_errors=1),
        ])
        s.execute(insert(Incoming), [
            dict(id=1, run_id=1, route="orders", channel="orders_in", filename="PO_1001.edi", size=10,
                 archive_path="data/20250101/1", status="done", created=now - timedelta(hours=3)),
            dict(id=2, run_id=1, route="orders", channel="orders_ftp", filename="po_1002.EDI", size=10,
                 archive_path="data/20250101/2", status="done", created=now - timedelta(hours=3)),
            dict(id=3, run_id=1, route="invoices", channel="inv_in", filename="INV%_5001.edi", size=10,
                 archive_path="data/20250101/3", status="done", created=now - timedelta(hours=3)),
            dict(id=4, run_id=2, route="invoices", channel="inv_in", filename="INV_5002.edi", size=10,
                 archive_path="data/20250101/4", status="error", error="mapping failed",
                 created=now - timedelta(hours=1)),
            dict(id=5, run_id=2, route="invoices", channel="inv_in", filename="never_fetched.edi", size=None,
                 archive_path="", status="commerror", error="timed out", created=now - timedelta(hours=1)),
        ])
        s.execute(insert(Outgoing), [
            dict(id=1, run_id=1, incoming_id=1, route="orders", channel="orders_out", filename="out_1001.edi",
                 size=10, store_path="data/20250101/1", commstatus="sent", attempts=1,
                 created=now - timedelta(hours=3), sent_at=now - timedelta(hours=3)),
            dict(id=2, run_id=1, incoming_id=2, route="orders", channel="orders_out", filename="out_1002.edi",
                 size=10, store_path="outfiles/2", commstatus="failed", attempts=2, error="refused",
                 created=now - timedelta(hours=3)),
        ])
        s.execute(insert(SourceRemoval), [dict(incoming_id=2, channel="orders_ftp", filename="po_1002.EDI")])


@pytest.fixture
def url(db_kind: str, db_ini: str, make_env) -> str:  # type: ignore[no-untyped-def]
    env = make_env(ini="[settings]\nwhencleanup = never\n" + db_ini)
    u = env.config().database_url
    seed(u, utcnow())
    return u


def ids(rows: list[dict]) -> list[int]:
    return [r["id"] for r in rows]


def test_file_filters_narrow_by_route_channel_status_name_run_and_date(url: str) -> None:
    assert ids(list_files(url, "in")) == [5, 4, 3, 2, 1]
    assert ids(list_files(url, "in", FileFilter(routes=("orders",)))) == [2, 1]
    assert ids(list_files(url, "in", FileFilter(channels=("orders_ftp", "inv_in")))) == [5, 4, 3, 2]
    assert ids(list_files(url, "in", FileFilter(status="error"))) == [5, 4]      # error matches commerror too
    assert ids(list_files(url, "out", FileFilter(status="error"))) == [2]
    assert ids(list_files(url, "in", FileFilter(name="po_10"))) == [2, 1]        # case-insensitive part
    assert ids(list_files(url, "in", FileFilter(name="PO_10"))) == [2, 1]
    assert ids(list_files(url, "in", FileFilter(name="%"))) == [3]               # % taken literally
    assert ids(list_files(url, "in", FileFilter(name="V_"))) == [4]              # _ taken literally
    assert ids(list_files(url, "in", FileFilter(run=2))) == [5, 4]
    assert ids(list_files(url, "in", FileFilter(since=utcnow() - timedelta(hours=2)))) == [5, 4]
    assert ids(list_files(url, "in", FileFilter(until=utcnow() - timedelta(hours=2)))) == [3, 2, 1]
    assert count_files(url, "in", FileFilter(routes=("invoices",))) == 3
    assert ids(list_files(url, "in", limit=2, offset=2)) == [3, 2]
    pending = {r["id"]: r["removal_pending"] for r in list_files(url, "in")}
    assert pending == {5: False, 4: False, 3: False, 2: True, 1: False}


def test_a_page_and_its_count_come_from_one_read_when_names_are_searched(url: str) -> None:
    from engine.records import page_files

    for flt in (FileFilter(name="edi"), FileFilter(routes=("orders",)), FileFilter(name="nothing")):
        for offset in (0, 1, 4, 9):
            rows, total = page_files(url, "in", flt, 2, offset)
            assert ids(rows) == ids(list_files(url, "in", flt, 2, offset)), (flt, offset)
            assert total == count_files(url, "in", flt), (flt, offset)
    rows, _ = page_files(url, "in", FileFilter(name="1002"))
    assert rows[0]["removal_pending"] is True


def test_bad_filter_values_are_one_line_errors(url: str) -> None:
    with pytest.raises(FilterError, match="unknown status 'bogus'"):
        FileFilter(status="bogus")
    with pytest.raises(FilterError, match="unknown run status"):
        RunFilter(status="fine")
    with pytest.raises(FilterError, match="limit must be at least 1"):
        list_files(url, "in", limit=0)
    with pytest.raises(FilterError, match="offset must be 0 or more"):
        list_runs(url, offset=-1)
    with pytest.raises(FilterError, match="name the files"):
        mark_files(url, "rereceive")


def test_marks_by_ids_and_by_filter_and_never_an_unarchived_file(url: str) -> None:
    res = mark_files(url, "rereceive", [1, 5, 99])
    assert res.ids == [1] and res.not_found == [5, 99]       # 5 never reached the archive
    assert ids(list_files(url, "in", FileFilter(marked=True))) == [1]
    res = mark_files(url, "rereceive", flt=FileFilter(routes=("invoices",)))
    assert res.ids == [3, 4]
    res = mark_files(url, "rereceive", [1], unmark=True)
    assert ids(list_files(url, "in", FileFilter(marked=True))) == [4, 3]
    res = mark_files(url, "resend", every=True)
    assert res.ids == [1, 2]
    with pytest.raises(FilterError, match="unknown action"):
        mark_files(url, "delete", [1])


def test_runs_filter_by_status_date_and_route(url: str) -> None:
    assert ids(list_runs(url)) == [2, 1]
    assert ids(list_runs(url, RunFilter(status="errors"))) == [2]
    assert ids(list_runs(url, RunFilter(since=utcnow() - timedelta(hours=2)))) == [2]
    # named in the run's routes, or a default run that received or sent its files
    assert ids(list_runs(url, RunFilter(route="invoices"))) == [2, 1]
    assert ids(list_runs(url, RunFilter(route="orders_x"))) == [2]
    # "orders" is not a part of run 2's "orders_x"
    assert ids(list_runs(url, RunFilter(route="orders"))) == [1]
    assert count_runs(url, RunFilter(route="nothing")) == 0


def test_file_and_run_detail(url: str) -> None:
    inc = file_detail(url, "in", 2)
    assert inc is not None and inc["removal_pending"] and inc["run"]["id"] == 1
    assert [o["id"] for o in inc["outputs"]] == [2]
    out = file_detail(url, "out", 2)
    assert out is not None and out["source"]["filename"] == "po_1002.EDI" and out["attempts"] == 2
    assert file_detail(url, "out", 42) is None
    run = run_detail(url, 2)
    assert run is not None
    assert ids(run["incoming"]) == [4, 5] and run["outgoing"] == []
    assert [(e["kind"], e["id"]) for e in run["errors"]] == [("in", 4), ("in", 5)]
    assert run_detail(url, 7) is None


@pytest.mark.parametrize("offset", [0, 120, -300, 90, 330])    # whole hours group by UTC hour, others shift first
def test_activity_counts_per_hour_received_sent_and_errors(url: str, offset: int) -> None:
    now = utcnow()
    got = activity(url, now - timedelta(hours=24), offset_minutes=offset)
    by_hour = {k: (b.received, b.sent, b.errors) for k, b in got.items()}
    h3 = (now - timedelta(hours=3) + timedelta(minutes=offset)).replace(minute=0, second=0, microsecond=0)
    h1 = (now - timedelta(hours=1) + timedelta(minutes=offset)).replace(minute=0, second=0, microsecond=0)
    assert by_hour[h3] == (3, 1, 1)         # 3 received, out 1 sent, out 2 failed
    assert by_hour[h1] == (1, 0, 2)         # 4 failed; 5 never fetched: an error, not received
    assert sum(b.received for b in got.values()) == 4
    assert activity(url, now + timedelta(hours=1)) == {}


def test_stored_path_only_under_botssys(tmp_path: Path) -> None:
    botssys = tmp_path / "botssys"
    (botssys / "data").mkdir(parents=True)
    (botssys / "data" / "f1").write_text("x")
    (tmp_path / "secret.txt").write_text("s")
    assert stored_path(botssys, {"kind": "in", "archive_path": "data/f1"}) == (botssys / "data" / "f1").resolve()
    assert stored_path(botssys, {"kind": "out", "store_path": "data/f1"}) == (botssys / "data" / "f1").resolve()
    for rel in ("../secret.txt", str(tmp_path / "secret.txt"), "data/../../secret.txt", "", "data", "data/none"):
        assert stored_path(botssys, {"kind": "in", "archive_path": rel}) is None, rel
    (botssys / "data" / "link").symlink_to(tmp_path / "secret.txt")
    assert stored_path(botssys, {"kind": "in", "archive_path": "data/link"}) is None


def test_a_database_made_before_the_new_indexes_gains_them(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env()
    url = env.config().database_url
    with session_scope(url):
        pass
    dispose_all()
    path = url[len("sqlite:///"):]
    with sqlite3.connect(path) as conn:
        conn.execute("DROP INDEX ix_incoming_channel")
        conn.execute("DROP INDEX ix_incoming_created_status")
    with session_scope(url):
        pass
    with sqlite3.connect(path) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"ix_incoming_channel", "ix_incoming_created_status"} <= names


@pytest.mark.procs
def test_botsq_files_cli_has_the_channel_and_name_filters(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env()
    seed(env.config().database_url, utcnow())

    def botsq(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([bin_path("botsq"), *argv, "-c", str(env.configdir)], capture_output=True, text=True,
                              timeout=60)

    res = botsq("files", "list", "--kind", "in", "--channel", "orders_ftp", "--name", "1002", "--json")
    assert res.returncode == 0, res.stderr
    assert [r["id"] for r in json.loads(res.stdout)] == [2]
    res = botsq("runs", "--route", "orders", "--json")
    assert res.returncode == 0, res.stderr
    assert [r["id"] for r in json.loads(res.stdout)] == [1]
    res = botsq("runs", "--since", "yesterday")
    assert res.returncode == 1 and res.stderr.strip().endswith("expected YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS]")
