"""botsq's job queue on Celery: ``celery -A tasks worker|beat|flower|call|inspect ...``.

``tasks.app`` (also ``tasks.celery``) is the Celery app for the config dir in ``$BOTSQ_CONFIG`` (default ``./config``), its broker
from ``[jobqueue] broker`` or ``$BOTSQ_BROKER_URL``. It is built on first access, so importing
``tasks.jobs`` or ``tasks.submit`` reads no config. ``celery -A tasks`` finds it either way.

Modules:

* ``celeryapp`` - the app and its settings; the only module wiring signals and tasks together;
* ``context`` - the config of a config dir, the app's config dir and broker kind, the jobqueue log;
* ``broker`` - the lanes' queues, connecting, their depth; ``priority`` - Bots 1..9 -> the broker's scale;
* ``jobs`` - a job, its identity (the dedup key) and its lanes; ``registry`` - the pending-key registry
  and the start records; ``registration`` - registering a job (one function, with its log line);
* ``publish`` - the one publish path (a job split by lane); ``submit`` - its checks for commands,
  beat and the monitor; ``routing`` - each task to its lane's queue; ``signals`` - publish and worker
  hooks; ``lane_status`` - each lane at a glance;
* ``runner`` - the two tasks and the steps of a job; ``outcomes`` - how a job ends early;
  ``executors`` - an engine run or a command, watched; ``consumer`` - the worker's consumer;
* ``cli/`` - ``bots-job2queue``, ``bots-jobqueueserver`` and ``botsq queue``.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any


def _flower_settings_by_default() -> None:
    """``celery -A tasks flower`` gets botsq's Flower settings module (its address, port and
    basic auth from ``[flower]``; no unauthenticated listening off this host) unless a
    ``--conf`` or FLOWER_CONF names another one. Flower reads FLOWER_CONF after the app loads."""
    if "flower" in sys.argv[1:] and not any(a.startswith("--conf") for a in sys.argv):
        spec = importlib.util.find_spec("ops.flowerconfig")
        if spec is not None and spec.origin:
            os.environ.setdefault("FLOWER_CONF", spec.origin)


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        _flower_settings_by_default()
        from engine.errors import ConfigError   # imported here: ``import tasks`` alone reads no config
        from engine.log import redact
        from tasks.celeryapp import app_from_env

        try:
            return app_from_env()
        except (ConfigError, ValueError) as exc:
            print(f"botsq: error: {redact(str(exc))}", file=sys.stderr)
            raise SystemExit(1) from None
    raise AttributeError(f"module 'tasks' has no attribute {name!r}")
