"""``[webserver]`` (engine/config/webserver.py): users, read-only users, the BOTSQ_WEB_* overrides,
and no users off the loopback interface."""
from __future__ import annotations

import re

import pytest

from engine.config.webserver import ENV_ADDRESS, ENV_PORT, ENV_USERS, load_webserver_settings
from engine.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (ENV_ADDRESS, ENV_PORT, ENV_USERS):
        monkeypatch.delenv(name, raising=False)


def test_users_readonly_and_the_environment_overrides(make_env, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("VIEW_PW", "from-the-env")
    cfg = make_env(ini="[webserver]\naddress = 0.0.0.0\nport = 8181\n"
                       "users = ops:pw-1, view:${VIEW_PW}\nreadonly = view\n").config()
    s = load_webserver_settings(cfg)
    assert (s.address, s.port) == ("0.0.0.0", 8181)
    assert [(u.name, u.password, u.readonly) for u in s.users] == [("ops", "pw-1", False),
                                                                   ("view", "from-the-env", True)]
    monkeypatch.setenv(ENV_PORT, "9090")
    monkeypatch.setenv(ENV_USERS, "view:other")
    s = load_webserver_settings(cfg)
    assert s.port == 9090 and [(u.name, u.readonly) for u in s.users] == [("view", True)]
    assert load_webserver_settings(cfg, "127.0.0.1", 7070).port == 7070        # --address/--port win


@pytest.mark.parametrize("address", ["0.0.0.0", "", "192.0.2.10", "edi.example.com", "::"])
def test_off_host_without_users_is_refused(make_env, address: str) -> None:  # type: ignore[no-untyped-def]
    cfg = make_env(ini=f"[webserver]\naddress = {address}\n").config()
    with pytest.raises(ConfigError, match="refusing to listen on .* without users"):
        load_webserver_settings(cfg)
    assert load_webserver_settings(cfg, address="127.0.0.1").users == ()


@pytest.mark.parametrize("line, message", [
    ("chart_cache = -1", "[webserver] chart_cache: must be 0 or more"),
    ("session_hours = 0", "[webserver] session_hours: must be greater than 0"),
    ("port = 0", "expected a port number 1..65535"),
    ("port = eighty", "[webserver] port: expected a whole number"),
    ("users = ops:a, :b", "expected name:password"),
    ("users = ops:a, ops:b", "user 'ops' is listed twice"),
    ("users = ops:a\nreadonly = view", "[webserver] readonly: no user named 'view'"),
    ("users = ops:${NOT_SET_ANYWHERE}", "[webserver] users: environment variable NOT_SET_ANYWHERE is not set"),
])
def test_bad_values_are_one_line_errors(make_env, line: str, message: str) -> None:  # type: ignore[no-untyped-def]
    env = make_env(ini=f"[webserver]\n{line}\n")
    cfg = env.config()                           # read on demand: a bad [webserver] never stops the engine
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_webserver_settings(cfg)


def test_a_bad_port_in_the_environment_names_the_variable(make_env, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv(ENV_PORT, "eighty")
    with pytest.raises(ConfigError, match=f"^{ENV_PORT}: expected a port number, got 'eighty'$"):
        load_webserver_settings(make_env().config())


def test_a_bad_port_names_where_it_came_from(make_env, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """--port 99999 was blamed on bots.ini's [webserver] port; a bad variable's range too."""
    cfg = make_env(ini="[webserver]\nport = 8181\n").config()
    with pytest.raises(ConfigError, match=r"^--port: expected a port number 1\.\.65535, got 99999$"):
        load_webserver_settings(cfg, port=99999)
    monkeypatch.setenv(ENV_PORT, "70000")
    with pytest.raises(ConfigError, match=f"^{ENV_PORT}: expected a port number 1\\.\\.65535, got 70000$"):
        load_webserver_settings(cfg)
