"""SFTP channel against a real SSH/SFTP server (paramiko's server classes) on 127.0.0.1."""
from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path

import paramiko
import pytest

from channel_servers import HOST, BlackHole, SftpServer, assert_secret_free, fetch_refused_gone_ok, make_channel
from engine.channels.base import CommunicationError, Refused, safe_name

PASSWORD = "Sftp-pa55word!"


@pytest.fixture(scope="module")
def client_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[paramiko.PKey, Path, Path]:
    """A client key pair: (key, plain key file, key file encrypted with PASSWORD)."""
    folder = tmp_path_factory.mktemp("keys")
    key = paramiko.ECDSAKey.generate()
    plain, locked = folder / "id_ecdsa", folder / "id_ecdsa_locked"
    key.write_private_key_file(str(plain))
    key.write_private_key_file(str(locked), password=PASSWORD)
    return key, plain, locked


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, client_key) -> SftpServer:  # type: ignore[no-untyped-def]
    srv = SftpServer(tmp_path_factory.mktemp("sftproot"), password=PASSWORD, client_keys=[client_key[0]])
    with srv:
        yield srv


@pytest.fixture
def known_hosts(tmp_path: Path, server: SftpServer) -> Path:
    p = tmp_path / "known_hosts"
    p.write_text("# test\n" + server.known_hosts_line())
    return p


@pytest.fixture
def remote(server: SftpServer) -> Path:
    folder = server.root / "in"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    server.allow_rename = server.posix_rename = True
    return folder


def chan(tmp_path: Path, server: SftpServer, known_hosts: Path | None, **extra):  # type: ignore[no-untyped-def]
    o = {"host": HOST, "port": server.port, "user": server.user, "password": PASSWORD, "path": "in", "timeout": 5}
    if known_hosts is not None:
        o["known_hosts"] = str(known_hosts)
    return make_channel(tmp_path, "sftp", **{**o, **extra})


def test_round_trip_over_one_connection(tmp_path: Path, server: SftpServer, remote: Path, known_hosts: Path) -> None:
    (remote / "a.edi").write_bytes(b"UNA:+.? '")
    (remote / "b.edi").write_bytes(os.urandom(200_000))
    (remote / "c.txt").write_bytes(b"other")
    (remote / "dir.edi").mkdir()
    (remote / ".a.edi.0badc0de.part").write_bytes(b"half")
    ch = chan(tmp_path, server, known_hosts, filemask="*.edi")
    with ch:
        items = sorted(ch.list_incoming(), key=lambda i: i.name)
        assert [(i.name, i.size) for i in items] == [("a.edi", 9), ("b.edi", 200_000)]
        for item in items:
            ch.fetch(item, tmp_path / item.name)
            assert (tmp_path / item.name).read_bytes() == (remote / item.name).read_bytes()
        ch.delete(items[0])
        for n in range(20):
            src = tmp_path / f"src{n}"
            src.write_bytes(os.urandom(3000 + n))
            ch.send(src, f"out{n}.edi")
            assert (remote / f"out{n}.edi").read_bytes() == src.read_bytes()
        transport = ch.transport
    assert not (remote / "a.edi").exists()
    assert sorted(p.name for p in remote.iterdir() if p.name.endswith(".part")) == [".a.edi.0badc0de.part"]
    assert transport is not None and not transport.is_active()


def test_a_missing_stored_file_never_reaches_the_partner(tmp_path: Path, server: SftpServer, remote: Path,
                                                         known_hosts: Path) -> None:
    """As for FTP: the local file is opened before the partner is asked anything."""
    src = tmp_path / "src"
    src.write_bytes(b"there")
    with chan(tmp_path, server, known_hosts) as ch:
        transport = ch.transport
        with pytest.raises(FileNotFoundError):
            ch.send(tmp_path / "gone", "gone.edi")
        assert not ch.broken and not ch.leftovers
        assert ch.send(src, "next.edi") == "next.edi"
        assert ch.transport is transport          # the same connection
    assert os.listdir(remote) == ["next.edi"]


def test_a_file_changed_since_the_listing_stays_for_the_next_run(tmp_path: Path, server: SftpServer, remote: Path,
                                                                 known_hosts: Path) -> None:
    (remote / "growing.edi").write_bytes(b"first part")
    with chan(tmp_path, server, known_hosts) as ch:
        [item] = ch.list_incoming()
        (remote / "growing.edi").write_bytes(b"first")
        with pytest.raises(CommunicationError, match=r"cannot download 'growing.edi': got 5 bytes, the listing said 10$"):
            ch.fetch(item, tmp_path / "g")
        [item] = ch.list_incoming()
        ch.fetch(item, tmp_path / "g")
    assert (tmp_path / "g").read_bytes() == b"first"


def test_send_never_overwrites_an_existing_file(tmp_path: Path, server: SftpServer, remote: Path,
                                                known_hosts: Path) -> None:
    """A file of that name at the partner is kept: the new one gets the next free name (send() says which)."""
    (remote / "x.edi").write_bytes(b"old")
    src = tmp_path / "src"
    with chan(tmp_path, server, known_hosts) as ch:
        names = []
        for name, content in (("x.edi", b"new"), ("x.edi", b"newer"), ("y.edi", b"y")):
            src.write_bytes(content)
            names.append(ch.send(src, name))
    assert names == ["x_1.edi", "x_2.edi", "y.edi"]
    assert {p.name: p.read_bytes() for p in remote.iterdir()} == {
        "x.edi": b"old", "x_1.edi": b"new", "x_2.edi": b"newer", "y.edi": b"y"}


def test_a_file_appearing_before_the_rename_is_not_replaced(tmp_path: Path, server: SftpServer, remote: Path,
                                                            known_hosts: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Someone writes the name after the channel listed the folder: the plain rename refuses, the name
    is taken after all, and the next free one is used."""
    src = tmp_path / "src"
    src.write_bytes(b"ours")
    with chan(tmp_path, server, known_hosts) as ch:
        real = type(ch).listed_names

        def listed_names(self):  # type: ignore[no-untyped-def]
            names = real(self)
            (remote / "race.edi").write_bytes(b"theirs")         # ... just after the listing
            return names

        monkeypatch.setattr(type(ch), "listed_names", listed_names)
        assert ch.send(src, "race.edi") == "race_1.edi"
    assert {p.name: p.read_bytes() for p in remote.iterdir()} == {"race.edi": b"theirs", "race_1.edi": b"ours"}


@pytest.mark.parametrize("posix_rename", [True, False])
def test_refused_rename_is_a_failed_delivery_leaving_nothing_behind(tmp_path: Path, server: SftpServer, remote: Path,
                                                                   known_hosts: Path, posix_rename: bool) -> None:
    server.allow_rename = False
    server.posix_rename = posix_rename
    src = tmp_path / "src"
    src.write_bytes(b"abc")
    with chan(tmp_path, server, known_hosts) as ch:
        for name in ("one.edi", "two.edi"):            # never a fall back to writing the final name
            with pytest.raises(Refused, match=rf"cannot send '{name}': the server refuses to rename "
                                              rf"'\.{name}\.[0-9a-f]{{8}}\.part' to it \(.*Permission denied\)$"):
                ch.send(src, name)
        assert not ch.broken
    assert os.listdir(remote) == []


def test_server_keeping_less_than_was_sent_is_a_failed_delivery(tmp_path: Path, server: SftpServer, remote: Path,
                                                                 known_hosts: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"0123456789")
    server.truncate_uploads = True
    try:
        with chan(tmp_path, server, known_hosts) as ch:
            with pytest.raises(Refused, match=r"cannot send 'x.edi': the server holds 9 of the 10 bytes sent$"):
                ch.send(src, "x.edi")
            assert os.listdir(remote) == []
            server.truncate_uploads = False
            ch.send(src, "x.edi")
    finally:
        server.truncate_uploads = False
    assert os.listdir(remote) == ["x.edi"] and (remote / "x.edi").read_bytes() == b"0123456789"


def test_names_in_another_encoding_never_stop_the_listing(tmp_path: Path, server: SftpServer, remote: Path,
                                                           known_hosts: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    folder = os.fsencode(remote)
    with open(os.path.join(folder, "café.edi".encode("cp1252")), "wb") as f:   # a Windows server's name
        f.write(b"accent")
    (remote / "plain.edi").write_bytes(b"plain")
    with caplog.at_level(logging.WARNING, logger="test.channels"), chan(tmp_path, server, known_hosts) as ch:
        items = sorted(ch.list_incoming(), key=lambda i: i.name)
        assert [i.name for i in items] == ["caf\ufffd.edi", "plain.edi"]
        ch.fetch(items[0], tmp_path / "odd")               # reached under its own bytes
    assert (tmp_path / "odd").read_bytes() == b"accent"
    assert any("not valid utf-8" in r.getMessage() for r in caplog.records)
    with chan(tmp_path, server, known_hosts, encoding="cp1252") as ch:
        items = sorted(ch.list_incoming(), key=lambda i: i.name)
        assert [i.name for i in items] == ["café.edi", "plain.edi"]
        ch.fetch(items[0], tmp_path / "named")
        ch.delete(items[0])
        ch.send(tmp_path / "named", "rückmeldung.edi")
    assert sorted(os.listdir(folder)) == ["plain.edi".encode(), "rückmeldung.edi".encode("cp1252")]


def test_a_refused_or_vanished_download_is_that_files_problem(tmp_path: Path, server: SftpServer, remote: Path,
                                                              known_hosts: Path) -> None:
    for name in ("gone.edi", "locked.edi", "ok.edi"):
        (remote / name).write_bytes(name.encode())
    server.refuse_read, server.gone_on_read = {"locked.edi"}, {"gone.edi"}
    try:
        with chan(tmp_path, server, known_hosts) as ch:
            fetch_refused_gone_ok(ch, tmp_path, r"cannot download 'locked.edi': .*Permission denied")
    finally:
        server.refuse_read, server.gone_on_read = set(), set()


def test_a_partner_that_stops_reading_mid_file_ends_within_the_timeout(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "up").mkdir(parents=True)
    src = tmp_path / "big"
    src.write_bytes(os.urandom(32 * 1024 * 1024))       # far more than the socket buffers hold
    with SftpServer(root, password=PASSWORD, stall_after=200_000) as srv:
        ch = make_channel(tmp_path, "sftp", host=HOST, port=srv.port, user="alice", password=PASSWORD, path="up",
                          timeout=1, insecure_no_host_key_check=True)
        with ch:
            outcome: list[BaseException] = []
            done = threading.Event()

            def send() -> None:
                try:
                    ch.send(src, "big.edi")
                except BaseException as exc:  # noqa: BLE001 - looked at below
                    outcome.append(exc)
                finally:
                    done.set()

            threading.Thread(target=send, daemon=True).start()
            ended = done.wait(60)           # far past the 1 s timeout; paramiko alone would wait for ever
            if not ended:
                assert ch.transport is not None
                ch.transport.sock.close()   # unstick the send so the test can end, then fail
            assert ended, "the upload to a partner that stopped reading never ended"
            [error] = outcome
            assert isinstance(error, CommunicationError)
            assert str(error).endswith("cannot send 'big.edi': timed out after 1 s without progress (the server "
                                       "stopped answering)")
            assert ch.broken and ch.leftovers
            srv.stall_after = 0                        # the partner answers again: the next file goes
            small = tmp_path / "small"
            small.write_bytes(b"small")
            ch.send(small, "small.edi")                # reconnected; the broken upload's piece is removed
        assert os.listdir(root / "up") == ["small.edi"]


def test_a_partner_that_stops_sending_mid_file_ends_the_download_within_the_timeout(tmp_path: Path) -> None:
    """The fetch side of the stall: the server stops sending 200 kB into a 32 MB download. The
    download ends within ``timeout`` as a communication error; the engine then removes its
    temporary file in the archive (receive.py), the file stays at the partner, and once the
    partner answers again the channel reconnects and the file comes whole."""
    root = tmp_path / "root"
    (root / "in").mkdir(parents=True)
    content = os.urandom(32 * 1024 * 1024)
    (root / "in" / "big.edi").write_bytes(content)
    with SftpServer(root, password=PASSWORD) as srv:
        ch = make_channel(tmp_path, "sftp", host=HOST, port=srv.port, user="alice", password=PASSWORD, path="in",
                          timeout=1, insecure_no_host_key_check=True)
        with ch:
            [item] = ch.list_incoming()
        srv.stall_sending_after = 200_000               # the next connection stalls 200 kB into the file
        with ch:
            outcome: list[BaseException] = []
            done = threading.Event()
            dest = tmp_path / "got"

            def fetch() -> None:
                try:
                    ch.fetch(item, dest)
                except BaseException as exc:  # noqa: BLE001 - looked at below
                    outcome.append(exc)
                finally:
                    done.set()

            t0 = time.monotonic()
            threading.Thread(target=fetch, daemon=True).start()
            ended = done.wait(60)
            if not ended:
                assert ch.transport is not None
                ch.transport.sock.close()
            assert ended, "the download from a partner that stopped sending never ended"
            assert time.monotonic() - t0 < 15
            [error] = outcome
            assert isinstance(error, CommunicationError)
            assert "cannot download 'big.edi'" in str(error) and "timed out" in str(error)
            assert (root / "in" / "big.edi").stat().st_size == len(content)     # still at the partner
            srv.stall_sending_after = 0                 # the partner answers again
            ch.fetch(item, dest)                        # reconnected; the whole file
            assert dest.read_bytes() == content


def test_key_file_login_plain_and_encrypted(tmp_path: Path, server: SftpServer, remote: Path, known_hosts: Path,
                                            client_key) -> None:  # type: ignore[no-untyped-def]
    _key, plain, locked = client_key
    (remote / "k.edi").write_bytes(b"k")
    with chan(tmp_path, server, known_hosts, key_file=str(plain), password="") as ch:
        assert [i.name for i in ch.list_incoming()] == ["k.edi"]
    with chan(tmp_path, server, known_hosts, key_file=str(locked)) as ch:   # password unlocks the key
        assert [i.name for i in ch.list_incoming()] == ["k.edi"]
    with pytest.raises(CommunicationError, match=r"cannot read key_file") as info:
        chan(tmp_path, server, known_hosts, key_file=str(locked), password="not-it").open()
    assert_secret_free(info.value, "not-it")
    other = tmp_path / "other_key"
    paramiko.ECDSAKey.generate().write_private_key_file(str(other))
    with pytest.raises(CommunicationError, match=r"login failed for user 'alice': authentication failed"):
        chan(tmp_path, server, known_hosts, key_file=str(other), password="").open()


def test_wrong_password_names_channel_and_host_never_the_password(tmp_path: Path, server: SftpServer,
                                                                  known_hosts: Path) -> None:
    with pytest.raises(CommunicationError) as info:
        chan(tmp_path, server, known_hosts, password="Bad-" + PASSWORD).open()
    msg = str(info.value)
    assert msg == (f"channel 'partner' (sftp {HOST}:{server.port}): login failed for user 'alice': "
                   "authentication failed (wrong user, password or key)")
    assert_secret_free(info.value, PASSWORD, "Bad-" + PASSWORD)


def test_unknown_host_key_is_refused_unless_opted_out(tmp_path: Path, server: SftpServer, remote: Path) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(CommunicationError, match=r"host key of \[127.0.0.1\]:\d+ \(ecdsa-sha2-nistp256\) is not in "
                                                 r".*insecure_no_host_key_check = true"):
        chan(tmp_path, server, empty).open()
    with chan(tmp_path, server, empty, insecure_no_host_key_check=True) as ch:
        assert ch.list_incoming() == []
    assert empty.read_text() == ""      # nothing is added behind the user's back


def test_hashed_known_hosts_entries(tmp_path: Path, server: SftpServer) -> None:
    name = f"[{HOST}]:{server.port}"
    kh = tmp_path / "kh"
    kh.write_text(f"{paramiko.HostKeys.hash_host(name)} {server.host_key.get_name()} {server.host_key.get_base64()}\n")
    with chan(tmp_path, server, kh, path="") as ch:
        ch.list_incoming()


def test_changed_host_key_is_refused(tmp_path: Path, server: SftpServer) -> None:
    kh = tmp_path / "kh"
    kh.write_text(server.known_hosts_line(paramiko.ECDSAKey.generate()))
    with pytest.raises(CommunicationError, match=r"HOST KEY MISMATCH for \[127.0.0.1\]:\d+: .*refusing to connect"):
        chan(tmp_path, server, kh).open()


def test_default_known_hosts_is_the_users(tmp_path: Path, server: SftpServer, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(CommunicationError, match=r"is not in .*home/.ssh/known_hosts"):
        chan(tmp_path, server, None).open()
    (home / ".ssh" / "known_hosts").write_text(server.known_hosts_line())
    with chan(tmp_path, server, None, path="") as ch:
        ch.list_incoming()


def test_server_down_and_stopped_mid_run(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "in").mkdir(parents=True)
    for n in range(3):
        (root / "in" / f"f{n}.edi").write_bytes(b"x" * 5000)
    srv = SftpServer(root, password=PASSWORD)
    kh = tmp_path / "kh"
    kh.write_text(srv.known_hosts_line())
    with pytest.raises(CommunicationError, match=rf"^channel 'partner' \(sftp {HOST}:{srv.port}\): cannot connect: "
                                                 r"connection refused$"):
        chan(tmp_path, srv, kh).open()
    srv.start()
    try:
        ch = chan(tmp_path, srv, kh)
        ch.open()
        items = sorted(ch.list_incoming(), key=lambda i: i.name)
        ch.fetch(items[0], tmp_path / "d0")
        srv.stop()
        with pytest.raises(CommunicationError, match=r"cannot download 'f1.edi'"):
            ch.fetch(items[1], tmp_path / "d1")
        with pytest.raises(CommunicationError, match=r"cannot connect: connection refused"):
            ch.send(tmp_path / "d0", "out.edi")
        ch.close()
        assert sorted(os.listdir(root / "in")) == ["f0.edi", "f1.edi", "f2.edi"]
    finally:
        srv.stop()


def test_slow_server_hits_the_timeout(tmp_path: Path) -> None:
    with BlackHole() as hole:
        ch = make_channel(tmp_path, "sftp", host=HOST, port=hole.port, user="u", password=PASSWORD, timeout=0.5,
                          insecure_no_host_key_check=True)
        t0 = time.monotonic()
        with pytest.raises(CommunicationError, match=r"SSH handshake failed: timed out after 0.5 s$") as info:
            ch.open()
        assert time.monotonic() - t0 < 3
        assert "\n" not in str(info.value)


HOSTILE = {
    "../escaped.edi": "/in/real.edi",
    "../../../../etc/evil.edi": "/in/real.edi",
    "/abs/evil.edi": "/in/real.edi",
    "nul\x00byte.edi": "/in/real.edi",
    "ctl\x01\n\r\x1b[2J.edi": "/in/real.edi",
    "..\\..\\win.edi": "/in/real.edi",
}


def test_hostile_remote_names_never_escape_the_local_folder(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "in").mkdir(parents=True)
    (root / "in" / "real.edi").write_bytes(b"payload")
    local = tmp_path / "a" / "b" / "spool"
    local.mkdir(parents=True)
    with SftpServer(root, password=PASSWORD, lies=HOSTILE) as srv:
        ch = make_channel(tmp_path, "sftp", host=HOST, port=srv.port, user="alice", password=PASSWORD, path="in",
                          insecure_no_host_key_check=True)
        with ch:
            items = ch.list_incoming()
            assert set(HOSTILE) <= {i.name for i in items}
            for n, item in enumerate(items):
                dest = local / f"{n}-{safe_name(item.name)}"
                ch.fetch(item, dest)
                assert dest.read_bytes() == b"payload"
    assert len(os.listdir(local)) == len(HOSTILE) + 1
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and local not in p.parents
               and root not in p.parents and "chanenv" not in str(p)]
    assert outside == []


@pytest.mark.parametrize("name,stored", [
    ("../../escape.edi", "escape.edi"), ("/etc/passwd", "passwd"), ("..", "file"), ("a\x00b\n.edi", "a_b_.edi"),
])
def test_send_cannot_be_tricked_out_of_the_remote_folder(tmp_path: Path, server: SftpServer, remote: Path,
                                                         known_hosts: Path, name: str, stored: str) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"data")
    before = set(server.root.rglob("*"))
    with chan(tmp_path, server, known_hosts) as ch:
        ch.send(src, name)
    assert set(server.root.rglob("*")) - before == {remote / stored}
