"""Config loading: strict, one-line errors naming file and key; ${VAR}; paths; overrides."""
from __future__ import annotations

import os

import argparse

import pytest

from engine.config import ConfigError, add_config_argument, load_config
from engine.log import mask_url

ROUTES_OK = """
[channels.a]
type = "file"
path = "in"
[channels.b]
type = "file"
path = "out"
[routes.r]
[[routes.r.parts]]
fromchannel = "a"
tochannel = "b"
"""


def test_defaults_and_relative_paths(make_env, monkeypatch):
    monkeypatch.delenv("BOTSQ_BROKER_URL", raising=False)
    env = make_env(ini="[settings]\nmaxruntime = 7 ; minutes\n", routes=ROUTES_OK)
    cfg = env.config()
    assert cfg.settings.maxruntime == 7
    assert cfg.settings.sendreportifprocesserror is True
    assert cfg.directories.botssys == env.root / "botssys"
    assert cfg.database_url == f"sqlite:///{env.root / 'botssys' / 'sqlitedb' / 'botsdb.sqlite'}"
    assert cfg.resolve("in") == env.root / "in"
    assert cfg.jobqueue.broker.startswith("amqp://")
    assert list(cfg.routes) == ["r"] and cfg.routes["r"].parts[0].translate == "passthrough"


def test_relative_sqlite_url_resolves_against_environment(make_env):
    env = make_env(ini="[database]\nurl = sqlite:///botssys/x.sqlite\n", routes=ROUTES_OK)
    assert env.config().database_url == f"sqlite:///{env.root / 'botssys' / 'x.sqlite'}"


def test_env_var_expansion_and_missing_var(make_env, monkeypatch):
    monkeypatch.setenv("SMTP_PASSWORD", "s3cret")
    env = make_env(ini="[email]\npassword = ${SMTP_PASSWORD}\nuser = ${SMTP_USER:-bots}\n", routes=ROUTES_OK)
    cfg = env.config()
    assert cfg.email.password == "s3cret" and cfg.email.user == "bots"
    assert "s3cret" in cfg.secrets()
    monkeypatch.delenv("SMTP_PASSWORD")
    with pytest.raises(ConfigError, match=r"bots.ini: \[email\] password: environment variable SMTP_PASSWORD is not set"):
        env.config()


def test_every_var_value_is_a_secret_at_load(make_env, monkeypatch):
    """Wherever ${VAR} is used - a command line, a section read only on demand, routes.toml - its
    value is redacted from the moment the config is loaded; a default written in the file is not."""
    from engine.log import redact
    values = {name: f"{name.lower()}-{os.getpid()}-value" for name in ("ERP_TOKEN", "SCHED_ARG", "FTP_PW_X")}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("NOT_SET_HERE", raising=False)
    env = make_env(ini="[jobqueue.commands]\nexport = /bin/echo --token ${ERP_TOKEN}\n"
                       "[schedule.x]\ncadence = hourly\njob = export ${SCHED_ARG}\n"
                       "[settings]\nmaxdays = ${NOT_SET_HERE:-31}\n",
                   routes=ROUTES_OK.replace('type = "file"', 'type = "file"\nfilemask = "${FTP_PW_X}"', 1))
    cfg = env.config()
    assert cfg.settings.maxdays == 31
    for value in values.values():
        assert redact(f"a {value} b") == "a *** b"
    assert redact("maxdays 31") == "maxdays 31"


def test_broker_override_from_environment(make_env, monkeypatch):
    monkeypatch.setenv("BOTSQ_BROKER_URL", "redis://127.0.0.1:6379/3")
    env = make_env(ini="[jobqueue]\nenabled = True\nbroker = amqp://x//\n[jobqueue.commands]\nsweep = /bin/echo 'a b' c\n",
                   routes=ROUTES_OK)
    cfg = env.config()
    assert cfg.jobqueue.broker == "redis://127.0.0.1:6379/3"
    assert cfg.jobqueue.commands == {"sweep": ("/bin/echo", "a b", "c")}


@pytest.mark.parametrize("ini, match", [
    ("[settings]\nmaxruntime = abc\n", r"\[settings\] maxruntime: expected a whole number, got 'abc'"),
    ("[settings]\nsendreportiferror = maybe\n", r"\[settings\] sendreportiferror: expected True or False"),
    ("[settings]\nwhencleanup = hourly\n", r"\[settings\] whencleanup: expected one of daily, never"),
    ("[settings\nx=1\n", r"bots.ini: syntax error: line 1: expected a \[section\] header, got '\[settings'"),
    ("[settings]\nmaxdays = 3\n[jobqueue\n", r"bots.ini: syntax error: line 3: cannot parse '\[jobqueue'"),
    ("maxdays = 3\n", r"bots.ini: syntax error: line 1: expected a \[section\] header, got 'maxdays = 3'"),
    ("[jobqueue]\nbroker =\n", r"\[jobqueue\] broker: not a supported broker URL: ''"),
    ("[jobqueue]\nbroker = http://x\n", r"\[jobqueue\] broker: not a supported broker URL: 'http://x'"),
    ("[jobqueue]\nbroker = localhost\n", r"\[jobqueue\] broker: not a supported broker URL: 'localhost'"),
    ("[jobqueue]\nbroker = http://u:secret@x\n", r"\[jobqueue\] broker: not a supported broker URL: 'http://...'"),
    ("[dirmonitor1]\npath = x\npriority = 0\n", r"\[dirmonitor1\] priority: expected 1 \(highest\) to 9"),
    ("[dirmonitor1]\npath = x\nroute = nope\n", r"\[dirmonitor1\] route: no route named 'nope'"),
    ("[dirmonitor1]\npath = x\ndebounce = -1\n", r"\[dirmonitor1\] debounce: must be 0 or more seconds"),
    ("[jobqueue]\nstale_after = soon\n", r"\[jobqueue\] stale_after: expected a number, got 'soon'"),
    # a time that cannot work is refused, not met later as "cannot be reached within 0 s"
    ("[jobqueue]\nconnect_timeout = 0\n", r"\[jobqueue\] connect_timeout: must be more than 0 seconds, got 0.0$"),
    ("[jobqueue]\nconnect_timeout = -2\n", r"\[jobqueue\] connect_timeout: must be more than 0 seconds, got -2.0$"),
    ("[jobqueue]\nconnect_timeout = nan\n", r"\[jobqueue\] connect_timeout: expected a number, got 'nan'$"),
    ("[jobqueue]\nvisibility_timeout = 0\n", r"\[jobqueue\] visibility_timeout: must be more than 0 seconds"),
    ("[jobqueue]\nstale_after = -1\n", r"\[jobqueue\] stale_after: must be 0 or more seconds, got -1.0$"),
    ("[jobqueue]\nmax_retries = -1\n", r"\[jobqueue\] max_retries: must be 0 or more redeliveries, got -1$"),
    ("[settings]\nlock_grace = 0\n", r"\[settings\] lock_grace: must be more than 0 seconds, got 0.0$"),
    ("[settings]\nlock_heartbeat = -1\n", r"\[settings\] lock_heartbeat: must be more than 0 seconds"),
    ("[jobqueue]\nhardtimelimit = NaN\n", r"\[jobqueue\] hardtimelimit: expected a number, got 'NaN'$"),
])
def test_bad_ini_is_one_line_naming_file_and_key(make_env, ini, match):
    env = make_env(ini=ini, routes=ROUTES_OK)
    with pytest.raises(ConfigError, match=match) as info:
        env.config()
    assert "\n" not in str(info.value)
    assert str(env.configdir / "bots.ini") in str(info.value)


@pytest.mark.parametrize("routes, match", [
    ('[channels.a]\ntype = "gopher"\n', r"channels.a.type: unknown channel type 'gopher'"),
    ('[channels.a]\ntype = "file"\npath = 3\n', r"channels.a.path: expected a string, got 3"),
    ('[channels.a]\ntype = "file"\npath = "x"\nremove = "yes"\n', r"channels.a.remove: expected true or false"),
    ('[channels.a]\ntype = "file"\npath = "x"\nhost = "h"\n', r"channels.a.host: unknown key for a file channel"),
    ('[channels.a]\ntype = "ftp"\n', r"channels.a.host: required for a ftp channel"),
    ('[channels.a]\ntype = "file"\npath = "x"\n[routes.r]\n[[routes.r.parts]]\nfromchannel = "a"\ntochannel = "zz"\n',
     r"routes.r.parts\[1\].tochannel: no channel named 'zz'"),
    ('[routes.r]\nactive = true\n', r"routes.r.parts: a route needs at least one part"),
    ('[routes.r]\nfoo = 1\n', r"routes.r.foo: unknown key for a route"),
    ('[channels.a]\ntype = "file"\npath = "x"\n[routes.r]\n[[routes.r.parts]]\nfromchannel = "a"\ntranslate = "x y"\n',
     r"translate: expected"),
    ("[channels.a\n", r"routes.toml: syntax error"),
    ("[other]\n", r"unknown key 'other'"),
])
def test_bad_routes_is_one_line_naming_file_and_key(make_env, routes, match):
    env = make_env(ini="", routes=routes)
    with pytest.raises(ConfigError, match=match) as info:
        env.config()
    assert "\n" not in str(info.value)
    assert "routes.toml" in str(info.value)


def test_missing_config_dir(tmp_path):
    with pytest.raises(ConfigError, match="config dir does not exist"):
        load_config(tmp_path / "nope")


def test_a_folder_without_bots_ini_is_not_a_config_dir(tmp_path):
    """Never an engine on default settings (and a botssys/ made next to /etc): bots.ini is required."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "routes.toml").write_text(ROUTES_OK)
    with pytest.raises(ConfigError, match=f"{tmp_path / 'config' / 'bots.ini'}: no bots.ini, so "
                                          f"{tmp_path / 'config'} is not a config dir"):
        load_config(tmp_path / "config")


def test_a_bad_broker_url_from_the_environment_names_the_variable(make_env, monkeypatch):
    env = make_env(ini="[jobqueue]\nenabled = True\n", routes=ROUTES_OK)
    monkeypatch.setenv("BOTSQ_BROKER_URL", "foo://x")
    with pytest.raises(ConfigError, match="^environment variable BOTSQ_BROKER_URL: not a supported broker URL: "
                                          "'foo://x'"):
        env.config()


def test_config_dir_from_environment(make_env, monkeypatch, tmp_path):
    env = make_env(routes=ROUTES_OK)
    monkeypatch.setenv("BOTSQ_CONFIG", str(env.configdir))
    monkeypatch.chdir(tmp_path)
    assert load_config().configdir == env.configdir


@pytest.mark.parametrize("argv", [["-Cconfigprod"], ["-c", "configprod"], ["--configdir", "configprod"],
                                  ["-C", "configprod"]])
def test_bots_config_flags(argv):
    p = argparse.ArgumentParser()
    add_config_argument(p)
    assert p.parse_args(argv).configdir == "configprod"


def test_mask_url():
    assert mask_url("postgresql+psycopg://bots:pw@db:5432/x") == "postgresql+psycopg://bots:***@db:5432/x"
    assert mask_url("amqp://guest:guest@127.0.0.1:5672//") == "amqp://guest:***@127.0.0.1:5672//"
    assert mask_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


@pytest.mark.parametrize("channel,expect", [
    ('type = "file"\npath = "in"\nsettle = 0.5', None),
    ('type = "sftp"\nhost = "h"\nsettle = 0\nencoding = "cp1252"', None),
    ('type = "file"\npath = "in"\nsettle = -1', r"channels.a.settle: expected seconds, 0 or more \(0 turns the check "
                                                r"off\), got -1$"),
    ('type = "ftp"\nhost = "h"\nencoding = "klingon"', r"channels.a.encoding: expected an encoding Python knows, such "
                                                      r"as \"utf-8\" or \"cp1252\", got 'klingon'$"),
    ('type = "ftp"\nhost = "h"\nencoding = "rot13"', r"channels.a.encoding: expected an encoding Python knows"),
    ('type = "sftp"\nhost = "h"\ntimeout = 0', r"channels.a.timeout: expected seconds, more than 0, got 0$"),
    ('type = "file"\npath = "in"\nencoding = "utf-8"', r"channels.a.encoding: unknown key for a file channel$"),
    ('type = "smtp"\nhost = "h"\nto = "x@y"\nsettle = 1', r"channels.a.settle: unknown key for a smtp channel$"),
])
def test_settle_and_encoding_keys(make_env, channel: str, expect: str | None) -> None:  # type: ignore[no-untyped-def]
    env = make_env(routes=f"[channels.a]\n{channel}\n")
    if expect is None:
        assert env.config().channels["a"].type in ("file", "sftp")
    else:
        with pytest.raises(ConfigError, match=expect):
            env.config()


def test_bots_own_dirmonitor_section_is_left_to_bots(make_env, tmp_path):
    """Bots' bots.ini has ``[dirmonitor]`` (the monitor's own settings, no folder) beside the watched
    folders ``[dirmonitor1]`` ...; Bots takes any section named ``dirmonitor`` plus a non-empty suffix
    as a folder (bots/dirmonitor.py). A Bots site's bots.ini loads as Bots reads it."""
    ini = """
[dirmonitor]
process_existing = True
log_level = INFO
lauchfrequency = 5

[dirmonitor1]
path = data/orders

[dirmonitor_invoices]
path = data/invoices
route = r
"""
    cfg = make_env(ini=ini, routes=ROUTES_OK).config()
    assert [(m.name, m.path.name, m.route) for m in cfg.dirmonitors] == [
        ("dirmonitor1", "orders", ""), ("dirmonitor_invoices", "invoices", "r")]
