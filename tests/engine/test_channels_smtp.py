"""SMTP out-channel against a real aiosmtpd server: plain, STARTTLS and implicit TLS, with AUTH."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from channel_servers import HOST, BlackHole, SmtpServer, assert_secret_free, make_certs, make_channel
from engine.channels.base import CommunicationError, Refused

PASSWORD = "Smtp-pa55word!"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def plain() -> SmtpServer:
    with SmtpServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def starttls(certs) -> SmtpServer:  # type: ignore[no-untyped-def]
    with SmtpServer("mailer", PASSWORD, certs=certs, mode="starttls") as srv:
        yield srv


@pytest.fixture(scope="module")
def implicit_tls(certs) -> SmtpServer:  # type: ignore[no-untyped-def]
    # without AUTH: aiosmtpd counts only STARTTLS as TLS for AUTH (AUTH is tested over STARTTLS)
    with SmtpServer(certs=certs, mode="ssl") as srv:
        yield srv


def attachments(mail) -> list[tuple[str, bytes]]:  # type: ignore[no-untyped-def]
    return [(p.get_filename(), p.get_content()) for p in mail.message().iter_attachments()]


def test_each_file_is_one_mail_with_the_file_attached(tmp_path: Path, plain: SmtpServer) -> None:
    plain.mails.clear()
    ch = make_channel(tmp_path, "smtp", host=HOST, port=plain.port, to=["edi@partner.example", "copy@partner.example"],
                      sender="bots@us.example")
    payload = bytes(range(256)) * 40
    with ch:
        for n in range(3):
            src = tmp_path / f"src{n}"
            src.write_bytes(payload + bytes([n]))
            ch.send(src, f"ORDERS_{n}.edi")
    assert len(plain.mails) == 3
    for n, mail in enumerate(plain.mails):
        assert mail.mail_from == "bots@us.example"
        assert mail.rcpt_tos == ["edi@partner.example", "copy@partner.example"]
        msg = mail.message()
        assert msg["Subject"] == f"ORDERS_{n}.edi" and msg["To"] == "edi@partner.example, copy@partner.example"
        assert attachments(mail) == [(f"ORDERS_{n}.edi", payload + bytes([n]))]


def test_one_address_and_default_sender(tmp_path: Path, plain: SmtpServer) -> None:
    plain.mails.clear()
    ch = make_channel(tmp_path, "smtp", host=HOST, port=plain.port, to="one@partner.example")
    src = tmp_path / "src"
    src.write_bytes(b"x")
    with ch:
        ch.send(src, "../../etc/passwd")          # the attachment name is a plain file name
    [mail] = plain.mails
    assert mail.rcpt_tos == ["one@partner.example"] and mail.mail_from == "bots@localhost"
    assert attachments(mail) == [("passwd", b"x")]


@pytest.mark.parametrize("mode", ["starttls", "ssl"])
def test_tls_and_login(tmp_path: Path, request: pytest.FixtureRequest, certs, mode: str) -> None:  # type: ignore[no-untyped-def]
    srv: SmtpServer = request.getfixturevalue("starttls" if mode == "starttls" else "implicit_tls")
    srv.mails.clear()
    login = {"user": "mailer", "password": PASSWORD} if mode == "starttls" else {}
    ch = make_channel(tmp_path, "smtp", host=HOST, port=srv.port, to="edi@partner.example",
                      cafile=str(certs.cafile), **login, **{mode: True})
    src = tmp_path / "src"
    src.write_bytes(b"secured")
    with ch:
        ch.send(src, "a.edi")
    assert attachments(srv.mails[0]) == [("a.edi", b"secured")]


def test_wrong_password_names_channel_and_host_never_the_password(tmp_path: Path, starttls: SmtpServer,
                                                                  certs) -> None:  # type: ignore[no-untyped-def]
    ch = make_channel(tmp_path, "smtp", host=HOST, port=starttls.port, user="mailer", password="Bad-" + PASSWORD,
                      to="x@y.example", starttls=True, cafile=str(certs.cafile))
    with pytest.raises(CommunicationError) as info:
        ch.open()
    assert str(info.value).startswith(f"channel 'partner' (smtp {HOST}:{starttls.port}): login failed for user "
                                      "'mailer': 535 ")
    assert_secret_free(info.value, PASSWORD, "Bad-" + PASSWORD)


def test_unknown_certificate_is_refused(tmp_path: Path, starttls: SmtpServer) -> None:
    ch = make_channel(tmp_path, "smtp", host=HOST, port=starttls.port, user="mailer", password=PASSWORD,
                      to="x@y.example", starttls=True)
    with pytest.raises(CommunicationError, match=r"STARTTLS failed: .*certificate verify failed"):
        ch.open()


def test_server_requiring_tls_refuses_plain_login(tmp_path: Path, starttls: SmtpServer) -> None:
    ch = make_channel(tmp_path, "smtp", host=HOST, port=starttls.port, user="mailer", password=PASSWORD, to="x@y.example")
    with pytest.raises(CommunicationError, match=r"login failed for user 'mailer': ") as info:
        ch.open()
    assert_secret_free(info.value, PASSWORD)


def test_refused_recipient_keeps_the_session(tmp_path: Path, plain: SmtpServer) -> None:
    plain.mails.clear()
    plain.handler.refuse = {"gone@partner.example"}
    src = tmp_path / "src"
    src.write_bytes(b"x")
    ch = make_channel(tmp_path, "smtp", host=HOST, port=plain.port, to="gone@partner.example")
    with ch:
        with pytest.raises(CommunicationError, match=r"cannot send 'a.edi' to gone@partner.example: recipients "
                                                     r"refused: gone@partner.example \(550 5.1.1 no such user\)$"):
            ch.send(src, "a.edi")
        assert not ch.broken          # a refusal is an answer: the session stays in use
    assert plain.mails == []


def test_server_down_restart_and_timeout(tmp_path: Path) -> None:
    srv = SmtpServer()
    src = tmp_path / "src"
    src.write_bytes(b"x")
    ch = make_channel(tmp_path, "smtp", host=HOST, port=srv.port, to="x@y.example", timeout=2)
    with pytest.raises(CommunicationError, match=rf"^channel 'partner' \(smtp {HOST}:{srv.port}\): cannot connect: "
                                                 r"connection refused$"):
        ch.open()
    with srv:
        with ch:
            ch.send(src, "one.edi")
            srv.stop()                 # the server drops the session (as an idle timeout would) ...
            srv.start()
            ch.send(src, "two.edi")    # ... the channel reconnects once and the mail goes
        assert [m.message()["Subject"] for m in srv.mails] == ["one.edi", "two.edi"]
    with BlackHole() as hole:
        ch = make_channel(tmp_path, "smtp", host=HOST, port=hole.port, to="x@y.example", timeout=0.5)
        t0 = time.monotonic()
        with pytest.raises(CommunicationError, match=r"timed out after 0.5 s$"):
            ch.open()
        assert time.monotonic() - t0 < 3


def test_one_recipient_refused_is_a_failed_delivery_naming_it(tmp_path: Path, plain: SmtpServer) -> None:
    plain.mails.clear()
    plain.handler.refuse = {"gone@partner.example"}
    src = tmp_path / "src"
    src.write_bytes(b"invoice")
    ch = make_channel(tmp_path, "smtp", host=HOST, port=plain.port, to=["edi@partner.example", "gone@partner.example"])
    try:
        with ch:
            with pytest.raises(Refused) as info:
                ch.send(src, "INV1.edi")
            assert not ch.broken
    finally:
        plain.handler.refuse = set()
    assert str(info.value) == (
        f"channel 'partner' (smtp {HOST}:{plain.port}): cannot send 'INV1.edi' to edi@partner.example, "
        "gone@partner.example: recipients refused: gone@partner.example (550 5.1.1 no such user) (accepted for "
        "edi@partner.example; a retry sends to every address again)")
    assert [m.rcpt_tos for m in plain.mails] == [["edi@partner.example"]]
