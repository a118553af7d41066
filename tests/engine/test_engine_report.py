"""E-mail reports through a real SMTP server (aiosmtpd on 127.0.0.1)."""
from __future__ import annotations

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from conftest import file_routes, free_port
from engine_helpers import _Collect, smtp  # noqa: F401  (fixture)

from engine.report import send_report
from engine.run import run_engine

ROUTES = file_routes(name="orders", translate="m.f")
ON = "[settings]\nsendreportiferror = True\n"      # reports on (the master switch)
MAPPING = "def f(content, meta):\n    if content == b'BAD':\n        raise KeyError('segment UNH missing')\n    return content\n"


def _env(make_env, ini_extra, smtp):  # noqa: F811
    env = make_env(ini="[settings]\nwhencleanup = never\n" + ini_extra + smtp.ini(), routes=ROUTES)
    env.drop("usersys/mappings/m.py", MAPPING)
    return env


def test_report_on_file_errors_lists_each_error(make_env, smtp):  # noqa: F811
    env = _env(make_env, "sendreportiferror = True\nsendreportifprocesserror = False\n", smtp)
    env.drop("data/in/bad order.edi", "BAD")
    env.drop("data/in/good.edi", "GOOD")
    env.path("data/out").mkdir(parents=True)
    res = run_engine(env.config())
    assert res.exit_code == 2
    msgs = smtp.wait(1)
    assert len(msgs) == 1
    m = msgs[0]
    subject = m["Subject"].strip()
    assert subject.startswith("[botsq-test] ") and "1 file error(s)" in subject and "0 communication" in subject
    assert m["To"] == "ops@example.com, edi@example.com"
    assert sorted(smtp.handler.envelopes[0].rcpt_tos) == ["edi@example.com", "ops@example.com"]
    body = m.get_content()
    assert "route orders, file bad order.edi: mapping m.f raised KeyError: 'segment UNH missing'" in body


def test_communication_errors_reported_with_both_switches_on(make_env, smtp):  # noqa: F811
    env = _env(make_env, "sendreportiferror = True\nsendreportifprocesserror = True\n", smtp)
    env.drop("data/in/a.edi", "GOOD")                     # data/out missing: communication error
    res = run_engine(env.config())
    assert res.exit_code == 2
    m = smtp.wait(1)[0]
    assert "1 communication error(s)" in m["Subject"]
    assert "route orders, file a.edi: channel 'out'" in m.get_content()


def _no_mail(smtp) -> None:  # noqa: F811
    import time
    time.sleep(0.3)
    assert smtp.messages == []


@pytest.mark.parametrize("errors", ["file", "communication"])
def test_sendreportiferror_false_mails_nothing(make_env, smtp, errors):  # noqa: F811
    """The master switch (Bots' sendbotserrorreport): off, no error of any kind mails a report -
    sendreportifprocesserror = True does not turn mails on (main mailed communication errors)."""
    env = _env(make_env, "sendreportiferror = False\nsendreportifprocesserror = True\n", smtp)
    env.drop("data/in/a.edi", "BAD" if errors == "file" else "GOOD")
    if errors == "file":
        env.path("data/out").mkdir(parents=True)          # else data/out is missing: a communication error
    res = run_engine(env.config())
    assert res.exit_code == 2 and res.counts[f"{errors[:4]}_errors"] == 1
    _no_mail(smtp)


def test_sendreportifprocesserror_false_skips_runs_with_only_communication_errors(make_env, smtp):  # noqa: F811
    env = _env(make_env, "sendreportiferror = True\nsendreportifprocesserror = False\n", smtp)
    env.drop("data/in/a.edi", "GOOD")                     # data/out missing: a communication error only
    res = run_engine(env.config())
    assert res.exit_code == 2 and res.counts["comm_errors"] == 1 and res.counts["file_errors"] == 0
    _no_mail(smtp)
    env.drop("data/in/b.edi", "GOOD")                     # a communication error again, and
    env.drop("data/in/bad.edi", "BAD")                    # a file error as well: the report goes, with both
    res = run_engine(env.config())
    assert res.counts["file_errors"] == 1 and res.counts["comm_errors"] == 1
    body = smtp.wait(1)[0].get_content()
    assert "bad.edi: mapping m.f raised KeyError" in body and "file b.edi: channel 'out'" in body


def test_smtp_down_is_logged_never_raises(make_env):
    env = make_env(ini=f"{ON}[email]\nhost = 127.0.0.1\nport = {free_port()}\nmanagers = a@example.com\ntimeout = 2\n",
                   routes=ROUTES)
    cfg = env.config()
    assert send_report(cfg, "subject", "body") is False
    assert "could not send report" in (cfg.directories.logging / "engine.log").read_text()


def test_no_managers_no_mail(make_env):
    env = make_env(ini=ON + "[email]\nhost = 127.0.0.1\nport = 1\n", routes=ROUTES)
    assert send_report(env.config(), "s", "b") is False


def test_login_and_password_not_logged(make_env, monkeypatch):
    seen = []

    def auth(server, session, envelope, mechanism, data):  # type: ignore[no-untyped-def]
        seen.append((data.login, data.password))
        return AuthResult(success=data.password == b"Pa55word!")

    handler = _Collect()
    port = free_port()
    ctl = Controller(handler, hostname="127.0.0.1", port=port, authenticator=auth, auth_require_tls=False)
    ctl.start()
    try:
        monkeypatch.setenv("SMTP_PASSWORD", "Pa55word!")
        env = make_env(ini=f"{ON}[email]\nhost = 127.0.0.1\nport = {port}\nuser = bots\npassword = ${{SMTP_PASSWORD}}\n"
                       "managers = ops@example.com\nsubject_prefix = [P]\n", routes=ROUTES)
        cfg = env.config()
        assert send_report(cfg, "hello", "the password is Pa55word! (redacted)") is True
        assert seen == [(b"bots", b"Pa55word!")]
        assert handler.messages[0]["Subject"] == "[P] hello"
        assert "Pa55word!" not in handler.messages[0].get_content()
        assert "Pa55word!" not in (cfg.directories.logging / "engine.log").read_text()
    finally:
        ctl.stop()


@pytest.mark.parametrize("flags,fe,ce,expect", [      # Bots 4: automaticmaintenance.email_error_report
    ((True, True), 1, 0, True), ((True, True), 0, 1, True), ((True, True), 1, 1, True),
    ((True, False), 1, 0, True), ((True, False), 0, 1, False), ((True, False), 1, 1, True),
    ((False, True), 1, 0, False), ((False, True), 0, 1, False), ((False, False), 1, 1, False),
])
def test_report_conditions(make_env, monkeypatch, flags, fe, ce, expect):
    from engine.run.session import RunSession
    env = make_env(ini=f"[settings]\nsendreportiferror = {flags[0]}\nsendreportifprocesserror = {flags[1]}\n",
                   routes=ROUTES)
    run = RunSession(env.config(), ["new"], [], None)
    run.ctx.counts.file_errors, run.ctx.counts.comm_errors = fe, ce
    sent = []
    monkeypatch.setattr("engine.run.session.send_report", lambda cfg, s, b: sent.append(s) or True)
    run.maybe_report("msg")
    assert bool(sent) is expect


def test_master_switch_off_no_report_of_any_kind(make_env, smtp):  # noqa: F811
    """Crash recovery, maxruntime and job reports all go through send_report: off, nothing is mailed."""
    env = make_env(ini="[settings]\nsendreportiferror = False\n" + smtp.ini(), routes=ROUTES)
    assert send_report(env.config(), "crash recovery by run 2: run 1 crashed", "body") is False
    _no_mail(smtp)
    env = make_env(ini=ON + smtp.ini(), routes=ROUTES)
    assert send_report(env.config(), "crash recovery by run 2: run 1 crashed", "body") is True
    assert "crash recovery" in smtp.wait(1)[0]["Subject"]
