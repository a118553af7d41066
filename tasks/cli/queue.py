"""``botsq queue [-c DIR] [--json]``: the waiting jobs (priority, age) and the running one;
``botsq queue clear``: purge queue ``engine`` and the pending-key registry together.

Waiting jobs come from the registry (RabbitMQ cannot list a queue without consuming it); the
broker's own count of waiting messages is shown beside it, so a difference is visible.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from celery import Celery

from engine.config import Config, add_config_argument, load_config
from engine.log import mask_url, redact
from tasks.broker import QUEUE, QueueError, connect, purge, queue_depth
from tasks.celeryapp import app_for
from tasks.context import queue_logger
from tasks.registry import PendingRegistry, StartedJobs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("action", nargs="?", choices=["list", "clear"], default="list",
                        help="list (default): waiting and running jobs; clear: purge the queue and the registry")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _age(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d"


def _broker(cfg: Config) -> tuple[Celery | None, str | None]:
    """(app, None) when the broker answers, else (None, reason)."""
    try:
        app = app_for(cfg)
        connect(app, cfg.jobqueue.connect_timeout).release()
        return app, None
    except (QueueError, ValueError) as exc:
        return None, str(exc)


def collect(cfg: Config) -> dict[str, Any]:
    """What ``botsq queue --json`` prints: config, broker, broker_messages, waiting, running."""
    app, problem = _broker(cfg)
    out: dict[str, Any] = {"config": str(cfg.configdir), "broker": mask_url(cfg.jobqueue.broker),
                           "broker_messages": None}
    if app is not None:
        try:
            out["broker_messages"] = queue_depth(app)
        except Exception as exc:  # noqa: BLE001
            problem = " ".join(str(exc).split()) or type(exc).__name__
    if problem:
        out["broker_error"] = redact(problem)
    out["waiting"] = [w.as_dict() for w in PendingRegistry(cfg).waiting()]
    out["running"] = StartedJobs(cfg).running()
    return out


def clear(cfg: Config) -> dict[str, int]:
    """Purge queue ``engine`` and forget every waiting job; QueueError when the broker does not answer."""
    purged = purge(app_for(cfg), cfg.jobqueue.connect_timeout)
    return {"purged": purged, "cleared": PendingRegistry(cfg).clear()}


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.configdir)
    if args.action == "clear":
        res = clear(cfg)
        queue_logger(cfg, console=False).warning("queue cleared by botsq queue clear: %d message(s) purged, "
                                                  "%d registry entr(ies) removed", res["purged"], res["cleared"])
        if args.json:
            print(json.dumps(res))
        else:
            print(f"purged {res['purged']} waiting message(s) from queue {QUEUE}; "
                  f"removed {res['cleared']} registry entr{'y' if res['cleared'] == 1 else 'ies'}")
        return 0
    data = collect(cfg)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    msgs = data["broker_messages"]
    print(f"queue {QUEUE} at {data['broker']}: {len(data['waiting'])} waiting job(s) in the registry, "
          + (f"{msgs} message(s) waiting at the broker" if msgs is not None
             else f"broker not reachable ({data.get('broker_error')})"))
    for r in data["running"]:
        state = "running" if r["alive"] else "running? (no heartbeat)"
        print(f"  {state:<8} {_age(r['running_s']):>6}  {r['task_id'][:8]}  {r['job']}"
              + (f"  (attempt {r['attempt']})" if r["attempt"] > 1 else ""))
    if data["waiting"]:
        print(f"  {'PRIO':<4} {'AGE':>6}  {'ID':<8}  JOB")
        for w in data["waiting"]:
            print(f"  p{w['priority']:<3} {_age(w['age_s']):>6}  {w['task_id'][:8]}  {w['job']}")
    elif not data["running"]:
        print("  (no jobs)")
    return 0
