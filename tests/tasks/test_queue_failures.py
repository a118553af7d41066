"""The job queue when things go wrong: workers killed mid-job, two workers, timeouts shorter than a
job, a broker restarted with jobs waiting. Real brokers, real worker processes, one per test."""
from __future__ import annotations

import os
import random
import re
import signal
import subprocess

import pytest

from queue_helpers import (Worker, botsq, celery_call, ended, events, in_process, job2queue, jobqueue_log,
                           make_queue_env, purge, started, wait_for)
from tasks.registry import StartedJobs


def submit(cfg, argv, priority=5):
    from tasks.jobs import job_from_argv
    from tasks.submit import submit as _submit

    return _submit(cfg, job_from_argv(cfg, argv), priority)


@pytest.fixture
def rabbit_env(rabbit_url, tmp_path):
    env = make_queue_env(tmp_path / "env", rabbit_url)
    purge(env, rabbit_url)
    workers: list[Worker] = []
    yield env, in_process(env, rabbit_url), workers
    for w in workers:
        w.stop()


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.rabbitmq
def test_sigkill_of_the_pool_process_requeues_the_job_and_it_runs_again(rabbit_env, rabbit_url):
    env, cfg, workers = rabbit_env
    w = Worker(env, rabbit_url).wait_ready()
    workers.append(w)
    release = env.root / "s.release"
    res = submit(cfg, ["rec", "s", f"@{release}"])
    wait_for(lambda: "s" in started(env), 20, "the job to start", w)
    [child] = w.children()
    os.kill(child, signal.SIGKILL)
    wait_for(lambda: started(env).count("s") == 2, 30, "the job to run again", w)
    release.write_text("go")
    wait_for(lambda: "s" in ended(env), 20, "the job to end", w)
    wait_for(lambda: f"finished {res.task_id}" in jobqueue_log(env), 10, "the finish line", w)
    log = jobqueue_log(env)
    assert f"job {res.task_id} (rec s @{release}): run again: the worker running it was lost (attempt 2)" in log
    assert started(env).count("s") == 2 and ended(env).count("s") == 1


@pytest.mark.rabbitmq
def test_a_job_that_keeps_killing_its_worker_is_given_up_after_max_retries(rabbit_env, rabbit_url):
    env, _cfg, workers = rabbit_env
    ini = env.configdir / "bots.ini"
    ini.write_text(ini.read_text().replace("max_retries = 2", "max_retries = 1"))
    cfg = in_process(env, rabbit_url)
    w = Worker(env, rabbit_url).wait_ready()
    workers.append(w)
    res = submit(cfg, ["rec", "k", "!kill"], 4)
    wait_for(lambda: "not run again" in jobqueue_log(env), 60, "the job to be given up", w)
    assert started(env).count("k") == 2                 # 1 + [jobqueue] max_retries
    assert re.search(rf"job {res.task_id} \(rec k '!kill'\) not run again: gave up: the worker running it was lost "
                     rf"2 time\(s\)", jobqueue_log(env))
    assert StartedJobs(cfg).get(res.task_id)["state"] == "gaveup"
    submit(cfg, ["rec", "after"])                       # the worker keeps serving
    wait_for(lambda: "after" in ended(env), 20, "the next job", w)


@pytest.mark.rabbitmq
def test_sigkill_of_the_worker_during_an_engine_run_reruns_it_after_restart(rabbit_env, rabbit_url):
    from sqlalchemy import select

    from engine.db import session_scope
    from engine.lock import read_lock
    from engine.models import Run

    env, cfg, workers = rabbit_env
    env.drop("data/sin/f1.edi", "3")
    w1 = Worker(env, rabbit_url).wait_ready()
    workers.append(w1)
    res = submit(cfg, ["bots-engine", "--new", "slow"])
    wait_for(lambda: any(e[0] == "start" for e in events(env, "trace.log")), 20, "the engine to translate", w1)
    child = w1.children()[0]
    w1.kill(signal.SIGKILL)
    w1.proc.wait(10)
    wait_for(lambda: _pid_gone(child), 10, "the pool process to die with its parent")
    assert not (env.root / "data/sout/f1.edi").exists()
    w2 = Worker(env, rabbit_url).wait_ready()
    workers.append(w2)
    wait_for(lambda: (StartedJobs(cfg).get(res.task_id) or {}).get("state") == "done", 60, "the rerun", w2)
    assert (env.root / "data/sout/f1.edi").read_text() == "3"
    assert [e[0] for e in events(env, "trace.log")] == ["start", "start", "end"]
    with session_scope(cfg.database_url) as s:
        runs = s.scalars(select(Run).order_by(Run.id)).all()
        assert [r.status for r in runs] == ["crashed", "ok"]
        assert "recovered" in runs[1].message
    assert read_lock(cfg) is None
    assert "run again: the worker running it was lost (attempt 2)" in jobqueue_log(env)


@pytest.mark.redis
def test_redis_a_killed_pool_process_or_worker_does_not_lose_the_job(redis_url, tmp_path):
    # Redis has no channel close to requeue on: a lost pool process is rejected back to the queue
    # by the main process; a lost main process leaves the message unacked until the visibility
    # timeout (shortened here) hands it to the next worker.
    extra = "visibility_timeout = 2\n[jobqueue.transport_options]\nunacked_restore_interval = 1\n" \
            "unacked_restore_throttle = 1\n"
    env = make_queue_env(tmp_path / "env", redis_url, extra=extra)
    purge(env, redis_url)
    cfg = in_process(env, redis_url)
    workers: list[Worker] = []
    try:
        w1 = Worker(env, redis_url).wait_ready()
        workers.append(w1)
        rel1, rel2 = env.root / "one.release", env.root / "two.release"
        one = submit(cfg, ["rec", "one", f"@{rel1}"])
        wait_for(lambda: "one" in started(env), 20, "job one to start", w1)
        [child] = w1.children()
        os.kill(child, signal.SIGKILL)                          # the pool process dies (OOM killer)
        wait_for(lambda: started(env).count("one") == 2, 30, "job one to run again", w1)
        rel1.write_text("go")
        wait_for(lambda: f"finished {one.task_id}" in jobqueue_log(env), 20, "job one to finish", w1)

        two = submit(cfg, ["rec", "two", f"@{rel2}"])
        wait_for(lambda: "two" in started(env), 20, "job two to start", w1)
        child = w1.children()[0]
        w1.kill(signal.SIGKILL)                                 # the whole worker dies
        w1.proc.wait(10)
        wait_for(lambda: _pid_gone(child), 10, "the pool process to die with its parent")
        w2 = Worker(env, redis_url).wait_ready()
        workers.append(w2)
        wait_for(lambda: started(env).count("two") == 2, 60, "job two to run again on the new worker", w2)
        rel2.write_text("go")
        wait_for(lambda: f"finished {two.task_id}" in jobqueue_log(env), 20, "job two to finish", w2)
    finally:
        for w in workers:
            w.stop()

    log = jobqueue_log(env)
    for res, name in ((one, "one"), (two, "two")):
        assert f"job {res.task_id} (rec {name} @{env.root}/{name}.release): run again: the worker running it was " \
               f"lost (attempt 2)" in log
        assert (StartedJobs(cfg).get(res.task_id) or {}).get("state") == "done"
    assert started(env) == ["one", "one", "two", "two"] and ended(env) == ["one", "two"]


@pytest.mark.rabbitmq
def test_two_workers_never_overlap_and_a_locked_job_waits_then_runs(rabbit_env, rabbit_url):
    env, cfg, workers = rabbit_env
    env.drop("data/sin/a.edi", "1.5")
    env.drop("data/sin2/b.edi", "1.5")
    workers.append(Worker(env, rabbit_url, name="one").wait_ready())
    workers.append(Worker(env, rabbit_url, name="two", celery_cli=True).wait_ready())
    submit(cfg, ["bots-engine", "--new", "slow"])
    submit(cfg, ["bots-engine", "--new", "slow2"])
    wait_for(lambda: (env.root / "data/sout/a.edi").exists() and (env.root / "data/sout/b.edi").exists(), 60,
             "both runs")
    wait_for(lambda: len(events(env, "trace.log")) == 4, 10, "both mappings to end")
    spans = {}
    for what, route, t in events(env, "trace.log"):
        spans.setdefault(route, {})[what] = t
    (s1, e1), (s2, e2) = sorted((v["start"], v["end"]) for v in spans.values())
    assert e1 <= s2, spans                                 # one after the other, never both at once
    assert "waits for the engine" in jobqueue_log(env)
    outs = [w.output() for w in workers]
    assert all("bots.engine[" in o for o in outs)        # each worker took one of the jobs


def _rabbit_env_value(key: str) -> str:
    out = subprocess.run(["rabbitmqctl", "-q", "eval", f"application:get_env(rabbit, {key})."],
                         capture_output=True, text=True, check=True).stdout.strip()
    m = re.fullmatch(r"\{ok,(\d+)\}", out)
    return m.group(1) if m else "undefined"


def _set_rabbit_env(key: str, value: str) -> None:
    expr = (f"application:unset_env(rabbit, {key})." if value == "undefined"
            else f"application:set_env(rabbit, {key}, {value}).")
    subprocess.run(["rabbitmqctl", "-q", "eval", expr], capture_output=True, check=True)


@pytest.mark.slow
@pytest.mark.rabbitmq
def test_a_job_longer_than_rabbitmqs_consumer_timeout_runs_exactly_once(rabbit_env, rabbit_url):
    env, cfg, workers = rabbit_env
    saved = {k: _rabbit_env_value(k) for k in ("consumer_timeout", "channel_tick_interval")}
    # RabbitMQ 3.10 reads consumer_timeout when a channel opens (only the worker started now gets
    # 2 s) and channel_tick_interval (how often it checks) each time it re-arms the check.
    _set_rabbit_env("consumer_timeout", "2000")
    _set_rabbit_env("channel_tick_interval", "500")
    try:
        try:
            w = Worker(env, rabbit_url).wait_ready()
            workers.append(w)
        finally:
            _set_rabbit_env("consumer_timeout", saved["consumer_timeout"])
        res = submit(cfg, ["rec", "long", "6"])
        wait_for(lambda: "long" in ended(env), 30, "the long job", w)
        wait_for(lambda: f"skipped {res.task_id} (rec long 6): this message already ran" in jobqueue_log(env), 30,
                 "the redelivered copy to be dropped", w)
    finally:
        _set_rabbit_env("channel_tick_interval", saved["channel_tick_interval"])
    assert "PRECONDITION_FAILED" in w.output() and "delivery acknowledgement" in w.output()
    assert "worker_cancel_long_running_tasks_on_connection_loss" not in w.output()   # set on purpose: no warning
    assert "Couldn't ack" not in w.output()                # no CRITICAL with a traceback, but why in the log:
    assert (f"job {res.task_id} ended, but its message cannot be acknowledged: the broker closed the channel"
            in jobqueue_log(env))
    submit(cfg, ["rec", "next"])
    wait_for(lambda: "next" in ended(env), 20, "a job after the timeout", w)
    assert started(env).count("long") == 1 and w.alive()


@pytest.mark.slow
@pytest.mark.redis
def test_a_job_longer_than_redis_visibility_timeout_runs_exactly_once(redis_url, tmp_path):
    extra = "visibility_timeout = 2\n[jobqueue.transport_options]\nunacked_restore_interval = 1\n" \
            "unacked_restore_throttle = 1\n"
    env = make_queue_env(tmp_path / "env", redis_url, extra=extra)
    purge(env, redis_url)
    cfg = in_process(env, redis_url)
    w = Worker(env, redis_url).wait_ready()
    try:
        res = submit(cfg, ["rec", "long", "7"])
        wait_for(lambda: "long" in ended(env), 30, "the long job", w)
        wait_for(lambda: f"skipped {res.task_id} (rec long 7): this message already ran" in jobqueue_log(env), 30,
                 "the restored copy to be dropped", w)
        submit(cfg, ["rec", "next"])
        wait_for(lambda: "next" in ended(env), 20, "a job after it", w)
        assert started(env).count("long") == 1
    finally:
        w.stop()


@pytest.mark.slow
@pytest.mark.rabbitmq
def test_rabbitmq_restart_with_50_jobs_waiting_runs_all_in_priority_order(rabbit_env, rabbit_url):
    env, cfg, workers = rabbit_env
    rnd = random.Random(7)
    jobs = [(rnd.randint(1, 9), i, f"j{i:02d}") for i in range(50)]
    for p, _i, name in jobs:
        assert submit(cfg, ["rec", name], p).status == "added"
    for step in ("stop_app", "start_app"):
        subprocess.run(["rabbitmqctl", "-q", step], check=True, capture_output=True, timeout=120)
    subprocess.run(["rabbitmqctl", "-q", "await_startup", "--timeout", "60"], check=True, capture_output=True)
    from tasks.celeryapp import close_connections

    close_connections()                     # this process's pooled connections died with the broker
    w = Worker(env, rabbit_url).wait_ready(60)
    workers.append(w)
    wait_for(lambda: len(ended(env)) == 50, 120, "all 50 jobs", w)
    assert started(env) == [name for _p, _i, name in sorted(jobs)]


# --------------------------------------------------------------------------- the registry and lost messages

def _long_stale_after(env) -> None:
    """stale_after of an hour: only the confirm rule, not the stale sweep, may let a job through."""
    ini = env.configdir / "bots.ini"
    ini.write_text(ini.read_text().replace("stale_after = 1", "stale_after = 3600"))


@pytest.mark.rabbitmq
def test_a_failed_publish_leaves_no_entry_and_the_same_job_sent_again_runs(rabbit_env, rabbit_url):
    """Finding 2 (broker restarting): a celery call / Flower publish that fails after the publish handler
    registered it, and a publisher killed between registering and publishing, must not make the same job
    sent a moment later a duplicate of a message the broker never got."""
    from conftest import free_port
    from tasks.celeryapp import app_for
    from tasks.jobs import Job, split_job
    from tasks.registry import PendingRegistry

    env, _cfg, workers = rabbit_env
    _long_stale_after(env)
    cfg = in_process(env, rabbit_url)
    down = f"amqp://guest:guest@127.0.0.1:{free_port()}/{rabbit_url.rsplit('/', 1)[1]}"
    kwargs = {"name": "rec", "args": ["once"]}

    r = celery_call(env, down, "bots.command", kwargs)          # the CLI: its process ends
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert re.search(r"^celery call: error: cannot publish bots.command to broker amqp://guest:\*\*\*@127\.0\.0\.1:"
                     r"\d+/\S+: \[Errno 111\] Connection refused; nothing was queued$", r.stderr, re.M), r.stderr
    assert "its registry entry was taken back" in jobqueue_log(env)
    assert PendingRegistry(cfg).count() == 0

    app = app_for(in_process(env, down))                        # in-process, as Flower: it carries on
    with pytest.raises(Exception, match="Connection refused"):
        app.send_task("bots.command", kwargs={"name": "rec", "args": ["flower"]})
    assert PendingRegistry(cfg).count() == 0

    w = Worker(env, rabbit_url).wait_ready()
    workers.append(w)
    for job_kwargs in (kwargs, {"name": "rec", "args": ["flower"]}):
        r = celery_call(env, rabbit_url, "bots.command", job_kwargs)
        assert r.returncode == 0, r.stderr
    wait_for(lambda: sorted(ended(env)) == ["flower", "once"], 30, "both jobs sent again to run", w)

    # a publisher killed after registering, before its message reached the broker: an entry never confirmed
    [part] = split_job(cfg, Job.command(cfg.configdir, "rec", ["killed"]))    # as job2queue registers it
    PendingRegistry(cfg).add(part, "never-sent", 5)
    r = job2queue(env, rabbit_url, "rec", "killed")
    assert r.returncode == 0, r.stderr + r.stdout              # added (exit 0), not a duplicate (exit 4)
    wait_for(lambda: "killed" in ended(env), 30, "the job queued again to run", w)
    assert "took over registry entry never-sent" in jobqueue_log(env)
    wait_for(lambda: PendingRegistry(cfg).count() == 0, 10, "no entry left")


@pytest.mark.rabbitmq
def test_a_rejected_message_leaves_no_registry_entry_and_the_queue_names_its_config_dir(rabbit_env, rabbit_url,
                                                                                          tmp_path):
    """Finding 9: another environment on the same broker and database queues jobs this worker refuses;
    until then botsq queue names their config dir, after it no entry is left."""
    from tasks.registry import PendingRegistry

    env, _cfg, workers = rabbit_env
    _long_stale_after(env)
    cfg = in_process(env, rabbit_url)
    other = make_queue_env(tmp_path / "other", rabbit_url)
    _long_stale_after(other)
    ini = other.configdir / "bots.ini"
    ini.write_text(ini.read_text() + f"\n[database]\nurl = {cfg.database_url}\n")
    for argv in (("rec", "theirs"), ("bots-engine", "--new")):
        r = job2queue(other, rabbit_url, *argv)
        assert r.returncode == 0, r.stderr + r.stdout
    assert PendingRegistry(cfg).count() == 2
    r = botsq(env, rabbit_url, "queue")
    assert r.stdout.count(f"(config {other.configdir})") == 2, r.stdout

    w = Worker(env, rabbit_url).wait_ready()
    workers.append(w)
    wait_for(lambda: jobqueue_log(env).count(" refused") >= 2, 30, "both jobs rejected", w)
    assert f"config dir {other.configdir} refused" in jobqueue_log(env)
    wait_for(lambda: PendingRegistry(cfg).count() == 0, 10, "the rejected jobs' entries to go", w)
    r = botsq(env, rabbit_url, "queue")
    assert "0 waiting job(s) in the registry" in r.stdout and "(no jobs)" in r.stdout, r.stdout
    assert started(env) == []
