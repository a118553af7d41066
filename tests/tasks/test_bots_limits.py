"""``[engine] kind = bots`` at its time limits, through a real worker on RabbitMQ (issue 11):

- ``[jobqueue] hardtimelimit`` (minutes; a fraction is accepted) ends a hanging Bots child - SIGTERM,
  then SIGKILL after ``[engine] grace`` for one that ignores SIGTERM - the run is recorded killed, the
  job ends, and the next job runs;
- Bots locked (exit 3) for longer than ``[settings] maxruntime``: the queued job keeps trying all that
  time, then gives up with a report mail and a line in jobqueue.log. Bots reads maxruntime as whole
  minutes (``ini.getint``) and botsq reads the same bots.ini, so the test waits one real minute.

The reports go to the suite's SMTP server (aiosmtpd, tests/channel_servers.py)."""
from __future__ import annotations

import json
import os
import re
import signal
import time
from datetime import datetime
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from bots_helpers import STANDIN_COMMAND, standin_events, standin_started
from channel_servers import HOST, SmtpServer
from conftest import Env
from queue_helpers import Worker, botsq, in_process, job2queue, jobqueue_log, purge, wait_for
from tasks.registry import StartedJobs

pytestmark = [pytest.mark.rabbitmq, pytest.mark.procs, pytest.mark.slow]

HARD_MINUTES = 0.05         # 3 s
GRACE = 1.0                 # seconds from SIGTERM to SIGKILL


def limits_ini(broker: str, smtp_port: int) -> str:
    return f"""
[settings]
maxruntime = 1
sendreportiferror = True
lock_heartbeat = 0.5
lock_grace = 4

[engine]
kind = bots
command = {STANDIN_COMMAND}
grace = {GRACE}

[jobqueue]
enabled = True
broker = {broker}
connect_timeout = 3
stale_after = 1
hardtimelimit = {HARD_MINUTES}

[email]
host = {HOST}
port = {smtp_port}
sender = botsq@us.example
managers = edi-ops@us.example
"""


@pytest.fixture(scope="module")
def site(module_vhost: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    root = tmp_path_factory.mktemp("bots-limits")
    lockfile = root / "bots.lock"
    saved = os.environ.get("BOTS_STANDIN_LOCKFILE")
    os.environ["BOTS_STANDIN_LOCKFILE"] = str(lockfile)      # the worker (and so the stand-in) inherits it
    with SmtpServer() as mail:
        env = Env(root).write(limits_ini(module_vhost, mail.port))
        purge(env, module_vhost)
        worker = Worker(env, module_vhost).wait_ready(60)
        try:
            yield SimpleNamespace(env=env, broker=module_vhost, worker=worker, mail=mail, lockfile=lockfile)
        finally:
            worker.stop()
            if saved is None:
                os.environ.pop("BOTS_STANDIN_LOCKFILE", None)
            else:
                os.environ["BOTS_STANDIN_LOCKFILE"] = saved


def queue(site: SimpleNamespace, *argv: str) -> str:
    """Queue ``bots-engine ARGV``; the job's task id (from jobqueue.log)."""
    r = job2queue(site.env, site.broker, "bots-engine", *argv)
    assert r.returncode == 0 and "OK, job is added to queue" in r.stdout, (r.stdout, r.stderr)
    line = re.escape(" ".join(argv))
    return wait_for(lambda: (m := re.search(rf"added (\S+) priority \d: bots-engine --new {line} \[config",
                                            jobqueue_log(site.env))) and m.group(1), 10, "the job logged")


def runs_of(site: SimpleNamespace, routes: str) -> list[dict]:
    r = botsq(site.env, site.broker, "runs", "--json", "--limit", "200")
    assert r.returncode == 0, r.stderr
    return [x for x in json.loads(r.stdout) if x["routes"] == routes and x["ended"]]


def job_state(site: SimpleNamespace, task_id: str) -> str | None:
    return (StartedJobs(in_process(site.env, site.broker)).get(task_id) or {}).get("state")


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


@pytest.mark.parametrize("kind, sig", [("hang", signal.SIGTERM), ("stubborn", signal.SIGKILL)])
def test_hard_time_limit_ends_the_child_records_it_killed_and_the_next_job_runs(
        site: SimpleNamespace, kind: str, sig: signal.Signals) -> None:
    route = f"{kind}{time.monotonic_ns()}"
    stuck = queue(site, kind, route)
    nxt = f"next{time.monotonic_ns()}"
    queue(site, nxt)
    [child] = wait_for(lambda: [e for e in standin_started(site.env.configdir) if route in e["routes"]], 60,
                       "the hanging child to start", site.worker)
    [run] = wait_for(lambda: runs_of(site, f"{kind},{route}"), 60, "the hung run to end", site.worker)
    assert (run["status"], run["returncode"], run["exit_signal"]) == ("killed", None, sig), run
    assert gone(child["pid"])                       # no Bots process left behind holding Bots' lock
    took = (datetime.fromisoformat(run["ended"]) - datetime.fromisoformat(run["started"])).total_seconds()
    least = HARD_MINUTES * 60 + (GRACE if sig == signal.SIGKILL else 0)
    assert least <= took < least + 20, took
    log = jobqueue_log(site.env)
    assert "reached the hard time limit ([jobqueue] hardtimelimit = 0.05 minutes)" in log
    assert f"ended by the hard time limit (0.05 minutes), {sig.name}" in run["message"]
    wait_for(lambda: job_state(site, stuck) == "failed", 20, "the stuck job to end as failed", site.worker)
    # the worker goes on: the job queued behind it runs
    [after] = wait_for(lambda: runs_of(site, nxt), 60, "the next job to run", site.worker)
    assert (after["status"], after["returncode"]) == ("ok", 0)
    mails = [m.message() for m in site.mail.mails]
    assert any(f"Bots engine run {run['id']} failed" in m["Subject"] for m in mails), [m["Subject"] for m in mails]


def test_bots_locked_longer_than_maxruntime_the_job_gives_up_with_a_report(site: SimpleNamespace) -> None:
    route = f"locked{time.monotonic_ns()}"

    def tries() -> list[float]:
        return [e["time"] for e in standin_events(site.env.configdir)
                if e["event"] == "locked" and e["argv"][-1:] == [route]]

    site.lockfile.write_text("someone runs Bots by hand")
    try:
        task_id = queue(site, route)
        wait_for(lambda: len(tries()) >= 4, 30, "the job to find Bots locked", site.worker)
        assert job_state(site, task_id) == "running"
        given_up = wait_for(lambda: re.search(rf"job {task_id} \(.*\) given up: the engine stayed locked for "
                                              r"[\d.]+ minutes \(maxruntime 1\)", jobqueue_log(site.env)),
                            150, "the job to give up", site.worker)
        assert given_up
        seen = tries()
        # never dropped early: tried again and again until a minute had passed since the first try
        assert seen[-1] - seen[0] >= 60, seen
        assert len(seen) >= 6 and all(b > a for a, b in zip(seen, seen[1:]))
        wait_for(lambda: job_state(site, task_id) == "gaveup", 20, "the job recorded as given up", site.worker)
        subjects = [m.message()["Subject"] for m in site.mail.mails]
        assert f"[botsq] job bots-engine --new {route} given up" in subjects, subjects
        time.sleep(3)
        assert tries() == seen                      # given up means given up: no redelivery
    finally:
        site.lockfile.unlink(missing_ok=True)
    # the worker is free again
    nxt = f"next{time.monotonic_ns()}"
    queue(site, nxt)
    [after] = wait_for(lambda: runs_of(site, nxt), 60, "the next job to run", site.worker)
    assert after["status"] == "ok"
