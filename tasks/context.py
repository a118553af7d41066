"""What the queue's modules need to know about the app they run in, without importing it.

The app carries its config dir (setting ``botsq_configdir``) and broker URL; from those come the
config of a config dir (read again whenever bots.ini or routes.toml changed), the broker's kind,
and the jobqueue logger (``botssys/logging/jobqueue.log``). :mod:`tasks.celeryapp` builds apps;
everything else reaches them through here, so nothing imports celeryapp but the modules that
make or use an app for publishing.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from engine.config import Config, load_config
from engine.log import get_logger, register_secrets
from tasks.priority import BrokerKind, broker_kind

_fallback = logging.getLogger("botsq.jobqueue")
_cfg_cache: dict[str, tuple[tuple[float, ...], Config]] = {}


def _mtimes(configdir: str) -> tuple[float, ...]:
    out = []
    for name in ("bots.ini", "routes.toml"):
        try:
            out.append(os.stat(os.path.join(configdir, name)).st_mtime)
        except OSError:
            out.append(-1.0)
    return tuple(out)


def config_for(configdir: str) -> Config:
    """The config of a config dir, read again whenever bots.ini or routes.toml changed; ConfigError."""
    stamp = _mtimes(configdir)
    hit = _cfg_cache.get(configdir)
    if hit and hit[0] == stamp:
        return hit[1]
    cfg = load_config(configdir)
    _cfg_cache[configdir] = (stamp, cfg)
    return cfg


def configdir_of(app: Any) -> str:
    """The config dir an app was made for ("" for an app botsq did not make)."""
    return str(app.conf.get("botsq_configdir") or "")


def worker_config(app: Any) -> Config:
    """The config of the app's own config dir (the worker's); ConfigError."""
    return config_for(configdir_of(app))


def broker_kind_of(app: Any) -> BrokerKind:
    """The kind of the app's broker; ValueError for a broker botsq does not support."""
    return broker_kind(app.conf.broker_url or "")


def queue_logger(cfg: Config, console: bool = True) -> logging.Logger:
    """``botssys/logging/jobqueue.log`` (and stderr when ``console``), secrets redacted."""
    register_secrets(cfg.secrets())
    return get_logger("jobqueue", cfg.directories.logging, console=console)


def worker_log(app: Any) -> logging.Logger:
    """The jobqueue logger of the app's environment; the bare ``botsq.jobqueue`` logger when its
    config cannot be read (a log line must never fail)."""
    try:
        return queue_logger(worker_config(app))
    except Exception:  # noqa: BLE001
        return _fallback
