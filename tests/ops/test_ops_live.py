"""Flower and ``botsq status`` against a real RabbitMQ vhost, a real worker and a real Flower.

One worker (bots-jobqueueserver) and one Flower (``botsq flower``) serve the whole module:

* Flower requires authentication: 401 without it, an authenticated user sees a finished
  ``bots.engine`` task; jobs sent through Flower's task API go through dedup and the allow-list;
* ``botsq status`` is healthy with the worker and its queue, and shows waiting jobs by priority;
* no secret from the config reaches a log line, a task argument shown in Flower, or the status.

The pickled-message refusal is tested by the queue's own tests
(tests/tasks/test_queue_brokers.py::test_malformed_messages_are_rejected_with_a_logged_reason), and
the allow-list through ``bots-job2queue`` there too; here the other two ways (``celery call``, Flower).
"""
from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from conftest import bin_path, free_port
from e2e_procs import Proc
from queue_helpers import (Worker, celery_call, ended, in_process, job2queue, jobqueue_log, make_queue_env,
                           proc_env, purge, started, wait_for)
from conftest import rabbit_vhost

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

FLOWER_USER, FLOWER_PW = "ops", f"flower-pw-{uuid.uuid4().hex[:6]}"
MAIL_PW = f"mail-pw-{uuid.uuid4().hex[:6]}"
SECRETS_INI = f"""
[email]
host = 127.0.0.1
port = 1
user = mailer
password = ${{BOTSQ_TEST_MAIL_PW}}

[flower]
basic_auth = {FLOWER_USER}:${{BOTSQ_TEST_FLOWER_PW}}
"""


def http(url: str, auth: tuple[str, str] | None = None, body: Any = None,
         method: str | None = None) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data else "GET"))
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


class Flower(Proc):
    """``botsq flower`` for the environment, on a free port, with its HTTP helpers."""

    def __init__(self, env, broker: str) -> None:  # type: ignore[no-untyped-def]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__("flower", [bin_path("botsq"), "flower", "-c", str(env.configdir), "--port", str(self.port)],
                         {**proc_env(env, broker), "BOTSQ_TEST_FLOWER_PW": FLOWER_PW, "BOTSQ_TEST_MAIL_PW": MAIL_PW},
                         env.root, env.root)

    def get(self, path: str, auth: bool = True) -> tuple[int, str]:
        return http(self.url + path, (FLOWER_USER, FLOWER_PW) if auth else None)

    def post(self, path: str, body: Any) -> tuple[int, str]:
        return http(self.url + path, (FLOWER_USER, FLOWER_PW), body)

    def tasks(self, name: str) -> dict[str, dict[str, Any]]:
        code, text = self.get(f"/api/tasks?taskname={name}")
        assert code == 200, text
        return json.loads(text)


@pytest.fixture(scope="module")
def live(rabbit_url: str, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    os.environ["BOTSQ_TEST_MAIL_PW"] = MAIL_PW          # for the in-process config of this module
    os.environ["BOTSQ_TEST_FLOWER_PW"] = FLOWER_PW
    env = make_queue_env(tmp_path_factory.mktemp("ops-live"), rabbit_url, extra="")
    ini = env.configdir / "bots.ini"
    ini.write_text(ini.read_text() + SECRETS_INI)
    worker_env = {"BOTSQ_TEST_MAIL_PW": MAIL_PW, "BOTSQ_TEST_FLOWER_PW": FLOWER_PW}
    os.environ.update(worker_env)
    ns = SimpleNamespace(env=env, broker=rabbit_url, cfg=in_process(env, rabbit_url))
    purge(env, rabbit_url)
    ns.worker = Worker(env, rabbit_url).wait_ready()
    ns.flower = Flower(env, rabbit_url)
    try:
        wait_for(lambda: _answers(ns.flower), 30, "Flower to answer", ns.flower)
        # Flower's event receiver is up once it has seen the worker's heartbeat
        wait_for(lambda: any(json.loads(ns.flower.get("/api/workers?status=true")[1]).values()), 30,
                 "Flower to see the worker", ns.flower)
        yield ns
    finally:
        ns.flower.stop()
        ns.worker.stop()
        for k in worker_env:
            os.environ.pop(k, None)


def _answers(flower: Flower) -> bool:
    try:
        return flower.get("/healthcheck", auth=False)[0] == 200
    except OSError:
        return False


def busy(ns, tag: str):  # type: ignore[no-untyped-def]
    """Keep the worker busy with a command job until the returned release() is called."""
    name, release = f"busy-{tag}", ns.env.root / f"release-{tag}"
    r = job2queue(ns.env, ns.broker, "-p1", "rec", name, f"@{release}")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: name in started(ns.env), 30, "the busy job to start", ns.worker)
    return name, lambda: release.write_text("go")


def engine_runs(ns) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from engine.db import session_scope
    from engine.models import Run

    with session_scope(ns.cfg.database_url) as s:
        return [r.as_dict() for r in s.scalars(select(Run).order_by(Run.id)).all()]


def status(ns, *args: str) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run([bin_path("botsq"), "status", "-c", str(ns.env.configdir), *args], cwd=ns.env.root,
                          env={**proc_env(ns.env, ns.broker), "BOTSQ_TEST_MAIL_PW": MAIL_PW,
                               "BOTSQ_TEST_FLOWER_PW": FLOWER_PW},
                          capture_output=True, text=True, timeout=60)


# --------------------------------------------------------------------------- Flower

def test_flower_requires_authentication(live) -> None:  # type: ignore[no-untyped-def]
    f = live.flower
    for path in ("/api/tasks", "/api/workers", "/", "/tasks"):
        code, _ = f.get(path, auth=False)
        assert code == 401, path
    assert http(f.url + "/api/tasks", (FLOWER_USER, "wrong"))[0] == 401
    assert f.get("/api/tasks")[0] == 200
    # /metrics is open by Flower's design (README says to firewall it); it holds no secret
    code, text = f.get("/metrics", auth=False)
    assert code == 200 and "flower_" in text and FLOWER_PW not in text and MAIL_PW not in text


def test_authenticated_user_sees_a_finished_engine_task(live) -> None:  # type: ignore[no-untyped-def]
    live.env.drop("data/in/flower-1.txt", "hello")
    r = job2queue(live.env, live.broker, "bots-engine", "--new", "r1")
    assert r.returncode == 0, r.stderr

    def finished() -> dict[str, Any] | None:
        return next((t for t in live.flower.tasks("bots.engine").values() if t.get("state") == "SUCCESS"), None)

    task = wait_for(finished, 30, "Flower to show a finished bots.engine task", live.worker)
    assert task["name"] == "bots.engine"
    assert "r1" in str(task.get("kwargs")) and "new" in str(task.get("kwargs"))
    assert (live.env.root / "data" / "out" / "flower-1.txt").read_text() == "hello"
    shown = json.dumps(task)
    assert FLOWER_PW not in shown and MAIL_PW not in shown and "guest:guest" not in shown


def test_jobs_sent_through_flower_go_through_dedup(live) -> None:  # type: ignore[no-untyped-def]
    before = len(engine_runs(live))
    live.env.drop("data/in/flower-2.txt", "two")
    name, release = busy(live, uuid.uuid4().hex[:6])
    job = {"kwargs": {"commands": ["new"], "routes": ["r1"]}}
    try:
        first = live.flower.post("/api/task/async-apply/bots.engine", job)
        second = live.flower.post("/api/task/send-task/bots.engine", job)
        assert first[0] == 200 and second[0] == 200, (first, second)
        ids = [json.loads(first[1])["task-id"], json.loads(second[1])["task-id"]]
        log = jobqueue_log(live.env)
        assert f"added {ids[0]} priority 5" in log
        assert f"message {ids[1]} expires unrun" in log
    finally:
        release()
    wait_for(lambda: f"dropped unrun {ids[1]}" in jobqueue_log(live.env), 30, "the duplicate to be dropped",
             live.worker)
    wait_for(lambda: len(engine_runs(live)) > before and engine_runs(live)[-1]["ended"], 30,
             "the engine job to run", live.worker)
    time.sleep(1.0)                        # a wrongly accepted duplicate would run now
    runs = engine_runs(live)[before:]
    assert [(r["commands"], r["routes"]) for r in runs] == [("new", "r1")], runs
    assert (live.env.root / "data" / "out" / "flower-2.txt").read_text() == "two"
    assert name in ended(live.env)


def test_priority_sent_through_flower_is_a_bots_priority(live) -> None:  # type: ignore[no-untyped-def]
    """README: the ``priority`` of Flower's API is Bots' 1 (highest) .. 9, as everywhere else."""
    tag = uuid.uuid4().hex[:6]
    name, release = busy(live, tag)
    try:
        low = live.flower.post("/api/task/async-apply/bots.command",
                               {"kwargs": {"name": "rec", "args": [f"fp9-{tag}"]}, "priority": 9})
        high = live.flower.post("/api/task/async-apply/bots.command",
                                {"kwargs": {"name": "rec", "args": [f"fp1-{tag}"]}, "priority": 1})
        assert low[0] == 200 and high[0] == 200, (low, high)
        log = jobqueue_log(live.env)
        assert f"added {json.loads(low[1])['task-id']} priority 9" in log
        assert f"added {json.loads(high[1])['task-id']} priority 1" in log
    finally:
        release()
    wait_for(lambda: f"fp9-{tag}" in ended(live.env), 30, "both Flower jobs to run", live.worker)
    order = [n for n in started(live.env) if n.endswith(tag)]
    assert order == [name, f"fp1-{tag}", f"fp9-{tag}"], order


def test_command_not_in_the_allow_list_is_refused_through_flower_and_celery_call(live) -> None:  # type: ignore[no-untyped-def]
    marker = live.env.root / "pwned"
    tag = uuid.uuid4().hex[:6]
    bad = {"name": "touch", "args": [str(marker)]}
    code, text = live.flower.post("/api/task/send-task/bots.command", {"kwargs": bad})
    assert code == 200, text
    flower_id = json.loads(text)["task-id"]
    call = celery_call(live.env, live.broker, "bots.command", {"name": "/usr/bin/touch", "args": [str(marker)]})
    assert call.returncode == 0, call.stderr
    call_id = call.stdout.strip().splitlines()[-1]
    # a job queued after both runs only once they were dealt with
    r = job2queue(live.env, live.broker, "-p9", "rec", f"after-{tag}")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: f"after-{tag}" in ended(live.env), 30, "the job after the refused ones", live.worker)
    log = jobqueue_log(live.env)
    assert not marker.exists()
    for task_id, name in ((flower_id, "touch"), (call_id, "/usr/bin/touch")):
        assert f"rejected bots.command[{task_id}] {name} {marker}: command {name!r} is not in [jobqueue.commands]" \
            in log, log[-3000:]
    assert live.worker.alive()


# --------------------------------------------------------------------------- botsq status

def test_status_is_healthy_and_shows_worker_queue_and_waiting_jobs(live) -> None:  # type: ignore[no-untyped-def]
    tag = uuid.uuid4().hex[:6]
    name, release = busy(live, tag)
    try:
        assert job2queue(live.env, live.broker, "-p3", "rec", f"w1-{tag}").returncode == 0
        assert job2queue(live.env, live.broker, "-p7", "rec", f"w2-{tag}").returncode == 0
        assert job2queue(live.env, live.broker, "-p7", "rec", f"w3-{tag}").returncode == 0
        res = status(live)
        assert res.returncode == 0, res.stdout + res.stderr
        out = res.stdout
        assert re.search(r"^  worker    ok    \S+@\S+ \(queues: engine, running 1\)$", out, re.M), out
        assert "waiting   3 job(s) (p3: 1, p7: 2)" in out
        assert out.rstrip().endswith("healthy")
        report = json.loads(status(live, "--json").stdout)
        assert report["healthy"] is True and report["workers"]["workers"][0]["queues"] == ["engine"]
        assert report["waiting"]["by_priority"] == {"3": 1, "7": 2}
    finally:
        release()
    wait_for(lambda: f"w3-{tag}" in ended(live.env), 30, "the waiting jobs", live.worker)
    for text in (res.stdout, res.stderr):
        assert FLOWER_PW not in text and MAIL_PW not in text and "guest:guest" not in text


def test_status_without_worker_is_unhealthy(live, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A broker that answers but where nobody consumes queue engine (a vhost of its own)."""
    with rabbit_vhost("noworker") as broker:
        other = make_queue_env(tmp_path / "other", broker)
        res = subprocess.run([bin_path("botsq"), "status", "-c", str(other.configdir)], cwd=other.root,
                             env=proc_env(other, broker), capture_output=True, text=True, timeout=60)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "workers   FAIL  no worker consumes queue 'engine'" in res.stdout
    assert res.stdout.rstrip().endswith("UNHEALTHY: no worker consumes queue 'engine'")


# --------------------------------------------------------------------------- secrets

def test_no_secret_reaches_a_log_line(live) -> None:  # type: ignore[no-untyped-def]
    logs = {p.name: p.read_text(errors="replace") for p in (live.env.root / "botssys" / "logging").glob("*.log")}
    logs["worker output"] = live.worker.output()
    logs["flower output"] = live.flower.output()
    assert "jobqueue.log" in logs and "engine.log" in logs
    for name, text in logs.items():
        for secret in (FLOWER_PW, MAIL_PW, "guest:guest"):
            assert secret not in text, f"{secret!r} in {name}"
