"""E-mail reports to the managers in ``[email]``, through real SMTP (smtplib)."""
from __future__ import annotations

import logging
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from engine.config import Config
from engine.errors import one_line
from engine.log import component_logger, redact


def send_report(cfg: Config, subject: str, body: str, log: logging.Logger | None = None) -> bool:
    """Mail ``body`` to ``[email] managers``, subject prefixed; False (logged to ``log``, default the engine
    log) on any failure. Never raises."""
    if log is None:
        try:
            log = component_logger("engine", cfg)
        except Exception:  # noqa: BLE001 - a report must never break its caller
            log = logging.getLogger("botsq.engine")
    em = cfg.email
    full_subject = f"{em.subject_prefix} {subject}".strip() if em.subject_prefix else subject
    if not em.managers:
        log.info("no report sent (no [email] managers configured): %s", full_subject)
        return False
    try:
        msg = EmailMessage()
        msg["Subject"] = full_subject
        msg["From"] = em.sender
        msg["To"] = ", ".join(em.managers)
        msg["Date"] = formatdate(localtime=True)
        msg["Message-ID"] = make_msgid(domain="botsq")
        msg.set_content(redact(body))
        if em.ssl:
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(em.host, em.port, timeout=em.timeout,
                                                  context=ssl.create_default_context())
        else:
            smtp = smtplib.SMTP(em.host, em.port, timeout=em.timeout)
        with smtp:
            if em.use_tls and not em.ssl:
                smtp.starttls(context=ssl.create_default_context())
            if em.user:
                smtp.login(em.user, em.password)
            smtp.send_message(msg)
        log.info("report sent to %s: %s", ", ".join(em.managers), full_subject)
        return True
    except Exception as exc:  # noqa: BLE001
        log.error("could not send report %r via %s:%s: %s", full_subject, em.host, em.port, redact(one_line(exc)))
        return False
