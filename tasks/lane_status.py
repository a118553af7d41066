"""Each lane at a glance - its queue, what waits in it by priority, what runs, who holds its engine
lock, which workers consume it: the one function ``botsq status``, ``botsq queue`` (and their
``--json``) and the web console show per lane (:func:`lane_status`).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.config import Config
from engine.lock import read_lock
from engine.models import iso_utc
from tasks.broker import queue_depth, queue_name
from tasks.registry import PendingRegistry, StartedJobs


def lock_status(cfg: Config, lane: str) -> dict[str, Any]:
    """The holder of a lane's engine lock: ``{"held": False}`` or ``{"held": True, "host", "pid", "run_id",
    "since", "heartbeat_age_s", "alive"}``. DatabaseError."""
    info = read_lock(cfg, lane)
    if info is None:
        return {"held": False}
    return {"held": True, "host": info.host, "pid": info.pid, "run_id": info.run_id, "since": iso_utc(info.started),
            "heartbeat_age_s": round(info.silence(), 1), "alive": info.alive}


def lane_status(cfg: Config, app: Any = None, workers: Sequence[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One dict per lane - the config's lanes, then any other lane a waiting or running job names (a lane
    removed from the config while jobs waited in it):

    ``lane``, ``queue``, ``routes`` (names), ``broker_messages`` (messages waiting at the broker; None
    without ``app`` - a broker that answered - or when it cannot be asked), ``waiting`` (jobs in the
    registry), ``by_priority`` (``{"1": n, ...}``), ``running`` (started jobs, as
    :meth:`tasks.registry.StartedJobs.running`), ``lock`` (:func:`lock_status`) and, when ``workers``
    (``[{"name", "queues"}]`` from Celery's inspect) is given, ``workers`` (names consuming the lane's
    queue). DatabaseError when the tracking database cannot be used."""
    waiting = PendingRegistry(cfg).waiting()
    running = StartedJobs(cfg).running()
    lanes = list(dict.fromkeys([*cfg.lanes, *(w.lane for w in waiting), *(r["lane"] for r in running)]))
    out = []
    for lane in lanes:
        queue = queue_name(lane)
        by_priority: dict[str, int] = {}
        mine = [w for w in waiting if w.lane == lane]
        for w in sorted(mine, key=lambda w: w.priority):
            by_priority[str(w.priority)] = by_priority.get(str(w.priority), 0) + 1
        entry: dict[str, Any] = {
            "lane": lane, "queue": queue, "routes": [r.name for r in cfg.routes.values() if r.lane == lane],
            "broker_messages": _depth(app, queue), "waiting": len(mine), "by_priority": by_priority,
            "running": [r for r in running if r["lane"] == lane], "lock": lock_status(cfg, lane),
        }
        if workers is not None:
            entry["workers"] = [w["name"] for w in workers if queue in w["queues"]]
        out.append(entry)
    return out


def _depth(app: Any, queue: str) -> int | None:
    if app is None:
        return None
    try:
        return queue_depth(app, queue=queue)
    except Exception:  # noqa: BLE001 - shown as unknown; the broker check says why
        return None
