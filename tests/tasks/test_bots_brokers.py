"""``[engine] kind = bots`` through real workers on RabbitMQ and Redis: a queued job runs the Bots
stand-in (tests/bots_standin.py) as a child; Bots locked (exit 3) waits and runs again; an unknown
route is a failed job; a killed pool process leaves no orphan and the job runs again; ``botsq status``
shows the engine kind and whether its command can start; a warm shutdown lets the child finish; a
worker whose Bots engine cannot start refuses to start."""
from __future__ import annotations

import os
import re
import signal
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from bots_helpers import BOTS_OWN_KEYS, engine_section, standin_events, standin_started
from conftest import Env, free_port
from queue_helpers import Worker, botsq, in_process, job2queue, jobqueue_log, purge, wait_for
from tasks.registry import StartedJobs

pytestmark = [pytest.mark.rabbitmq, pytest.mark.redis]


def bots_queue_ini(broker: str, command: str | None = None, port: int = 28081) -> str:
    engine = engine_section() if command is None else engine_section(command)
    return BOTS_OWN_KEYS.replace("port = 28081", f"port = {port}") + engine + f"""
[jobqueue]
enabled = True
broker = {broker}
connect_timeout = 3
max_retries = 2
stale_after = 1
"""


@pytest.fixture(scope="module", params=["rabbitmq", "redis"])
def bq(request, tmp_path_factory):
    broker = request.getfixturevalue("rabbit_url" if request.param == "rabbitmq" else "redis_url")
    root = tmp_path_factory.mktemp(f"bots-{request.param}")
    port = free_port()                         # Bots' [settings] port: the stand-in binds it as Bots does
    env = Env(root).write(bots_queue_ini(broker, port=port))
    lockfile = root / "bots.lock"
    saved = {k: os.environ.get(k) for k in ("BOTS_STANDIN_LOCKFILE", "BOTS_STANDIN_SLEEP", "BOTS_STANDIN_PORT")}
    os.environ.update(BOTS_STANDIN_LOCKFILE=str(lockfile), BOTS_STANDIN_SLEEP="4", BOTS_STANDIN_PORT=str(port))
    purge(env, broker)
    worker = Worker(env, broker).wait_ready()
    yield SimpleNamespace(kind=request.param, broker=broker, env=env, worker=worker, lockfile=lockfile, port=port)
    worker.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def queue(bq, *argv: str) -> None:
    r = job2queue(bq.env, bq.broker, *argv)
    assert r.returncode == 0 and "OK, job is added to queue" in r.stdout, (r.stdout, r.stderr)


def ended_runs(bq, route: str) -> list[dict]:
    import json
    r = botsq(bq.env, bq.broker, "runs", "--json", "--limit", "100")
    assert r.returncode == 0, r.stderr
    return [x for x in json.loads(r.stdout) if x["routes"] == route and x["ended"]]


def test_job2queue_runs_the_bots_engine_with_its_options_and_records_it(bq):
    route = f"r{time.monotonic_ns()}"
    queue(bq, "python3", "/usr/local/bin/bots-engine.py", "--new", "--rereceive", route)
    [run] = wait_for(lambda: ended_runs(bq, route), 60, "the Bots run to be recorded", bq.worker)
    assert (run["kind"], run["status"], run["returncode"], run["received"]) == ("bots", "ok", 0, 3)
    started = [e for e in standin_started(bq.env.configdir) if route in e["routes"]]
    assert started[0]["argv"] == ["--rereceive", "--new", f"-c{bq.env.configdir}", route]
    log = jobqueue_log(bq.env)
    assert "| bots-engine: " in log and "3 files received/processed in run." in log


def test_bots_locked_exit_3_waits_with_backoff_then_runs(bq):
    route = f"locked{time.monotonic_ns()}"
    bq.lockfile.write_text("someone runs Bots by hand")
    try:
        queue(bq, "bots-engine", route)
        wait_for(lambda: sum(e["event"] == "locked" for e in standin_events(bq.env.configdir)
                             if route in e.get("argv", [])[-1:]) >= 3, 60, "three locked tries", bq.worker)
    finally:
        bq.lockfile.unlink()
    [run] = wait_for(lambda: [r for r in ended_runs(bq, route) if r["status"] == "ok"], 60, "the run after the lock",
                     bq.worker)
    tries = [e["time"] for e in standin_events(bq.env.configdir) if route in e.get("argv", [])[-1:]
             and e["event"] == "locked"]
    gaps = [b - a for a, b in zip(tries, tries[1:])]
    assert gaps == sorted(gaps) or gaps[-1] > gaps[0], gaps          # waits grow: no busy loop
    assert [r["id"] for r in ended_runs(bq, route)] == [run["id"]]    # one record for the wait and the run
    assert f"(try {len(tries) + 1}: Bots was locked before)" in run["message"], run["message"]
    assert "waits for the engine" in jobqueue_log(bq.env)


def test_a_job_waiting_for_bots_port_tries_again_as_soon_as_the_port_is_free(bq):
    """Bots' [settings] port held (Bots run by hand, as Bots' own engine checks it): the job does not
    sleep out its growing wait - it tries again within a poll of the port's release."""
    route = f"port{time.monotonic_ns()}"
    with socket.socket() as held:
        held.bind(("127.0.0.1", bq.port))
        queue(bq, "bots-engine", route)
        wait_for(lambda: [e for e in standin_events(bq.env.configdir)
                          if e["event"] == "locked" and e["argv"][-1:] == [route]], 60, "a locked try", bq.worker)
        # the waits double from 0.25 s: after 17 s the next try would come at ~31.75 s without the probe
        time.sleep(17)
        released = time.time()
    [run] = wait_for(lambda: [r for r in ended_runs(bq, route) if r["status"] == "ok"], 60, "the run after the port",
                     bq.worker)
    [start] = [e for e in standin_started(bq.env.configdir) if e["argv"][-1:] == [route]]
    assert start["time"] - released < 8, start["time"] - released
    assert [r["id"] for r in ended_runs(bq, route)] == [run["id"]]


def test_unknown_route_is_a_failed_job(bq):
    route = f"unknown{time.monotonic_ns()}"
    queue(bq, "bots-engine", route)
    [run] = wait_for(lambda: ended_runs(bq, route), 60, "the run", bq.worker)
    assert (run["status"], run["returncode"]) == ("failed", 0)
    wait_for(lambda: f"Bots has no (active) route {route}" in jobqueue_log(bq.env), 20, "the failure logged")
    task_id = re.search(rf"added (\S+) priority \d: bots-engine --new {route}", jobqueue_log(bq.env)).group(1)
    cfg = in_process(bq.env, bq.broker)
    state = wait_for(lambda: (StartedJobs(cfg).get(task_id) or {}).get("state") == "failed", 20, "the job failed")
    assert state


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return True
    return state == "Z"


def test_killed_pool_process_leaves_no_orphan_and_the_job_runs_again(bq):
    route = f"slow{time.monotonic_ns()}"
    queue(bq, "bots-engine", "slow", route)
    first = wait_for(lambda: [e for e in standin_started(bq.env.configdir) if route in e["routes"]], 60,
                     "the Bots child to start", bq.worker)[0]
    pool = bq.worker.children()
    assert pool, "no pool process"
    for pid in pool:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: _gone(first["pid"]), 10, "the orphaned Bots child to end (PR_SET_PDEATHSIG)")
    again = wait_for(lambda: [e for e in standin_started(bq.env.configdir) if route in e["routes"]
                              and e["pid"] != first["pid"]], 90, "the job to run again", bq.worker)
    assert again
    wait_for(lambda: [r for r in ended_runs(bq, f"slow,{route}") if r["status"] == "ok"], 60, "the rerun to end",
             bq.worker)


@pytest.mark.parametrize("celery_cli", [False, True], ids=["bots-jobqueueserver", "celery-worker"])
def test_worker_refuses_to_start_when_the_bots_command_is_not_found(bq, tmp_path, celery_cli):
    env = Env(tmp_path / "bad").write(bots_queue_ini(bq.broker, command="/nonexistent/bin/bots-engine"))
    w = Worker(env, bq.broker, celery_cli=celery_cli)
    try:
        code = w.proc.wait(60)
    finally:
        w.stop()
    out = w.output()
    assert code == 1, out[-2000:]
    assert "[engine] command: /nonexistent/bin/bots-engine: not found" in out


def test_botsq_status_shows_the_bots_engine_and_its_health(bq, tmp_path):
    import json
    import shlex

    from bots_helpers import STANDIN_COMMAND
    r = botsq(bq.env, bq.broker, "status")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"  engine    ok    bots: {shlex.join(shlex.split(STANDIN_COMMAND))}\n" in r.stdout, r.stdout
    assert re.search(r"^  worker    ok    \S+ \(queues: engine", r.stdout, re.M), r.stdout
    r = botsq(bq.env, bq.broker, "status", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["engine"] == {"kind": "bots", "command": shlex.join(shlex.split(STANDIN_COMMAND)),
                                "healthy": True, "problem": None, "warning": None}
    assert report["healthy"] and report["workers"]["ok"]
    # the same queue and worker, but a config whose Bots engine cannot start: unhealthy, exit 1, one line
    script = tmp_path / "bots-engine"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    bad = Env(tmp_path / "bad").write(bots_queue_ini(bq.broker, command=str(script)))
    r = botsq(bad, bq.broker, "status")
    problem = f"[engine] command: {script}: not executable"
    assert r.returncode == 1 and re.search(rf"^  engine    FAIL  bots: .*{re.escape(problem)}$", r.stdout, re.M), \
        r.stdout + r.stderr
    report = json.loads(botsq(bad, bq.broker, "status", "--json").stdout)
    assert report["engine"]["healthy"] is False and report["engine"]["problem"].endswith(problem)
    assert report["engine"]["problem"] in report["problems"] and not report["healthy"]


def test_warm_shutdown_lets_the_child_finish(bq):
    """Last of the module: it stops the module's worker (a second worker on the same queue would take the job)."""
    route = f"slow{time.monotonic_ns()}"
    queue(bq, "bots-engine", "slow", route)
    wait_for(lambda: [e for e in standin_started(bq.env.configdir) if route in e["routes"]], 60,
             "the child to start", bq.worker)
    bq.worker.proc.send_signal(signal.SIGTERM)          # warm shutdown
    assert bq.worker.proc.wait(60) == 0
    [run] = ended_runs(bq, f"slow,{route}")
    assert (run["status"], run["returncode"]) == ("ok", 0)
    ends = [e for e in standin_events(bq.env.configdir) if e["event"] == "end"]
    assert ends[-1]["code"] == 0
