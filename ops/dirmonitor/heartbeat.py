"""The directory monitor's heartbeat: ``botssys/dirmonitor.heartbeat``, a JSON file it rewrites
every HEARTBEAT_EVERY seconds (pid, host, time, state, monitors, pending jobs) for ``botsq status``.

Whether the monitor that wrote it is alive is the lease rule (:mod:`engine.lease`): its process
must exist (and not be a zombie) when it runs on this host, and the heartbeat must be at most
HEARTBEAT_LIMIT seconds old - ``botsq status`` reports the age against that limit.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from engine.config import Config
from engine.lease import process_gone

HEARTBEAT_NAME = "dirmonitor.heartbeat"
HEARTBEAT_EVERY = 2.0       # seconds between heartbeats
HEARTBEAT_LIMIT = 30.0      # seconds of silence after which `botsq status` calls the monitor dead


def heartbeat_path(cfg: Config) -> Path:
    return cfg.directories.botssys / HEARTBEAT_NAME


def write_heartbeat(path: Path, data: dict[str, Any], log: logging.Logger) -> None:
    """Replace the heartbeat file atomically; a failure is a warning, never an error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot write heartbeat %s: %s", path, exc)


def read_heartbeat(cfg: Config) -> dict[str, Any] | None:
    """The monitor's last heartbeat, or None."""
    try:
        return json.loads(heartbeat_path(cfg).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def heartbeat_age(cfg: Config) -> tuple[float | None, float]:
    """(seconds since the running monitor's last heartbeat, or None when it is not running; the limit)."""
    hb = read_heartbeat(cfg)
    if not hb or hb.get("state") != "running":
        return None, HEARTBEAT_LIMIT
    try:
        host, pid = str(hb["host"]), int(hb["pid"])
    except (KeyError, ValueError, TypeError):
        return None, HEARTBEAT_LIMIT
    if process_gone(host, pid):                 # the lease rule's process half: ended, or a zombie
        return None, HEARTBEAT_LIMIT
    return max(0.0, time.time() - float(hb.get("timestamp", 0))), HEARTBEAT_LIMIT
