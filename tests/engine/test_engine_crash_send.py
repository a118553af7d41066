"""After a crash mid-send, a file reaches the partner twice at most once (issue 9, section 4).

Each delivery the partner accepted is committed to the deliveries journal at once; the next
run's crash recovery records those as sent by the crashed run and does not send them again. Only
the file in flight - accepted by the partner, not yet journaled - can arrive twice.

The procs tests kill a real ``bots-engine`` with SIGKILL right after the partner accepted its
N-th file (the channel's ``send`` returned, the engine has not written anything about it yet: the
worst moment), for every out-channel type against the suite's real servers, then run the engine
again. The fast tests interrupt a run in-process (the run records itself as failed) and check the
journal's folding: split outputs, a rereceive, a resend.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from channel_servers import HOST, FtpServer, SftpServer, SmtpServer, make_certs
from conftest import DEFAULT_INI, Env, bin_path, file_routes
from engine.channels.file import FileChannel
from engine.db import session_scope
from engine.models import Delivery, Incoming, Outgoing, Run
from engine.run import run_engine

FILES = 60
KILL_AFTER = 20
NAMES = [f"f{n:03d}.edi" for n in range(FILES)]
TEMPLATE = "{run}_{seq}_{infile}"      # a delivery made again by another run gets another name: duplicates show

# Runs bots-engine with the out-channel's class patched: SIGKILL right after the partner took the N-th file.
KILLER = r"""
import importlib, os, signal, sys
module, name = os.environ["KILL_CLASS"].rsplit(".", 1)
cls = getattr(importlib.import_module(module), name)
after, done = int(os.environ["KILL_AFTER"]), [0]
real = cls.send
def send(self, src, filename):
    name = real(self, src, filename)
    done[0] += 1
    if done[0] == after:
        os.kill(os.getpid(), signal.SIGKILL)
    return name
cls.send = send
from engine.cli.engine import main
sys.argv[0] = "bots-engine"
main()
"""

CLASSES = {"file": "engine.channels.file.FileChannel", "ftp": "engine.channels.ftp.FtpChannel",
           "ftps": "engine.channels.ftp.FtpsChannel", "sftp": "engine.channels.sftp.SftpChannel",
           "smtp": "engine.channels.smtp.SmtpChannel"}


class Partner:
    """An out-channel's partner: its channel table and what it holds (delivered names, oldest first)."""

    def __init__(self, channel: dict, received: Callable[[], list[tuple[str, bytes]]]) -> None:
        self.channel, self.received = channel, received


@pytest.fixture
def partner(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Partner]:
    kind = request.param
    root = tmp_path / "partner"
    (root / "up").mkdir(parents=True)

    def folder() -> list[tuple[str, bytes]]:
        return sorted((p.name, p.read_bytes()) for p in (root / "up").iterdir() if not p.name.startswith("."))

    if kind == "file":
        yield Partner({"type": "file", "path": str(root / "up"), "filename": TEMPLATE}, folder)
    elif kind in ("ftp", "ftps"):
        certs = make_certs(tmp_path / "certs") if kind == "ftps" else None
        with FtpServer(root, certs=certs) as srv:
            ch = {"type": kind, "host": HOST, "port": srv.port, "user": srv.user, "password": srv.password,
                  "path": "up", "filename": TEMPLATE, "timeout": 5}
            if certs:
                ch["cafile"] = str(certs.cafile)
            yield Partner(ch, folder)
    elif kind == "sftp":
        with SftpServer(root) as srv:
            kh = tmp_path / "known_hosts"
            kh.write_text(srv.known_hosts_line() + "\n")
            yield Partner({"type": "sftp", "host": HOST, "port": srv.port, "user": srv.user, "password": srv.password,
                           "path": "up", "known_hosts": str(kh), "filename": TEMPLATE, "timeout": 5}, folder)
    else:
        with SmtpServer() as srv:
            def mails() -> list[tuple[str, bytes]]:
                got = []
                for m in list(srv.mails):
                    att = next(m.message().iter_attachments())
                    got.append((att.get_filename(), att.get_content()))
                return got
            yield Partner({"type": "smtp", "host": HOST, "port": srv.port, "to": "edi@partner.example",
                           "sender": "bots@example.com", "filename": TEMPLATE, "timeout": 5}, mails)


def routes(out: dict) -> str:
    text = '[channels.in]\ntype = "file"\npath = "data/in"\nremove = true\n\n[channels.out]\n'
    text += "".join(f"{k} = {json.dumps(v)}\n" for k, v in out.items())
    return text + '\n[routes.r1]\n[[routes.r1.parts]]\nfromchannel = "in"\ntranslate = "passthrough"\ntochannel = "out"\n'


def infile(delivered_name: str) -> str:
    """``f007.edi`` of ``12_8_f007.edi`` (TEMPLATE)."""
    return delivered_name.split("_", 2)[2]


def runs(env: Env) -> list[dict]:
    r = subprocess.run([bin_path("botsq"), "runs", "--json", "-c", str(env.configdir)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return sorted(json.loads(r.stdout), key=lambda row: row["id"])


def killed_engine(env: Env, cls: str, after: int, *argv: str) -> None:
    killer = env.root / "killer.py"
    killer.write_text(KILLER)
    proc = subprocess.run([sys.executable, str(killer), "-c", str(env.configdir), *argv], cwd=env.root,
                          env={**os.environ, "KILL_CLASS": cls, "KILL_AFTER": str(after)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr


@pytest.mark.procs
@pytest.mark.parametrize("partner", ["file", "ftp", "ftps", "sftp", "smtp"], indirect=True)
def test_run_killed_mid_send_delivers_only_the_file_in_flight_twice(make_env, partner: Partner) -> None:  # type: ignore[no-untyped-def]
    env = make_env(ini=DEFAULT_INI, routes=routes(partner.channel))
    for name in NAMES:
        env.drop(f"data/in/{name}", f"UNB+{name}'")
    killed_engine(env, CLASSES[partner.channel["type"]], KILL_AFTER)
    assert len(partner.received()) == KILL_AFTER                  # the partner took 20 files, then the run died

    again = env.run("--new")
    assert again.returncode == 0, again.stdout + again.stderr
    got = partner.received()
    per_file = Counter(infile(name) for name, _ in got)
    assert set(per_file) == set(NAMES)                             # nothing lost
    twice = [n for n, c in per_file.items() if c > 1]
    assert len(twice) <= 1 and max(per_file.values()) <= 2, per_file   # at most the one in flight, twice
    assert all(content == f"UNB+{infile(name)}'".encode() for name, content in got)

    crashed, recovering = runs(env)
    assert crashed["status"] == "crashed" and recovering["status"] == "ok"
    assert crashed["received"] == FILES
    # the crashed run's record says what it sent: every delivery the partner confirmed to it
    assert crashed["sent"] == KILL_AFTER - len(twice)
    assert recovering["sent"] == FILES - crashed["sent"]
    with session_scope(env.config().database_url) as s:
        outs = list(s.scalars(select(Outgoing).order_by(Outgoing.id)))
        assert s.scalar(select(func.count()).select_from(Delivery)) == 0
        assert {i.status for i in s.scalars(select(Incoming))} == {"done"}
    assert len(outs) == FILES and {o.commstatus for o in outs} == {"sent"}
    assert sum(o.run_id == crashed["id"] for o in outs) == crashed["sent"]
    # what the records say was delivered is what the partner holds
    assert {o.filename for o in outs} <= {name for name, _ in got}


@pytest.mark.procs
def test_resend_killed_midway_sends_each_file_once_more_but_the_one_in_flight(make_env) -> None:  # type: ignore[no-untyped-def]
    with SmtpServer() as srv:
        env = make_env(ini=DEFAULT_INI, routes=routes({"type": "smtp", "host": HOST, "port": srv.port,
                                                       "to": "edi@partner.example", "filename": "{infile}"}))
        for name in NAMES:
            env.drop(f"data/in/{name}", f"UNB+{name}'")
        assert env.run("--new").returncode == 0
        marked = subprocess.run([bin_path("botsq"), "files", "resend", "--route", "r1", "-c", str(env.configdir)],
                                capture_output=True, text=True, timeout=60)
        assert marked.returncode == 0, marked.stderr
        killed_engine(env, CLASSES["smtp"], KILL_AFTER, "--resend")
        assert len(srv.mails) == FILES + KILL_AFTER
        again = env.run("--resend")          # recovery, then the files still marked
        assert again.returncode == 0, again.stdout + again.stderr
        per_file = Counter(next(m.message().iter_attachments()).get_filename() for m in srv.mails)
    assert set(per_file) == set(NAMES)
    assert sorted(per_file.values()) == [2] * (FILES - 1) + [3]    # once more each; the one in flight twice more
    new, crashed, resend = runs(env)
    assert crashed["status"] == "crashed" and crashed["sent"] == KILL_AFTER - 1
    assert resend["sent"] == FILES - KILL_AFTER + 1
    with session_scope(env.config().database_url) as s:
        outs = list(s.scalars(select(Outgoing).order_by(Outgoing.id)))
    assert {o.resend for o in outs} == {False} and {o.commstatus for o in outs} == {"sent"}


# --------------------------------------------------------------------------- in-process: the journal's folding

class Interrupted(BaseException):
    """The run stops here (as a signal would stop it)."""


def stop_after(monkeypatch: pytest.MonkeyPatch, n: int) -> list[str]:
    """File-channel sends succeed ``n`` times, then the run is interrupted before the next one."""
    sent: list[str] = []
    real = FileChannel.send

    def send(self, src, filename):  # type: ignore[no-untyped-def]
        if len(sent) == n:
            raise Interrupted()
        name = real(self, src, filename)
        sent.append(filename)
        return name

    monkeypatch.setattr(FileChannel, "send", send)
    return sent


SPLIT = '''
def split(content, meta):
    return [(part.encode(), {}) for part in content.decode().split()]
'''


@pytest.fixture
def split_env(make_env, db_ini) -> Env:  # type: ignore[no-untyped-def]
    env = make_env(ini=DEFAULT_INI + db_ini, routes=file_routes(translate="maps.split", filename=TEMPLATE))
    env.drop("usersys/mappings/maps.py", SPLIT)
    env.path("data/out").mkdir(parents=True)
    for n in range(4):
        env.drop(f"data/in/f{n}.edi", f"f{n}-a f{n}-b f{n}-c")
    return env


def delivered(env: Env) -> Counter[bytes]:
    return Counter(p.read_bytes() for p in env.path("data/out").iterdir() if not p.name.startswith("."))


def test_outputs_delivered_before_an_interruption_are_recorded_not_sent_again(split_env: Env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    cfg = split_env.config()
    with monkeypatch.context() as m:
        sent = stop_after(m, 5)            # f0's three outputs and two of f1's
        with pytest.raises(Interrupted):
            run_engine(cfg)
    assert len(sent) == 5
    with session_scope(cfg.database_url) as s:
        assert s.scalar(select(func.count()).select_from(Delivery)) == 5
        first = s.scalars(select(Run)).one()
        assert (first.status, first.received, first.sent) == ("failed", 4, 5)

    res = run_engine(cfg)
    assert res.exit_code == 0, res.message
    assert res.counts["sent"] == 7 and res.counts["recovered"] == 4
    got = delivered(split_env)
    assert set(got) == {f"f{n}-{x}".encode() for n in range(4) for x in "abc"} and set(got.values()) == {1}
    with session_scope(cfg.database_url) as s:
        outs = list(s.scalars(select(Outgoing).order_by(Outgoing.id)))
        assert s.scalar(select(func.count()).select_from(Delivery)) == 0
        ins = list(s.scalars(select(Incoming)))
    assert len(outs) == 12 and {o.commstatus for o in outs} == {"sent"}
    # the five the interrupted run delivered are its own records, under the names it used
    assert sorted(o.filename for o in outs if o.run_id == first.id) == sorted(sent)
    assert {i.status for i in ins} == {"done"}
    for o in outs:     # each record's stored content is what the partner got under its name
        assert split_env.path(f"botssys/{o.store_path}").read_bytes() == \
            split_env.path(f"data/out/{o.filename}").read_bytes()


def test_interrupted_rereceive_is_finished_without_sending_twice(split_env: Env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    cfg = split_env.config()
    assert run_engine(cfg).exit_code == 0
    for p in split_env.path("data/out").iterdir():
        p.unlink()
    with session_scope(cfg.database_url) as s:
        ids = [i.id for i in s.scalars(select(Incoming))]
    from engine.records import mark_files
    mark_files(cfg.database_url, "rereceive", ids)
    with monkeypatch.context() as m:
        stop_after(m, 4)
        with pytest.raises(Interrupted):
            run_engine(cfg, ["rereceive"])
    res = run_engine(cfg, ["rereceive"])     # recovery finishes the rereceive; nothing is marked any more
    assert res.exit_code == 0, res.message
    got = delivered(split_env)
    assert len(got) == 12 and set(got.values()) == {1}
    with session_scope(cfg.database_url) as s:
        assert not list(s.scalars(select(Incoming).where(Incoming.rereceive.is_(True))))
        assert s.scalar(select(func.count()).select_from(Outgoing)) == 24


def test_a_file_made_again_differently_keeps_what_was_delivered(split_env: Env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The mapping changed (or fails) after the crash: the recorded deliveries are still recorded."""
    cfg = split_env.config()
    with monkeypatch.context() as m:
        stop_after(m, 2)
        with pytest.raises(Interrupted):
            run_engine(cfg)
    split_env.drop("usersys/mappings/maps.py", "def split(content, meta):\n    raise ValueError('now broken')\n")
    res = run_engine(cfg)
    assert res.exit_code == 2
    with session_scope(cfg.database_url) as s:
        outs = list(s.scalars(select(Outgoing)))
        assert s.scalar(select(func.count()).select_from(Delivery)) == 0
    assert sorted(o.filename for o in outs) == sorted(p.name for p in split_env.path("data/out").iterdir())
    assert len(outs) == 2 and {o.commstatus for o in outs} == {"sent"}
