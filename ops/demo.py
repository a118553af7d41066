"""``botsq demo``: the main job end to end on this machine.

It writes a demo environment (default ``./demo-env``). When the broker answers (checked within
3 s; ``BOTSQ_BROKER_URL`` overrides ``[jobqueue] broker``) it starts the engine worker, the
directory monitor and the web console (its address and login printed while the demo runs) as
child processes, queues jobs at different priorities while the worker is
busy (one of them a duplicate, shown as discarded), starts beat once they ran, drops files into
the watched folder, waits until every file was processed, prints a short report and stops
everything, also on Ctrl-C.

With no broker it says so in one line and runs the engine directly on the environment's
database (SQLite by default), so the command works on a fresh machine.
"""
from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from engine.cli.engine import parse_engine_args
from engine.cli.init import init_environment
from engine.config import Config, load_config
from engine.config.webserver import ENV_PORT as ENV_WEB_PORT
from engine.config.webserver import load_webserver_settings
from engine.db import session_scope
from engine.log import mask_url, register_secrets
from engine.models import Run
from engine.run import run_engine
from ops.beat_lock import BeatStore
from ops.procs import Stopped, Supervisor
from ops.stack import service_commands
from ops.status import broker_problem
from ops.web.users import admin_password
from tasks.jobs import job_from_argv
from tasks.registry import PendingRegistry, StartedJobs
from tasks.submit import submit

BROKER_TIMEOUT = 3.0      # seconds the broker gets to answer
WAIT_TIMEOUT = 120.0      # seconds the whole queue demo may take before it gives up
DROP_FILES = 5
PAUSE_SECONDS = 2
DROP_DIR = "data/in/drop"
DROP_OUT = "data/out/drop"

# What the demo adds to the environment `botsq init --demo` writes: a watched drop folder with
# its own route (not in the default run, so only the monitor's jobs touch it), and a short
# allow-listed command that keeps the worker busy while the other jobs are queued.
MARK = "added by botsq demo"
INI_MONITOR = f"""
; --- {MARK}: a watched folder; each file dropped there starts a run of route "drop"
[dirmonitor1]
path = {DROP_DIR}
filemask = *.edi
route = drop
priority = 3
debounce = 0.3
"""
INI_PAUSE = f"demo_pause = sleep {PAUSE_SECONDS}   ; {MARK}: keeps the worker busy\n"
ROUTES_DROP = f"""
# --- {MARK}: the route the directory monitor starts
[channels.drop_in]
type = "file"
path = "{DROP_DIR}"
filemask = "*.edi"
remove = true

[channels.drop_out]
type = "file"
path = "{DROP_OUT}"
filename = "{{infile}}"

[routes.drop]
active = true
notindefaultrun = true
[[routes.drop.parts]]
fromchannel = "drop_in"
translate = "passthrough"
tochannel = "drop_out"
"""

# The jobs queued, in the order they are sent: (priority, command line). The worker is busy with
# the pause first, so they run by priority: orders (1), invoices (5), the default run (9).
QUEUED = [
    (1, ["demo_pause"]),
    (9, ["bots-engine", "--new"]),
    (5, ["bots-engine", "--new", "invoices"]),
    (5, ["bots-engine", "--new", "invoices"]),      # identical to a waiting job: discarded
    (1, ["bots-engine", "--new", "orders"]),
]


OUTCOME = {"duplicate": "discarded: identical to a waiting job", "raised": "raised the waiting job's priority"}


def say(line: str) -> None:
    print(f"botsq demo: {line}", flush=True)


# --------------------------------------------------------------------------- environment

def prepare_environment(target: Path) -> Config:
    """``botsq init --demo`` into ``target`` plus the demo's watched folder; idempotent."""
    configdir = init_environment(target, demo=True)
    ini = configdir / "bots.ini"
    text = ini.read_text(encoding="utf-8")
    if MARK not in text:
        if "[jobqueue.commands]" in text:
            text = text.replace("[jobqueue.commands]\n", "[jobqueue.commands]\n" + INI_PAUSE, 1)
        else:
            text += "\n[jobqueue.commands]\n" + INI_PAUSE
        if not re.search(r"^\s*\[dirmonitor1\]", text, re.M):   # the template's example is commented out
            text += INI_MONITOR
        ini.write_text(text, encoding="utf-8")
    routes = configdir / "routes.toml"
    rtext = routes.read_text(encoding="utf-8")
    if "[routes.drop]" not in rtext:
        routes.write_text(rtext + ROUTES_DROP, encoding="utf-8")
    for sub in (DROP_DIR, DROP_OUT):
        (target / sub).mkdir(parents=True, exist_ok=True)
    return load_config(configdir)


# --------------------------------------------------------------------------- database reads

@dataclass
class RunRow:
    id: int
    commands: str
    routes: str
    status: str
    returncode: int | None
    received: int
    sent: int
    errors: int
    started: datetime
    ended: datetime | None

    @property
    def key(self) -> tuple[str, str]:
        return (self.commands, self.routes)

    def seconds(self) -> float | None:
        return (self.ended - self.started).total_seconds() if self.ended else None


def last_run_id(cfg: Config) -> int:
    with session_scope(cfg.database_url) as s:
        return int(s.scalar(select(func.max(Run.id))) or 0)


def runs_since(cfg: Config, after_id: int) -> list[RunRow]:
    with session_scope(cfg.database_url) as s:
        rows = s.scalars(select(Run).where(Run.id > after_id).order_by(Run.started, Run.id)).all()
        return [RunRow(r.id, r.commands, r.routes, r.status, r.returncode, r.received, r.sent,
                       r.file_errors + r.comm_errors, r.started, r.ended) for r in rows]


def beat_running(cfg: Config, pid: int) -> bool:
    """Beat (process ``pid``) is up: it holds the beat lock in the tracking database."""
    holder = BeatStore(cfg.database_url).holder(cfg.settings.lock_grace)
    return bool(holder and holder["pid"] == pid and holder["alive"])


# --------------------------------------------------------------------------- report

def job_key(argv: list[str]) -> tuple[str, str] | None:
    """(commands, routes) as the runs table writes them, for an engine command line."""
    if argv[0] != "bots-engine":
        return None
    parsed = parse_engine_args(argv[1:])
    return (",".join(parsed.commands or ("new",)), ",".join(parsed.routes))


def describe_run(r: RunRow) -> str:
    what = f"{r.commands} {r.routes or '(default run)'}"
    secs = r.seconds()
    took = f"{secs:.2f} s" if secs is not None else "running"
    return (f"run {r.id:<4} {what:<22} {r.status:<7} {r.received} in, {r.sent} sent"
            + (f", {r.errors} errors" if r.errors else "") + f", {took}")


def print_runs(runs: list[RunRow], priority_of: Callable[[RunRow], str]) -> None:
    print("Order of execution:")
    for n, r in enumerate(runs, 1):
        print(f"  {n}. {priority_of(r):<14} {describe_run(r)}")
    received = sum(r.received for r in runs)
    sent = sum(r.sent for r in runs)
    errors = sum(r.errors for r in runs)
    print(f"Runs: {len(runs)}; files: {received} received, {sent} sent, {errors} errors.")


# --------------------------------------------------------------------------- without a broker

def run_direct(cfg: Config) -> int:
    """One engine run in this process over the demo routes, and its summary."""
    before, started = last_run_id(cfg), time.time()
    result = run_engine(cfg, ["new"], [])
    for r in runs_since(cfg, before):
        print(f"  {describe_run(r)}")
    out_dir = cfg.envdir / "data" / "out"
    outputs = sorted(str(p.relative_to(cfg.envdir)) for p in out_dir.rglob("*")
                     if p.is_file() and p.stat().st_mtime >= started - 1)
    shown = ", ".join(outputs[:4]) + (f" and {len(outputs) - 4} more" if len(outputs) > 4 else "")
    print(f"  output: {shown or 'none'}")
    say(f"done (exit {result.exit_code}); with a broker running, `botsq demo` shows the whole queue stack")
    return result.exit_code


# --------------------------------------------------------------------------- with a broker

def port_answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def console_port(cfg: Config) -> int:
    """``[webserver] port`` when it is free here, else any free port (a demo should not clash)."""
    port = load_webserver_settings(cfg, address="127.0.0.1").port
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DemoFailed(Exception):
    pass


def wait_until(cond: Callable[[], bool], timeout: float, what: str, sup: Any) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        gone = sup.exited()
        if gone:
            if gone[0].reader is not None:
                gone[0].reader.join(timeout=2)          # its last lines
            tail = "".join(f"\n    {gone[0].name} | {line}" for line in gone[0].lines[-5:])
            raise DemoFailed(f"{gone[0].name} exited with code {gone[0].proc.returncode} while waiting for {what}{tail}")
        if time.monotonic() > deadline:
            raise DemoFailed(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def queue_jobs(cfg: Config) -> list[tuple[int, list[str], str]]:
    """Submit QUEUED; returns (priority, argv, outcome) per job."""
    out = []
    for priority, argv in QUEUED:
        res = submit(cfg, job_from_argv(cfg, argv), priority)
        out.append((priority, argv, str(res.status)))
    return out


def drain_leftovers(cfg: Config, sup: Any, before: int) -> int:
    """Let the worker run jobs still waiting from an earlier demo (one cut off by Ctrl-C).

    Left in the queue, they would make this demo's identical jobs count as duplicates and mix
    into its report. Returns the last run id once they ran (the report starts after it), with
    the sample files those runs consumed put back.
    """
    pending, started = PendingRegistry(cfg), StartedJobs(cfg)
    left = pending.count()
    if not left:
        return before
    say(f"{left} job(s) left waiting by an earlier demo: the worker runs them first")

    def drained() -> bool:
        return pending.count() == 0 and not any(j["alive"] for j in started.running()) \
            and all(r.ended is not None for r in runs_since(cfg, before))

    wait_until(drained, WAIT_TIMEOUT, "the earlier demo's jobs to run", sup)
    init_environment(cfg.envdir, demo=True)          # puts back the sample files those runs took
    return last_run_id(cfg)


def run_queue_demo(cfg: Config) -> int:
    drop_dir = cfg.envdir / DROP_DIR
    mon = next((m for m in cfg.dirmonitors if m.path == drop_dir), None)
    if mon is None:
        raise DemoFailed(f"no [dirmonitorN] in {cfg.ini_path} watches {DROP_DIR}")
    log_dir = cfg.directories.logging / "demo"
    sup = Supervisor(log_dir=log_dir, label="botsq demo")
    before = last_run_id(cfg)
    out_dir = cfg.envdir / DROP_OUT
    for old in list(drop_dir.glob("*.edi")) + list(out_dir.glob("demo_drop_*")):
        old.unlink()
    services = {name: (argv, env) for name, argv, env in service_commands(cfg, flower=False)}
    web_port = console_port(cfg)
    web_argv, web_env = services["web"]
    services["web"] = (web_argv, {**web_env, ENV_WEB_PORT: str(web_port)})

    def start(*names: str) -> None:
        for name in names:
            sup.start(name, services[name][0], env=services[name][1], cwd=cfg.envdir)
        first = len(sup.children) == len(names)
        say(f"started {', '.join(names)}" + (f" (their logs: {log_dir})" if first else ""))

    with sup.running(grace=30):
        start("worker", "monitor", "web")
        wait_until(lambda: port_answers(web_port), 30, "the web console to answer", sup)
        say(f"web console: http://127.0.0.1:{web_port}/ (user admin, password "
            f"{admin_password(cfg.directories.botssys)}) while the demo runs")
        before = drain_leftovers(cfg, sup, before)

        submitted = queue_jobs(cfg)
        for priority, argv, status in submitted:
            note = "  (keeps the worker busy for a moment)" if argv == ["demo_pause"] else ""
            print(f"  queued  p{priority}  {' '.join(argv):<28} {OUTCOME.get(status, status)}{note}")
        added = {job_key(a): p for p, a, st in submitted if job_key(a) and st == "added"}
        wanted = set(added)

        def queued_runs_done() -> bool:
            done = {r.key for r in runs_since(cfg, before) if r.ended is not None}
            return wanted <= done

        wait_until(queued_runs_done, WAIT_TIMEOUT, "the queued jobs to run", sup)
        # Beat only now: a slot of the schedule (or a run it makes up after the last demo) would
        # otherwise join the jobs above and blur their order. Its runs below say "beat".
        start("beat")
        beat_pid = sup.children[-1].pid
        wait_until(lambda: beat_running(cfg, beat_pid), WAIT_TIMEOUT, "beat to take its lock", sup)

        dropped: dict[str, float] = {}
        for i in range(1, DROP_FILES + 1):
            name = f"demo_drop_{i}.edi"
            dropped[name] = time.time()
            (drop_dir / name).write_bytes(f"UNA:+.? 'UNB+UNOC:3+DEMO+BOTSQ'demo file {i}'\n".encode())
            time.sleep(0.05)
        print(f"  dropped {DROP_FILES} files into {DROP_DIR} (watched by [{mon.name}], route {mon.route}, "
              f"priority {mon.priority})")
        wait_until(lambda: all((out_dir / n).exists() for n in dropped), WAIT_TIMEOUT,
                   f"the dropped files to reach {DROP_OUT}", sup)
        wait_until(lambda: all(r.ended is not None for r in runs_since(cfg, before)), 30,
                   "the last run to end", sup)
        latencies = sorted((out_dir / n).stat().st_mtime - t for n, t in dropped.items())

    runs = runs_since(cfg, before)

    def priority_of(r: RunRow) -> str:
        if r.key in added:
            return f"p{added[r.key]} queued"
        if r.routes == mon.route:
            return f"p{mon.priority} monitor"
        return "beat"

    print()
    print_runs(runs, priority_of)
    print(f"File to output ({len(latencies)} dropped files): min {latencies[0]:.2f} s, "
          f"median {statistics.median(latencies):.2f} s, max {latencies[-1]:.2f} s")
    say("all processed; worker, monitor, web console and beat stopped")
    return 0


# --------------------------------------------------------------------------- command

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", default="demo-env", help="folder for the demo environment (default ./demo-env)")


def run(args: argparse.Namespace) -> int:
    target = Path(os.path.expanduser(args.dir)).absolute()
    cfg = prepare_environment(target)
    register_secrets(cfg.secrets())
    say(f"environment {target}")
    broker = cfg.jobqueue.broker
    if not cfg.jobqueue.enabled:
        problem = f"[jobqueue] enabled is False in {cfg.ini_path}"
    else:
        problem = broker_problem(cfg, BROKER_TIMEOUT)
        problem = problem and f"no broker answers ({problem})"
    if problem:
        say(f"{problem}; running the engine directly on {mask_url(cfg.database_url).split(':')[0]}")
        return run_direct(cfg)
    say(f"broker {mask_url(broker)} answers: running worker, directory monitor and beat")
    try:
        return run_queue_demo(cfg)
    except DemoFailed as exc:
        say(f"failed: {exc}; see the logs in {cfg.directories.logging / 'demo'}")
        return 1
    except (KeyboardInterrupt, Stopped):
        say("interrupted; everything stopped")
        return 130
