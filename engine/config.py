"""Loading and validating an environment's configuration: the one place for config rules.

An environment is a folder holding ``config/`` (bots.ini, routes.toml) plus ``botssys/``
and ``usersys/``. Relative paths resolve against the config dir's parent. Every error is
a :class:`ConfigError` whose message is one line naming the file and the key.
"""
from __future__ import annotations

import argparse
import codecs
import configparser
import os
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIGDIR = "config"
ENV_CONFIG = "BOTSQ_CONFIG"
ENV_BROKER = "BOTSQ_BROKER_URL"


class ConfigError(Exception):
    """A configuration problem; str() is one line naming file and key."""


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: str, where: str) -> str:
    """Expand ``${VAR}`` (or ``${VAR:-default}``) from the environment."""

    def repl(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(f"{where}: environment variable {name} is not set")

    return _VAR.sub(repl, value)


# --------------------------------------------------------------------------- typed values

def _to_bool(raw: str, where: str) -> bool:
    v = raw.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{where}: expected True or False, got {raw!r}")


def _to_int(raw: str, where: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise ConfigError(f"{where}: expected a whole number, got {raw!r}") from None


def _to_float(raw: str, where: str) -> float:
    try:
        return float(raw.strip())
    except ValueError:
        raise ConfigError(f"{where}: expected a number, got {raw!r}") from None


def _to_list(raw: str, where: str) -> list[str]:
    return [p.strip() for p in raw.split(",") if p.strip()]


_CONVERT = {bool: _to_bool, int: _to_int, float: _to_float, str: lambda r, w: r.strip(), list: _to_list}


class IniSection:
    """Typed read access to one bots.ini section, with errors naming file, section and key."""

    def __init__(self, path: Path, name: str, data: dict[str, str]) -> None:
        self.path, self.name, self.data = path, name, data

    def where(self, key: str) -> str:
        return f"{self.path}: [{self.name}] {key}"

    def get(self, key: str, typ: type, default: Any) -> Any:
        if key not in self.data:
            return default
        where = self.where(key)
        return _CONVERT[typ](expand_env(self.data[key], where), where)

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(key, str, default).lower()
        if value not in choices:
            raise ConfigError(f"{self.where(key)}: expected one of {', '.join(choices)}, got {value!r}")
        return value

    def priority(self, key: str = "priority", default: int = 5) -> int:
        """A Bots job priority: 1 (highest) to 9."""
        value = self.get(key, int, default)
        if not 1 <= value <= 9:
            raise ConfigError(f"{self.where(key)}: expected 1 (highest) to 9, got {value}")
        return value

    def argv(self, key: str) -> list[str]:
        """A command line split the way a shell would (no shell runs it); [] when empty."""
        line = self.get(key, str, "")
        try:
            return shlex.split(line)
        except ValueError as exc:
            raise ConfigError(f"{self.where(key)}: cannot split command line: {exc}") from None

    def keys(self) -> list[str]:
        return list(self.data)


# --------------------------------------------------------------------------- config parts

@dataclass(frozen=True)
class Settings:
    maxruntime: int = 60                  # minutes
    maxdays: int = 30
    maxfilesizeincoming: int = 5_000_000
    sendreportiferror: bool = False
    sendreportifprocesserror: bool = True
    whencleanup: str = "daily"
    maxsecondsperchannel: float | None = None
    lock_heartbeat: float = 10.0          # seconds between lock heartbeats
    lock_grace: float = 120.0             # heartbeat silence after which a lock's holder counts as gone


@dataclass(frozen=True)
class Directories:
    botssys: Path
    usersys: Path

    @property
    def logging(self) -> Path:
        return self.botssys / "logging"

    @property
    def archive(self) -> Path:
        return self.botssys / "data"


@dataclass(frozen=True)
class Email:
    host: str = "localhost"
    port: int = 25
    use_tls: bool = False
    ssl: bool = False
    user: str = ""
    password: str = ""
    sender: str = "bots@localhost"
    managers: tuple[str, ...] = ()
    subject_prefix: str = "[botsq]"
    timeout: float = 10.0


@dataclass(frozen=True)
class JobQueue:
    enabled: bool = False
    broker: str = "amqp://guest:guest@127.0.0.1:5672//"
    commands: dict[str, tuple[str, ...]] = field(default_factory=dict)
    hardtimelimit: int = 0                # minutes; 0 = never kill a running engine job
    max_retries: int = 3                  # redeliveries of a job whose worker died
    connect_timeout: float = 4.0          # seconds to reach the broker before giving up


@dataclass(frozen=True)
class DirMonitor:
    name: str
    path: Path
    filemask: str = "*"
    route: str = ""
    recursive: bool = False
    priority: int = 5
    debounce: float = 0.5
    polling: bool = False
    rescan: float = 60.0                  # seconds between safety rescans


@dataclass(frozen=True)
class ChannelSpec:
    name: str
    type: str
    options: dict[str, Any]

    def get(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)


@dataclass(frozen=True)
class RoutePart:
    fromchannel: str
    tochannel: str | None
    translate: str = "passthrough"


@dataclass(frozen=True)
class Route:
    name: str
    active: bool
    notindefaultrun: bool
    parts: tuple[RoutePart, ...]


@dataclass(frozen=True)
class Config:
    configdir: Path
    envdir: Path
    settings: Settings
    directories: Directories
    database_url: str
    email: Email
    jobqueue: JobQueue
    dirmonitors: tuple[DirMonitor, ...]
    channels: dict[str, ChannelSpec]
    routes: dict[str, Route]
    ini: dict[str, IniSection]            # every bots.ini section, for parts parsed elsewhere

    @property
    def ini_path(self) -> Path:
        return self.configdir / "bots.ini"

    def section(self, name: str) -> IniSection:
        return self.ini.get(name) or IniSection(self.ini_path, name, {})

    def resolve(self, p: str | Path) -> Path:
        """A path from the config: relative ones are relative to the environment folder."""
        path = Path(p).expanduser()
        return path if path.is_absolute() else (self.envdir / path)

    def secrets(self) -> list[str]:
        """Secret values in this config, for log redaction."""
        out = [self.email.password]
        out += [str(c.options.get("password", "")) for c in self.channels.values()]
        out.append(_url_password(self.jobqueue.broker))
        out.append(_url_password(self.database_url))
        return [s for s in out if s]


def _url_password(url: str) -> str:
    m = re.match(r"^[a-z0-9+]+://[^:/@]*:([^@]*)@", url or "")
    return m.group(1) if m else ""


def mask_url(url: str) -> str:
    """A URL with its password replaced by ***, safe for messages and logs."""
    return re.sub(r"^([a-z0-9+]+://[^:/@]*):[^@]*@", r"\1:***@", url or "")


# --------------------------------------------------------------------------- channel schema

_COMMON_REMOTE = {
    "host": str, "port": int, "user": str, "password": str, "path": str, "filemask": str,
    "remove": bool, "filename": str, "timeout": float, "maxsecondsperchannel": float,
}
_REMOTE_IN = {"settle": float, "encoding": str}     # engine/readiness.py; file names where the protocol has none
CHANNEL_KEYS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "file": {"path": str, "filemask": str, "remove": bool, "filename": str, "maxsecondsperchannel": float,
             "settle": float},
    "ftp": {**_COMMON_REMOTE, **_REMOTE_IN, "passive": bool},
    "ftps": {**_COMMON_REMOTE, **_REMOTE_IN, "passive": bool, "cafile": str, "verify": bool},
    "sftp": {**_COMMON_REMOTE, **_REMOTE_IN, "known_hosts": str, "key_file": str, "insecure_no_host_key_check": bool},
    "smtp": {**_COMMON_REMOTE, "to": (str, list), "sender": str, "starttls": bool, "ssl": bool,
             "cafile": str, "verify": bool},
}


def _known_encoding(name: str) -> bool:
    try:
        return getattr(codecs.lookup(name), "_is_text_encoding", True)   # not rot13 and the like
    except LookupError:
        return False


# values a key's type alone does not rule out: key -> (test, what is expected)
CHANNEL_VALUES: dict[str, tuple[Any, str]] = {
    "settle": (lambda v: v >= 0, "seconds, 0 or more (0 turns the check off)"),
    "timeout": (lambda v: v > 0, "seconds, more than 0"),
    "encoding": (_known_encoding, "an encoding Python knows, such as \"utf-8\" or \"cp1252\""),
}
REQUIRED_KEYS = {"file": ("path",), "ftp": ("host",), "ftps": ("host",), "sftp": ("host",), "smtp": ("host", "to")}
ROUTE_KEYS = {"active": bool, "notindefaultrun": bool, "parts": list, "description": str}
PART_KEYS = {"fromchannel": str, "tochannel": str, "translate": str}
_TYPE_NAMES = {str: "a string", int: "a whole number", float: "a number", bool: "true or false", list: "a list"}


def _check_type(value: Any, typ: type | tuple[type, ...], where: str) -> Any:
    types = typ if isinstance(typ, tuple) else (typ,)
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and bool not in types:
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        want = " or ".join(_TYPE_NAMES[t] for t in types)
        raise ConfigError(f"{where}: expected {want}, got {value!r}")
    if isinstance(value, str):
        return expand_env(value, where)
    if isinstance(value, list):
        return [expand_env(v, where) if isinstance(v, str) else v for v in value]
    return value


def _load_routes(path: Path) -> tuple[dict[str, ChannelSpec], dict[str, Route]]:
    if not path.exists():
        return {}, {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: syntax error: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    for key in data:
        if key not in ("channels", "routes"):
            raise ConfigError(f"{path}: unknown key {key!r} (expected [channels.NAME] or [routes.NAME])")
    channels: dict[str, ChannelSpec] = {}
    for name, body in (data.get("channels") or {}).items():
        where = f"{path}: channels.{name}"
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: expected a table")
        ctype = body.get("type")
        if ctype not in CHANNEL_KEYS:
            raise ConfigError(f"{where}.type: unknown channel type {ctype!r} (expected one of {', '.join(CHANNEL_KEYS)})")
        schema = CHANNEL_KEYS[ctype]
        opts: dict[str, Any] = {}
        for key, value in body.items():
            if key == "type":
                continue
            if key not in schema:
                raise ConfigError(f"{where}.{key}: unknown key for a {ctype} channel")
            opts[key] = _check_type(value, schema[key], f"{where}.{key}")
            test, expected = CHANNEL_VALUES.get(key, (None, ""))
            if test is not None and not test(opts[key]):
                raise ConfigError(f"{where}.{key}: expected {expected}, got {value!r}")
        for key in REQUIRED_KEYS[ctype]:
            if key not in opts:
                raise ConfigError(f"{where}.{key}: required for a {ctype} channel")
        channels[name] = ChannelSpec(name, ctype, opts)
    routes: dict[str, Route] = {}
    for name, body in (data.get("routes") or {}).items():
        where = f"{path}: routes.{name}"
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: expected a table")
        for key, value in body.items():
            if key not in ROUTE_KEYS:
                raise ConfigError(f"{where}.{key}: unknown key for a route")
            _check_type(value, ROUTE_KEYS[key], f"{where}.{key}")
        parts = []
        raw_parts = body.get("parts") or []
        if not raw_parts:
            raise ConfigError(f"{where}.parts: a route needs at least one part")
        for i, part in enumerate(raw_parts, 1):
            pw = f"{where}.parts[{i}]"
            if not isinstance(part, dict):
                raise ConfigError(f"{pw}: expected a table")
            for key, value in part.items():
                if key not in PART_KEYS:
                    raise ConfigError(f"{pw}.{key}: unknown key for a route part")
                _check_type(value, PART_KEYS[key], f"{pw}.{key}")
            frm = part.get("fromchannel")
            if not frm:
                raise ConfigError(f"{pw}.fromchannel: required")
            for key in ("fromchannel", "tochannel"):
                ch = part.get(key)
                if ch is not None and ch not in channels:
                    raise ConfigError(f"{pw}.{key}: no channel named {ch!r} in [channels]")
            if channels[frm].type == "smtp":
                raise ConfigError(f"{pw}.fromchannel: an smtp channel can only send")
            translate = part.get("translate", "passthrough")
            if translate not in ("passthrough", "none") and not re.fullmatch(r"[A-Za-z_][\w.]*\.[A-Za-z_]\w*", translate):
                raise ConfigError(f"{pw}.translate: expected \"passthrough\", \"none\" or \"module.function\", got {translate!r}")
            parts.append(RoutePart(frm, part.get("tochannel"), translate))
        routes[name] = Route(name, bool(body.get("active", True)), bool(body.get("notindefaultrun", False)), tuple(parts))
    return channels, routes


def _read_ini(path: Path) -> dict[str, IniSection]:
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"), strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    if path.exists():
        try:
            parser.read_string(path.read_text(encoding="utf-8"), source=str(path))
        except configparser.Error as exc:
            first = str(exc).splitlines()[0]
            raise ConfigError(f"{path}: syntax error: {first}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read: {exc}") from None
    return {name: IniSection(path, name, dict(parser[name])) for name in parser.sections()}


def resolve_configdir(configdir: str | Path | None = None) -> Path:
    """The config dir from an argument, else BOTSQ_CONFIG, else ./config."""
    raw = configdir or os.environ.get(ENV_CONFIG) or DEFAULT_CONFIGDIR
    return Path(raw).expanduser().absolute()


def load_config(configdir: str | Path | None = None) -> Config:
    """Read and validate an environment; raise ConfigError with one line on any problem."""
    cdir = resolve_configdir(configdir)
    if not cdir.is_dir():
        raise ConfigError(f"{cdir}: config dir does not exist (use -c DIR or set {ENV_CONFIG})")
    envdir = cdir.parent
    ini_path = cdir / "bots.ini"
    ini = _read_ini(ini_path)

    def sec(name: str) -> IniSection:
        return ini.get(name) or IniSection(ini_path, name, {})

    def resolve(p: str) -> Path:
        path = Path(p).expanduser()
        return path if path.is_absolute() else envdir / path

    s = sec("settings")
    d = Settings()
    msc = s.get("maxsecondsperchannel", float, None)
    settings = Settings(
        maxruntime=s.get("maxruntime", int, d.maxruntime),
        maxdays=s.get("maxdays", int, d.maxdays),
        maxfilesizeincoming=s.get("maxfilesizeincoming", int, d.maxfilesizeincoming),
        sendreportiferror=s.get("sendreportiferror", bool, d.sendreportiferror),
        sendreportifprocesserror=s.get("sendreportifprocesserror", bool, d.sendreportifprocesserror),
        whencleanup=s.choice("whencleanup", ("daily", "never"), d.whencleanup),
        maxsecondsperchannel=msc if msc and msc > 0 else None,
        lock_heartbeat=s.get("lock_heartbeat", float, d.lock_heartbeat),
        lock_grace=s.get("lock_grace", float, d.lock_grace),
    )
    for key in ("maxruntime", "maxdays", "maxfilesizeincoming"):
        if getattr(settings, key) <= 0:
            raise ConfigError(f"{s.where(key)}: must be greater than 0")

    ds = sec("directories")
    directories = Directories(
        botssys=resolve(ds.get("botssys", str, "botssys")),
        usersys=resolve(ds.get("usersys", str, "usersys")),
    )

    default_db = f"sqlite:///{directories.botssys / 'sqlitedb' / 'botsdb.sqlite'}"
    url = sec("database").get("url", str, "") or default_db
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and url != "sqlite:///:memory:":
        url = "sqlite:///" + str(resolve(url[len("sqlite:///"):]))

    es = sec("email")
    e = Email()
    email = Email(
        host=es.get("host", str, e.host), port=es.get("port", int, e.port),
        use_tls=es.get("use_tls", bool, e.use_tls), ssl=es.get("ssl", bool, e.ssl),
        user=es.get("user", str, e.user), password=es.get("password", str, e.password),
        sender=es.get("sender", str, e.sender), managers=tuple(es.get("managers", list, [])),
        subject_prefix=es.get("subject_prefix", str, e.subject_prefix), timeout=es.get("timeout", float, e.timeout),
    )

    js = sec("jobqueue")
    j = JobQueue()
    commands: dict[str, tuple[str, ...]] = {}
    cs = sec("jobqueue.commands")
    for name in cs.keys():
        argv = cs.argv(name)
        if not argv:
            raise ConfigError(f"{cs.where(name)}: empty command line")
        commands[name] = tuple(argv)
    jobqueue = JobQueue(
        enabled=js.get("enabled", bool, j.enabled),
        broker=os.environ.get(ENV_BROKER) or js.get("broker", str, j.broker),
        commands=commands,
        hardtimelimit=js.get("hardtimelimit", int, j.hardtimelimit),
        max_retries=js.get("max_retries", int, j.max_retries),
        connect_timeout=js.get("connect_timeout", float, j.connect_timeout),
    )

    monitors = []
    for name in sorted(n for n in ini if re.fullmatch(r"dirmonitor\d*", n)):
        ms = ini[name]
        path = ms.get("path", str, "")
        if not path:
            raise ConfigError(f"{ms.where('path')}: required")
        priority = ms.priority()
        monitors.append(DirMonitor(
            name=name, path=resolve(path), filemask=ms.get("filemask", str, "*") or "*",
            route=ms.get("route", str, ""), recursive=ms.get("recursive", bool, False), priority=priority,
            debounce=ms.get("debounce", float, 0.5), polling=ms.get("polling", bool, False),
            rescan=ms.get("rescan", float, 60.0),
        ))

    channels, routes = _load_routes(cdir / "routes.toml")
    for mon in monitors:
        if mon.route and mon.route not in routes:
            raise ConfigError(f"{ini_path}: [{mon.name}] route: no route named {mon.route!r} in routes.toml")

    return Config(
        configdir=cdir, envdir=envdir, settings=settings, directories=directories, database_url=url,
        email=email, jobqueue=jobqueue, dirmonitors=tuple(monitors), channels=channels, routes=routes, ini=ini,
    )


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """``-c DIR``, ``--configdir DIR`` and Bots' ``-CDIR`` all select the config dir."""
    parser.add_argument("-c", "-C", "--configdir", dest="configdir", metavar="DIR", default=None,
                        help=f"config dir (default: ${ENV_CONFIG} or ./config)")
