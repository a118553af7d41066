"""``[flower]`` of bots.ini (Flower for the engine queue), overridden by the environment::

    [flower]
    address = 127.0.0.1          ; BOTSQ_FLOWER_ADDRESS; default 127.0.0.1
    port = 5555                  ; BOTSQ_FLOWER_PORT
    basic_auth = ops:${FLOWER_PASSWORD}   ; BOTSQ_FLOWER_BASIC_AUTH; user:password[, user2:password2]
    read_only = False            ; viewers cannot revoke or send tasks
    url_prefix =                 ; when behind a reverse proxy at /flower
    certfile =                   ; TLS: both certfile and keyfile
    keyfile =

Read on demand (:func:`load_flower_settings`), so a bad ``[flower]`` stops only Flower. Listening
on anything but the loopback interface without basic_auth is refused.
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from engine.config import Config
from engine.config.ini import IniSection
from engine.errors import ConfigError

ENV_ADDRESS = "BOTSQ_FLOWER_ADDRESS"
ENV_PORT = "BOTSQ_FLOWER_PORT"
ENV_AUTH = "BOTSQ_FLOWER_BASIC_AUTH"


@dataclass(frozen=True)
class FlowerSettings:
    address: str = "127.0.0.1"
    port: int = 5555
    basic_auth: tuple[str, ...] = ()     # "user:password" each
    read_only: bool = False
    url_prefix: str = ""
    certfile: str = ""                   # absolute paths, or ""
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


def is_loopback(address: str) -> bool:
    """True for an address only this host reaches (127.x, ::1, localhost); '' (all interfaces),
    0.0.0.0 and host names count as exposed."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def listen_address(sec: IniSection, address: str | None, port: int | None, env_address: str, env_port: str,
                   default_port: int) -> tuple[str, int]:
    """Where a server of botsq listens (Flower, the web console): ``address``/``port`` (the command
    line's), else the ``env_address``/``env_port`` variables, else the section's ``address`` and
    ``port`` (default 127.0.0.1 and ``default_port``). ConfigError (one line) unless the port is 1..65535."""
    addr = address if address is not None else os.environ.get(env_address) or sec.get("address", str, "127.0.0.1")
    if port is not None:                                    # the error names where the port came from
        raw_port, where = port, "--port"
    elif os.environ.get(env_port):
        raw_port, where = os.environ[env_port], env_port
    else:
        raw_port, where = sec.get("port", int, default_port), sec.where("port")
    try:
        prt = int(raw_port)
    except ValueError:
        raise ConfigError(f"{where}: expected a port number, got {raw_port!r}") from None
    if not 0 < prt < 65536:
        raise ConfigError(f"{where}: expected a port number 1..65535, got {prt}")
    return addr, prt


def load_flower_settings(cfg: Config, address: str | None = None, port: int | None = None) -> FlowerSettings:
    """The Flower settings of an environment: arguments, else the BOTSQ_FLOWER_* variables, else
    ``[flower]``. ConfigError (one line) when invalid or unsafe."""
    sec = cfg.section("flower")
    addr, prt = listen_address(sec, address, port, ENV_ADDRESS, ENV_PORT, 5555)
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
