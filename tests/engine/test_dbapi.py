"""The plain-SQL path to the tracking database (engine/dbapi.py) that leases and Bots engine runs
take: it reads and writes the same rows as the ORM on SQLite and PostgreSQL, makes or upgrades the
schema through engine.db when it finds it missing, tells a duplicate key apart, and never carries
a SQLite connection across fork(). And the reason it exists: ``bots-engine`` with
``[engine] kind = bots`` runs without importing SQLAlchemy."""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from engine import dbapi, lease
from engine.botsengine import run_bots_engine
from engine.db import session_scope
from engine.errors import DatabaseError
from engine.models import Lease, Run, RunStatus, utcnow

REPO = Path(__file__).resolve().parents[2]


def _url(make_env, db_ini: str) -> str:
    return make_env(ini=db_ini).config().database_url


def test_rows_read_the_same_through_the_orm_and_plain_sql(make_env, db_ini):
    url = _url(make_env, db_ini)
    started = utcnow()
    with session_scope(url) as s:
        s.add(Lease(name="orm", token="t1", host="h", pid=7, started=started.replace(microsecond=0),
                    heartbeat=started, run_id=None))
    rows = dbapi.transact(url, lambda tx: tx.execute(
        "SELECT started, heartbeat FROM leases WHERE name = :n", {"n": "orm"}).rows, write=False)
    assert [dbapi.as_datetime(v) for v in rows[0]] == [started.replace(microsecond=0), started]
    claim = lease.acquire(url, "plain", grace=5, token="t2")             # written by plain SQL
    with session_scope(url) as s:
        row = s.get(Lease, "plain")
        assert (row.token, row.pid, row.started, row.heartbeat) == ("t2", os.getpid(), claim.lease.started,
                                                                    claim.lease.started)


def test_a_duplicate_key_is_a_conflict_and_the_transaction_is_rolled_back(make_env, db_ini):
    url = _url(make_env, db_ini)
    insert = ("INSERT INTO engine_state (key, value) VALUES (:k, :v)")
    dbapi.transact(url, lambda tx: tx.execute(insert, {"k": "a", "v": "1"}))

    def two(tx: dbapi.Transaction) -> None:
        tx.execute(insert, {"k": "b", "v": "2"})
        tx.execute(insert, {"k": "a", "v": "3"})
    with pytest.raises(dbapi.Conflict):
        dbapi.transact(url, two)
    rows = dbapi.transact(url, lambda tx: tx.execute("SELECT key, value FROM engine_state ORDER BY key").rows)
    assert rows == [("a", "1")]                                          # b went with the failed transaction
    with pytest.raises(DatabaseError, match="cannot be used: .*no_such_table"):
        dbapi.transact(url, lambda tx: tx.execute("SELECT * FROM no_such_table"))


def test_of_many_claimants_at_once_exactly_one_takes_a_lease(make_env, db_ini):
    url = _url(make_env, db_ini)
    barrier = threading.Barrier(8)
    won: list[str] = []

    def claim(i: int) -> None:
        barrier.wait()
        if lease.acquire(url, "race", grace=30, token=f"T{i}").lease is not None:
            won.append(f"T{i}")
    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    assert lease.read(url, "race", grace=30).token == won[0]


def test_a_new_database_file_is_made_with_its_schema(tmp_path):
    url = f"sqlite:///{tmp_path / 'new' / 'folder' / 'botsq.sqlite'}"
    claim = lease.acquire(url, "engine", grace=5)
    assert claim.lease is not None
    with session_scope(url) as s:                                        # the whole schema is there
        assert s.get(Lease, "engine").token == claim.lease.token
        assert s.query(Run).count() == 0


@pytest.mark.procs
def test_a_database_of_an_older_botsq_gains_the_columns_a_statement_needs(tmp_path, make_env):
    """runs without the Bots engine columns (kind, command_line, ...): the plain insert of a Bots run
    finds them missing, engine.db adds them, the insert goes through."""
    env = make_env(ini=f"[database]\nurl = sqlite:///{tmp_path / 'old.sqlite'}\n[engine]\nkind = bots\n"
                       f"command = {sys.executable} {REPO / 'tests' / 'bots_standin.py'}\n", routes=None)
    conn = sqlite3.connect(tmp_path / "old.sqlite")
    conn.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, commands VARCHAR(200) NOT NULL, routes TEXT NOT NULL, "
                 "lane VARCHAR(40) DEFAULT 'default' NOT NULL, host VARCHAR(255) NOT NULL, pid INTEGER NOT NULL, "
                 "started DATETIME NOT NULL, ended DATETIME, status VARCHAR(20) NOT NULL, returncode INTEGER, "
                 "received INTEGER NOT NULL, processed INTEGER NOT NULL, sent INTEGER NOT NULL, "
                 "file_errors INTEGER NOT NULL, comm_errors INTEGER NOT NULL, message TEXT NOT NULL)")
    conn.execute("CREATE TABLE leases (name VARCHAR(100) PRIMARY KEY, token VARCHAR(200) NOT NULL, "
                 "host VARCHAR(255) NOT NULL, pid INTEGER NOT NULL, started DATETIME NOT NULL, "
                 "heartbeat DATETIME NOT NULL, run_id INTEGER)")
    conn.commit()
    conn.close()
    result = run_bots_engine(env.config(), ["new"], [], log=logging.getLogger("test"))
    assert result.exit_code == 0 and result.status is RunStatus.OK
    with session_scope(env.config().database_url) as s:
        run = s.get(Run, result.run_id)
        assert (run.kind, run.status, run.received, run.ended is not None) == ("bots", "ok", 3, True)
        assert run.command_line.endswith("--new -c" + str(env.configdir))


@pytest.mark.procs
def test_a_forked_child_opens_its_own_sqlite_connection(make_env):
    url = _url(make_env, "")
    assert lease.acquire(url, "parent", grace=30, token="P").lease is not None     # the parent's connection
    pid = os.fork()
    if pid == 0:                                          # the child: its own connection, its own lease
        code = 1
        try:
            ok = lease.acquire(url, "child", grace=30, token="C").lease is not None
            code = 0 if ok and lease.refresh(url, "child", "C") else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert lease.refresh(url, "parent", "P")                                        # the parent's still works
    assert lease.read(url, "child", grace=3600).token == "C"


@pytest.mark.procs
def test_bots_engine_with_kind_bots_never_imports_sqlalchemy(make_env, tmp_path):
    """What makes ``bots-engine -c DIR`` cheap around a Bots engine (bench/bots_overhead.py (b)): the
    lock, the run record and the child without the ORM - on a new database too, whose schema
    engine.db makes (SQLAlchemy then, once)."""
    env = make_env(ini=f"[engine]\nkind = bots\ncommand = {sys.executable} {REPO / 'tests' / 'bots_standin.py'}\n",
                   routes=None)
    probe = ("import json, runpy, sys\n"
             "sys.argv = ['bots-engine', '-c', sys.argv[1]]\n"
             "try:\n    runpy.run_module('engine.cli.engine', run_name='__main__')\n"
             "except SystemExit as e:\n    code = e.code\n"
             "print(json.dumps({'code': code, 'sqlalchemy': 'sqlalchemy' in sys.modules}))\n")
    first = subprocess.run([sys.executable, "-c", probe, str(env.configdir)], capture_output=True, text=True,
                           cwd=env.root, timeout=120)
    assert json.loads(first.stdout.splitlines()[-1]) == {"code": 0, "sqlalchemy": True}, first.stderr  # new db
    again = subprocess.run([sys.executable, "-c", probe, str(env.configdir)], capture_output=True, text=True,
                           cwd=env.root, timeout=120)
    assert json.loads(again.stdout.splitlines()[-1]) == {"code": 0, "sqlalchemy": False}, again.stderr
    with session_scope(env.config().database_url) as s:
        assert [r.status for r in s.query(Run).order_by(Run.id)] == ["ok", "ok"]
