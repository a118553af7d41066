"""An environment's configuration: the one place where bots.ini and routes.toml are read.

An environment is a folder holding ``config/`` (bots.ini, routes.toml) plus ``botssys/``
and ``usersys/``. Relative paths resolve against the config dir's parent. Every error is
a :class:`ConfigError` whose message is one line naming the file and the key.

* :mod:`engine.config.ini` - bots.ini sections, typed values, ``${VAR}``;
* :mod:`engine.config.sections` - the sections read at load time (settings, directories,
  database, email, jobqueue, dirmonitorN) as frozen dataclasses;
* :mod:`engine.config.routes` - routes.toml (channels and routes);
* :mod:`engine.config.lanes` - lane names, and the lanes of a config (:meth:`Config.lane_of`,
  :attr:`Config.lanes`);
* :mod:`engine.config.schedule`, :mod:`engine.config.flower` and :mod:`engine.config.webserver` -
  ``[schedule.*]``, ``[flower]`` and ``[webserver]``, read on demand by the commands that use
  them, so a mistake there never stops the engine.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.config.engine import EngineKind, EngineSettings, read_engine
from engine.config.ini import IniSection, read_ini
from engine.config.lanes import DEFAULT_LANE, config_lanes
from engine.config.sections import (ENV_BROKER, DirMonitor, Directories, Email, JobQueue, Settings, read_database_url,
                                    read_directories, read_dirmonitors, read_email, read_jobqueue, read_settings)
from engine.errors import ConfigError
from engine.log import url_password

if TYPE_CHECKING:
    from engine.config.routes import ChannelSpec, Route


def __getattr__(name: str) -> Any:
    # routes.toml's reader (tomllib, the channel-type table) is imported when a config has routes: a
    # Bots installation's config ([engine] kind = bots) has none, and bots-engine then starts faster
    if name in ("ChannelSpec", "Route", "RoutePart", "load_routes"):
        from engine.config import routes
        return getattr(routes, name)
    raise AttributeError(f"module 'engine.config' has no attribute {name!r}")

DEFAULT_CONFIGDIR = "config"
ENV_CONFIG = "BOTSQ_CONFIG"


@dataclass(frozen=True)
class Config:
    configdir: Path                       # absolute
    envdir: Path                          # the environment folder: configdir's parent
    settings: Settings
    directories: Directories
    database_url: str                     # a SQLAlchemy URL
    email: Email
    jobqueue: JobQueue
    engine: EngineSettings                # [engine]: the built-in engine, or a Bots installation's
    dirmonitors: tuple[DirMonitor, ...]
    channels: Mapping[str, ChannelSpec]
    routes: Mapping[str, Route]           # in routes.toml order; none with [engine] kind = bots (Bots has them)
    ini: Mapping[str, IniSection]         # every bots.ini section, for the on-demand readers of this package

    @property
    def ini_path(self) -> Path:
        return self.configdir / "bots.ini"

    def section(self, name: str) -> IniSection:
        """A bots.ini section (empty when absent); for this package's readers."""
        return self.ini.get(name) or IniSection(self.ini_path, name, {})

    def resolve(self, p: str | Path) -> Path:
        """A path from the config: relative ones are relative to the environment folder."""
        path = Path(os.path.expanduser(p))
        return path if path.is_absolute() else (self.envdir / path)

    def lane_of(self, route: str) -> str:
        """The lane of route ``route`` (routes.toml ``lane``; ``default`` when it has none or is unknown)."""
        known = self.routes.get(route)
        return known.lane if known is not None else DEFAULT_LANE

    def command_lane(self, name: str) -> str:
        """The lane of a ``[jobqueue.commands]`` job (``[jobqueue.commands.lanes]``; else ``default``)."""
        return self.jobqueue.command_lanes.get(name, DEFAULT_LANE)

    @property
    def lanes(self) -> tuple[str, ...]:
        """Every lane of this config: ``default`` first, then those routes and commands name."""
        return config_lanes((r.lane for r in self.routes.values()), self.jobqueue.command_lanes)

    def secrets(self) -> list[str]:
        """Secret values in this config, for log redaction."""
        out = [self.email.password]
        out += [str(c.options.get("password", "")) for c in self.channels.values()]
        out.append(url_password(self.jobqueue.broker))
        out.append(url_password(self.database_url))
        return [s for s in out if s]


def resolve_configdir(configdir: str | Path | None = None) -> Path:
    """The config dir from an argument, else BOTSQ_CONFIG, else ./config (absolute)."""
    raw = configdir or os.environ.get(ENV_CONFIG) or DEFAULT_CONFIGDIR
    return Path(os.path.expanduser(raw)).absolute()


def load_config(configdir: str | Path | None = None) -> Config:
    """Read and validate an environment; raise ConfigError with one line on any problem."""
    cdir = resolve_configdir(configdir)
    if not cdir.is_dir():
        raise ConfigError(f"{cdir}: config dir does not exist (use -c DIR or set {ENV_CONFIG})")
    envdir = cdir.parent
    ini_path = cdir / "bots.ini"
    if not ini_path.is_file():      # a folder without bots.ini is not an environment: never run on defaults
        raise ConfigError(f"{ini_path}: no bots.ini, so {cdir} is not a config dir (botsq init DIR makes an environment)")
    ini = read_ini(ini_path)

    def sec(name: str) -> IniSection:
        return ini.get(name) or IniSection(ini_path, name, {})

    def resolve(p: str) -> Path:
        path = Path(os.path.expanduser(p))
        return path if path.is_absolute() else envdir / path

    settings = read_settings(sec("settings"))
    directories = read_directories(sec("directories"), resolve)
    engine = read_engine(sec("engine"), resolve)
    # a Bots site's botssys holds Bots' own SQLite database: botsq keeps its records in a file of its own
    url = read_database_url(sec("database"), directories, resolve,
                            "botsq.sqlite" if engine.is_bots else "botsdb.sqlite")
    email = read_email(sec("email"))
    jobqueue = read_jobqueue(sec("jobqueue"), sec("jobqueue.commands"), sec("jobqueue.transport_options"), settings,
                             sec("jobqueue.commands.lanes"), resolve)
    monitors = read_dirmonitors(ini, resolve)
    if engine.is_bots:              # routes, channels and their checks are Bots' own (its database)
        channels, routes = {}, {}
    else:
        from engine.config.routes import load_routes
        channels, routes = load_routes(cdir / "routes.toml")
    for mon in monitors:
        if mon.route and mon.route not in routes and not engine.is_bots:
            raise ConfigError(f"{ini_path}: [{mon.name}] route: no route named {mon.route!r} in routes.toml")
    return Config(
        configdir=cdir, envdir=envdir, settings=settings, directories=directories, database_url=url,
        email=email, jobqueue=jobqueue, engine=engine, dirmonitors=monitors, channels=channels, routes=routes, ini=ini,
    )


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """``-c DIR``, ``--configdir DIR`` and Bots' ``-CDIR`` all select the config dir."""
    parser.add_argument("-c", "-C", "--configdir", dest="configdir", metavar="DIR", default=None,
                        help=f"config dir (default: ${ENV_CONFIG} or ./config)")


__all__ = ["Config", "EngineKind", "EngineSettings", "ConfigError", "DEFAULT_LANE", "load_config", "resolve_configdir", "add_config_argument",
           "ENV_CONFIG", "ENV_BROKER", "DEFAULT_CONFIGDIR", "Settings", "Directories", "Email", "JobQueue", "DirMonitor",
           "ChannelSpec", "Route", "RoutePart", "IniSection"]
