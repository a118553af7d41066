"""Issue 9 through the real engine: bots-engine runs (subprocesses) against real writers and servers.

* a file still arriving is never taken (local ERP writing in two parts, a partner's FTP/FTPS/SFTP
  upload begun with 0 bytes and then growing): after the writer is done, one run delivers the
  whole content exactly once and only then removes it at the source;
* a remote listing never blocks the channel (FTP without MLSD with a sub-folder, names in a
  Windows code page, downloads refused or gone);
* a delivery counts only when the partner took it (SMTP refusing one recipient, a refused rename).
"""
from __future__ import annotations

import ftplib
import json
import os
import threading
import time
from pathlib import Path

import paramiko
import pytest

from channel_servers import HOST, FtpServer, SftpServer, SmtpServer, make_certs, wait_until
from conftest import Env
from test_channels_engine import FILE_OUT, incoming, outgoing, routes

PW = "Edge-pw-1"

pytestmark = pytest.mark.procs      # every test runs bots-engine as a subprocess


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return make_certs(tmp_path_factory.mktemp("certs"))


def run(env: Env, *argv: str):  # type: ignore[no-untyped-def]
    return env.run(*argv, timeout=120)


def remote_in(kind: str, srv, certs, **extra) -> dict:  # type: ignore[no-untyped-def]
    spec = {"type": kind, "host": HOST, "port": srv.port, "user": "alice", "password": PW, "path": "in",
            "remove": True, "timeout": 5, **extra}
    if kind == "ftps":
        spec["cafile"] = str(certs.cafile)
    if kind == "sftp":
        spec["insecure_no_host_key_check"] = True
    return spec


def server(kind: str, root: Path, certs, **opts):  # type: ignore[no-untyped-def]
    if kind == "sftp":
        return SftpServer(root, password=PW, **opts)
    return FtpServer(root, password=PW, certs=certs if kind == "ftps" else None, **opts)


def delivered(env: Env) -> dict[str, bytes]:
    out = env.path("data/out")
    return {p.name: p.read_bytes() for p in out.iterdir()} if out.is_dir() else {}


# --------------------------------------------------------------------------- 1. files still arriving

def test_local_file_written_in_two_parts_is_taken_only_when_the_writer_is_done(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env()
    env.path("data/out").mkdir(parents=True)
    slow = env.path("data/in/slow.edi")
    slow.parent.mkdir(parents=True)
    with open(slow, "wb") as erp:                        # the ERP writes part one and keeps the file open
        erp.write(b"UNB+UNOC:3+ERP+PARTNER'")
        erp.flush()
        os.utime(slow, (time.time() - 60, time.time() - 60))   # however old it looks
        during = run(env)
        assert during.returncode == 0, during.stdout + during.stderr
        assert "0 received" in during.stdout and delivered(env) == {} and slow.exists()
        erp.write(b"UNH+1+INVOIC'UNT+2+1'UNZ+1'")          # ... part two, later, then closes it
    after = run(env)
    assert after.returncode == 0, after.stdout + after.stderr
    whole = b"UNB+UNOC:3+ERP+PARTNER'UNH+1+INVOIC'UNT+2+1'UNZ+1'"
    assert delivered(env) == {"slow.edi": whole} and not slow.exists()
    assert [(i["filename"], i["size"]) for i in incoming(env)] == [("slow.edi", len(whole))]   # exactly once


class PartnerUpload(threading.Thread):
    """A partner uploading ``name``: the transfer begins (0 bytes at the server) and waits for ``grow``;
    then data goes in small slices until ``finish``, when the rest is sent and the upload ends."""

    def __init__(self, kind: str, srv, certs, name: str) -> None:  # type: ignore[no-untyped-def]
        super().__init__(daemon=True)
        self.kind, self.srv, self.certs, self.name = kind, srv, certs, name
        self.begun, self.grow, self.finish = threading.Event(), threading.Event(), threading.Event()
        self.sent = bytearray()
        self.result: str | BaseException = "not ended"

    def slices(self):  # type: ignore[no-untyped-def]
        n = 0
        while not self.finish.is_set():
            n += 1
            yield f"LIN+{n:06d}+++ITEM:{n}'".encode().ljust(1024, b"-")
            time.sleep(0.02)
        yield b"UNT+999+1'UNZ+1+1'"

    def run(self) -> None:
        try:
            self.result = self._sftp() if self.kind == "sftp" else self._ftp()
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            self.result = exc
            self.begun.set()

    def _ftp(self) -> str:
        if self.kind == "ftps":
            import ssl
            ftp: ftplib.FTP = ftplib.FTP_TLS(context=ssl.create_default_context(cafile=str(self.certs.cafile)))
        else:
            ftp = ftplib.FTP()
        ftp.connect(HOST, self.srv.port, timeout=30)
        ftp.login("alice", PW)
        if isinstance(ftp, ftplib.FTP_TLS):
            ftp.prot_p()
        ftp.cwd("in")
        ftp.voidcmd("TYPE I")
        with ftp.transfercmd(f"STOR {self.name}") as conn:
            self.begun.set()
            self.grow.wait(60)
            for piece in self.slices():
                conn.sendall(piece)
                self.sent += piece
            if isinstance(conn, __import__("ssl").SSLSocket):
                conn.unwrap()
        reply = ftp.voidresp()
        ftp.quit()
        return reply

    def _sftp(self) -> str:
        transport = paramiko.Transport((HOST, self.srv.port))
        transport.connect(username="alice", password=PW)
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        with sftp.open(f"in/{self.name}", "wb") as remote:
            self.begun.set()
            self.grow.wait(60)
            for piece in self.slices():
                remote.write(piece)
                remote.flush()
                self.sent += piece
        transport.close()
        return "closed"


@pytest.mark.parametrize("kind", ["ftp", "ftps", "sftp"])
def test_a_partners_upload_in_progress_is_never_taken_nor_deleted(make_env, tmp_path: Path, certs, kind: str) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "partner"
    (root / "in").mkdir(parents=True)
    with server(kind, root, certs) as srv:
        env = make_env(routes=routes(remote_in(kind, srv, certs), FILE_OUT))
        env.path("data/out").mkdir(parents=True)
        upload = PartnerUpload(kind, srv, certs, "INVOIC.edi")
        upload.start()
        try:
            assert upload.begun.wait(30) and (root / "in" / "INVOIC.edi").exists()
            assert (root / "in" / "INVOIC.edi").stat().st_size == 0
            begun = run(env)                              # the upload has begun, no byte yet
            assert begun.returncode == 0, begun.stdout + begun.stderr
            assert "0 received" in begun.stdout and (root / "in" / "INVOIC.edi").exists()
            upload.grow.set()
            assert wait_until(lambda: (root / "in" / "INVOIC.edi").stat().st_size > 0, 30)
            growing = run(env)                            # the upload is growing while the run lists
            assert growing.returncode == 0, growing.stdout + growing.stderr
            assert "0 received" in growing.stdout and (root / "in" / "INVOIC.edi").exists()
            assert upload.is_alive() and upload.result == "not ended"   # the partner's upload goes on
        finally:
            upload.finish.set()
            upload.join(60)
        assert isinstance(upload.result, str) and upload.result != "not ended", upload.result
        if kind != "sftp":
            assert upload.result.startswith("226")
        assert (root / "in" / "INVOIC.edi").read_bytes() == bytes(upload.sent)
        done = run(env)
        assert done.returncode == 0, done.stdout + done.stderr
    assert delivered(env) == {"INVOIC.edi": bytes(upload.sent)}
    assert os.listdir(root / "in") == []                  # removed at the partner, after delivery
    assert [(i["filename"], i["status"], i["size"]) for i in incoming(env)] == \
        [("INVOIC.edi", "done", len(upload.sent))]        # received exactly once, whole


# --------------------------------------------------------------------------- 2. listings never block

@pytest.mark.parametrize("kind", ["ftp-no-mlsd", "ftp", "ftps", "sftp"])
def test_odd_entries_in_a_remote_folder_never_block_the_others(make_env, tmp_path: Path, certs, kind: str) -> None:  # type: ignore[no-untyped-def]
    """A sub-folder, a name in cp1252, six files the server refuses to hand out, one taken by someone
    else since the listing: the good files still arrive, and only the refusals are errors."""
    proto = kind.split("-")[0]
    root = tmp_path / "partner"
    (root / "in" / "archive.edi").mkdir(parents=True)       # a folder matching the mask
    locked = {f"a{n}.edi" for n in range(6)}                # sorted first: more than five in a row
    for name in sorted(locked) + ["gone.edi", "z.edi"]:
        (root / "in" / name).write_bytes(name.encode())
    if proto == "sftp":                                      # its disk holds the Windows name's bytes
        with open(os.path.join(os.fsencode(root / "in"), "Lieferschein_März.edi".encode("cp1252")), "wb") as f:
            f.write(b"maerz")
        srv = SftpServer(root, password=PW)
        srv.refuse_read, srv.gone_on_read = locked, {"gone.edi"}
    else:
        (root / "in" / "Lieferschein_März.edi").write_bytes(b"maerz")
        srv = FtpServer(root, password=PW, certs=certs if proto == "ftps" else None, mlsd=kind != "ftp-no-mlsd",
                        encoding="cp1252", refuse_read=locked, gone_on_read={"gone.edi"})
    with srv:
        env = make_env(routes=routes(remote_in(proto, srv, certs, filemask="*.edi"), FILE_OUT))
        env.path("data/out").mkdir(parents=True)
        r = run(env)
    assert r.returncode == 2, r.stdout + r.stderr                # the six refusals are errors ...
    assert "6 communication error(s)" in r.stdout
    assert delivered(env) == {"z.edi": b"z.edi", "Lieferschein_M\ufffdrz.edi": b"maerz"}   # ... nothing else is
    left = sorted(os.listdir(root / "in"))
    assert left == sorted(["archive.edi", *locked])
    errors = {i["filename"]: i["error"] for i in incoming(env) if i["status"] == "commerror"}
    assert sorted(errors) == sorted(locked) and all("cannot download" in e for e in errors.values())
    log = (env.root / "botssys" / "logging" / "engine.log").read_text()
    assert "'gone.edi' was listed but is gone" in log and "not valid utf-8" in log


def test_encoding_key_reads_a_windows_servers_names(make_env, tmp_path: Path, certs) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "partner"
    (root / "in").mkdir(parents=True)
    (root / "in" / "Lieferschein_März.edi").write_bytes(b"maerz")
    with FtpServer(root, password=PW, encoding="cp1252", mlsd=False) as srv:
        env = make_env(routes=routes(remote_in("ftp", srv, certs, encoding="cp1252"), FILE_OUT))
        env.path("data/out").mkdir(parents=True)
        r = run(env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert delivered(env) == {"Lieferschein_März.edi": b"maerz"} and os.listdir(root / "in") == []


# --------------------------------------------------------------------------- 3. deliveries

def test_smtp_recipient_refused_is_a_failed_delivery_kept_for_retry(make_env) -> None:  # type: ignore[no-untyped-def]
    with SmtpServer() as mail:
        out = {"type": "smtp", "host": HOST, "port": mail.port, "to": ["edi@partner.example", "ap@partner.example"],
               "sender": "bots@us.example", "timeout": 5}
        env = make_env(routes=routes({"type": "file", "path": "data/in", "remove": True}, out))
        assert run(env, "--automaticretrycommunication").returncode == 0     # Bots: first use sets the start
        mail.handler.refuse = {"ap@partner.example"}
        env.drop("data/in/INV1.edi", "UNH+1+INVOIC'")
        r = run(env)
        assert r.returncode == 2, r.stdout + r.stderr
        [o] = outgoing(env)
        assert o["commstatus"] == "failed" and "ap@partner.example (550 5.1.1 no such user)" in o["error"]
        assert "accepted for edi@partner.example" in o["error"]
        assert [m.rcpt_tos for m in mail.mails] == [["edi@partner.example"]]
        mail.handler.refuse = set()
        again = run(env, "--automaticretrycommunication")
        assert again.returncode == 0, again.stdout + again.stderr
        assert [(o["commstatus"], o["attempts"]) for o in outgoing(env)] == [("sent", 2)]
        # a retry sends the mail to every address: the one that took it gets it a second time (README)
        assert [m.rcpt_tos for m in mail.mails] == [["edi@partner.example"],
                                                    ["edi@partner.example", "ap@partner.example"]]


@pytest.mark.parametrize("kind", ["ftp", "sftp"])
def test_refused_rename_is_a_failed_delivery_kept_for_retry(make_env, tmp_path: Path, certs, kind: str) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "partner"
    (root / "in").mkdir(parents=True)
    srv = server(kind, root, certs, **({"perm": "elradmw"} if kind == "ftp" else {}))   # ftp: no "f" (rename)
    if kind == "sftp":
        srv.allow_rename = False
    with srv:
        spec = remote_in(kind, srv, certs, filename="{infile}")
        del spec["remove"]
        env = make_env(routes=routes({"type": "file", "path": "data/in", "remove": True}, spec))
        assert run(env, "--automaticretrycommunication").returncode == 0
        env.drop("data/in/ORDERS1.edi", "UNH+1+ORDERS'")
        r = run(env)
        assert r.returncode == 2, r.stdout + r.stderr
        [o] = outgoing(env)
        assert o["commstatus"] == "failed" and "refuses to rename" in o["error"]
        assert os.listdir(root / "in") == []                 # neither the file nor a piece of it
        if kind == "ftp":
            srv.stop()
            srv.perm = "elradfmwMT"
            srv.start()
        else:
            srv.allow_rename = True
        ok = run(env, "--automaticretrycommunication")
        assert ok.returncode == 0, ok.stdout + ok.stderr
    assert os.listdir(root / "in") == ["ORDERS1.edi"] and (root / "in" / "ORDERS1.edi").read_bytes() == b"UNH+1+ORDERS'"
    assert json.loads(json.dumps([o["commstatus"] for o in outgoing(env)])) == ["sent"]
