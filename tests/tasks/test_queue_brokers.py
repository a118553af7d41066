"""The job queue against real RabbitMQ and Redis, one real worker (bots-jobqueueserver) per broker.

Every test runs on both brokers. A "busy" job (a command that waits for a release file) keeps
the worker occupied while the test queues the jobs it wants ordered, deduplicated or raised.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from types import SimpleNamespace

import pytest

from queue_helpers import (Worker, botsq, celery_call, ended, in_process, job2queue, jobqueue_log, make_queue_env,
                           proc_env, purge, started, wait_for)
from tasks.registry import PendingRegistry, StartedJobs

pytestmark = [pytest.mark.rabbitmq, pytest.mark.redis]

FAIL_CMD = f"fail = {sys.executable} -c \"import sys; print('failing on purpose'); sys.exit(3)\""


@pytest.fixture(scope="module", params=["rabbitmq", "redis"])
def q(request, tmp_path_factory):
    broker = request.getfixturevalue("rabbit_url" if request.param == "rabbitmq" else "redis_url")
    env = make_queue_env(tmp_path_factory.mktemp(f"q-{request.param}"), broker, commands=FAIL_CMD)
    ns = SimpleNamespace(kind=request.param, broker=broker, env=env, cfg=in_process(env, broker))
    purge(env, broker)
    ns.worker = Worker(env, broker).wait_ready()
    yield ns
    ns.worker.stop()


def submit(q, argv, priority=5, result=False):
    from tasks.jobs import job_from_argv
    from tasks.submit import submit as _submit

    res = _submit(q.cfg, job_from_argv(q.cfg, argv), priority)
    return res if result else res.status


class Busy:
    """A job that keeps the worker busy until released."""

    def __init__(self, q) -> None:
        self.q = q
        self.name = f"busy-{uuid.uuid4().hex[:6]}"
        self.release_file = q.env.root / f"{self.name}.release"

    def __enter__(self) -> "Busy":
        assert submit(self.q, ["rec", self.name, f"@{self.release_file}"], 1) == "added"
        wait_for(lambda: self.name in started(self.q.env), 20, "the busy job to start", self.q.worker)
        return self

    def release(self) -> None:
        self.release_file.write_text("go")

    def __exit__(self, *exc) -> None:
        self.release()


def run_after(q, name_before: str) -> list[str]:
    """Names started after ``name_before``."""
    names = started(q.env)
    return names[names.index(name_before) + 1:]


def wait_done(q, names, timeout=30):
    wait_for(lambda: all(n in ended(q.env) for n in names), timeout, f"jobs {names} to end", q.worker)
    time.sleep(0.3)     # anything wrongly queued behind them would start now


def test_priorities_9_5_1_5_run_1_5_5_9_and_celery_call_gets_5(q):

    tag = uuid.uuid4().hex[:4]
    with Busy(q) as busy:
        assert submit(q, ["rec", f"p9-{tag}"], 9) == "added"
        r = celery_call(q.env, q.broker, "bots.command", {"name": "rec", "args": [f"c5-{tag}"]})
        assert r.returncode == 0, r.stderr
        assert submit(q, ["rec", f"p1-{tag}"], 1) == "added"
        assert submit(q, ["rec", f"p5-{tag}"], 5) == "added"
        waiting = {w.job: w.priority for w in PendingRegistry(q.cfg).waiting()}
        assert waiting == {f"rec p9-{tag}": 9, f"rec c5-{tag}": 5, f"rec p1-{tag}": 1, f"rec p5-{tag}": 5}
    wait_done(q, [f"p9-{tag}"])
    assert run_after(q, busy.name) == [f"p1-{tag}", f"c5-{tag}", f"p5-{tag}", f"p9-{tag}"]


def test_duplicates_discarded_via_job2queue_and_celery_call(q):
    name = f"dup-{uuid.uuid4().hex[:4]}"
    with Busy(q) as busy:
        r = job2queue(q.env, q.broker, "-p", "4", "rec", name)
        assert (r.returncode, r.stdout.strip()) == (0, "OK, job is added to queue"), r.stderr
        r = job2queue(q.env, q.broker, "rec", name)
        assert (r.returncode, r.stdout.strip()) == (4, "Duplicate job, not added."), r.stderr
        call = celery_call(q.env, q.broker, "bots.command", {"name": "rec", "args": [name]})
        assert call.returncode == 0, call.stderr
        dup_id = call.stdout.strip().splitlines()[-1]
    wait_done(q, [name])
    wait_for(lambda: f"dropped unrun {dup_id}" in jobqueue_log(q.env), 10, "the duplicate to be dropped", q.worker)
    assert f"dropped unrun {dup_id} (rec {name}): duplicate of a waiting job" in jobqueue_log(q.env)
    assert started(q.env).count(name) == 1
    assert run_after(q, busy.name) == [name]
    log = jobqueue_log(q.env)
    assert "duplicate discarded" in log and f"message {dup_id} expires unrun" in log


def test_identical_job_is_accepted_while_the_first_runs(q):
    name = f"again-{uuid.uuid4().hex[:4]}"
    release = q.env.root / f"{name}.release"
    assert submit(q, ["rec", name, f"@{release}"]) == "added"
    wait_for(lambda: name in started(q.env), 20, "the first run", q.worker)
    assert submit(q, ["rec", name, f"@{release}"]) == "added"
    assert submit(q, ["rec", name, f"@{release}"]) == "duplicate"
    release.write_text("go")
    wait_for(lambda: ended(q.env).count(name) == 2, 20, "the second run", q.worker)
    time.sleep(0.3)
    assert started(q.env).count(name) == 2


def test_duplicate_with_higher_priority_raises_the_waiting_job(q):
    tag = uuid.uuid4().hex[:4]
    with Busy(q) as busy:
        assert submit(q, ["rec", f"x-{tag}"], 7) == "added"
        assert submit(q, ["rec", f"y-{tag}"], 6) == "added"
        r = job2queue(q.env, q.broker, "-p2", "rec", f"x-{tag}")
        assert r.returncode == 0 and r.stdout.strip() == "OK, job is added to queue"   # as Bots answers it
        assert "raised to 2" in r.stderr
        assert submit(q, ["rec", f"x-{tag}"], 8) == "duplicate"    # lower priority: no change
    wait_done(q, [f"x-{tag}", f"y-{tag}"])
    assert run_after(q, busy.name) == [f"x-{tag}", f"y-{tag}"]
    log = jobqueue_log(q.env)
    assert f"priority raised: rec x-{tag}" in log and "superseded by a copy queued at a higher priority" in log


FLOOD_SCRIPT = r"""
import collections, sys
from engine.config import load_config
from tasks.jobs import job_from_argv
from tasks.submit import submit
cfg = load_config()
job = job_from_argv(cfg, ["rec", sys.argv[1]])
seen = collections.Counter(str(submit(cfg, job, 5).status) for _ in range(int(sys.argv[2])))
print(dict(seen))
"""


def test_eight_processes_submitting_the_same_job_leave_one_waiting(q):
    from tasks.broker import queue_depth
    from tasks.celeryapp import app_for

    name = f"flood-{uuid.uuid4().hex[:4]}"
    n = 1000
    with Busy(q) as busy:
        before = queue_depth(app_for(q.cfg))
        procs = [subprocess.Popen([sys.executable, "-c", FLOOD_SCRIPT, name, str(n)], cwd=q.env.root,
                                  env=proc_env(q.env, q.broker), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(8)]
        outs = [p.communicate(timeout=180) for p in procs]
        assert all(p.returncode == 0 for p in procs), [e for _o, e in outs]
        totals: dict[str, int] = {}
        for out, _err in outs:
            for k, v in eval(out.strip().splitlines()[-1]).items():  # noqa: S307 - our own script's dict
                totals[k] = totals.get(k, 0) + v
        assert totals == {"added": 1, "duplicate": 8 * n - 1}
        assert [w.job for w in PendingRegistry(q.cfg).waiting()] == [f"rec {name}"]
        assert queue_depth(app_for(q.cfg)) == before + 1
    wait_done(q, [name])
    assert run_after(q, busy.name) == [name]


def test_stale_registry_entry_is_detected_and_replaced(q):
    from tasks.broker import QUEUE
    from tasks.celeryapp import app_for

    name = f"stale-{uuid.uuid4().hex[:4]}"
    with Busy(q) as busy:
        assert submit(q, ["rec", name]) == "added"
        with app_for(q.cfg).connection_for_write() as conn:      # the broker loses the message
            conn.default_channel.queue_purge(QUEUE)
        assert submit(q, ["rec", name]) == "duplicate"            # too young to call it stale
        time.sleep(1.2)                                            # [jobqueue] stale_after = 1
        r = job2queue(q.env, q.broker, "rec", name)
        assert (r.returncode, r.stdout.strip()) == (0, "OK, job is added to queue"), r.stderr
        assert len(PendingRegistry(q.cfg).waiting()) == 1
    wait_done(q, [name])
    assert run_after(q, busy.name) == [name]
    assert "replaced stale registry entry" in jobqueue_log(q.env)


def test_botsq_queue_shows_waiting_jobs_and_clear_purges_queue_and_registry(q):
    tag = uuid.uuid4().hex[:4]
    with Busy(q) as busy:
        submit(q, ["rec", f"a-{tag}"], 3)
        submit(q, ["bots-engine", "--new", "r1"], 7)
        r = botsq(q.env, q.broker, "queue", "--json")
        assert r.returncode == 0, r.stderr
        data = json.loads(r.stdout)
        assert [(w["job"], w["priority"]) for w in data["waiting"]] == [(f"rec a-{tag}", 3),
                                                                        ("bots-engine --new r1", 7)]
        assert all(w["age_s"] >= 0 for w in data["waiting"]) and data["broker_messages"] == 2
        assert [x["job"] for x in data["running"]] == [f"rec {busy.name} @{busy.release_file}"]
        r = botsq(q.env, q.broker, "queue")
        assert "p3" in r.stdout and f"rec a-{tag}" in r.stdout and "running" in r.stdout
        r = botsq(q.env, q.broker, "queue", "clear")
        assert r.returncode == 0 and "purged 2 waiting message(s)" in r.stdout and "removed 2 registry" in r.stdout
        assert json.loads(botsq(q.env, q.broker, "queue", "--json").stdout)["waiting"] == []
        assert submit(q, ["rec", f"a-{tag}"], 3) == "added"        # not a duplicate any more
    wait_done(q, [f"a-{tag}"])
    assert run_after(q, busy.name) == [f"a-{tag}"]


def test_allow_listed_command_runs_with_output_logged_and_no_shell(q):
    r = job2queue(q.env, q.broker, "-p3", "rec", "safe; touch pwned", "$(touch pwned2)")
    assert r.returncode == 0, r.stderr
    wait_done(q, ["safe; touch pwned"])
    r = job2queue(q.env, q.broker, "fail")
    assert r.returncode == 0
    wait_for(lambda: "fail: exit status 3" in jobqueue_log(q.env), 20, "the failing command", q.worker)
    log = jobqueue_log(q.env)
    assert "rec: rec safe; touch pwned: hello from a job" in log and "rec: exit status 0" in log
    assert "fail: failing on purpose" in log
    assert not (q.env.root / "pwned").exists() and not (q.env.root / "pwned2").exists()
    for argv in (["/bin/echo", "hi"], ["sh", "-c", "rec x"], ["rec2"]):
        r = job2queue(q.env, q.broker, *argv)
        assert r.returncode == 1 and "command not allowed" in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_malformed_messages_are_rejected_with_a_logged_reason(q):
    import pickle

    from kombu import Producer

    from tasks import priority as prio
    from tasks.celeryapp import app_for

    tag = uuid.uuid4().hex[:4]
    ids = {k: f"{k}-{tag}" for k in ("badjson", "kwargs", "route", "pickle", "unknown", "args")}
    p = prio.to_broker(5, prio.broker_kind(q.broker))

    def headers(kind: str, task: str = "bots.engine") -> dict:
        return {"id": ids[kind], "task": task, "lang": "py", "argsrepr": "", "kwargsrepr": ""}

    with Busy(q) as busy, app_for(q.cfg).connection_for_write() as conn:     # Redis: its priority lists
        prod = Producer(conn)
        send = lambda body, kind, ctype="application/json", task="bots.engine": prod.publish(  # noqa: E731
            body, routing_key="engine", exchange="", headers=headers(kind, task), content_type=ctype,
            content_encoding="utf-8", serializer=None, priority=p)
        send(b"{not json", "badjson")
        send(json.dumps([[], {"routes": ["r1"], "bogus": 1}, {}]), "kwargs")
        send(json.dumps([[], {"routes": ["nope"]}, {}]), "route")
        send(pickle.dumps(([], {"name": "rec", "args": ["pickled"]}, {})), "pickle",
             ctype="application/x-python-serialize", task="bots.command")
        send(json.dumps([[], {}, {}]), "unknown", task="bots.nothing")
        send(json.dumps([["x"], {}, {}]), "args")
        assert submit(q, ["rec", f"after-{tag}"], 9) == "added"
    wait_done(q, [f"after-{tag}"])
    log = jobqueue_log(q.env)
    assert f"rejected message {ids['badjson']}" in log
    assert f"rejected bots.engine[{ids['kwargs']}]" in log and "unknown argument(s) 'bogus'" in log
    assert f"rejected bots.engine[{ids['route']}] bots-engine --new nope: unknown route 'nope'" in log
    assert f"rejected message {ids['pickle']}" in log and "pickled" not in started(q.env)
    assert f"rejected message {ids['unknown']}" in log and "unknown task" in log
    assert f"rejected bots.engine[{ids['args']}]" in log and "keyword arguments only" in log
    assert q.worker.alive() and run_after(q, busy.name) == [f"after-{tag}"]


def test_refused_messages_are_one_line_on_the_console_too(q):
    """A refused job (unknown route, bad kwargs, a command not in the list) is one line on the
    worker's console as in jobqueue.log - no Celery ``Reject`` traceback."""
    tag = uuid.uuid4().hex[:4]
    offset = len(q.worker.output())
    with Busy(q):
        for task, kwargs in (("bots.engine", {"commands": ["new"], "routes": [f"nosuch{tag}"]}),
                             ("bots.engine", {"commands": ["new"], "bogus": tag}),
                             ("bots.command", {"name": f"notlisted{tag}"})):
            r = celery_call(q.env, q.broker, task, kwargs)
            assert r.returncode == 0, r.stderr
        assert submit(q, ["rec", f"after-{tag}"], 9) == "added"
    wait_done(q, [f"after-{tag}"])
    console = q.worker.output()[offset:]
    assert f"unknown route 'nosuch{tag}'" in console and "unknown argument(s) 'bogus'" in console
    assert f"command 'notlisted{tag}' is not in [jobqueue.commands]" in console
    assert "Traceback" not in console and "Reject(" not in console, console
    assert sum("rejected" in line for line in console.splitlines()) == 3, console


def test_a_job_of_another_config_dir_is_refused_and_runs_nothing_of_it(q, tmp_path):
    """Whoever can publish to the broker cannot pick the bots.ini a job runs with: a job naming a
    config dir other than the worker's (not in its [jobqueue] configdirs) is refused in one line."""
    tag = uuid.uuid4().hex[:4]
    mark = tmp_path / "pwned"
    evil = make_queue_env(tmp_path / "evil", q.broker,
                          commands=f"x{tag} = {sys.executable} -c \"open({str(mark)!r}, 'w')\"")
    offset = len(q.worker.output())
    with Busy(q):
        for task, kwargs in (("bots.command", {"name": f"x{tag}", "configdir": str(evil.configdir)}),
                             ("bots.command", {"name": "rec", "args": [f"evil-{tag}"],
                                               "configdir": str(evil.configdir)}),
                             ("bots.engine", {"commands": ["new"], "configdir": str(evil.configdir)}),
                             ("bots.engine", {"commands": ["new"], "configdir": str(tmp_path)})):
            r = celery_call(q.env, q.broker, task, kwargs)
            assert r.returncode == 0, r.stderr
        assert submit(q, ["rec", f"after-{tag}"], 9) == "added"
    wait_done(q, [f"after-{tag}"])
    assert not mark.exists() and f"evil-{tag}" not in started(q.env) and f"evil-{tag}" not in started(evil)
    assert "started" not in jobqueue_log(evil) and not (tmp_path / "botssys").exists()
    log = jobqueue_log(q.env)
    assert log.count(f"config dir {evil.configdir} refused") == 3, log
    assert f"config dir {tmp_path} refused" in log
    console = q.worker.output()[offset:]
    assert "Traceback" not in console and console.count(" refused: ") == 4, console


def test_a_second_worker_with_a_node_name_in_use_exits_1_in_one_line_and_with_its_own_name_stands_by(q):
    """Two bots-jobqueueservers on one host: the second, under the name in use, used to retry for ever
    (RESOURCE_LOCKED, RestartFreqExceeded tracebacks); it says so in one line instead, and with a name of
    its own (-n) it runs beside the first (hot standby, README "Laying lanes on hosts")."""
    import socket

    node = q.worker.proc.args[q.worker.proc.args.index("-n") + 1]
    argv = list(q.worker.proc.args)
    r = subprocess.run(argv, env=proc_env(q.env, q.broker), cwd=q.env.root, capture_output=True, text=True,
                       timeout=60)
    used = node.replace("%h", socket.gethostname())
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr == (f"bots-jobqueueserver: error: node name {used} is in use by a running worker (another "
                        f"bots-jobqueueserver on this host?); give this one its own with -n/--hostname, e.g. "
                        f"-n standby@%h\n"), r.stderr
    standby = Worker(q.env, q.broker).wait_ready()
    try:
        tag = uuid.uuid4().hex[:4]
        assert submit(q, ["rec", f"both-{tag}"]) == "added"
        wait_done(q, [f"both-{tag}"])
    finally:
        standby.stop()


def test_status_of_another_environment_on_the_same_broker_does_not_count_this_worker(q, tmp_path):
    """Two environments on one vhost: ``botsq status -c B`` used to report A's worker as B's own."""
    other = make_queue_env(tmp_path / "b", q.broker)
    r = botsq(other, q.broker, "status", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    report = json.loads(r.stdout)["workers"]
    node = q.worker.proc.args[q.worker.proc.args.index("-n") + 1].split("@")[0]
    assert [w["name"].split("@")[0] for w in report["foreign_workers"]] == [node], report
    assert report["foreign_workers"][0]["configdir"] == str(q.env.configdir) and report["workers"] == []
    assert f"serves config dir {q.env.configdir}, not this one" in report["error"]
    r = botsq(q.env, q.broker, "status", "--json")
    assert json.loads(r.stdout)["workers"]["foreign_workers"] == []
    # a worker whose bots.ini lists this config dir in [jobqueue] configdirs serves it (Bots' -Cconfigprod)
    ini = q.env.configdir / "bots.ini"
    text = ini.read_text()
    ini.write_text(text.replace("[jobqueue]\n", f"[jobqueue]\nconfigdirs = {other.configdir}\n", 1))
    try:
        report = json.loads(botsq(other, q.broker, "status", "--json").stdout)["workers"]
        assert report["foreign_workers"] == [] and [w["name"].split("@")[0] for w in report["workers"]] == [node]
    finally:
        ini.write_text(text)


def test_engine_job_runs_reports_progress_and_waits_for_a_live_lock(q):
    import logging

    from engine.lock import acquire
    from tasks.celeryapp import app_for

    q.env.drop("data/sin/slow-1.edi", "1.0")
    app = app_for(q.cfg)
    progress: list[dict] = []
    conn = app.connection_for_read()
    recv = app.events.Receiver(conn, handlers={"task-progress": progress.append})
    t = threading.Thread(target=lambda: recv.capture(limit=None, timeout=None, wakeup=False), daemon=True)
    t.start()
    time.sleep(0.5)
    got = acquire(q.cfg, logging.getLogger("test"))        # a live run elsewhere holds the engine
    assert got.lock is not None
    got.lock.start_heartbeat()
    try:
        res = submit(q, ["bots-engine", "--new", "slow"], 2, result=True)
        assert res.status == "added"
        wait_for(lambda: f"job {res.task_id} waits for the engine" in jobqueue_log(q.env), 20, "the job to wait",
                 q.worker)
        time.sleep(1.0)
        assert not (q.env.root / "data/sout/slow-1.edi").exists()
    finally:
        got.lock.release()
    wait_for(lambda: (StartedJobs(q.cfg).get(res.task_id) or {}).get("state") == "done", 30, "the engine run",
             q.worker)
    assert (q.env.root / "data/sout/slow-1.edi").read_text() == "1.0"
    wait_for(lambda: any(e.get("progress", {}).get("route") == "slow" for e in progress), 10, "progress events")
    recv.should_stop = True
    t.join(10)
    conn.release()
    assert any(str(e.get("result", "")).startswith("waiting: engine is locked") for e in progress), progress
    assert all(e["uuid"] == res.task_id for e in progress)
    from celery.events.state import State                 # what Flower keeps per task

    state = State()
    state.event({"type": "task-started", "uuid": res.task_id, "timestamp": progress[0]["timestamp"] - 1,
                 "hostname": "w", "local_received": time.time(), "clock": 0})
    for e in progress:
        state.event(dict(e))
    task = state.tasks[res.task_id]
    assert task.state == "PROGRESS" and "route slow" in task.result, (task.state, task.result)


def test_job2queue_with_the_broker_down_exits_1_and_leaves_no_entry(q):
    from conftest import free_port

    before = PendingRegistry(q.cfg).count()
    scheme = "amqp://guest:guest@" if q.kind == "rabbitmq" else "redis://"
    down = f"{scheme}127.0.0.1:{free_port()}/"
    t0 = time.monotonic()
    r = job2queue(q.env, down, "rec", f"down-{uuid.uuid4().hex[:4]}")
    assert r.returncode == 1 and r.stdout == ""
    assert "cannot be reached within 3 s" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert time.monotonic() - t0 < 15
    assert PendingRegistry(q.cfg).count() == before
