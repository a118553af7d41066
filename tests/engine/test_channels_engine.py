"""Remote channels through the real engine (bots-engine and botsq as subprocesses, servers on 127.0.0.1).

The three recovery paths of Bots, end to end: an in-channel that fails is fetched by the next
run; an out-channel that fails is picked up by --automaticretrycommunication (whose first use
only sets the starting point) or by a resend mark. Passwords never reach logs, output, reports
or the tracking database.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from channel_servers import HOST, FtpServer, SftpServer, SmtpServer, make_certs, wait_until
from conftest import DEFAULT_INI, Env, bin_path

FTP_PW = "Ftp-Eng1ne-pw"
SFTP_PW = "Sftp-Eng1ne-pw"
SMTP_PW = "Smtp-Eng1ne-pw"
SECRETS = (FTP_PW, SFTP_PW, SMTP_PW, "WRONG-" + FTP_PW, "WRONG-" + SFTP_PW, "WRONG-" + SMTP_PW)


@pytest.fixture(autouse=True)
def passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    """Passwords come from the environment (``${VAR}`` in routes.toml), as in production."""
    for name, value in (("FTP_PW", FTP_PW), ("SFTP_PW", SFTP_PW), ("SMTP_PW", SMTP_PW)):
        monkeypatch.setenv(name, value)
        monkeypatch.setenv("WRONG_" + name, "WRONG-" + value)


@pytest.fixture(scope="module")
def reports() -> SmtpServer:
    """The SMTP server of bots.ini's [email]: error reports to the managers arrive here."""
    with SmtpServer() as srv:
        yield srv


def ini(reports: SmtpServer, extra: str = "") -> str:
    return (DEFAULT_INI.replace("[settings]\n", "[settings]\nsendreportiferror = True\n") + f"\n[email]\nhost = {HOST}\nport = {reports.port}\nsender = bots@example.com\n"
            "managers = ops@example.com\ntimeout = 5\n" + extra)


def toml_table(name: str, opts: dict) -> str:
    return f"[channels.{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in opts.items())


def routes(pin: dict, pout: dict | None, route: str = "r1") -> str:
    text = toml_table("pin", pin) + (toml_table("pout", pout) if pout else "")
    text += f'[routes.{route}]\n[[routes.{route}.parts]]\nfromchannel = "pin"\n'
    return text + ('tochannel = "pout"\n' if pout else "")


FILE_IN = {"type": "file", "path": "data/in", "remove": True}
FILE_OUT = {"type": "file", "path": "data/out", "filename": "{infile}"}


def ftp(srv: FtpServer, path: str, **extra) -> dict:  # type: ignore[no-untyped-def]
    return {"type": "ftp", "host": HOST, "port": srv.port, "user": srv.user, "password": "${FTP_PW}", "path": path,
            "timeout": 5, **extra}


def botsq(env: Env, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([bin_path("botsq"), *argv, "-c", str(env.configdir)], cwd=env.root, capture_output=True,
                          text=True, timeout=60)


def outgoing(env: Env) -> list[dict]:
    r = botsq(env, "files", "list", "--kind", "out", "--json", "--limit", "5000")
    assert r.returncode == 0, r.stderr
    return sorted(json.loads(r.stdout), key=lambda row: row["id"])


def incoming(env: Env) -> list[dict]:
    r = botsq(env, "files", "list", "--kind", "in", "--json", "--limit", "5000")
    assert r.returncode == 0, r.stderr
    return sorted(json.loads(r.stdout), key=lambda row: row["id"])


def assert_no_password_anywhere(env: Env, *texts: str, reports: SmtpServer | None = None) -> None:
    """Logs, command output, report mails and the tracking records never hold a password."""
    logs = list((env.root / "botssys" / "logging").glob("*.log"))
    assert logs, "the engine wrote no log"
    blobs = [p.read_text(errors="replace") for p in logs] + list(texts)
    blobs.append(json.dumps(outgoing(env)) + json.dumps(incoming(env)))
    if reports is not None:
        blobs += [m.content.decode(errors="replace") for m in reports.mails]
    for secret in SECRETS:
        for blob in blobs:
            assert secret not in blob


def run(env: Env, *argv: str) -> subprocess.CompletedProcess[str]:
    return env.run(*argv, timeout=120)


# --------------------------------------------------------------------------- out-channel recovery

@pytest.mark.procs
def test_out_channel_down_then_automaticretrycommunication(make_env, tmp_path: Path, reports: SmtpServer) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "partner"
    (root / "out").mkdir(parents=True)
    srv = FtpServer(root, password=FTP_PW)                      # not running yet
    env = make_env(ini=ini(reports), routes=routes(FILE_IN, ftp(srv, "out", filename="{infile}")))
    first = run(env, "--automaticretrycommunication")            # Bots: first use only sets the starting point
    assert first.returncode == 0, first.stderr
    for n in range(3):
        env.drop(f"data/in/order{n}.edi", f"UNB+order {n}'")
    reports.mails.clear()

    down = run(env, "--new")
    assert down.returncode == 2, down.stdout + down.stderr
    assert "3 communication error(s)" in down.stdout
    outs = outgoing(env)
    assert [(o["filename"], o["commstatus"], o["attempts"]) for o in outs] == \
        [(f"order{n}.edi", "failed", 1) for n in range(3)]
    for o in outs:
        assert o["error"] == f"channel 'pout' (ftp {HOST}:{srv.port}): cannot connect: connection refused"
    assert os.listdir(env.path("data/in")) == []               # received and archived: nothing lost
    assert wait_until(lambda: len(reports.mails) == 1)

    still_down = run(env, "--automaticretrycommunication")
    assert still_down.returncode == 2
    assert [o["attempts"] for o in outgoing(env)] == [2, 2, 2]
    assert wait_until(lambda: len(reports.mails) == 2)
    report = reports.mails[-1].message().get_content()
    assert all(f"order{n}.edi" in report for n in range(3)) and "cannot connect" in report

    with srv:
        ok = run(env, "--automaticretrycommunication")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "3 retried" in ok.stdout
        assert sorted(os.listdir(root / "out")) == [f"order{n}.edi" for n in range(3)]
        assert (root / "out" / "order1.edi").read_text() == "UNB+order 1'"
        assert [(o["commstatus"], o["attempts"], o["error"]) for o in outgoing(env)] == [("sent", 3, "")] * 3
        again = run(env, "--automaticretrycommunication")        # nothing left to retry: nothing sent twice
        assert again.returncode == 0 and [o["attempts"] for o in outgoing(env)] == [3, 3, 3]
    assert_no_password_anywhere(env, down.stdout, down.stderr, ok.stdout, ok.stderr, reports=reports)


@pytest.mark.procs
def test_resend_marked_files_whatever_their_status(make_env, tmp_path: Path, reports: SmtpServer) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "partner"
    (root / "up").mkdir(parents=True)
    srv = SftpServer(root, password=SFTP_PW).start()
    out = {"type": "sftp", "host": HOST, "port": srv.port, "user": srv.user, "password": "${SFTP_PW}", "path": "up",
           "known_hosts": "partner_known_hosts", "filename": "{infile}", "timeout": 5}
    env = make_env(ini=ini(reports), routes=routes(FILE_IN, out))
    env.drop("partner_known_hosts", srv.known_hosts_line())     # relative paths: from the environment folder
    try:
        env.drop("data/in/a.edi", "A")
        env.drop("data/in/b.edi", "B")
        assert run(env, "--new").returncode == 0
        assert sorted(os.listdir(root / "up")) == ["a.edi", "b.edi"]
        for p in (root / "up").iterdir():                       # the partner lost them
            p.unlink()
        a_id = next(o["id"] for o in outgoing(env) if o["filename"] == "a.edi")
        marked = botsq(env, "files", "resend", str(a_id))
        assert marked.returncode == 0, marked.stderr
        resend = run(env, "--resend")
        assert resend.returncode == 0, resend.stdout + resend.stderr
        assert os.listdir(root / "up") == ["a.edi"] and (root / "up" / "a.edi").read_text() == "A"
        assert {o["filename"]: (o["attempts"], o["resend"]) for o in outgoing(env)} == \
            {"a.edi": (2, False), "b.edi": (1, False)}

        srv.stop()                                              # a failed one, resent by the user's mark
        env.drop("data/in/c.edi", "C")
        assert run(env, "--new").returncode == 2
        assert [o["commstatus"] for o in outgoing(env) if o["filename"] == "c.edi"] == ["failed"]
        srv.start()
        assert botsq(env, "files", "resend", "--status", "failed").returncode == 0
        resend = run(env, "--resend")
        assert resend.returncode == 0, resend.stdout + resend.stderr
        assert sorted(os.listdir(root / "up")) == ["a.edi", "c.edi"]
        listing = botsq(env, "files", "list", "--kind", "out")
        assert listing.returncode == 0 and "c.edi" in listing.stdout
        assert [(o["commstatus"], o["attempts"]) for o in outgoing(env) if o["filename"] == "c.edi"] == [("sent", 2)]
    finally:
        srv.stop()
    assert_no_password_anywhere(env, resend.stdout, resend.stderr)


# --------------------------------------------------------------------------- in-channel recovery

@pytest.mark.procs
def test_in_channel_down_nothing_lost_next_run_fetches(make_env, tmp_path: Path, reports: SmtpServer) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "partner"
    (root / "in").mkdir(parents=True)
    for n in range(5):
        (root / "in" / f"inv{n}.edi").write_text(f"invoice {n}")
    srv = FtpServer(root, password=FTP_PW)
    env = make_env(ini=ini(reports), routes=routes(ftp(srv, "in", remove=True, filemask="*.edi"), FILE_OUT))
    env.path("data/out").mkdir(parents=True)
    down = run(env, "--new")
    assert down.returncode == 2
    assert f"channel 'pin' (ftp {HOST}:{srv.port}): cannot connect: connection refused" in \
        (env.root / "botssys" / "logging" / "engine.log").read_text()
    assert len(os.listdir(root / "in")) == 5
    with srv:
        ok = run(env, "--new")
        assert ok.returncode == 0, ok.stdout + ok.stderr
    assert sorted(os.listdir(env.path("data/out"))) == [f"inv{n}.edi" for n in range(5)]
    assert (env.path("data/out") / "inv3.edi").read_text() == "invoice 3"
    assert os.listdir(root / "in") == []                        # removed only after archiving and recording
    assert_no_password_anywhere(env, down.stdout, down.stderr)


@pytest.mark.procs
def test_in_channel_server_dies_mid_run(make_env, tmp_path: Path, reports: SmtpServer) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "partner"
    (root / "in").mkdir(parents=True)
    names = [f"m{n:02}.edi" for n in range(12)]
    for name in names:
        (root / "in" / name).write_text(name)
    srv = FtpServer(root, password=FTP_PW, die_after_sent=4).start()
    env = make_env(ini=ini(reports), routes=routes(ftp(srv, "in", remove=True), FILE_OUT))
    env.path("data/out").mkdir(parents=True)
    broken = run(env, "--new")
    assert broken.returncode == 2, broken.stdout + broken.stderr
    assert wait_until(lambda: not srv.running)
    got_first = set(os.listdir(env.path("data/out")))
    assert got_first and got_first < set(names)
    left = set(os.listdir(root / "in"))
    assert got_first | left == set(names)                       # each file either delivered or still there
    srv.stop()
    srv.die_after_sent = 0
    with srv:
        again = run(env, "--new")
        assert again.returncode == 0, again.stdout + again.stderr
    assert sorted(os.listdir(env.path("data/out"))) == names and os.listdir(root / "in") == []
    # the files fetched before the server died were not removed there: the next run only removed them
    delivered = [o["filename"] for o in outgoing(env)]
    assert sorted(delivered) == names                           # each sent exactly once
    assert sorted(i["filename"] for i in incoming(env) if i["status"] == "done") == names


@pytest.mark.procs
def test_ftp_server_refusing_dele_nothing_sent_twice(make_env, tmp_path: Path, reports: SmtpServer) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "partner"
    (root / "in").mkdir(parents=True)
    (root / "out").mkdir()
    for n in range(3):
        (root / "in" / f"d{n}.edi").write_text(f"order {n}")
    srv = FtpServer(root, password=FTP_PW, perm="elrwf").start()         # no "d": DELE refused (550)
    try:
        env = make_env(ini=ini(reports), routes=routes(ftp(srv, "in", remove=True), ftp(srv, "out", filename="{infile}")))
        first = run(env, "--new")
        assert first.returncode == 2, first.stdout + first.stderr
        assert "3 received, 3 processed, 3 sent" in first.stdout and "3 communication error(s)" in first.stdout
        assert sorted(os.listdir(root / "in")) == ["d0.edi", "d1.edi", "d2.edi"]
        for p in (root / "out").iterdir():                                # the partner took them
            p.unlink()
        still = run(env, "--new")                                         # still refused: nothing sent again
        assert still.returncode == 2 and "0 received, 0 processed, 0 sent" in still.stdout
        assert os.listdir(root / "out") == []
        srv.stop()
        srv.perm = "elradfmwMT"
        srv.start()
        ok = run(env, "--new")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "0 sent" in ok.stdout and "3 already received (only removed at the source)" in ok.stdout
    finally:
        srv.stop()
    assert os.listdir(root / "in") == [] and os.listdir(root / "out") == []
    assert sorted((o["filename"], o["attempts"]) for o in outgoing(env)) == [(f"d{n}.edi", 1) for n in range(3)]
    assert len(incoming(env)) == 3
    log = (env.root / "botssys" / "logging" / "engine.log").read_text()
    assert "cannot delete 'd0.edi': 550" in log
    assert_no_password_anywhere(env, first.stdout, ok.stdout)


@pytest.mark.procs
def test_maxsecondsperchannel_leaves_files_for_later_runs(make_env, tmp_path: Path, reports: SmtpServer) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "partner"
    (root / "in").mkdir(parents=True)
    for n in range(400):
        (root / "in" / f"f{n:03}.edi").write_text(str(n))
    with FtpServer(root, password=FTP_PW) as srv:
        env = make_env(ini=ini(reports), routes=routes(ftp(srv, "in", remove=True, maxsecondsperchannel=0.1), FILE_OUT))
        env.path("data/out").mkdir(parents=True)
        counts = []
        for _ in range(40):
            r = run(env, "--new")
            assert r.returncode == 0, r.stdout + r.stderr
            counts.append(len(os.listdir(env.path("data/out"))))
            if counts[-1] == 400:
                break
    assert counts[0] < 400 and counts[-1] == 400
    assert os.listdir(root / "in") == [] and len(incoming(env)) == 400     # each received exactly once


# --------------------------------------------------------------------------- volume, secrets, hostile names

@pytest.mark.procs
@pytest.mark.slow
def test_a_thousand_small_files_through_ftp_in_one_run(make_env, tmp_path: Path, reports: SmtpServer) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "partner"
    (root / "in").mkdir(parents=True)
    (root / "out").mkdir()
    for n in range(1000):
        (root / "in" / f"o{n:04}.edi").write_bytes(b"UNB+" + str(n).encode() + b"'" * 2000)
    with FtpServer(root, password=FTP_PW) as srv:
        env = make_env(ini=ini(reports), routes=routes(ftp(srv, "in", remove=True), ftp(srv, "out", filename="{infile}")))
        r = run(env, "--new")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "1000 received, 1000 processed, 1000 sent" in r.stdout
        assert srv.connections == 2                            # one per channel, reused for every file
    assert len(os.listdir(root / "out")) == 1000 and os.listdir(root / "in") == []
    assert (root / "out" / "o0999.edi").read_bytes() == b"UNB+999" + b"'" * 2000


@pytest.mark.procs
def test_wrong_passwords_clear_errors_and_no_password_anywhere(make_env, tmp_path: Path, reports: SmtpServer) -> None:  # type: ignore[no-untyped-def]
    certs = make_certs(tmp_path / "certs")
    root = tmp_path / "partner"
    (root / "in").mkdir(parents=True)
    (root / "in" / "x.edi").write_text("x")
    ftp_srv = FtpServer(root, password=FTP_PW).start()
    sftp_srv = SftpServer(root, password=SFTP_PW).start()
    mail = SmtpServer("mailer", SMTP_PW, certs=certs, mode="starttls").start()
    try:
        text = toml_table("ftp_in", ftp(ftp_srv, "in", password="${WRONG_FTP_PW}"))
        text += toml_table("file_in", FILE_IN) + toml_table("file_in2", {**FILE_IN, "path": "data/in2"})
        text += toml_table("sftp_out", {"type": "sftp", "host": HOST, "port": sftp_srv.port, "user": "alice",
                                        "password": "${WRONG_SFTP_PW}", "insecure_no_host_key_check": True})
        text += toml_table("mail_out", {"type": "smtp", "host": HOST, "port": mail.port, "user": "mailer",
                                        "password": "${WRONG_SMTP_PW}", "starttls": True, "to": "edi@partner.example",
                                        "cafile": str(certs.cafile)})
        text += toml_table("file_out", FILE_OUT)
        for route, frm, to in (("r_ftp", "ftp_in", "file_out"), ("r_sftp", "file_in", "sftp_out"),
                               ("r_mail", "file_in2", "mail_out")):
            text += f'[routes.{route}]\n[[routes.{route}.parts]]\nfromchannel = "{frm}"\ntochannel = "{to}"\n'
        env = make_env(ini=ini(reports), routes=text)
        env.drop("data/in/y.edi", "y")
        env.drop("data/in2/z.edi", "z")
        reports.mails.clear()
        r = run(env, "--new")
        assert r.returncode == 2, r.stdout + r.stderr
        log = (env.root / "botssys" / "logging" / "engine.log").read_text()
        assert f"channel 'ftp_in' (ftp {HOST}:{ftp_srv.port}): login failed for user 'alice': 530" in log
        errors = {o["channel"]: o["error"] for o in outgoing(env)}
        assert errors["sftp_out"] == (f"channel 'sftp_out' (sftp {HOST}:{sftp_srv.port}): login failed for user "
                                      "'alice': authentication failed (wrong user, password or key)")
        assert errors["mail_out"].startswith(f"channel 'mail_out' (smtp {HOST}:{mail.port}): login failed for user "
                                             "'mailer': 535")
        assert wait_until(lambda: len(reports.mails) >= 1)
        assert_no_password_anywhere(env, r.stdout, r.stderr, reports=reports)
    finally:
        for s in (ftp_srv, sftp_srv, mail):
            s.stop()


@pytest.mark.procs
def test_hostile_names_from_a_partner_stay_inside(make_env, tmp_path: Path, reports: SmtpServer) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "partner"
    (root / "in").mkdir(parents=True)
    (root / "out").mkdir()
    (root / "in" / "real.edi").write_text("payload")
    lies = {"../../../escaped.edi": "/in/real.edi", "/etc/cron.d/evil": "/in/real.edi",
            "nul\x00ctl\x01.edi": "/in/real.edi", "..": "/in/real.edi"}
    sftp_srv = SftpServer(root, password=SFTP_PW, lies=lies).start()
    ftp_srv = FtpServer(root, password=FTP_PW).start()
    try:
        pin = {"type": "sftp", "host": HOST, "port": sftp_srv.port, "user": "alice", "password": "${SFTP_PW}",
               "path": "in", "insecure_no_host_key_check": True}
        env = make_env(ini=ini(reports), routes=routes(pin, ftp(ftp_srv, "out", filename="{infile}")))
        before = {p for p in tmp_path.rglob("*")}
        r = run(env, "--new")
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        sftp_srv.stop()
        ftp_srv.stop()
    delivered = sorted(os.listdir(root / "out"))
    assert "escaped.edi" in delivered and "evil" in delivered and "real.edi" in delivered
    assert all("/" not in n and "\x00" not in n and "\x01" not in n for n in delivered)
    new = {p for p in tmp_path.rglob("*")} - before
    assert all(env.root in p.parents or p.parent == root / "out" for p in new), sorted(map(str, new))
    assert {p.name for p in new if env.root not in p.parents} == set(delivered)
    assert list(tmp_path.rglob("escaped.edi")) == [root / "out" / "escaped.edi"]
