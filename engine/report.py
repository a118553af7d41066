"""E-mail reports to the managers in ``[email]``, through real SMTP (smtplib), and when they go.

When, as Bots decides it (Bots 4 ``botslib.sendbotserrorreport`` and
``automaticmaintenance.email_error_report``): ``[settings] sendreportiferror`` is the master switch
- False (the default), no report is ever mailed, whatever the error; True, a run mails a report
when it had file errors, and when its only errors were communication errors (Bots' "process
errors") only if ``sendreportifprocesserror`` is True too (the default). The other reports
(crash recovery, a run or job past ``maxruntime``, a job given up or crashed) go whenever the
master switch is on, as Bots' severe-error mails do.
"""
from __future__ import annotations

import logging

from engine.config import Config, Settings
from engine.errors import one_line
from engine.log import component_logger, redact


def report_wanted(settings: Settings, file_errors: int, comm_errors: int) -> bool:
    """Does a run with these error counts mail a report (Bots' rule, see the module doc)?"""
    if not settings.sendreportiferror:
        return False
    return bool(file_errors or (comm_errors and settings.sendreportifprocesserror))


def send_report(cfg: Config, subject: str, body: str, log: logging.Logger | None = None) -> bool:
    """Mail ``body`` to ``[email] managers``, subject prefixed, when ``sendreportiferror`` is on (the
    master switch, checked here so no caller can miss it); False (logged to ``log``, default the engine
    log) when off, without managers, or on any failure. Never raises."""
    if log is None:
        try:
            log = component_logger("engine", cfg)
        except Exception:  # noqa: BLE001 - a report must never break its caller
            log = logging.getLogger("botsq.engine")
    em = cfg.email
    full_subject = f"{em.subject_prefix} {subject}".strip() if em.subject_prefix else subject
    if not cfg.settings.sendreportiferror:
        log.info("no report sent ([settings] sendreportiferror is False): %s", full_subject)
        return False
    if not em.managers:
        log.info("no report sent (no [email] managers configured): %s", full_subject)
        return False
    # the mail modules (with ssl: ~15 ms) only when a report goes out; most runs of a process send none
    import smtplib
    import ssl
    from email.message import EmailMessage
    from email.utils import formatdate, make_msgid
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
