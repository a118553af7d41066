"""FTP and FTPS channels against a real pyftpdlib server (plain and explicit TLS) on 127.0.0.1."""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import pytest

from channel_servers import (HOST, BlackHole, FtpServer, assert_secret_free, fetch_refused_gone_ok, make_certs,
                             make_channel)
from engine.channels.base import CommunicationError, FileGone, Refused, safe_name

PASSWORD = "Ftp-pa55word!"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module", params=["ftp", "ftps"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, certs):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp(f"{request.param}root")
    srv = FtpServer(root, password=PASSWORD, certs=certs if request.param == "ftps" else None)
    srv.kind = request.param  # type: ignore[attr-defined]
    with srv:
        yield srv


@pytest.fixture
def remote(server: FtpServer) -> Path:
    """The server's ``in`` folder, emptied for each test."""
    folder = server.root / "in"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    return folder


def opts(server: FtpServer, certs, **extra):  # type: ignore[no-untyped-def]
    o = {"host": HOST, "port": server.port, "user": server.user, "password": PASSWORD, "path": "in", "timeout": 5}
    if server.kind == "ftps":  # type: ignore[attr-defined]
        o["cafile"] = str(certs.cafile)
    return {**o, **extra}


def chan(tmp_path: Path, server: FtpServer, certs, **extra):  # type: ignore[no-untyped-def]
    return make_channel(tmp_path, server.kind, **opts(server, certs, **extra))  # type: ignore[attr-defined]


def test_round_trip_reuses_one_connection(tmp_path: Path, server: FtpServer, remote: Path, certs) -> None:
    (remote / "a.edi").write_bytes(b"UNA:+.? '\nUNB+1'")
    (remote / "b.edi").write_bytes(os.urandom(300_000))
    (remote / "skip.txt").write_bytes(b"not mine")
    (remote / "sub.edi").mkdir()
    (remote / ".x.edi.0123abcd.part").write_bytes(b"half a file")   # someone's upload in progress
    before = server.connections
    ch = chan(tmp_path, server, certs, filemask="*.edi")
    with ch:
        items = sorted(ch.list_incoming(), key=lambda i: i.name)
        assert [(i.name, i.size) for i in items] == [("a.edi", 16), ("b.edi", 300_000)]
        for item in items:
            dest = tmp_path / f"got-{item.name}"
            ch.fetch(item, dest)
            assert dest.read_bytes() == (remote / item.name).read_bytes()
        ch.delete(items[0])
        assert not (remote / "a.edi").exists() and (remote / "b.edi").exists()
        for n in range(20):
            src = tmp_path / f"src{n}"
            src.write_bytes(f"message {n}\n".encode() * 50)
            ch.send(src, f"out{n}.edi")
    sent = {p.name: p.read_bytes() for p in remote.iterdir() if p.name.startswith("out")}
    assert sent == {f"out{n}.edi": f"message {n}\n".encode() * 50 for n in range(20)}
    assert not [p for p in remote.iterdir() if p.name.endswith(".part") and p.name != ".x.edi.0123abcd.part"]
    assert server.connections - before == 1


def test_send_never_overwrites_and_leaves_no_temporary_file(tmp_path: Path, server: FtpServer, remote: Path,
                                                            certs) -> None:
    """A file of that name at the partner (not picked up yet, or an earlier output of this run) is
    kept: the new one gets the next free name, and send() says which."""
    (remote / "same.edi").write_bytes(b"old")
    (remote / "same_1.edi").write_bytes(b"older")
    src = tmp_path / "src"
    with chan(tmp_path, server, certs) as ch:
        names = []
        for content in (b"new content", b"newer content"):
            src.write_bytes(content)
            names.append(ch.send(src, "same.edi"))
        src.write_bytes(b"free")
        names.append(ch.send(src, "free.edi"))
    assert names == ["same_2.edi", "same_3.edi", "free.edi"]
    assert {p.name: p.read_bytes() for p in remote.iterdir()} == {
        "same.edi": b"old", "same_1.edi": b"older", "same_2.edi": b"new content", "same_3.edi": b"newer content",
        "free.edi": b"free"}


def test_a_missing_stored_file_never_reaches_the_partner(tmp_path: Path, server: FtpServer, remote: Path,
                                                         certs) -> None:
    """The local file is opened before the partner is asked anything: its absence is no communication
    error (the connection stays in use, no temporary name is left), and the next file goes out."""
    src = tmp_path / "src"
    src.write_bytes(b"there")
    before = server.connections
    with chan(tmp_path, server, certs) as ch:
        with pytest.raises(FileNotFoundError):
            ch.send(tmp_path / "gone", "gone.edi")
        assert not ch.broken and not ch.leftovers
        assert ch.send(src, "next.edi") == "next.edi"
    assert os.listdir(remote) == ["next.edi"] and server.connections - before == 1


def test_a_send_is_five_round_trips(tmp_path: Path, server: FtpServer, remote: Path, certs) -> None:
    """What a delivery costs on the wire: PASV, STOR, SIZE, RNFR, RNTO per file, each needed by a
    guarantee (a data connection, the upload to a temporary name, the server's size checked, the
    rename); TYPE I and the listing of the folder once per connection. One command more per file
    is one round trip more per file (bench/channels.py)."""
    (remote / "there.edi").write_bytes(b"x")
    src = tmp_path / "src"
    src.write_bytes(b"z" * 2048)
    with chan(tmp_path, server, certs) as ch:
        before = server.commands.copy()
        assert ch.send(src, "first.edi") == "first.edi"
        first = server.commands - before
        before = server.commands.copy()
        for n in range(10):
            ch.send(src, f"f{n}.edi")
        per_ten = server.commands - before
    assert first == {"TYPE": 1, "MLSD": 1, "PASV": 2, "STOR": 1, "SIZE": 1, "RNFR": 1, "RNTO": 1}
    assert per_ten == {"PASV": 10, "STOR": 10, "SIZE": 10, "RNFR": 10, "RNTO": 10}


def test_a_file_changed_since_the_listing_stays_for_the_next_run(tmp_path: Path, server: FtpServer, remote: Path,
                                                                 certs) -> None:
    (remote / "growing.edi").write_bytes(b"first part")
    with chan(tmp_path, server, certs) as ch:
        [item] = ch.list_incoming()
        (remote / "growing.edi").write_bytes(b"first part, second part")   # the partner is still writing
        with pytest.raises(CommunicationError, match=r"cannot download 'growing.edi': got 23 bytes, the listing "
                                                     r"said 10$"):
            ch.fetch(item, tmp_path / "g")
        assert not ch.broken
        [item] = ch.list_incoming()
        ch.fetch(item, tmp_path / "g")
    assert (tmp_path / "g").read_bytes() == b"first part, second part"


def test_wrong_password_names_channel_and_host_never_the_password(tmp_path: Path, server: FtpServer, certs) -> None:
    ch = chan(tmp_path, server, certs, password="Wrong-" + PASSWORD)
    with pytest.raises(CommunicationError) as info:
        ch.open()
    msg = str(info.value)
    assert msg.startswith(f"channel 'partner' ({server.kind} {HOST}:{server.port}): login failed for user 'alice'")  # type: ignore[attr-defined]
    assert "530" in msg and "\n" not in msg
    assert_secret_free(info.value, PASSWORD, "Wrong-" + PASSWORD)


def test_missing_remote_folder(tmp_path: Path, server: FtpServer, certs) -> None:
    with pytest.raises(CommunicationError, match=r"cannot change to remote folder 'nope'"):
        chan(tmp_path, server, certs, path="nope").open()


def test_server_down_is_a_communication_error(tmp_path: Path, certs) -> None:
    port = BlackHole().port   # a free port nobody listens on
    ch = make_channel(tmp_path, "ftp", host=HOST, port=port, user="u", password=PASSWORD)
    with pytest.raises(CommunicationError, match=rf"^channel 'partner' \(ftp {HOST}:{port}\): cannot connect: connection refused$"):
        ch.open()


@pytest.mark.parametrize("kind", ["ftp", "ftps"])
def test_slow_server_hits_the_timeout(tmp_path: Path, kind: str) -> None:
    with BlackHole() as hole:
        ch = make_channel(tmp_path, kind, host=HOST, port=hole.port, user="u", password=PASSWORD, timeout=0.5)
        t0 = time.monotonic()
        with pytest.raises(CommunicationError, match=r"cannot connect: timed out after 0.5 s$"):
            ch.open()
        assert time.monotonic() - t0 < 3


def test_server_stopped_mid_run_leaves_remote_files(tmp_path: Path, certs) -> None:
    root = tmp_path / "root"
    (root / "in").mkdir(parents=True)
    for n in range(4):
        (root / "in" / f"f{n}.edi").write_bytes(b"x" * 1000)
    srv = FtpServer(root, password=PASSWORD).start()
    srv.kind = "ftp"  # type: ignore[attr-defined]
    try:
        ch = chan(tmp_path, srv, certs)
        ch.open()
        items = sorted(ch.list_incoming(), key=lambda i: i.name)
        ch.fetch(items[0], tmp_path / "d0")
        srv.stop()
        with pytest.raises(CommunicationError, match=r"^channel 'partner' \(ftp .*\): cannot download 'f1.edi': "):
            ch.fetch(items[1], tmp_path / "d1")
        # the next transfer reconnects once; that failing too ends the channel for this run, at once
        src = tmp_path / "src"
        src.write_bytes(b"y")
        with pytest.raises(CommunicationError, match=r"cannot connect: connection refused$"):
            ch.send(src, "out.edi")
        srv.start()
        with pytest.raises(CommunicationError, match=r"cannot connect: connection refused$"):
            ch.fetch(items[2], tmp_path / "d2")
        ch.close()
        assert sorted(p.name for p in (root / "in").iterdir()) == ["f0.edi", "f1.edi", "f2.edi", "f3.edi"]
        with chan(tmp_path, srv, certs) as ch2:   # the next run sees everything
            assert len(ch2.list_incoming()) == 4
    finally:
        srv.stop()


def test_a_dropped_connection_is_reopened_once(tmp_path: Path, certs) -> None:
    root = tmp_path / "root"
    (root / "in").mkdir(parents=True)
    (root / "in" / "a.edi").write_bytes(b"A")
    srv = FtpServer(root, password=PASSWORD).start()
    srv.kind = "ftp"  # type: ignore[attr-defined]
    try:
        with chan(tmp_path, srv, certs) as ch:
            [item] = ch.list_incoming()
            srv.stop()
            srv.start()                      # a restart drops the control connection
            with pytest.raises(CommunicationError):
                ch.fetch(item, tmp_path / "a")
            ch.fetch(item, tmp_path / "a")   # reconnected
            assert (tmp_path / "a").read_bytes() == b"A"
            with pytest.raises(FileGone, match=r"'gone.edi' was listed but is gone$"):
                ch.fetch(type(item)("gone.edi", 1, "gone.edi"), tmp_path / "b")   # a refusal keeps the connection
            ch.delete(item)
        assert srv.connections == 2
    finally:
        srv.stop()


HOSTILE = {
    "../../escaped.edi": "/in/real.edi",
    "/etc/evil.edi": "/in/real.edi",
    "sub/../../x.edi": "/in/real.edi",
    "..": "/in/real.edi",
    "ctl\x01\x1b[2J.edi": "/in/real.edi",
    "nul\x00.edi": "/in/real.edi",
    "back\\..\\..\\slash.edi": "/in/real.edi",
}


def test_hostile_remote_names_never_escape_the_local_folder(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "in").mkdir(parents=True)
    (root / "in" / "real.edi").write_bytes(b"payload")
    local = tmp_path / "local" / "spool"
    local.mkdir(parents=True)
    with FtpServer(root, password=PASSWORD, lies=HOSTILE) as srv:
        ch = make_channel(tmp_path, "ftp", host=HOST, port=srv.port, user="alice", password=PASSWORD, path="in")
        with ch:
            items = ch.list_incoming()
            names = {i.name for i in items}
            assert set(HOSTILE) - {".."} <= names        # passed through as the partner's names
            for n, item in enumerate(items):
                dest = local / f"{n}-{safe_name(item.name)}"
                ch.fetch(item, dest)
                assert dest.read_bytes() == b"payload"
                assert dest.parent == local and "/" not in safe_name(item.name)
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and local not in p.parents
               and root not in p.parents and "chanenv" not in str(p)]
    assert outside == []
    assert sorted(os.listdir(tmp_path / "local")) == ["spool"]


@pytest.mark.parametrize("name,stored", [
    ("../../escape.edi", "escape.edi"),
    ("/etc/passwd", "passwd"),
    ("..", "file"),
    ("sub/dir/../x.edi", "x.edi"),
    ("a\x00b\rc\n.edi", "a_b_c_.edi"),
])
def test_send_cannot_be_tricked_out_of_the_remote_folder(tmp_path: Path, server: FtpServer, remote: Path,
                                                         certs, name: str, stored: str) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"data")
    before = {p for p in server.root.rglob("*")}
    with chan(tmp_path, server, certs) as ch:
        ch.send(src, name)
    assert sorted(p.name for p in remote.iterdir()) == [stored]
    assert {p for p in server.root.rglob("*")} - before == {remote / stored}


def test_refused_rename_is_a_failed_delivery_leaving_nothing_behind(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "in").mkdir(parents=True)
    with FtpServer(root, password=PASSWORD, perm="elradmw") as srv:   # no "f": RNFR/RNTO refused
        ch = make_channel(tmp_path, "ftp", host=HOST, port=srv.port, user="alice", password=PASSWORD, path="in")
        src = tmp_path / "src"
        src.write_bytes(b"abc")
        with ch:
            for name in ("one.edi", "two.edi"):        # never a fall back to writing the final name
                with pytest.raises(Refused, match=rf"cannot send '{name}': the server refuses to rename "
                                                  rf"'\.{name}\.[0-9a-f]{{8}}\.part' to it \(550 "):
                    ch.send(src, name)
            assert not ch.broken
    assert os.listdir(root / "in") == []               # no piece left under any name


@pytest.mark.parametrize("kind", ["ftp", "ftps"])
def test_server_keeping_less_than_was_sent_is_a_failed_delivery(tmp_path: Path, certs, kind: str) -> None:
    root = tmp_path / "root"
    (root / "in").mkdir(parents=True)
    with FtpServer(root, password=PASSWORD, certs=certs if kind == "ftps" else None, truncate_uploads=True) as srv:
        srv.kind = kind  # type: ignore[attr-defined]
        src = tmp_path / "src"
        src.write_bytes(b"0123456789")
        with chan(tmp_path, srv, certs) as ch:
            with pytest.raises(Refused, match=r"cannot send 'x.edi': the server holds 9 of the 10 bytes sent$"):
                ch.send(src, "x.edi")
            srv.truncate_uploads = False
            ch.send(src, "x.edi")
    assert os.listdir(root / "in") == ["x.edi"] and (root / "in" / "x.edi").read_bytes() == b"0123456789"


def test_a_server_without_mlsd_lists_with_list_and_skips_folders(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "in" / "sub.edi").mkdir(parents=True)      # a folder matching the mask: 550 on RETR if taken
    (root / "in" / "sub.edi" / "deep.edi").write_bytes(b"not here")
    (root / "in" / "a.edi").write_bytes(b"A")
    (root / "in" / "with space.edi").write_bytes(b"BB")
    with FtpServer(root, password=PASSWORD, mlsd=False) as srv:
        ch = make_channel(tmp_path, "ftp", host=HOST, port=srv.port, user="alice", password=PASSWORD, path="in",
                          passive=False, filemask="*.edi")
        with ch:
            items = sorted(ch.list_incoming(), key=lambda i: i.name)
            assert [(i.name, i.size) for i in items] == [("a.edi", 1), ("with space.edi", 2)]
            for item in items:
                ch.fetch(item, tmp_path / item.name)
            ch.send(tmp_path / "a.edi", "b.edi")
    assert (tmp_path / "with space.edi").read_bytes() == b"BB" and (root / "in" / "b.edi").read_bytes() == b"A"


@pytest.mark.parametrize("mlsd", [True, False])
def test_names_in_another_encoding_never_stop_the_listing(tmp_path: Path, mlsd: bool, caplog) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "root"
    (root / "in").mkdir(parents=True)
    (root / "in" / "café.edi").write_bytes(b"accent")   # sent as cp1252 bytes: not valid UTF-8
    (root / "in" / "plain.edi").write_bytes(b"plain")
    with FtpServer(root, password=PASSWORD, mlsd=mlsd, encoding="cp1252") as srv:
        base = dict(host=HOST, port=srv.port, user="alice", password=PASSWORD, path="in")
        with caplog.at_level(logging.WARNING, logger="test.channels"), make_channel(tmp_path, "ftp", **base) as ch:
            items = sorted(ch.list_incoming(), key=lambda i: i.name)
            assert [i.name for i in items] == ["caf\ufffd.edi", "plain.edi"]
            ch.fetch(items[0], tmp_path / "odd")          # reached under its own bytes
            ch.delete(items[0])
        assert (tmp_path / "odd").read_bytes() == b"accent" and os.listdir(root / "in") == ["plain.edi"]
        assert any("not valid utf-8" in r.getMessage() and "encoding" in r.getMessage() for r in caplog.records)
        (root / "in" / "café.edi").write_bytes(b"accent")
        with make_channel(tmp_path, "ftp", encoding="cp1252", **base) as ch:
            items = sorted(ch.list_incoming(), key=lambda i: i.name)
            assert [i.name for i in items] == ["café.edi", "plain.edi"]
            ch.fetch(items[0], tmp_path / "named")
            src = tmp_path / "src"
            src.write_bytes(b"out")
            ch.send(src, "rückmeldung.edi")
    assert (tmp_path / "named").read_bytes() == b"accent" and (root / "in" / "rückmeldung.edi").read_bytes() == b"out"


def test_a_refused_or_vanished_download_is_that_files_problem(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "in").mkdir(parents=True)
    for name in ("gone.edi", "locked.edi", "ok.edi"):
        (root / "in" / name).write_bytes(name.encode())
    with FtpServer(root, password=PASSWORD, refuse_read={"locked.edi"}, gone_on_read={"gone.edi"}) as srv:
        with make_channel(tmp_path, "ftp", host=HOST, port=srv.port, user="alice", password=PASSWORD,
                          path="in") as ch:
            fetch_refused_gone_ok(ch, tmp_path, r"cannot download 'locked.edi': 550 Permission denied")
        assert srv.connections == 1


def test_ftps_checks_the_server_certificate(tmp_path: Path, certs) -> None:
    root = tmp_path / "root"
    (root / "in").mkdir(parents=True)
    with FtpServer(root, password=PASSWORD, certs=certs) as srv:
        base = {"host": HOST, "port": srv.port, "user": "alice", "password": PASSWORD, "path": "in"}
        with pytest.raises(CommunicationError, match=r"TLS negotiation failed: .*certificate verify failed"):
            make_channel(tmp_path, "ftps", **base).open()    # the system CAs do not know the test CA
        with make_channel(tmp_path, "ftps", verify=False, **base) as ch:
            assert ch.list_incoming() == []
        with pytest.raises(CommunicationError, match=r"cannot load cafile"):
            make_channel(tmp_path, "ftps", cafile=str(tmp_path / "missing.pem"), **base).open()
    with FtpServer(root, password=PASSWORD) as plain:   # ftps against a server without TLS
        with pytest.raises(CommunicationError, match=r"TLS negotiation failed"):
            make_channel(tmp_path, "ftps", **{**base, "port": plain.port}).open()


@pytest.mark.slow
def test_a_thousand_small_files_over_one_connection(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "in").mkdir(parents=True)
    src = tmp_path / "src"
    src.write_bytes(b"z" * 2048)
    with FtpServer(root, password=PASSWORD) as srv:
        ch = make_channel(tmp_path, "ftp", host=HOST, port=srv.port, user="alice", password=PASSWORD, path="in")
        with ch:
            for n in range(1000):
                ch.send(src, f"f{n:04}.edi")
            items = ch.list_incoming()
            assert len(items) == 1000
            got = tmp_path / "got"
            got.mkdir()
            for item in items:
                ch.fetch(item, got / item.name)
                ch.delete(item)
        assert srv.connections == 1
    assert len(os.listdir(got)) == 1000 and os.listdir(root / "in") == []
