"""``[webserver]`` of bots.ini (Bots' section name): where ``botsq web`` listens and who logs in::

    [webserver]
    address = 127.0.0.1          ; BOTSQ_WEB_ADDRESS; default 127.0.0.1
    port = 8080                  ; BOTSQ_WEB_PORT; Bots' webserver default
    users = ops:${WEB_PASSWORD}, view:scrypt:...   ; BOTSQ_WEB_USERS; name:password[, name2:password2]
    readonly = view              ; users who may look but not act
    session_hours = 12           ; a login lasts this long
    secure_cookie = False        ; True when reached over HTTPS (a TLS proxy in front)
    chart_cache = 300            ; seconds between recounts of the charts' hours long past; 0: every request

Read on demand (:func:`load_webserver_settings`, not in :func:`engine.config.load_config`), so an
unset ``${VAR}`` in ``users`` never stops the engine. Listening on anything but the loopback
interface without users is refused (the contract's "Web console").
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from engine.config import Config
from engine.config.flower import is_loopback, listen_address
from engine.errors import ConfigError

ENV_USERS = "BOTSQ_WEB_USERS"
ENV_ADDRESS = "BOTSQ_WEB_ADDRESS"
ENV_PORT = "BOTSQ_WEB_PORT"
PASSWORD_HASH_PREFIXES = ("scrypt:", "pbkdf2:")     # Werkzeug's hash formats


@dataclass(frozen=True)
class WebUser:
    """A login of the web console; ``password`` is plain text or a Werkzeug hash (``scrypt:``/``pbkdf2:``)."""
    name: str
    password: str
    readonly: bool = False             # named in [webserver] readonly: may look, not act

    @property
    def hashed(self) -> bool:
        return self.password.startswith(PASSWORD_HASH_PREFIXES)


@dataclass(frozen=True)
class WebServerSettings:
    """``[webserver]``, with ``--address``/``--port`` and the BOTSQ_WEB_* variables applied."""
    address: str = "127.0.0.1"
    port: int = 8080                   # Bots' webserver default
    users: tuple[WebUser, ...] = ()
    session_hours: float = 12.0        # a login lasts this long
    secure_cookie: bool = False        # True when the console is reached over HTTPS (a TLS proxy in front)
    chart_cache: float = 300.0         # seconds between recounts of the charts' hours long past; 0: every request

    def user(self, name: str) -> WebUser | None:
        return next((u for u in self.users if u.name == name), None)


def load_webserver_settings(cfg: Config, address: str | None = None, port: int | None = None) -> WebServerSettings:
    """The console's settings of an environment: arguments, else the BOTSQ_WEB_* variables, else
    ``[webserver]``. ConfigError (one line) when invalid, or when it would listen on anything but
    the loopback interface without users."""
    sec = cfg.section("webserver")
    d = WebServerSettings()
    addr, prt = listen_address(sec, address, port, ENV_ADDRESS, ENV_PORT, d.port)
    env_users = os.environ.get(ENV_USERS)
    where_users = ENV_USERS if env_users else sec.where("users")
    raw = env_users if env_users else sec.get("users", str, "")
    readonly = set(sec.get("readonly", list, []))
    users: list[WebUser] = []
    for entry in (e.strip() for e in raw.split(",")):
        if not entry:
            continue
        name, _, password = entry.partition(":")
        name = name.strip()
        if not name or not password:
            raise ConfigError(f"{where_users}: expected name:password (comma-separated for several users)")
        if any(u.name == name for u in users):
            raise ConfigError(f"{where_users}: user {name!r} is listed twice")
        users.append(WebUser(name, password, name in readonly))
    unknown = sorted(readonly - {u.name for u in users})
    if unknown:
        raise ConfigError(f"{sec.where('readonly')}: no user named {', '.join(map(repr, unknown))} in {where_users}")
    hours = sec.get("session_hours", float, d.session_hours)
    if hours <= 0:
        raise ConfigError(f"{sec.where('session_hours')}: must be greater than 0")
    chart_cache = sec.get("chart_cache", float, d.chart_cache)
    if chart_cache < 0:
        raise ConfigError(f"{sec.where('chart_cache')}: must be 0 or more")
    settings = WebServerSettings(addr, prt, tuple(users), hours, sec.get("secure_cookie", bool, d.secure_cookie),
                                 chart_cache)
    if not users and not is_loopback(addr):
        shown = addr or "all interfaces"
        raise ConfigError(f"{cfg.ini_path}: [webserver] refusing to listen on {shown} without users: "
                          f"set [webserver] users (or {ENV_USERS}) or keep address = 127.0.0.1")
    return settings
