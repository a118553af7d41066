"""``botsq status [-c DIR] [--json]``: is everything running? Exit 0 when healthy, 1 otherwise.

Checks, each with a short timeout: the tracking database, the broker, the workers (Celery
``inspect`` active queues), the engine lock holder, waiting jobs by priority (the pending-key
registry), the last runs, beat (its lock, when the schedule has jobs) and the directory
monitor's heartbeat. Per lane (``lanes``, :func:`tasks.lane_status.lane_status`): its queue
depth by priority, its lock holder and its workers; unhealthy when a lane of the config has no
worker consuming its queue. No secret from the config reaches the output: URLs are shown with their
password masked and every line is redacted.
"""
from __future__ import annotations

import argparse
import json
import shlex
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select

from beat_schedule import load_jobs
from engine.config import DEFAULT_LANE, Config, add_config_argument, load_config
from engine.config.engine import bots_console_problem, engine_problem
from engine.db import get_engine, session_scope
from engine.errors import ConfigError, DatabaseError, UsageError
from engine.log import mask_url, redact, redact_data, register_secrets
from engine.models import Run
from ops.beat_lock import BeatStore
from ops.dirmonitor.heartbeat import heartbeat_age
from tasks.broker import QueueError, connect, queue_name
from tasks.celeryapp import app_for
from tasks.lane_status import lane_status, lock_status
from tasks.jobs import serves_configdir
from tasks.registry import PendingRegistry

LAST_RUNS = 5


def broker_problem(cfg: Config, timeout: float = 3.0) -> str | None:
    """None when the environment's broker answers within ``timeout`` s, else one line saying why."""
    try:
        connect(app_for(cfg), timeout).release()
        return None
    except QueueError as exc:
        return redact(str(exc))


def _now() -> datetime:
    return datetime.now(timezone.utc)


# --------------------------------------------------------------------------- the checks

def check_database(cfg: Config) -> dict[str, Any]:
    try:
        get_engine(cfg.database_url)
        return {"ok": True, "url": mask_url(cfg.database_url)}
    except DatabaseError as exc:
        return {"ok": False, "url": mask_url(cfg.database_url), "error": str(exc)}


def check_workers(cfg: Config, timeout: float) -> dict[str, Any]:
    """Workers answering a ping, with the queues each consumes; ok when every lane's queue has one of this
    environment's workers and no worker of another environment is on this broker (``foreign_workers``: their
    ``botsq_configdir``, from Celery's ``inspect conf``, is another config dir that does not serve this one)."""
    app = app_for(cfg)
    try:
        queues = app.control.inspect(timeout=timeout).active_queues() or {}
        # the second question returns as soon as every worker found has answered
        active = (app.control.inspect(timeout=timeout, limit=len(queues)).active() or {}) if queues else {}
        confs = (app.control.inspect(timeout=timeout, limit=len(queues)).conf() or {}) if queues else {}
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "workers": [], "error": redact(" ".join(str(exc).split()))}
    workers, foreign = [], []
    for name, qs in sorted(queues.items()):
        theirs = str((confs.get(name) or {}).get("botsq_configdir") or "")
        w = {"name": name, "queues": sorted(q.get("name", "?") for q in qs), "running": len(active.get(name) or [])}
        if theirs and not _serves(theirs, cfg):
            foreign.append({**w, "configdir": theirs})
        else:
            workers.append(w)
    unserved = [lane for lane in cfg.lanes if not any(queue_name(lane) in w["queues"] for w in workers)]
    out: dict[str, Any] = {"ok": not unserved and not foreign, "workers": workers, "foreign_workers": foreign}
    errors = [f"no worker consumes queue {queue_name(lane)!r}" + (f" (lane {lane})" if len(cfg.lanes) > 1 else "")
              for lane in unserved]
    errors += [f"worker {w['name']} on this broker serves config dir {w['configdir']}, not this one (give each "
               f"environment its own vhost or Redis database)" for w in foreign]
    if errors:
        out["error"] = "; ".join(errors)
    return out


def _serves(configdir: str, cfg: Config) -> bool:
    """Does a worker of ``configdir`` run this environment's jobs (its own, or listed in its
    ``[jobqueue] configdirs``, when its bots.ini can be read here)?"""
    if configdir == str(cfg.configdir):
        return True
    try:
        return serves_configdir(load_config(configdir), cfg.configdir)
    except ConfigError:
        return False


def check_engine(cfg: Config) -> dict[str, Any]:
    """``[engine]``: the kind, and for a Bots engine the command line and whether it can be started."""
    problem = engine_problem(cfg.engine, cfg.configdir)
    return {"kind": str(cfg.engine.kind), "command": shlex.join(cfg.engine.command) if cfg.engine.is_bots else None,
            "healthy": problem is None, "problem": problem,
            "warning": bots_console_problem(cfg.engine, cfg.configdir)}


def check_lock(cfg: Config) -> dict[str, Any]:
    """Lane default's engine lock (each lane's is under ``lanes``)."""
    return lock_status(cfg, DEFAULT_LANE)


def check_waiting(cfg: Config) -> dict[str, Any]:
    """Waiting jobs by Bots priority, from the pending-key registry."""
    by_priority: dict[str, int] = {}
    jobs = PendingRegistry(cfg).waiting()
    for job in jobs:
        key = str(job.priority)
        by_priority[key] = by_priority.get(key, 0) + 1
    return {"known": True, "total": len(jobs), "by_priority": dict(sorted(by_priority.items()))}


def check_runs(cfg: Config, limit: int = LAST_RUNS) -> list[dict[str, Any]]:
    with session_scope(cfg.database_url) as s:
        rows = s.scalars(select(Run).order_by(Run.id.desc()).limit(limit)).all()
        return [{k: r.as_dict()[k] for k in ("id", "commands", "routes", "lane", "started", "ended", "status",
                                              "returncode", "received", "sent", "file_errors", "comm_errors")}
                for r in rows]


def check_monitor(cfg: Config) -> dict[str, Any]:
    """The directory monitor's heartbeat (a file it touches while it runs)."""
    if not cfg.dirmonitors:
        return {"configured": False}
    age, limit = heartbeat_age(cfg)
    if age is None:
        return {"configured": True, "ok": False, "error": "no heartbeat: bots-dirmonitor is not running"}
    ok = age <= limit
    out: dict[str, Any] = {"configured": True, "ok": ok, "heartbeat_age_s": round(age, 1)}
    if not ok:
        out["error"] = f"heartbeat {age:.0f} s old (limit {limit:.0f} s)"
    return out


def check_beat(cfg: Config) -> dict[str, Any]:
    """Beat holding its lock (lease ``beat`` in the tracking database), when the schedule has jobs."""
    try:
        jobs = len(load_jobs(cfg, validate=False))
    except ConfigError as exc:
        return {"ok": False, "scheduled_jobs": None, "running": False, "error": f"schedule: {exc}"}
    holder = BeatStore(cfg.database_url).holder(cfg.settings.lock_grace)
    out: dict[str, Any] = {"scheduled_jobs": jobs, "running": bool(holder and holder["alive"])}
    if holder:
        out.update(host=holder["host"], pid=holder["pid"], heartbeat_age_s=round(holder["age"], 1))
    out["ok"] = out["running"] or jobs == 0
    if not out["ok"]:
        out["error"] = f"beat is not running ({jobs} scheduled job(s))"
    return out


def collect(cfg: Config, timeout: float = 2.0) -> dict[str, Any]:
    """Every check, plus ``healthy`` and the ``problems`` that made it false."""
    report: dict[str, Any] = {"config": str(cfg.configdir), "checked": _now().isoformat(timespec="seconds")}
    problems: list[str] = []
    db = report["database"] = check_database(cfg)
    if not db["ok"]:
        problems.append(db["error"])
    eng = report["engine"] = check_engine(cfg)
    if not eng["healthy"]:
        problems.append(eng["problem"])
    if cfg.jobqueue.enabled:
        problem = broker_problem(cfg, timeout)
        report["broker"] = {"url": mask_url(cfg.jobqueue.broker), "ok": problem is None}
        if problem:
            report["broker"]["error"] = problem
            problems.append(problem)
            report["workers"] = {"ok": False, "workers": [], "error": "broker unreachable"}
        else:
            report["workers"] = check_workers(cfg, timeout)
            if not report["workers"]["ok"]:
                problems.append(report["workers"]["error"])
    else:
        report["broker"] = {"enabled": False}
    if db["ok"]:
        report["lock"] = check_lock(cfg)
        if report["lock"]["held"] and not report["lock"]["alive"]:
            report["lock"]["note"] = "holder is gone: the next run recovers it"
        report["waiting"] = check_waiting(cfg) if cfg.jobqueue.enabled else {"known": False}
        if cfg.jobqueue.enabled:
            workers = report["workers"]["workers"] if report["broker"]["ok"] else None
            report["lanes"] = lane_status(cfg, app_for(cfg) if report["broker"]["ok"] else None, workers)
        report["last_runs"] = check_runs(cfg)
    if cfg.jobqueue.enabled and db["ok"]:
        report["beat"] = check_beat(cfg)
        if not report["beat"]["ok"]:
            problems.append(report["beat"]["error"])
    if cfg.jobqueue.enabled:
        report["monitor"] = check_monitor(cfg)
        if report["monitor"].get("configured") and not report["monitor"]["ok"]:
            problems.append(f"directory monitor: {report['monitor']['error']}")
    else:
        report["monitor"] = {"configured": bool(cfg.dirmonitors), "note": "queue disabled"}
    report["problems"] = problems
    report["healthy"] = not problems
    return report


# --------------------------------------------------------------------------- output

def _ok(flag: bool) -> str:
    return "ok" if flag else "FAIL"


def _lane_line(lane: dict[str, Any]) -> str:
    """``  lane slow  ok    queue engine.slow: 2 waiting (p1: 1, p5: 1), lock held by run 7 ..., workers w1@h``."""
    workers = lane.get("workers")
    state = "-   " if workers is None else _ok(bool(workers))
    per = ", ".join(f"p{p}: {n}" for p, n in lane["by_priority"].items())
    lock = lane["lock"]
    held = (f"lock held by run {lock['run_id']} on {lock['host']} pid {lock['pid']}"
            + ("" if lock["alive"] else " (GONE)")) if lock["held"] else "lock free"
    who = ("workers " + ", ".join(workers) if workers else "NO WORKER") if workers is not None else "workers ?"
    return (f"  lane {lane['lane']:<10} {state:4}  queue {lane['queue']}: {lane['waiting']} waiting"
            + (f" ({per})" if per else "") + f", {held}, {who}")


def render(report: dict[str, Any]) -> str:
    lines = [f"botsq status: {report['config']}"]
    db = report["database"]
    lines.append(f"  database  {_ok(db['ok']):4}  {db['url']}" + (f"  ({db['error']})" if not db["ok"] else ""))
    eng = report["engine"]
    if eng["command"] is None:
        lines.append(f"  engine    ok    {eng['kind']}")
    else:
        lines.append(f"  engine    {_ok(eng['healthy']):4}  {eng['kind']}: "
                     + (eng["command"] if eng["healthy"] else eng["problem"]))
        if eng.get("warning"):
            lines.append(f"            warn  {eng['warning']}")
    br = report["broker"]
    if br.get("enabled") is False:
        lines.append("  broker    -     job queue disabled ([jobqueue] enabled = False)")
    else:
        lines.append(f"  broker    {_ok(br['ok']):4}  " + (br["url"] if br["ok"] else br["error"]))
        wk = report["workers"]
        if wk["workers"]:
            for w in wk["workers"]:
                busy = f", running {w['running']}" if w["running"] else ""
                lines.append(f"  worker    {_ok(wk['ok']):4}  {w['name']} (queues: {', '.join(w['queues']) or '-'}{busy})")
        else:
            lines.append(f"  workers   FAIL  {wk.get('error', 'none answered')}")
        for w in wk.get("foreign_workers") or ():
            lines.append(f"  worker    FAIL  {w['name']} serves config dir {w['configdir']}, not this one "
                         f"(another environment on this broker: give each its own vhost or Redis database)")
    if "lock" in report:
        lk = report["lock"]
        if lk["held"]:
            state = "alive" if lk["alive"] else "GONE (recovered by the next run)"
            lines.append(f"  lock      held  run {lk['run_id']} on {lk['host']} pid {lk['pid']} since {lk['since']}, "
                         f"heartbeat {lk['heartbeat_age_s']:.0f} s ago, {state}")
        else:
            lines.append("  lock      free")
    wt = report.get("waiting", {})
    if wt.get("known"):
        per = ", ".join(f"p{p}: {n}" for p, n in wt["by_priority"].items())
        lines.append(f"  waiting   {wt['total']} job(s)" + (f" ({per})" if per else ""))
    if len(report.get("lanes") or ()) > 1:
        lines += [_lane_line(lane) for lane in report["lanes"]]
    bt = report.get("beat")
    if bt and bt.get("running"):
        lines.append(f"  beat      ok    on {bt['host']} pid {bt['pid']}, heartbeat {bt['heartbeat_age_s']:.0f} s ago, "
                     f"{bt['scheduled_jobs']} scheduled job(s)")
    elif bt and not bt["ok"]:
        lines.append(f"  beat      FAIL  {bt['error']}")
    elif bt:
        lines.append("  beat      -     no [schedule.NAME] jobs")
    mon = report["monitor"]
    if mon.get("configured") and "ok" in mon:
        detail = f"heartbeat {mon['heartbeat_age_s']:.0f} s ago" if "heartbeat_age_s" in mon else mon.get("error", "")
        lines.append(f"  monitor   {_ok(mon['ok']):4}  {detail}")
    elif not mon.get("configured"):
        lines.append("  monitor   -     no [dirmonitorN] in bots.ini")
    runs = report.get("last_runs")
    if runs is not None:
        lines.append("  last runs" + ("  none yet" if not runs else ""))
        for r in runs:
            what = " ".join(filter(None, [r["commands"], r["routes"] or "(default run)",
                                          f"[lane {r['lane']}]" if r["lane"] != DEFAULT_LANE else ""]))
            lines.append(f"    #{r['id']:<5} {r['started'] or '':25} {r['status']:8} exit {r['returncode'] if r['returncode'] is not None else '-':<2} "
                         f"{what}: {r['received']} in, {r['sent']} sent, {r['file_errors']} file / {r['comm_errors']} comm errors")
    lines.append("healthy" if report["healthy"] else "UNHEALTHY: " + "; ".join(report["problems"]))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--timeout", type=float, default=1.5, help="seconds per broker/worker check (default 1.5)")


def run(args: argparse.Namespace) -> int:
    if not args.timeout > 0:            # a bad argument, not a broker that failed to answer in time
        raise UsageError(f"argument --timeout: must be a number of seconds above 0, got {args.timeout:g}")
    cfg = load_config(args.configdir)
    register_secrets(cfg.secrets())
    report = collect(cfg, args.timeout)
    report = redact_data(report)        # before serialising: an escaped secret would no longer match
    text = json.dumps(report, indent=2, default=str) if args.json else render(report)
    print(redact(text), flush=True)      # a reader gone (| head): engine/cli/common.py run_cli
    return 0 if report["healthy"] else 1
