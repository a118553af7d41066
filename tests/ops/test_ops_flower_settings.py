"""Flower settings: basic auth from config or environment; off-host without auth is refused."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import socket

from conftest import REPO, bin_path, free_port
from engine.config.flower import ENV_AUTH, is_loopback, load_flower_settings
from engine.errors import ConfigError
from ops.flower import describe, flower_command

QUEUE_INI = """
[jobqueue]
enabled = True
broker = amqp://guest:guest@127.0.0.1:1//
"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (ENV_AUTH, "BOTSQ_FLOWER_ADDRESS", "BOTSQ_FLOWER_PORT"):
        monkeypatch.delenv(name, raising=False)


def test_defaults_listen_on_loopback_without_auth(make_env) -> None:  # type: ignore[no-untyped-def]
    s = load_flower_settings(make_env(ini=QUEUE_INI).config())
    assert (s.address, s.port, s.basic_auth) == ("127.0.0.1", 5555, ())
    assert s.url == "http://127.0.0.1:5555/"
    assert "metrics" in describe(s)


@pytest.mark.parametrize("address", ["0.0.0.0", "", "192.0.2.10", "edi.example.com", "::"])
def test_off_host_without_auth_is_refused(make_env, address: str) -> None:  # type: ignore[no-untyped-def]
    cfg = make_env(ini=QUEUE_INI + f"\n[flower]\naddress = {address}\n").config()
    with pytest.raises(ConfigError, match="refusing to listen on .* without authentication"):
        load_flower_settings(cfg)


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_without_auth_is_allowed(make_env, address: str) -> None:  # type: ignore[no-untyped-def]
    cfg = make_env(ini=QUEUE_INI + f"\n[flower]\naddress = {address}\n").config()
    assert load_flower_settings(cfg).address == address
    assert is_loopback(address)


def test_auth_from_config_with_env_expansion(make_env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FLOWER_PW", "pw-from-env")
    cfg = make_env(ini=QUEUE_INI + "\n[flower]\naddress = 0.0.0.0\nport = 5601\n"
                   "basic_auth = ops:${FLOWER_PW}, view:two\n").config()
    s = load_flower_settings(cfg)
    assert s.basic_auth == ("ops:pw-from-env", "view:two")
    assert s.options()["basic_auth"] == ["ops:pw-from-env", "view:two"]
    assert s.port == 5601
    # the description names users, never passwords
    assert "ops, view" in describe(s) and "pw-from-env" not in describe(s)


def test_environment_overrides_config(make_env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    cfg = make_env(ini=QUEUE_INI + "\n[flower]\nbasic_auth = a:b\n").config()
    monkeypatch.setenv(ENV_AUTH, "env:secret")
    monkeypatch.setenv("BOTSQ_FLOWER_ADDRESS", "0.0.0.0")
    monkeypatch.setenv("BOTSQ_FLOWER_PORT", "6001")
    s = load_flower_settings(cfg)
    assert (s.address, s.port, s.basic_auth) == ("0.0.0.0", 6001, ("env:secret",))


@pytest.mark.parametrize("bad", ["justuser", ":nopass", "user:"])
def test_malformed_auth_is_a_config_error(make_env, bad: str) -> None:  # type: ignore[no-untyped-def]
    cfg = make_env(ini=QUEUE_INI + f"\n[flower]\nbasic_auth = {bad}\n").config()
    with pytest.raises(ConfigError, match=r"\[flower\] basic_auth: expected user:password"):
        load_flower_settings(cfg)


def test_password_never_on_the_command_line(make_env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv(ENV_AUTH, "ops:cmdline-secret")
    argv, env, _s = flower_command(make_env(ini=QUEUE_INI).config(), address="0.0.0.0", port=5999)
    assert not any("cmdline-secret" in a for a in argv)
    assert any(a.startswith("--conf=") and a.endswith("flowerconfig.py") for a in argv)
    assert env["BOTSQ_FLOWER_ADDRESS"] == "0.0.0.0" and env["BOTSQ_FLOWER_PORT"] == "5999"


@pytest.mark.procs
def test_botsq_flower_refuses_in_one_line_with_exit_1(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env(ini=QUEUE_INI)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BOTSQ_FLOWER")}
    res = subprocess.run(
        [bin_path("botsq"), "flower", "-c", str(env.configdir), "--address", "0.0.0.0"],
        capture_output=True, text=True, timeout=60, env=clean)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to listen on 0.0.0.0 without authentication" in lines[0], res.stderr


@pytest.mark.procs
def test_a_busy_port_is_one_line_and_exit_1_not_a_tornado_traceback(make_env) -> None:  # type: ignore[no-untyped-def]
    """``botsq flower`` and Flower's settings module (what ``botsq stack`` starts) alike."""
    env = make_env(ini=QUEUE_INI)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        clean = {k: v for k, v in os.environ.items() if not k.startswith("BOTSQ_FLOWER")}
        clean.update(BOTSQ_FLOWER_PORT=str(port), BOTSQ_CONFIG=str(env.configdir))
        res = subprocess.run([bin_path("botsq"), "flower", "-c", str(env.configdir)], capture_output=True, text=True,
                             timeout=60, env=clean)
        assert res.returncode == 1
        assert res.stderr == f"botsq: error: cannot listen on 127.0.0.1:{port}: Address already in use\n", res.stderr
        res = subprocess.run([sys.executable, "-c", "import runpy; runpy.run_path('ops/flowerconfig.py')"],
                             capture_output=True, text=True, timeout=60, env=clean, cwd=REPO)
        assert res.returncode == 1
        assert res.stderr == f"botsq flower: error: cannot listen on 127.0.0.1:{port}: Address already in use\n"


@pytest.mark.procs
def test_settings_module_refuses_too(make_env) -> None:  # type: ignore[no-untyped-def]
    """``celery flower --conf=ops/flowerconfig.py`` alone applies the same rule."""
    env = make_env(ini=QUEUE_INI + "\n[flower]\naddress = 0.0.0.0\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BOTSQ_FLOWER")}
    clean["BOTSQ_CONFIG"] = str(env.configdir)
    res = subprocess.run([sys.executable, "-c", "import runpy; runpy.run_path('ops/flowerconfig.py')"],
                         capture_output=True, text=True, timeout=60, env=clean,
                         cwd=REPO)
    assert res.returncode == 1
    assert "refusing to listen on 0.0.0.0" in res.stderr


def test_settings_module_drops_flowers_unauthenticated_api_switch(make_env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Flower reads FLOWER_UNAUTHENTICATED_API at each request; its settings module runs in Flower's
    process and removes it, so the API of a Flower without basic auth still answers 401."""
    from ops.flower import settings_from_environment

    env = make_env(ini=QUEUE_INI)
    monkeypatch.setenv("BOTSQ_CONFIG", str(env.configdir))
    monkeypatch.setenv("FLOWER_UNAUTHENTICATED_API", "true")
    monkeypatch.setenv("BOTSQ_FLOWER_PORT", str(free_port()))
    opts = settings_from_environment()
    assert opts["address"] == "127.0.0.1" and opts["basic_auth"] == []
    assert "FLOWER_UNAUTHENTICATED_API" not in os.environ


@pytest.mark.procs
def test_bare_celery_flower_gets_the_same_settings(make_env) -> None:  # type: ignore[no-untyped-def]
    """``celery -A tasks flower`` with no --conf still goes through botsq's settings module."""
    env = make_env(ini=QUEUE_INI + "\n[flower]\naddress = 0.0.0.0\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BOTSQ_FLOWER", "FLOWER_"))}
    clean["BOTSQ_CONFIG"] = str(env.configdir)
    res = subprocess.run([bin_path("celery"), "-A", "tasks", "flower"], capture_output=True, text=True,
                         timeout=60, env=clean, cwd=env.root)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "refusing to listen on 0.0.0.0 without authentication" in res.stderr
