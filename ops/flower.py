"""``botsq flower``: Flower for the engine queue, with authentication required off this host.

Settings come from the ``[flower]`` section of bots.ini, overridden by the environment::

    [flower]
    address = 127.0.0.1          ; BOTSQ_FLOWER_ADDRESS; default 127.0.0.1
    port = 5555                  ; BOTSQ_FLOWER_PORT
    basic_auth = ops:${FLOWER_PASSWORD}   ; BOTSQ_FLOWER_BASIC_AUTH; user:password[, user2:password2]
    read_only = False            ; viewers cannot revoke or send tasks
    url_prefix =                 ; when behind a reverse proxy at /flower
    certfile =                   ; TLS: both certfile and keyfile
    keyfile =

Listening on anything but the loopback interface without basic_auth is refused (exit 1).
The settings reach Flower through the settings module ``ops/flowerconfig.py`` (Flower's
``--conf``), never on the command line, so the password does not show in ``ps``;
``celery -A tasks flower --conf=.../ops/flowerconfig.py`` applies the same rules.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from engine.config import ENV_CONFIG, Config, ConfigError, add_config_argument, is_loopback, load_config

ENV_ADDRESS = "BOTSQ_FLOWER_ADDRESS"
ENV_PORT = "BOTSQ_FLOWER_PORT"
ENV_AUTH = "BOTSQ_FLOWER_BASIC_AUTH"
SETTINGS_MODULE = Path(__file__).with_name("flowerconfig.py")
# Flower reads this at each request: set, it opens the API of a Flower without authentication.
UNAUTHENTICATED_API = "FLOWER_UNAUTHENTICATED_API"


@dataclass(frozen=True)
class FlowerSettings:
    address: str = "127.0.0.1"
    port: int = 5555
    basic_auth: tuple[str, ...] = ()
    read_only: bool = False
    url_prefix: str = ""
    certfile: str = ""
    keyfile: str = ""

    @property
    def url(self) -> str:
        scheme = "https" if self.certfile else "http"
        host = f"[{self.address}]" if ":" in self.address else self.address
        prefix = f"/{self.url_prefix.strip('/')}/" if self.url_prefix.strip("/") else "/"
        return f"{scheme}://{host}:{self.port}{prefix}"

    def options(self) -> dict[str, object]:
        """Flower option names and values, as its settings module sets them."""
        opts: dict[str, object] = {
            "address": self.address, "port": self.port, "basic_auth": list(self.basic_auth),
            "read_only": self.read_only, "unix_socket": "", "auth": "",
        }
        if self.url_prefix:
            opts["url_prefix"] = self.url_prefix.strip("/")
        if self.certfile:
            opts["certfile"], opts["keyfile"] = self.certfile, self.keyfile
        return opts


def load_flower_settings(cfg: Config, address: str | None = None, port: int | None = None) -> FlowerSettings:
    """The Flower settings of an environment; ConfigError (one line) when unsafe or invalid."""
    sec = cfg.section("flower")
    addr = address if address is not None else os.environ.get(ENV_ADDRESS) or sec.get("address", str, "127.0.0.1")
    where_port = sec.where("port")
    raw_port = port if port is not None else os.environ.get(ENV_PORT) or sec.get("port", int, 5555)
    try:
        prt = int(raw_port)
    except ValueError:
        raise ConfigError(f"{ENV_PORT}: expected a port number, got {raw_port!r}") from None
    if not 0 < prt < 65536:
        raise ConfigError(f"{where_port}: expected a port number 1..65535, got {prt}")
    env_auth = os.environ.get(ENV_AUTH)
    where_auth = ENV_AUTH if env_auth else sec.where("basic_auth")
    raw_auth = env_auth if env_auth else sec.get("basic_auth", str, "")
    auth = tuple(a.strip() for a in raw_auth.split(",") if a.strip())
    for entry in auth:
        user, _, password = entry.partition(":")
        if not user or not password:
            raise ConfigError(f"{where_auth}: expected user:password (comma-separated for several users)")
    certfile, keyfile = sec.get("certfile", str, ""), sec.get("keyfile", str, "")
    if bool(certfile) != bool(keyfile):
        raise ConfigError(f"{sec.where('certfile')}: TLS needs both certfile and keyfile")
    settings = FlowerSettings(
        address=addr, port=prt, basic_auth=auth, read_only=sec.get("read_only", bool, False),
        url_prefix=sec.get("url_prefix", str, ""),
        certfile=str(cfg.resolve(certfile)) if certfile else "", keyfile=str(cfg.resolve(keyfile)) if keyfile else "",
    )
    if not settings.basic_auth and not is_loopback(settings.address):
        shown = settings.address or "all interfaces"
        raise ConfigError(f"{cfg.ini_path}: [flower] refusing to listen on {shown} without authentication: "
                          f"set [flower] basic_auth (or {ENV_AUTH}) or keep address = 127.0.0.1")
    return settings


def settings_from_environment() -> dict[str, object]:
    """For ``ops/flowerconfig.py``: the options for the environment in BOTSQ_CONFIG.

    A problem ends Flower's start-up with one line on stderr and exit 1. It runs inside Flower's
    process, so it also drops FLOWER_UNAUTHENTICATED_API there: the API always needs a login.
    """
    os.environ.pop(UNAUTHENTICATED_API, None)
    try:
        return load_flower_settings(load_config()).options()
    except ConfigError as exc:
        print(f"botsq flower: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def flower_command(cfg: Config, address: str | None = None, port: int | None = None,
                   ) -> tuple[list[str], dict[str, str], FlowerSettings]:
    """argv and extra environment that start Flower for ``cfg`` (settings checked first)."""
    settings = load_flower_settings(cfg, address, port)
    argv = [sys.executable, "-m", "celery", "-A", "tasks", "flower", f"--conf={SETTINGS_MODULE}"]
    env = {ENV_CONFIG: str(cfg.configdir)}
    if address is not None:
        env[ENV_ADDRESS] = address
    if port is not None:
        env[ENV_PORT] = str(port)
    return argv, env, settings


def describe(settings: FlowerSettings) -> str:
    auth = f"basic auth for {', '.join(a.split(':', 1)[0] for a in settings.basic_auth)}" \
        if settings.basic_auth else "no authentication (this host only)"
    ro = ", read-only" if settings.read_only else ""
    return f"Flower on {settings.url} ({auth}{ro}); Prometheus metrics at {settings.url}metrics"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--address", default=None, help="listen address (default [flower] address or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="listen port (default [flower] port or 5555)")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.configdir)
    argv, extra, settings = flower_command(cfg, args.address, args.port)
    print(f"botsq flower: {describe(settings)}", file=sys.stderr, flush=True)
    # Replace this process: a service manager's signals then reach Flower directly.
    os.execvpe(argv[0], argv, {**os.environ, **extra})
    return 1  # pragma: no cover
