"""File names that must never lose or block a file, in-process through the engine run.

* a local name that is not valid UTF-8 is received under a shown name (U+FFFD for the odd bytes),
  recorded in SQLite and PostgreSQL, archived, delivered, and removed at the source under its real
  bytes; the other files of the folder move as usual;
* outputs that would get the same name (in one run, or a name already in the out folder) get a
  unique name, never overwrite one another (file here; ftp, ftps and sftp in their channel tests);
* a symlink in an in-folder is never followed;
* a ``filename`` template with a folder, and a part sending to its own in-channel, are refused at
  config load.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import file_routes
from sqlalchemy import select

from engine.db import session_scope
from engine.errors import ConfigError
from engine.models import Incoming, Outgoing
from engine.records import FileFilter, list_files, mark_files
from engine.run import run_engine

INI = """
[settings]
maxruntime = 60
maxdays = 30
whencleanup = never
"""

ODD = os.fsdecode(b"caf\xe9.edi")            # Latin-1 bytes: not UTF-8 (a surrogate in Python's str)
SHOWN = "caf\ufffd.edi"


def _records(cfg):  # type: ignore[no-untyped-def]
    with session_scope(cfg.database_url) as s:
        ins = [(i.filename, i.status, i.archive_path) for i in s.scalars(select(Incoming).order_by(Incoming.id))]
        outs = [(o.filename, o.commstatus) for o in s.scalars(select(Outgoing).order_by(Outgoing.id))]
    return ins, outs


def _out(env) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    return {p.name: p.read_bytes() for p in env.path("data/out").iterdir()}


# --------------------------------------------------------------------------- 1. names that are not UTF-8

def test_a_local_name_that_is_not_utf8_never_blocks_the_folder(make_env, db_ini) -> None:  # type: ignore[no-untyped-def]
    env = make_env(ini=INI + db_ini, routes=file_routes())
    env.drop("data/in/good.edi", b"good")
    env.drop("data/in/" + ODD, b"odd content")
    env.path("data/out").mkdir(parents=True)
    cfg = env.config()
    res = run_engine(cfg)
    assert res.exit_code == 0, res.message
    assert res.counts["received"] == 2 and res.counts["sent"] == 2
    assert os.listdir(env.path("data/in")) == []                     # removed under its real bytes
    assert _out(env) == {"good.edi": b"good", SHOWN: b"odd content"}   # {infile} is the shown name
    ins, outs = _records(cfg)
    assert sorted((name, status) for name, status, _a in ins) == [(SHOWN, "done"), ("good.edi", "done")]
    archived = {name: (env.root / "botssys" / arch).read_bytes() for name, _s, arch in ins}
    assert archived[SHOWN] == b"odd content"                         # the archive holds it
    assert sorted(outs) == [(SHOWN, "sent"), ("good.edi", "sent")]
    assert [r["filename"] for r in list_files(cfg.database_url, "in", FileFilter(name="caf"))] == [SHOWN]
    log = (env.root / "botssys" / "logging" / "engine.log").read_text(encoding="utf-8")
    assert "not valid UTF-8" in log and SHOWN in log
    again = run_engine(cfg)                                          # and every later run is fine
    assert again.exit_code == 0 and again.counts["received"] == 0


# --------------------------------------------------------------------------- 2. outputs of the same name

SAME_NAMES = '''
def three(content, meta):
    return [(b"one", {}), (b"two", {}), (b"three", {})]

def named(content, meta):
    return [(b"first", {"filename": "INVOIC.edi"}), (b"second", {"filename": "INVOIC.edi"})]
'''


@pytest.mark.parametrize("mapping, expected", [
    ("three", {"x.edi": b"one", "x_1.edi": b"two", "x_2.edi": b"three"}),            # filename = "{infile}"
    ("named", {"INVOIC.edi": b"first", "INVOIC_1.edi": b"second"}),                   # meta["filename"] twice
])
def test_outputs_of_one_name_never_overwrite_each_other(make_env, mapping: str, expected: dict) -> None:  # type: ignore[no-untyped-def]
    env = make_env(ini=INI, routes=file_routes(translate=f"maps.{mapping}"))
    env.drop("usersys/mappings/maps.py", SAME_NAMES)
    env.drop("data/in/x.edi", b"in")
    env.path("data/out").mkdir(parents=True)
    cfg = env.config()
    res = run_engine(cfg)
    assert res.exit_code == 0, res.message
    assert res.counts["sent"] == len(expected)
    assert _out(env) == expected                                    # every output, each under its own name
    _ins, outs = _records(cfg)
    assert sorted(outs) == sorted((name, "sent") for name in expected)   # the records name what the partner got
    log = (env.root / "botssys" / "logging" / "engine.log").read_text(encoding="utf-8")
    assert f"sent as {sorted(expected)[-1]!r}" in log


def test_a_file_left_in_the_out_folder_is_never_overwritten(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env(ini=INI, routes=file_routes())
    env.drop("data/out/x.edi", b"yesterday's, not picked up yet")
    env.drop("data/in/x.edi", b"today's")
    cfg = env.config()
    res = run_engine(cfg)
    assert res.exit_code == 0, res.message
    assert _out(env) == {"x.edi": b"yesterday's, not picked up yet", "x_1.edi": b"today's"}
    assert _records(cfg)[1] == [("x_1.edi", "sent")]
    env.drop("data/in/x.edi", b"tomorrow's")
    assert run_engine(cfg).exit_code == 0
    assert _out(env)["x_2.edi"] == b"tomorrow's"
    assert not [n for n in os.listdir(env.path("data/out")) if n.startswith(".")]   # no temporary file left


def test_a_resend_while_the_first_copy_is_still_there_gets_a_free_name(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env(ini=INI, routes=file_routes())
    env.drop("data/in/x.edi", b"content")
    env.path("data/out").mkdir(parents=True)
    cfg = env.config()
    assert run_engine(cfg).exit_code == 0
    mark_files(cfg.database_url, "resend", every=True)
    res = run_engine(cfg, ["resend"])
    assert res.exit_code == 0 and res.counts["sent"] == 1
    assert _out(env) == {"x.edi": b"content", "x_1.edi": b"content"}
    assert _records(cfg)[1] == [("x_1.edi", "sent")]                  # the record says where the last copy went


# --------------------------------------------------------------------------- 3. symbolic links

def test_a_symlink_in_an_in_folder_is_never_followed(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"root:x:0:0")
    env = make_env(ini=INI, routes=file_routes())
    env.drop("data/in/good.edi", b"good")
    os.symlink(secret, env.path("data/in/link.edi"))
    env.path("data/out").mkdir(parents=True)
    cfg = env.config()
    res = run_engine(cfg)
    assert res.exit_code == 0 and res.counts["received"] == 1
    assert _out(env) == {"good.edi": b"good"}                          # the link's target never leaves
    assert [name for name, _s, _a in _records(cfg)[0]] == ["good.edi"]
    assert os.path.islink(env.path("data/in/link.edi")) and secret.read_bytes() == b"root:x:0:0"   # both untouched
    log = (env.root / "botssys" / "logging" / "engine.log").read_text(encoding="utf-8")
    assert "skipping 'link.edi': a symbolic link" in log


def test_a_symlink_swapped_in_after_the_listing_is_not_read(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from engine.channels.base import Refused
    from engine.channels.file import FileChannel, holds

    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"root:x:0:0")
    env = make_env(ini=INI, routes=file_routes())
    env.drop("data/in/a.edi", b"a")
    cfg = env.config()
    import logging
    ch = FileChannel(cfg.channels["in"], cfg, logging.getLogger("test"))
    [item] = list(ch.list_incoming())
    os.unlink(item.ref)
    os.symlink(secret, item.ref)                                         # swapped in after the listing
    with pytest.raises(Refused, match="cannot read 'a.edi'"):
        ch.fetch(item, tmp_path / "got")
    folder = os.path.realpath(env.path("data/in"))
    assert not holds(folder, os.path.join(folder, "a.edi"), "*")         # the directory monitor agrees
