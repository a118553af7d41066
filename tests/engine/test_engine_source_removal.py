"""A file received but not removed at the source is never processed (and sent) a second time.

The record and a pending-removal mark are committed before the source is removed; when the
removal fails (or the run dies first), the next run finds the file again, compares size and
sha256 with the record and only removes it. A different file under the same name is new.
"""
from __future__ import annotations

import json
import os
import subprocess

import pytest
from sqlalchemy import select

from engine.channels.base import CommunicationError
from engine.channels.file import FileChannel
from engine.db import session_scope
from engine.models import Incoming, Outgoing, SourceRemoval
from engine.run import run_engine

from conftest import bin_path
from test_engine_run import INI, ROUTES


@pytest.fixture
def env(make_env, db_ini):  # type: ignore[no-untyped-def]
    e = make_env(ini=INI + db_ini, routes=ROUTES)
    e.path("data/out").mkdir(parents=True)
    return e


def _rows(cfg):  # type: ignore[no-untyped-def]
    with session_scope(cfg.database_url) as s:
        ins = list(s.scalars(select(Incoming).order_by(Incoming.id)))
        outs = list(s.scalars(select(Outgoing).order_by(Outgoing.id)))
        pending = list(s.scalars(select(SourceRemoval).order_by(SourceRemoval.id)))
    return ins, outs, pending


def _botsq(env, *argv: str) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run([bin_path("botsq"), *argv, "-c", str(env.configdir)], capture_output=True, text=True,
                          timeout=60)


def _refuse_delete(monkeypatch: pytest.MonkeyPatch, names: set[str] | None = None) -> None:
    original = FileChannel.delete

    def delete(self, item):  # type: ignore[no-untyped-def]
        if names is None or item.name in names:
            raise CommunicationError(f"{self.describe()}: cannot remove {item.name!r}: Permission denied")
        original(self, item)

    monkeypatch.setattr(FileChannel, "delete", delete)


@pytest.mark.procs
def test_failed_removal_is_finished_by_the_next_run_without_sending_again(env, monkeypatch):  # type: ignore[no-untyped-def]
    env.drop("data/in/a.edi", "AAA")
    env.drop("data/in/b.edi", "BBB")
    env.drop("data/in/c.edi", "CCC")
    cfg = env.config()
    with monkeypatch.context() as m:
        _refuse_delete(m, {"a.edi", "b.edi"})
        first = run_engine(cfg)
    assert first.exit_code == 2 and first.counts["comm_errors"] == 2 and first.counts["sent"] == 3
    assert sorted(os.listdir(env.path("data/in"))) == ["a.edi", "b.edi"]
    ins, outs, pending = _rows(cfg)
    assert sorted(p.filename for p in pending) == ["a.edi", "b.edi"]     # c.edi was removed: no mark left
    listed = _botsq(env, "files", "list", "--kind", "in")                  # botsq files list shows it
    assert listed.returncode == 0, listed.stderr
    marked = [ln for ln in listed.stdout.splitlines() if ln.endswith("[still at the source: removal pending]")]
    assert len(marked) == 2 and any("a.edi" in ln for ln in marked) and any("b.edi" in ln for ln in marked)
    as_json = _botsq(env, "files", "list", "--kind", "in", "--json")
    assert sorted((r["filename"], r["removal_pending"]) for r in json.loads(as_json.stdout)) == \
        [("a.edi", True), ("b.edi", True), ("c.edi", False)]
    log = (cfg.directories.logging / "engine.log").read_text()
    assert "received, but not removed at the source (the next run removes it without processing it again)" in log

    for p in env.path("data/out").iterdir():      # a partner picked them up
        p.unlink()
    second = run_engine(cfg)
    assert second.exit_code == 0, second.message
    assert second.counts["received"] == 0 and second.counts["sent"] == 0 and second.counts["removed_late"] == 2
    assert os.listdir(env.path("data/in")) == [] and os.listdir(env.path("data/out")) == []
    ins, outs, pending = _rows(cfg)
    assert len(ins) == 3 and len(outs) == 3 and pending == []
    assert "2 already received (only removed at the source)" in second.message
    log = (cfg.directories.logging / "engine.log").read_text()
    assert "file a.edi: already received" in log and "removed at the source now, not processed again" in log


def test_removal_failing_again_keeps_the_mark_and_still_sends_nothing(env, monkeypatch):  # type: ignore[no-untyped-def]
    env.drop("data/in/a.edi", "AAA")
    cfg = env.config()
    _refuse_delete(monkeypatch)
    assert run_engine(cfg).exit_code == 2
    again = run_engine(cfg)
    assert again.exit_code == 2 and again.counts["sent"] == 0 and again.counts["received"] == 0
    ins, outs, pending = _rows(cfg)
    assert len(ins) == 1 and len(outs) == 1 and [p.filename for p in pending] == ["a.edi"]
    monkeypatch.undo()
    done = run_engine(cfg)
    assert done.exit_code == 0 and done.counts["removed_late"] == 1 and not env.path("data/in/a.edi").exists()
    assert len(_rows(cfg)[1]) == 1


def test_another_file_under_the_same_name_is_new(env, monkeypatch):  # type: ignore[no-untyped-def]
    env.drop("data/in/a.edi", "first")
    env.drop("data/in/b.edi", "bee")
    cfg = env.config()
    with monkeypatch.context() as m:
        _refuse_delete(m)
        assert run_engine(cfg).exit_code == 2
    env.drop("data/in/a.edi", "second, longer")    # the partner replaced it
    env.path("data/in/b.edi").unlink()             # ... and removed this one itself
    res = run_engine(cfg)
    assert res.exit_code == 0 and res.counts["received"] == 1 and res.counts["sent"] == 1
    assert res.counts["removed_late"] == 0
    assert env.path("data/out/a.edi").read_text() == "first"              # both kept: never overwritten
    assert env.path("data/out/a_1.edi").read_text() == "second, longer"
    ins, outs, pending = _rows(cfg)
    assert [i.filename for i in ins] == ["a.edi", "b.edi", "a.edi"] and len(outs) == 3 and pending == []
    # b.edi's mark was settled when the file was gone: the same content arriving later is a new file
    env.drop("data/in/b.edi", "bee")
    res = run_engine(cfg)
    assert res.exit_code == 0 and res.counts["received"] == 1 and res.counts["sent"] == 1


def test_mark_of_a_file_removed_by_hand_is_settled_even_when_the_folder_is_empty(env, monkeypatch):  # type: ignore[no-untyped-def]
    env.drop("data/in/status.edi", "no changes")
    cfg = env.config()
    with monkeypatch.context() as m:
        _refuse_delete(m)
        assert run_engine(cfg).exit_code == 2
    env.path("data/in/status.edi").unlink()                # an operator removed it
    assert run_engine(cfg).exit_code == 0 and _rows(cfg)[2] == []
    env.drop("data/in/status.edi", "no changes")           # the partner's next file, same content: a new file
    res = run_engine(cfg)
    assert res.exit_code == 0 and res.counts["received"] == 1 and res.counts["sent"] == 1
    assert len(_rows(cfg)[1]) == 2


def test_run_dying_between_record_and_removal(env, monkeypatch):  # type: ignore[no-untyped-def]
    env.drop("data/in/a.edi", "AAA")
    cfg = env.config()

    def die(self, item):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(FileChannel, "delete", die)
        with pytest.raises(KeyboardInterrupt):
            run_engine(cfg)
    assert env.path("data/in/a.edi").exists() and not env.path("data/out/a.edi").exists()
    res = run_engine(cfg)       # recovery processes the recorded file once; the source copy is only removed
    assert res.exit_code == 0, res.message
    assert res.counts["recovered"] == 1 and res.counts["removed_late"] == 1 and res.counts["received"] == 0
    assert env.path("data/out/a.edi").read_text() == "AAA" and not env.path("data/in/a.edi").exists()
    ins, outs, pending = _rows(cfg)
    assert len(ins) == 1 and ins[0].status == "done" and len(outs) == 1 and pending == []


def test_cleanup_drops_marks_with_their_records(env, monkeypatch):  # type: ignore[no-untyped-def]
    from datetime import timedelta

    from sqlalchemy import update

    from engine.models import utcnow
    env.drop("data/in/a.edi", "AAA")
    cfg = env.config()
    _refuse_delete(monkeypatch)
    run_engine(cfg)
    with session_scope(cfg.database_url) as s:
        s.execute(update(Incoming).values(created=utcnow() - timedelta(days=31)))
    run_engine(cfg, ["cleanup"])
    assert _rows(cfg)[2] == []
