"""The bots.ini sections botsq reads at load time, each a frozen typed dataclass with its reader.

Section names are Bots' (``[settings]``, ``[directories]``, ``[database]``, ``[email]``,
``[jobqueue]``, ``[dirmonitorN]``); extra keys are allowed. Defaults are the dataclass
defaults; every reader raises :class:`~engine.errors.ConfigError` naming file, section and key.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config.ini import IniSection, guess_type
from engine.config.lanes import check_lane_name
from engine.errors import ConfigError

ENV_BROKER = "BOTSQ_BROKER_URL"
# the broker URL schemes botsq supports, and the broker kind of each (tasks.priority.BrokerKind's values);
# memory:// is kombu's in-process transport, for unit tests
BROKER_SCHEMES: Mapping[str, str] = {
    "amqp": "rabbitmq", "amqps": "rabbitmq", "pyamqp": "rabbitmq", "librabbitmq": "rabbitmq",
    "redis": "redis", "rediss": "redis", "sentinel": "redis", "redis+socket": "redis", "memory": "memory",
}
Resolve = Callable[[str], Path]          # a config path -> an absolute path (relative: the environment folder)


def positive(sec: IniSection, key: str, typ: type, default: Any, unit: str) -> Any:
    """``key`` as ``typ``, ConfigError (one line) unless it is more than 0 (NaN is not)."""
    value = sec.get(key, typ, default)
    if not value > 0:
        raise ConfigError(f"{sec.where(key)}: must be more than 0 {unit}, got {value}")
    return value


def not_negative(sec: IniSection, key: str, typ: type, default: Any, unit: str) -> Any:
    """``key`` as ``typ``, ConfigError (one line) unless it is 0 or more (NaN is not)."""
    value = sec.get(key, typ, default)
    if not value >= 0:
        raise ConfigError(f"{sec.where(key)}: must be 0 or more {unit}, got {value}")
    return value


@dataclass(frozen=True)
class Settings:
    """``[settings]``: the engine's limits and report choices."""
    maxruntime: int = 60                  # minutes a run may hold the lock before an alert
    maxdays: int = 30                     # days records and archived files are kept
    maxfilesizeincoming: int = 5_000_000  # bytes; larger: a file error
    sendreportiferror: bool = False
    sendreportifprocesserror: bool = True
    whencleanup: str = "daily"            # daily | never
    maxsecondsperchannel: float | None = None
    lock_heartbeat: float = 10.0          # seconds between lease heartbeats
    lock_grace: float = 120.0             # heartbeat silence (seconds) after which a holder counts as gone


def read_settings(s: IniSection) -> Settings:
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
        # 0 would spin the heartbeat thread / count every lease holder as gone (two engines at once)
        lock_heartbeat=positive(s, "lock_heartbeat", float, d.lock_heartbeat, "seconds"),
        lock_grace=positive(s, "lock_grace", float, d.lock_grace, "seconds"),
    )
    for key in ("maxruntime", "maxdays", "maxfilesizeincoming"):
        if getattr(settings, key) <= 0:
            raise ConfigError(f"{s.where(key)}: must be greater than 0")
    return settings


@dataclass(frozen=True)
class Directories:
    """``[directories]``: botssys (archive, logs, SQLite database) and usersys (mappings)."""
    botssys: Path
    usersys: Path

    @property
    def logging(self) -> Path:
        return self.botssys / "logging"

    @property
    def archive(self) -> Path:
        return self.botssys / "data"


def read_directories(s: IniSection, resolve: Resolve) -> Directories:
    return Directories(botssys=resolve(s.get("botssys", str, "botssys")),
                       usersys=resolve(s.get("usersys", str, "usersys")))


def read_database_url(s: IniSection, directories: Directories, resolve: Resolve,
                      default_file: str = "botsdb.sqlite") -> str:
    """``[database] url``: any SQLAlchemy URL; default SQLite ``default_file`` under botssys/sqlitedb; a
    relative SQLite path resolves against the environment folder."""
    default = f"sqlite:///{directories.botssys / 'sqlitedb' / default_file}"
    url = s.get("url", str, "") or default
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and url != "sqlite:///:memory:":
        url = "sqlite:///" + str(resolve(url[len("sqlite:///"):]))
    return url


@dataclass(frozen=True)
class Email:
    """``[email]``: where reports go (real SMTP)."""
    host: str = "localhost"
    port: int = 25
    use_tls: bool = False
    ssl: bool = False
    user: str = ""
    password: str = ""
    sender: str = "bots@localhost"
    managers: tuple[str, ...] = ()
    subject_prefix: str = "[botsq]"
    timeout: float = 10.0                 # seconds


def read_email(es: IniSection) -> Email:
    e = Email()
    return Email(
        host=es.get("host", str, e.host), port=es.get("port", int, e.port),
        use_tls=es.get("use_tls", bool, e.use_tls), ssl=es.get("ssl", bool, e.ssl),
        user=es.get("user", str, e.user), password=es.get("password", str, e.password),
        sender=es.get("sender", str, e.sender), managers=tuple(es.get("managers", list, [])),
        subject_prefix=es.get("subject_prefix", str, e.subject_prefix), timeout=es.get("timeout", float, e.timeout),
    )


DEFAULT_STALE_AFTER = 30.0


@dataclass(frozen=True)
class JobQueue:
    """``[jobqueue]``, ``[jobqueue.commands]``, ``[jobqueue.commands.lanes]`` and ``[jobqueue.transport_options]``."""
    enabled: bool = False
    broker: str = "amqp://guest:guest@127.0.0.1:5672//"   # BOTSQ_BROKER_URL overrides it
    commands: Mapping[str, tuple[str, ...]] = field(default_factory=dict)   # name -> argv (no shell)
    configdirs: tuple[Path, ...] = ()     # other config dirs whose engine jobs this worker runs (Bots' -C)
    command_lanes: Mapping[str, str] = field(default_factory=dict)   # name -> lane; absent: lane default
    hardtimelimit: float = 0              # minutes; 0 = never kill a running engine job
    max_retries: int = 3                  # redeliveries of a job whose worker died
    connect_timeout: float = 4.0          # seconds to reach the broker before giving up
    stale_after: float = DEFAULT_STALE_AFTER   # seconds before a registry entry may be judged stale
    visibility_timeout: float = 3600.0    # Redis: seconds before an unacknowledged job is handed out again
    transport_options: Mapping[str, Any] = field(default_factory=dict)     # extra kombu options, verbatim


def check_broker(url: str, where: str) -> str:
    """``url`` when it is a broker URL botsq supports (a scheme of :data:`BROKER_SCHEMES` and
    ``://``), else ConfigError naming ``where`` (``<bots.ini>: [jobqueue] broker`` or the variable)."""
    scheme, sep, _rest = url.partition("://")
    if not sep or scheme.lower() not in BROKER_SCHEMES:
        shown = url if "@" not in url else scheme + "://..."       # never a password in the line
        raise ConfigError(f"{where}: not a supported broker URL: {shown!r} "
                          f"(use amqp://user:password@host:5672/vhost for RabbitMQ or redis://host:6379/db)")
    return url


def read_broker(js: IniSection) -> str:
    """The broker URL: ``BOTSQ_BROKER_URL`` when set and not empty, else ``[jobqueue] broker``
    (present but empty: an error), else RabbitMQ on localhost; checked with :func:`check_broker`."""
    if os.environ.get(ENV_BROKER):
        return check_broker(os.environ[ENV_BROKER], f"environment variable {ENV_BROKER}")
    return check_broker(js.get("broker", str, JobQueue.broker).strip(), js.where("broker"))


def read_jobqueue(js: IniSection, cs: IniSection, ts: IniSection, settings: Settings,
                  ls: IniSection | None = None, resolve: Resolve | None = None) -> JobQueue:
    """``js``: [jobqueue], ``cs``: [jobqueue.commands], ``ts``: [jobqueue.transport_options],
    ``ls``: [jobqueue.commands.lanes] (a name there that is not in [jobqueue.commands] is an error);
    ``resolve`` makes the paths of ``[jobqueue] configdirs`` absolute (without it they must be)."""
    j = JobQueue()
    configdirs = []
    for raw in js.get("configdirs", list, []):
        path = resolve(raw) if resolve is not None else Path(os.path.expanduser(raw))
        if not path.is_absolute():
            raise ConfigError(f"{js.where('configdirs')}: {raw!r} is not an absolute path")
        configdirs.append(Path(os.path.normpath(path)))
    commands: dict[str, tuple[str, ...]] = {}
    for name in cs.keys():
        argv = cs.argv(name)
        if not argv:
            raise ConfigError(f"{cs.where(name)}: empty command line")
        commands[name] = tuple(argv)
    command_lanes: dict[str, str] = {}
    for name in (ls.keys() if ls is not None else ()):
        assert ls is not None
        if name not in commands:
            listed = ", ".join(commands) or "none"
            raise ConfigError(f"{ls.where(name)}: no command named {name!r} in [jobqueue.commands] (listed: {listed})")
        command_lanes[name] = check_lane_name(ls.get(name, str, ""), ls.where(name))
    hardtimelimit = js.get("hardtimelimit", float, j.hardtimelimit)
    if hardtimelimit < 0:
        raise ConfigError(f"{js.where('hardtimelimit')}: must be 0 (no limit) or more minutes")
    # above any run's length: a message must not be handed out again while its run goes on
    longest = max(settings.maxruntime, hardtimelimit) * 60
    # 0 s to reach the broker fails every connection ("cannot be reached within 0 s"), 0 s of
    # visibility hands every job out again at once: both must be more than 0
    connect_timeout = positive(js, "connect_timeout", float, j.connect_timeout, "seconds")
    visibility_timeout = positive(js, "visibility_timeout", float, float(max(3600, 2 * longest)), "seconds")
    return JobQueue(
        enabled=js.get("enabled", bool, j.enabled),
        broker=read_broker(js),
        commands=commands,
        configdirs=tuple(configdirs),
        command_lanes=command_lanes,
        hardtimelimit=hardtimelimit,
        max_retries=not_negative(js, "max_retries", int, j.max_retries, "redeliveries"),
        connect_timeout=connect_timeout,
        stale_after=not_negative(js, "stale_after", float, j.stale_after, "seconds"),
        visibility_timeout=visibility_timeout,
        transport_options={key: guess_type(ts.get(key, str, "")) for key in ts.keys()},
    )


@dataclass(frozen=True)
class DirMonitor:
    """One ``[dirmonitorN]`` section (any suffix, as in Bots): a watched folder and the engine job it
    queues."""
    name: str
    path: Path
    filemask: str = "*"
    route: str = ""                       # "" = the default run
    recursive: bool = False
    priority: int = 5                     # Bots priority 1 (highest) .. 9
    debounce: float = 0.5                 # seconds ready files coalesce into one job
    polling: bool = False                 # no inotify (network shares): settle on size and mtime
    rescan: float = 60.0                  # seconds between safety rescans
    # Bots' bare [dirmonitor] process_existing (default True): files already in the folder when the
    # monitor starts queue a job; False leaves them for the job the next arriving file queues
    process_existing: bool = True


# A watched folder is "dirmonitor" plus a non-empty suffix, as Bots reads it (bots/dirmonitor.py:
# ``section.startswith('dirmonitor') and section[len('dirmonitor'):]``); a bare [dirmonitor] holds
# Bots' monitor settings: process_existing is honoured for every folder, the rest (log_level, ...) is
# left to Bots.
_MONITOR = re.compile(r"dirmonitor.+")


def read_dirmonitors(ini: Mapping[str, IniSection], resolve: Resolve) -> tuple[DirMonitor, ...]:
    monitors = []
    general = ini.get("dirmonitor")
    existing = general.get("process_existing", bool, True) if general is not None else True
    for name in sorted(n for n in ini if _MONITOR.fullmatch(n)):
        ms = ini[name]
        path = ms.get("path", str, "")
        if not path:
            raise ConfigError(f"{ms.where('path')}: required")
        mon = DirMonitor(
            name=name, path=resolve(path), filemask=ms.get("filemask", str, "*") or "*",
            route=ms.get("route", str, ""), recursive=ms.get("recursive", bool, False), priority=ms.priority(),
            debounce=not_negative(ms, "debounce", float, 0.5, "seconds"), polling=ms.get("polling", bool, False),
            rescan=ms.get("rescan", float, 60.0), process_existing=existing,
        )
        monitors.append(mon)
    return tuple(monitors)
