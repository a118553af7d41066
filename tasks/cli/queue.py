"""``botsq queue [-c DIR] [--json]``: the waiting jobs (priority, age) and the running ones, per lane;
``botsq queue clear``: purge every lane's queue and the pending-key registry together.

Waiting jobs come from the registry (RabbitMQ cannot list a queue without consuming it); the
broker's own count of waiting messages is shown beside it, so a difference is visible. With lanes
the table groups the jobs by lane, each lane with its queue, its engine lock and its counts
(:func:`tasks.lane_status.lane_status`, also under ``lanes`` in ``--json``).
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from celery import Celery

from engine.config import Config, add_config_argument, load_config
from engine.errors import ExitCode
from engine.log import mask_url, redact, redact_data
from tasks.broker import QueueError, connect, purge, queue_name
from tasks.celeryapp import app_for
from tasks.context import queue_logger
from tasks.lane_status import lane_status
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
    """What ``botsq queue --json`` prints: config, broker, broker_messages (every lane's queue), waiting
    and running (each job with its ``lane``), and ``lanes`` (:func:`tasks.lane_status.lane_status`)."""
    app, problem = _broker(cfg)
    out: dict[str, Any] = {"config": str(cfg.configdir), "broker": mask_url(cfg.jobqueue.broker),
                           "broker_messages": None}
    lanes = lane_status(cfg, app)
    counts = [lane["broker_messages"] for lane in lanes]
    if app is not None and None not in counts:
        out["broker_messages"] = sum(counts)
    elif app is not None:
        problem = "the broker did not say how many messages wait"
    if problem:
        out["broker_error"] = redact(problem)
    out["waiting"] = [w.as_dict() for w in PendingRegistry(cfg).waiting()]
    out["running"] = StartedJobs(cfg).running()
    out["lanes"] = lanes
    return out


def clear(cfg: Config) -> dict[str, int]:
    """Purge every lane's queue and forget every waiting job; QueueError when the broker does not answer."""
    purged = purge(app_for(cfg), cfg.jobqueue.connect_timeout, [queue_name(lane) for lane in cfg.lanes])
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
            queues = ", ".join(queue_name(lane) for lane in cfg.lanes)
            print(f"purged {res['purged']} waiting message(s) from queue{'s' if len(cfg.lanes) > 1 else ''} "
                  f"{queues}; removed {res['cleared']} registry entr{'y' if res['cleared'] == 1 else 'ies'}")
        return 0
    data = redact_data(collect(cfg))        # records hold no secret; what else is shown neither
    # what the registry knows is shown even so, but a broker that does not answer is a failure (exit 1)
    code = ExitCode.SYSTEM if data.get("broker_error") else ExitCode.OK
    if args.json:
        print(json.dumps(data, indent=2))
        return code
    if len(data["lanes"]) == 1:
        lane = data["lanes"][0]
        print(f"queue {lane['queue']} at {data['broker']}: {len(data['waiting'])} waiting job(s) in the registry, "
              + _at_broker(data, lane["broker_messages"]))
        _jobs(data["running"], data["waiting"], data["config"])
        return code
    print(f"lanes at {data['broker']}: {len(data['waiting'])} waiting job(s) in the registry, "
          + _at_broker(data, data["broker_messages"]))
    for lane in data["lanes"]:
        lock = lane["lock"]
        held = (f"lock held by run {lock['run_id']} on {lock['host']} pid {lock['pid']}"
                + ("" if lock["alive"] else " (gone)")) if lock["held"] else "lock free"
        msgs = "?" if lane["broker_messages"] is None else lane["broker_messages"]
        print(f"lane {lane['lane']} (queue {lane['queue']}): {lane['waiting']} waiting, {msgs} at the broker, {held}")
        _jobs(lane["running"], [w for w in data["waiting"] if w["lane"] == lane["lane"]], data["config"])
    return code


def _at_broker(data: dict[str, Any], msgs: int | None) -> str:
    return (f"{msgs} message(s) waiting at the broker" if msgs is not None
            else f"broker not reachable ({data.get('broker_error')})")


def _whose(w: dict[str, Any], own: str) -> str:
    """What the JOB column adds to a waiting job: the config dir of a job that is not the queue's own
    (another environment on this database), and a publish the broker has not confirmed."""
    configdir = (w.get("kwargs") or {}).get("configdir")
    notes = [f"config {configdir}"] if configdir and configdir != own else []
    if not w.get("confirmed", True):
        notes.append("publish not confirmed by the broker")
    return f"  ({'; '.join(notes)})" if notes else ""


def _jobs(running: list[dict[str, Any]], waiting: list[dict[str, Any]], own: str) -> None:
    for r in running:
        state = "running" if r["alive"] else "running? (no heartbeat)"
        print(f"  {state:<8} {_age(r['running_s']):>6}  {r['task_id'][:8]}  {r['job']}"
              + (f"  (attempt {r['attempt']})" if r["attempt"] > 1 else ""))
    if waiting:
        print(f"  {'PRIO':<4} {'AGE':>6}  {'ID':<8}  JOB")
        for w in waiting:
            print(f"  p{w['priority']:<3} {_age(w['age_s']):>6}  {w['task_id'][:8]}  {w['job']}{_whose(w, own)}")
    elif not running:
        print("  (no jobs)")
