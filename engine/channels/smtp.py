"""SMTP out-channel: every outgoing file becomes one mail with the file attached.

One SMTP session per run. A mail is accepted by the server as a whole or not at all,
so there is no temporary name to rename. A delivery counts only when every ``to`` address
was accepted: a server refusing one of them (while taking the mail for the others) is a
failed delivery naming the refused address, and a retry sends the mail to every address again.
"""
from __future__ import annotations

import smtplib
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

from engine.channels.base import CommunicationError, Refused, safe_name
from engine.channels.remote import RemoteChannel


class SmtpChannel(RemoteChannel):
    type = "smtp"
    errors = (OSError, EOFError, smtplib.SMTPException)

    smtp: smtplib.SMTP | None = None

    def __init__(self, spec, cfg, log) -> None:  # type: ignore[no-untyped-def]
        self.ssl = bool(spec.get("ssl", False))
        self.starttls = bool(spec.get("starttls", False))
        self.default_port = 465 if self.ssl else 587 if self.starttls else 25
        super().__init__(spec, cfg, log)
        to = spec.get("to")
        self.to: list[str] = [to] if isinstance(to, str) else list(to or [])
        self.sender: str = spec.get("sender") or cfg.email.sender

    def reason(self, exc: BaseException) -> str:
        if isinstance(exc, smtplib.SMTPRecipientsRefused):
            return "recipients refused: " + "; ".join(
                f"{rcpt} ({code} {msg.decode(errors='replace')})" for rcpt, (code, msg) in exc.recipients.items())
        if isinstance(exc, smtplib.SMTPResponseException):
            msg = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
            return f"{exc.smtp_code} {msg}"
        if isinstance(exc, smtplib.SMTPServerDisconnected):  # smtplib wraps timeouts in this too
            return f"timed out after {self.timeout:g} s" if "timed out" in str(exc) else "connection closed by the server"
        return super().reason(exc)

    def open(self) -> None:
        self.broken = False
        ctx = self.tls_context() if (self.ssl or self.starttls) else None
        smtp: smtplib.SMTP
        with self.step("cannot connect"):
            if self.ssl:
                smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=ctx)
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        try:
            with self.step("SMTP greeting failed"):
                smtp.ehlo_or_helo_if_needed()
            if self.starttls:
                with self.step("STARTTLS failed"):
                    smtp.starttls(context=ctx)
                    smtp.ehlo()
            if self.user:
                with self.step(f"login failed for user {self.user!r}"):
                    smtp.login(self.user, self.password)
        except BaseException:
            smtp.close()
            raise
        self.smtp = smtp

    def close(self) -> None:
        smtp, self.smtp = self.smtp, None
        if smtp is None:
            return
        try:
            if not self.broken:
                smtp.quit()
        except Exception:
            pass
        finally:
            smtp.close()

    def message(self, src: Path, filename: str) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.to)
        msg["Subject"] = filename
        msg["Date"] = formatdate(localtime=True)
        msg["Message-ID"] = make_msgid(domain=self.sender.rpartition("@")[2] or None)
        msg.set_content(f"Attached: {filename}\n")
        msg.add_attachment(src.read_bytes(), maintype="application", subtype="octet-stream", filename=filename)
        return msg

    def connected(self) -> bool:
        return self.smtp is not None

    def is_answer(self, exc: BaseException) -> bool:
        """A refusal (smtplib resets the transaction after it); 421 means the server is closing."""
        if isinstance(exc, smtplib.SMTPResponseException):
            return exc.smtp_code != 421
        return isinstance(exc, smtplib.SMTPRecipientsRefused)

    def send(self, src: Path, filename: str) -> str:
        name = safe_name(filename)    # a mail's attachment: no name at the partner to clash with
        msg = self.message(src, name)
        action = f"cannot send {name!r} to {', '.join(self.to)}"
        self.ensure_open()
        assert self.smtp is not None
        try:
            refused = self.smtp.send_message(msg, from_addr=self.sender, to_addrs=self.to)
        except smtplib.SMTPServerDisconnected:
            # A session the server dropped (idle timeout) never accepted the mail: reconnect once, now.
            self.broken = True
        except self.errors as exc:
            if not self.is_answer(exc):
                self.broken = True
            raise self.error(action, exc, Refused if self.is_answer(exc) else CommunicationError) from None
        else:
            self._all_accepted(refused, action)
            return name
        self.ensure_open()
        assert self.smtp is not None
        with self.step(action):
            refused = self.smtp.send_message(msg, from_addr=self.sender, to_addrs=self.to)
        self._all_accepted(refused, action)
        return name

    def _all_accepted(self, refused: dict, action: str) -> None:
        """smtplib reports recipients refused while others took the mail only in its return value."""
        if refused:
            took = ", ".join(a for a in self.to if a not in refused)
            error = self.error(action, smtplib.SMTPRecipientsRefused(refused), Refused)
            raise Refused(f"{error} (accepted for {took}; a retry sends to every address again)")
