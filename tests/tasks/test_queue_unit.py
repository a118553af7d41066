"""The job queue's parts without a broker: priorities, job identity and COMMAND lines, the registry
(SQLite and PostgreSQL), the publish handler, settings, and the commands' refusals."""
from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import bin_path, free_port
from queue_helpers import make_queue_env

from engine.config import load_config
from tasks import priority as prio
from tasks import registry
from tasks.registry import JobState, PendingRegistry, StartedJobs
from tasks.jobs import COMMAND_TASK, ENGINE_TASK, Job, JobError, job_from_argv

# --------------------------------------------------------------------------- priorities


def test_bots_priorities_map_to_each_brokers_scale():
    assert [prio.to_broker(p, prio.BrokerKind.RABBITMQ) for p in range(1, 10)] == [9, 8, 7, 6, 5, 4, 3, 2, 1]
    assert [prio.to_broker(p, prio.BrokerKind.REDIS) for p in range(1, 10)] == list(range(1, 10))
    for kind in (prio.BrokerKind.RABBITMQ, prio.BrokerKind.REDIS):
        assert [prio.from_broker(prio.to_broker(p, kind), kind) for p in range(1, 10)] == list(range(1, 10))
    # a message sent without priority: the lowest on RabbitMQ, the highest on Redis - never what we send
    assert prio.from_broker(None, prio.BrokerKind.RABBITMQ) == 9 and prio.from_broker(None, prio.BrokerKind.REDIS) == 1
    assert prio.broker_kind("amqp://x//") == prio.BrokerKind.RABBITMQ and prio.broker_kind("redis://h/1") == prio.BrokerKind.REDIS
    for bad in (0, 10, "x", "3.5", None, True):
        with pytest.raises(ValueError, match="from 1 \\(highest\\) to 9"):
            prio.check(bad)
    assert prio.check("3") == 3
    assert [prio.clamp(v) for v in (0, 1, 9, 12, "x")] == [1, 1, 9, 9, 5]
    with pytest.raises(ValueError, match="unsupported broker"):
        prio.broker_kind("sqs://")


# --------------------------------------------------------------------------- jobs

@pytest.fixture
def env(make_env, tmp_path):
    return make_queue_env(tmp_path / "q", "memory://", commands="sweep = /usr/local/bin/archive-sweep --days 7")


def test_command_lines_in_every_bots_form_give_the_same_engine_job(env):
    cfg = env.config()
    forms = [["bots-engine", "--new", "r1"], ["bots-engine.py", "r1"], ["/opt/bots/bots-engine.py", "--new", "r1"],
             ["python3", "/usr/local/bin/bots-engine.py", "--new", f"-C{env.configdir}", "r1"],
             ["python", "bots-engine", "-c", str(env.configdir), "--new", "r1", "r1"]]
    jobs = [job_from_argv(cfg, f) for f in forms]
    assert {j.key for j in jobs} == {jobs[0].key}
    assert jobs[0] == Job(ENGINE_TASK, str(env.configdir), ("new",), ("r1",))
    assert jobs[0].describe() == "bots-engine --new r1"
    assert jobs[0].kwargs == {"commands": ["new"], "routes": ["r1"], "configdir": str(env.configdir)}
    # sorted commands and routes; no option means --new, no route means the default run
    a = job_from_argv(cfg, ["bots-engine", "--resend", "--new", "slow2", "slow"])
    b = job_from_argv(cfg, ["bots-engine", "--new", "--resend", "slow", "slow2"])
    assert a.key == b.key and a.commands == ("new", "resend") and a.routes == ("slow", "slow2")
    assert job_from_argv(cfg, ["bots-engine"]).commands == ("new",)
    assert job_from_argv(cfg, ["bots-engine"]).key != job_from_argv(cfg, ["bots-engine", "r1"]).key
    assert job_from_argv(cfg, ["bots-engine", "--cleanup"]).key != job_from_argv(cfg, ["bots-engine"]).key


def test_the_engines_own_config_dir_is_part_of_the_job(env, tmp_path):
    other = make_queue_env(tmp_path / "prod", "memory://")
    # Bots' -Cconfigprod: a config dir the queue's bots.ini lists in [jobqueue] configdirs
    env = make_queue_env(tmp_path / "q2", "memory://", extra=f"configdirs = {other.configdir}, /nonexistent/config")
    cfg = env.config()
    assert cfg.jobqueue.configdirs == (other.configdir, Path("/nonexistent/config"))
    here = job_from_argv(cfg, ["bots-engine", "--new"])
    there = job_from_argv(cfg, ["python3", "/usr/bin/bots-engine.py", "--new", f"-C{other.configdir}"])
    assert there.configdir == str(other.configdir) and here.key != there.key
    old = os.getcwd()
    os.chdir(other.root)
    try:                                   # a relative -C is relative to where bots-job2queue runs
        assert job_from_argv(cfg, ["bots-engine", "-Cconfig"]).configdir == str(other.configdir)
    finally:
        os.chdir(old)
    with pytest.raises(JobError, match="^config dir /nonexistent/config does not exist$"):
        job_from_argv(cfg, ["bots-engine", "-C/nonexistent/config"])


def test_a_relative_config_dir_in_a_job_line_from_bots_ini_is_the_environment_folders(env, tmp_path, monkeypatch):
    """[schedule.*] job = ... -Cconfigprod: read against the environment folder (as [jobqueue]
    configdirs are), wherever beat or botsq schedule runs; typed in a shell: against the cwd."""
    other = make_queue_env(tmp_path / "site", "memory://", extra="configdirs = configprod")
    prod = other.root / "configprod"
    prod.mkdir()
    (prod / "bots.ini").write_text((other.configdir / "bots.ini").read_text())
    cfg = other.config()
    elsewhere = tmp_path / "shell"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    job = job_from_argv(cfg, ["python3", "/usr/local/bin/bots-engine.py", "--new", "-Cconfigprod"], from_config=True)
    assert job.configdir == str(prod)
    # the shell's rule for a line typed by hand: relative to where bots-job2queue runs
    with pytest.raises(JobError, match=f"^config dir {elsewhere}/configprod does not exist$"):
        job_from_argv(cfg, ["bots-engine", "-Cconfigprod"])
    monkeypatch.chdir(other.root)
    assert job_from_argv(cfg, ["bots-engine", "-Cconfigprod"]).configdir == str(prod)
    # a missing config dir is said as such: no "another environment on this broker?" hint
    with pytest.raises(JobError) as info:
        job_from_argv(cfg, ["bots-engine", "-Cconfigtypo"], from_config=True)
    assert str(info.value) == (f"config dir {other.root}/configtypo does not exist (a relative one is read from "
                               f"the environment folder {other.root})")
    # an existing one not listed keeps the refusal with its hint
    (other.root / "configx").mkdir()
    with pytest.raises(JobError, match="configx refused: .*another environment on this broker"):
        job_from_argv(cfg, ["bots-engine", "-Cconfigx"], from_config=True)


def test_a_job_runs_only_in_a_config_dir_the_queues_bots_ini_trusts(env, tmp_path):
    """Whoever can publish must not choose the bots.ini a job runs with (see check_trusted)."""
    from tasks.jobs import check_trusted

    other = make_queue_env(tmp_path / "prod", "memory://", commands="evil = /bin/touch /tmp/pwned")
    cfg = env.config()
    with pytest.raises(JobError, match=f"config dir {other.configdir} refused: it is not {env.configdir} and not "
                                       r"listed in \[jobqueue\] configdirs"):
        job_from_argv(cfg, ["bots-engine", "--new", f"-C{other.configdir}"])
    for job in (Job.engine(other.configdir, ["new"]), Job.engine(tmp_path, ["new"])):
        with pytest.raises(JobError, match="refused"):
            check_trusted(cfg, job)
    check_trusted(cfg, Job.engine(env.configdir, ["new"]))
    check_trusted(cfg, Job.command(env.configdir, "sweep"))
    # a command job is the worker's own, even from a config dir it lists
    trusting = make_queue_env(tmp_path / "q3", "memory://", extra=f"configdirs = {other.configdir}")
    check_trusted(trusting.config(), Job.engine(other.configdir, ["new"]))
    with pytest.raises(JobError, match="a bots.command job runs only in the worker's own config dir"):
        check_trusted(trusting.config(), Job.command(other.configdir, "evil"))
    # a relative entry is relative to the environment folder, as every path in bots.ini
    rel = make_queue_env(tmp_path / "q4", "memory://", extra="configdirs = ../prod/config")
    assert rel.config().jobqueue.configdirs == (other.configdir,)


def test_allow_listed_commands_by_name_or_exact_line_everything_else_refused(env):
    cfg = env.config()
    job = job_from_argv(cfg, ["sweep", "--dry-run", "a b"])
    assert (job.task, job.name, job.args) == (COMMAND_TASK, "sweep", ("--dry-run", "a b"))
    assert job.describe() == "sweep --dry-run 'a b'"
    exact = job_from_argv(cfg, ["/usr/local/bin/archive-sweep", "--days", "7"])
    assert (exact.name, exact.args) == ("sweep", ())
    assert exact.key == job_from_argv(cfg, ["sweep"]).key
    assert job.key != exact.key
    for argv, msg in ((["/usr/local/bin/archive-sweep", "--days", "8"], "command not allowed"),
                      (["rm", "-rf", "/"], "command not allowed"), ([], "no command given"),
                      (["bots-engine", "nosuchroute"], "unknown route 'nosuchroute'"),
                      (["bots-engine", "--bogus"], "unrecognized arguments"),
                      (["bots-engine", "--help"], "not a job")):
        with pytest.raises(JobError, match=msg):
            job_from_argv(cfg, argv)


def test_a_message_names_its_job_or_says_what_is_wrong(env):
    cfg = env.config()
    for job in (job_from_argv(cfg, ["bots-engine", "--resend", "r1"]), job_from_argv(cfg, ["sweep", "x"])):
        assert Job.from_message(job.task, [], job.kwargs, "/elsewhere") == job
    # without configdir a message means the worker's (the app's) config dir
    assert Job.from_message(ENGINE_TASK, [], {"routes": ["r1"]}, env.configdir).key == \
        job_from_argv(cfg, ["bots-engine", "r1"]).key
    for task, args, kwargs, msg in (
            ("bots.other", [], {}, "unknown task"), (ENGINE_TASK, ["r1"], {}, "keyword arguments only"),
            (ENGINE_TASK, [], {"route": ["r1"]}, "unknown argument\\(s\\) 'route'"),
            (ENGINE_TASK, [], {"commands": ["explode"]}, "unknown engine command"),
            (ENGINE_TASK, [], {"routes": [1]}, "routes must be a list of strings"),
            (COMMAND_TASK, [], {"args": ["x"]}, "needs a command name"),
            (COMMAND_TASK, [], "nope", "kwargs must be an object")):
        with pytest.raises(JobError, match=msg):
            Job.from_message(task, args, kwargs, env.configdir)


# --------------------------------------------------------------------------- registry

@pytest.fixture
def reg_cfg(make_env, db_ini, tmp_path):
    env = make_queue_env(tmp_path / "r", "memory://")
    ini = env.configdir / "bots.ini"
    ini.write_text(ini.read_text().replace("stale_after = 1", "stale_after = 30") + db_ini)
    return env.config()


def _job(cfg, name="x", *args):
    return Job.command(cfg.configdir, name, args)


def _sent(cfg, job, task_id, priority, **kw):
    """Register ``job`` as a publisher does whose message reached the broker: add, then confirm."""
    reg = PendingRegistry(cfg).add(job, task_id, priority, **kw)
    if reg.status != "duplicate":
        assert PendingRegistry(cfg).confirm(job, task_id)
    return reg


def test_registry_adds_discards_raises_and_undoes(reg_cfg):
    cfg = reg_cfg
    a = _job(cfg, "rec", "a")
    assert _sent(cfg, a, "id1", 5).status == "added"
    dup = PendingRegistry(cfg).add(a, "id2", 5)
    assert (dup.status, dup.task_id, dup.priority) == ("duplicate", "id1", 5)
    assert PendingRegistry(cfg).add(a, "id3", 7).status == "duplicate"
    raised = PendingRegistry(cfg).add(a, "id4", 2)
    assert (raised.status, raised.previous, raised.previous_priority) == ("raised", "id1", 5)
    assert [(w.task_id, w.priority, w.job) for w in PendingRegistry(cfg).waiting()] == [("id4", 2, "rec a")]
    PendingRegistry(cfg).remove(a, raised)                   # its publish failed: back to id1 at 5
    assert [(w.task_id, w.priority, w.confirmed) for w in PendingRegistry(cfg).waiting()] == [("id1", 5, True)]
    b = _job(cfg, "rec", "b")
    added = PendingRegistry(cfg).add(b, "idb", 9)
    PendingRegistry(cfg).remove(b, added)
    assert PendingRegistry(cfg).count() == 1
    assert PendingRegistry(cfg).clear() == 1 and PendingRegistry(cfg).waiting() == []


def test_an_unconfirmed_entry_never_makes_a_later_job_a_duplicate(reg_cfg, monkeypatch):
    """A registration whose message has not reached the broker (a publish under way, failing, or a
    publisher killed): an identical job waits for it to settle - confirmed: a duplicate; taken back:
    added - and takes a hung one over at the higher priority; the old message is dropped unrun if it
    arrives after all; a failed publish of the new one gives the entry back."""
    import threading

    monkeypatch.setattr(registry, "UNCONFIRMED_WAIT", 0.3)
    cfg = reg_cfg
    a = _job(cfg, "rec", "a")
    PendingRegistry(cfg).add(a, "first", 5)
    threading.Timer(0.1, PendingRegistry(cfg).confirm, (a, "first")).start()        # its publish succeeds
    t0 = time.monotonic()
    assert PendingRegistry(cfg).add(a, "second", 5).status == "duplicate"           # decided once settled
    assert 0.1 <= time.monotonic() - t0 < 0.3
    PendingRegistry(cfg).clear()
    first = PendingRegistry(cfg).add(a, "first", 5)
    threading.Timer(0.1, PendingRegistry(cfg).remove, (a, first)).start()           # its publish fails
    assert PendingRegistry(cfg).add(a, "second", 5).status == "added"
    PendingRegistry(cfg).clear()

    assert PendingRegistry(cfg).add(a, "lost", 3).status == "added"          # never confirmed (a killed publisher)
    [w] = PendingRegistry(cfg).waiting()
    assert (w.task_id, w.confirmed, w.as_dict()["confirmed"]) == ("lost", False, False)
    took = PendingRegistry(cfg).add(a, "again", 5)
    assert (took.status, took.task_id, took.priority, took.previous, took.unconfirmed) == (
        "added", "again", 3, "lost", True)                                    # sent at the higher priority (3)
    PendingRegistry(cfg).remove(a, took)                                     # its publish failed as well
    assert [(w.task_id, w.priority, w.confirmed) for w in PendingRegistry(cfg).waiting()] == [("lost", 3, False)]
    took = PendingRegistry(cfg).add(a, "again2", 7)
    assert (took.status, took.priority) == ("added", 3)
    assert PendingRegistry(cfg).confirm(a, "lost") is False                  # the old publisher confirms late
    assert PendingRegistry(cfg).confirm(a, "again2") is True
    assert PendingRegistry(cfg).add(a, "dup", 5).status == "duplicate"       # confirmed: a duplicate again
    late = StartedJobs(cfg).begin(a, "lost", 3)                              # the old message arrived after all
    assert (late.action, late.reason) == ("skip", "superseded by an identical job queued before the broker had "
                                                  "confirmed this one")
    assert StartedJobs(cfg).begin(a, "again2", 3).action == "run"
    assert PendingRegistry(cfg).count() == 0


def test_a_dropped_message_takes_its_entry_by_task_id(reg_cfg, tmp_path):
    from tasks.registration import forget_dropped

    cfg = reg_cfg
    a, b = _job(cfg, "rec", "a"), _job(cfg, "rec", "b")
    _sent(cfg, a, "a1", 5)
    _sent(cfg, b, "b1", 5)
    assert PendingRegistry(cfg).forget_message("nosuch") is False
    assert forget_dropped(cfg, "a1") is True
    assert [w.task_id for w in PendingRegistry(cfg).waiting()] == ["b1"]
    other = Job.engine(tmp_path / "elsewhere" / "config", ["new"])          # not served: its bots.ini is not read
    assert forget_dropped(cfg, "b1", other) is True and PendingRegistry(cfg).count() == 0


def test_registry_begin_claims_skips_superseded_and_fails_open(reg_cfg):
    cfg = reg_cfg
    a, b, c = _job(cfg, "rec", "a"), _job(cfg, "rec", "b"), _job(cfg, "rec", "c")
    _sent(cfg, a, "a1", 5)
    _sent(cfg, a, "a2", 1)                                  # raise: a1 is superseded
    assert StartedJobs(cfg).begin(a, "a2", 3).action == "run"
    assert _sent(cfg, a, "a3", 5).status == "added"         # identical while running: accepted
    skip = StartedJobs(cfg).begin(a, "a1", 3)
    assert (skip.action, skip.reason) == ("skip", "superseded by a copy queued at a higher priority")
    assert StartedJobs(cfg).begin(a, "stray", 3).action == "skip"         # a3 waits: the stray copy is a duplicate
    run = StartedJobs(cfg).begin(c, "c1", 3)                               # never registered: run anyway
    assert (run.action, run.registered) == ("run", False)
    PendingRegistry(cfg).add(b, "b1", 5)
    assert StartedJobs(cfg).begin(b, "b1", 3).registered is True
    StartedJobs(cfg).finish("b1", JobState.DONE, "ok")
    again = StartedJobs(cfg).begin(b, "b1", 3)               # redelivered after it ran (consumer timeout)
    assert again.action == "skip" and "already ran" in again.reason
    assert StartedJobs(cfg).get("b1") == {"state": "done", "attempts": 1, "result": "ok"}


def test_registry_redelivery_waits_for_a_live_holder_and_bounds_dead_ones(reg_cfg):
    from sqlalchemy import update

    from engine.db import session_scope
    from engine.models import utcnow

    cfg = reg_cfg
    a = _job(cfg, "rec", "a")
    PendingRegistry(cfg).add(a, "a1", 5)
    assert StartedJobs(cfg).begin(a, "a1", 2).action == "run"
    with session_scope(cfg.database_url) as s:              # the holder: another machine, beating
        s.execute(update(registry.StartedJob).values(host="elsewhere", pid=1, heartbeat=utcnow()))
    assert StartedJobs(cfg).begin(a, "a1", 2).action == "wait"
    with session_scope(cfg.database_url) as s:              # it went silent: a lost worker
        s.execute(update(registry.StartedJob).values(heartbeat=utcnow().replace(year=2000)))
    rerun = StartedJobs(cfg).begin(a, "a1", 2)
    assert (rerun.action, rerun.attempts) == ("run", 2) and "lost" in rerun.reason
    with session_scope(cfg.database_url) as s:              # this host, a pid that is gone
        s.execute(update(registry.StartedJob).values(pid=2 ** 22 + 7))
    give = StartedJobs(cfg).begin(a, "a1", 2)
    assert (give.action, give.attempts) == ("giveup", 2)
    assert StartedJobs(cfg).get("a1")["state"] == "gaveup"
    assert StartedJobs(cfg).running() == []


def test_registry_detects_stale_entries_and_sweeps(reg_cfg, monkeypatch):
    from sqlalchemy import update

    from engine.db import session_scope
    from engine.models import utcnow

    cfg = reg_cfg
    a = _job(cfg, "rec", "a")
    _sent(cfg, a, "a1", 5)
    asked = []

    def depth(n):
        return lambda: asked.append(n) or n

    assert PendingRegistry(cfg).add(a, "a2", 5, queue_depth=depth(0)).status == "duplicate"
    assert asked == []                                     # too young to be stale: the broker is not asked
    with session_scope(cfg.database_url) as s:
        s.execute(update(registry.PendingJob).values(updated=utcnow().replace(year=2000),
                                                      created=utcnow().replace(year=2000)))
    assert PendingRegistry(cfg).add(a, "a2", 5, queue_depth=depth(3)).status == "duplicate"
    stale = PendingRegistry(cfg).add(a, "a3", 5, queue_depth=depth(0))
    assert (stale.status, stale.stale, stale.previous) == ("added", True, "a1")
    assert asked == [3, 0]
    with session_scope(cfg.database_url) as s:
        s.execute(update(registry.PendingJob).values(updated=utcnow().replace(year=2000)))
    assert PendingRegistry(cfg).cleanup(utcnow(), queue_depth=lambda: 2) == 0
    assert PendingRegistry(cfg).cleanup(utcnow(), queue_depth=lambda: 0) == 1 and PendingRegistry(cfg).count() == 0
    StartedJobs(cfg).begin(a, "old", 3)
    StartedJobs(cfg).finish("old", JobState.DONE, "")
    with session_scope(cfg.database_url) as s:
        s.execute(update(registry.StartedJob).values(ended=utcnow().replace(year=2000)))
    assert StartedJobs(cfg).cleanup(utcnow()) == 1


def _flood(configdir: str, n: int, q) -> None:  # runs in a child process
    from engine.db import dispose_all

    dispose_all()
    cfg = load_config(configdir)
    job = Job.command(cfg.configdir, "rec", ("same",))
    out = []
    for i in range(n):      # each a publisher: register, "publish", confirm
        reg = PendingRegistry(cfg).add(job, f"{os.getpid()}-{i}", 5)
        if reg.status != "duplicate":
            PendingRegistry(cfg).confirm(job, reg.task_id)
        out.append((reg.status, reg.task_id, reg.previous if reg.unconfirmed else None))
    q.put(out)


@pytest.mark.procs
def test_concurrent_registrations_leave_exactly_one_entry(reg_cfg):
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_flood, args=(str(reg_cfg.configdir), 40, q)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [r for _ in procs for r in q.get(timeout=120)]
    for p in procs:
        p.join(30)
    statuses = [status for status, _tid, _prev in results]
    assert statuses.count("added") == 1 and statuses.count("duplicate") == 4 * 40 - 1     # no takeover
    assert PendingRegistry(reg_cfg).count() == 1


# --------------------------------------------------------------------------- publish handler, settings

def test_publish_handler_fills_maps_and_marks_duplicates(env, monkeypatch):
    from tasks.celeryapp import app_for
    from tasks.signals import PAST, before_publish, publish_settled

    monkeypatch.setattr(registry, "UNCONFIRMED_WAIT", 0.1)

    for broker, kind in (("amqp://guest:guest@127.0.0.1:1//", prio.BrokerKind.RABBITMQ), ("redis://127.0.0.1:1/0", prio.BrokerKind.REDIS)):
        monkeypatch.setenv("BOTSQ_BROKER_URL", broker)
        cfg = env.config()
        app = app_for(cfg)
        body = ([], {"name": "rec", "args": [kind]}, {})
        props: dict = {}
        before_publish(sender="bots.command", body=body, headers={"id": f"{kind}-1"}, properties=props)
        assert props["priority"] == prio.to_broker(5, kind)           # none given: Bots 5
        publish_settled(f"{kind}-1", broker)                           # the broker has it: confirmed
        headers = {"id": f"{kind}-2"}
        props = {"priority": 8}
        before_publish(sender="bots.command", body=body, headers=headers, properties=props)
        assert props["priority"] == prio.to_broker(8, kind) and headers["expires"] == PAST   # a duplicate
        publish_settled(f"{kind}-2", broker)
        headers = {"id": f"{kind}-3"}
        props = {"priority": 2}
        before_publish(sender="bots.command", body=body, headers=headers, properties=props)
        assert props["priority"] == prio.to_broker(2, kind) and "expires" not in headers     # raised
        publish_settled(f"{kind}-3", broker, OSError("Connection refused"))   # ... but never sent
        assert [w.task_id for w in PendingRegistry(cfg).waiting() if w.job == f"rec {kind}"] == [f"{kind}-1"]
        headers = {"id": f"{kind}-4"}
        props = {"priority": 2}
        before_publish(sender="bots.command", body=body, headers=headers, properties=props)
        assert props["priority"] == prio.to_broker(2, kind) and "expires" not in headers     # raised again
        headers, props = {"id": f"{kind}-5"}, {"priority": 6}          # -4's publisher hangs: after the wait
        before_publish(sender="bots.command", body=body, headers=headers, properties=props)
        assert "expires" not in headers                                  # it takes over, at -4's priority
        assert props["priority"] == prio.to_broker(2, kind) and headers[prio.PRIORITY_HEADER] == 2
        publish_settled(f"{kind}-4", broker)                           # -4's late confirm changes nothing
        publish_settled(f"{kind}-5", broker)
        props = {"priority": 7}
        before_publish(sender="bots.command", body=body, headers={"id": "r", "retries": 1}, properties=props)
        assert props == {"priority": 7}                                # a worker's retry: already mapped
        headers, props = {"id": "mine", prio.PRIORITY_HEADER: 1}, {}      # submit() sent and registered it
        before_publish(sender="bots.command", body=([], {"name": "rec", "args": ["new"]}, {}),
                       headers=headers, properties=props)
        assert props["priority"] == prio.to_broker(1, kind) and "expires" not in headers
        props = {}
        before_publish(sender="other.task", body=body, headers={"id": "o"}, properties=props)
        assert props == {}
    assert [(w.job, w.task_id, w.priority, w.confirmed) for w in PendingRegistry(cfg).waiting()] == [
        ("rec rabbitmq", "rabbitmq-5", 2, True), ("rec redis", "redis-5", 2, True)]


def test_app_settings(env, monkeypatch):
    from tasks.celeryapp import settings

    monkeypatch.setenv("BOTSQ_BROKER_URL", "redis://127.0.0.1:6379/3")
    ini = env.configdir / "bots.ini"
    ini.write_text(ini.read_text().replace("[jobqueue]\n", "[jobqueue]\nhardtimelimit = 90\n"))
    s = settings(env.config())
    assert s["task_acks_late"] and s["worker_prefetch_multiplier"] == 1 and s["task_reject_on_worker_lost"]
    assert s["worker_concurrency"] == 1                     # also when `celery worker` is started without -c 1
    assert s["accept_content"] == ["json"] and s["task_serializer"] == "json"
    (router,) = s["task_routes"]                            # lanes: a router function (tasks.routing)
    for name, kwargs in (("bots.engine", {"routes": ["r1"]}), ("bots.command", {"name": "sweep"})):
        assert router(name, (), kwargs, {})["queue"].name == "engine"
    assert s["task_queues"][0].queue_arguments == {"x-max-priority": 10}
    t = s["broker_transport_options"]
    assert t["priority_steps"] == list(range(10)) and t["sep"] == ":" and t["queue_order_strategy"] == "priority"
    assert t["visibility_timeout"] >= 2 * 90 * 60 and s["task_time_limit"] == 90 * 60
    assert s["worker_send_task_events"] and s["task_send_sent_event"] and s["broker_channel_error_retry"]
    monkeypatch.setenv("BOTSQ_BROKER_URL", "amqp://guest:guest@127.0.0.1//")
    assert settings(env.config())["broker_transport_options"] == {"confirm_publish": True}


def test_celery_time_limit_with_a_bots_engine_lets_a_locked_job_wait_maxruntime(env):
    """Celery's hard limit is only a net under botsq's own: a Bots job may wait for a locked Bots up to
    maxruntime plus one last wait, then run its child up to hardtimelimit and the grace."""
    from bots_helpers import engine_section
    from engine.botsengine import LOCKED_WAIT_LONGEST
    from tasks.celeryapp import settings

    ini = env.configdir / "bots.ini"
    ini.write_text(ini.read_text().replace("maxruntime = 60", "maxruntime = 2").replace(
        "[jobqueue]\n", "[jobqueue]\nhardtimelimit = 0.5\n") + engine_section(extra="grace = 5"))
    assert settings(env.config())["task_time_limit"] == 30 + 2 * 60 + LOCKED_WAIT_LONGEST + 5 + 30


def test_maxruntime_overrun_is_logged_and_reported_once_for_commands(env, monkeypatch):
    import logging

    from tasks import executors

    sent = []
    monkeypatch.setattr(executors, "send_report", lambda cfg, subject, body: sent.append(subject) or True)
    cfg = env.config()
    records: list[str] = []

    class H(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    log = logging.getLogger("test-overtime")
    log.addHandler(H())
    for job in (_job(cfg, "rec", "long"), Job.engine(cfg.configdir, ["new"], [])):
        w = executors.JobWatch(cfg, "tid", job, log)
        w.check_overtime()
        w.t0 = time.monotonic() - 61 * 60                  # maxruntime = 60 minutes
        w.check_overtime()
        w.check_overtime()
    assert [r for r in records if "longer than maxruntime" in r] == [
        "job tid (rec long) has been running for 61 minutes, longer than maxruntime (60); it is not stopped",
        "job tid (bots-engine --new) has been running for 61 minutes, longer than maxruntime (60); it is not stopped"]
    assert sent == ["job rec exceeds maxruntime"]          # engine runs report it themselves


def test_maxruntime_counts_from_the_run_not_from_waiting_for_the_engine_lock(env, monkeypatch):
    import logging
    from types import SimpleNamespace

    from engine.errors import ExitCode
    from tasks import executors

    cfg = env.config()
    records: list[str] = []

    class H(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    log = logging.getLogger("test-overtime-wait")
    log.addHandler(H())
    watch = executors.JobWatch(cfg, "tid", Job.engine(cfg.configdir, ["new"], []), log)
    calls = []

    def fake_run(cfg, commands, routes, lane=None, progress=None):
        calls.append(1)
        if len(calls) < 3:                                  # locked: 61 minutes pass waiting for the lock
            watch.t0 -= 61 * 60
            return SimpleNamespace(exit_code=ExitCode.LOCKED, run_id=None, message="locked by run 7", counts={})
        watch.check_overtime()                              # the run itself has only just begun
        assert not watch.alerted
        watch.t0 -= 61 * 60                                 # ... and now it runs for 61 minutes
        watch.check_overtime()
        return SimpleNamespace(exit_code=0, run_id=8, message="run 8", counts={})

    monkeypatch.setattr(executors, "run_engine", fake_run)
    monkeypatch.setattr(executors.time, "sleep", lambda s: None)
    task = SimpleNamespace(request=SimpleNamespace(id="tid"), backend=None,
                           app=SimpleNamespace(conf=SimpleNamespace(worker_send_task_events=False)))
    assert executors.run_engine_job(task, cfg, watch.job, log, watch)["exit_code"] == 0
    assert len(calls) == 3
    assert [r for r in records if "longer than maxruntime" in r] == [
        "job tid (bots-engine --new) has been running for 61 minutes, longer than maxruntime (60); it is not stopped"]


def test_a_run_ended_by_a_database_error_runs_again_on_celerys_retry(env, monkeypatch):
    from types import SimpleNamespace

    from engine.errors import DatabaseError
    from tasks import executors, runner
    from tasks.celeryapp import app_for

    monkeypatch.setenv("BOTSQ_BROKER_URL", "memory://")
    cfg = env.config()
    app = app_for(cfg)
    monkeypatch.setattr(runner, "send_report", lambda *a, **k: True)
    calls = []

    def flaky_run(cfg, commands, routes, lane=None, progress=None):
        calls.append(1)
        if len(calls) == 1:
            raise DatabaseError("database x cannot be used: server closed the connection")
        return SimpleNamespace(exit_code=0, run_id=1, message="run 1", counts={})

    monkeypatch.setattr(executors, "run_engine", flaky_run)
    res = app.tasks["bots.engine"].apply(kwargs={"commands": ["new"]}, task_id="db-retry-1")  # retries eagerly
    assert len(calls) == 2 and res.result["exit_code"] == 0
    assert StartedJobs(cfg).get("db-retry-1") == {"state": "done", "attempts": 2, "result": "run 1"}
    log = (env.root / "botssys/logging/jobqueue.log").read_text()
    assert "run again after a database error (attempt 2)" in log

    def down(cfg, commands, routes, lane=None, progress=None):
        raise DatabaseError("database x cannot be used: down")

    monkeypatch.setattr(executors, "run_engine", down)
    res = app.tasks["bots.engine"].apply(kwargs={"commands": ["new"]}, task_id="db-retry-2")
    assert res.state == "FAILURE" and isinstance(res.result, DatabaseError)
    assert StartedJobs(cfg).get("db-retry-2")["state"] == "failed"     # 1 + max_retries (2) runs, then given up
    assert StartedJobs(cfg).get("db-retry-2")["attempts"] == 3
    assert "job db-retry-2 (bots-engine --new) given up after 3 database error(s)" in \
        (env.root / "botssys/logging/jobqueue.log").read_text()


# --------------------------------------------------------------------------- the commands' refusals

def _run(cmd: str, *argv: str, env_vars: dict | None = None, cwd: Path | None = None):
    return subprocess.run([bin_path(cmd), *argv], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env_vars or {})}, cwd=cwd)


@pytest.mark.procs
def test_commands_help_and_one_line_refusals(env, tmp_path):
    for cmd in ("bots-job2queue", "bots-jobqueueserver"):
        r = _run(cmd, "--help")
        assert r.returncode == 0 and "usage:" in r.stdout and "-c" in r.stdout
    disabled = make_queue_env(tmp_path / "off", "memory://")
    ini = disabled.configdir / "bots.ini"
    ini.write_text(ini.read_text().replace("enabled = True", "enabled = False"))
    down = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    cases = [
        ("bots-job2queue", ["-c", str(disabled.configdir), "bots-engine"], {}, "the job queue is disabled"),
        ("bots-jobqueueserver", ["-c", str(disabled.configdir)], {}, "the job queue is disabled"),
        ("bots-jobqueueserver", ["-c", str(env.configdir)], {"BOTSQ_BROKER_URL": down}, "cannot be reached within 3 s"),
        ("bots-job2queue", ["-c", str(env.configdir), "bots-engine"],       # the real RabbitMQ, a wrong password
         {"BOTSQ_BROKER_URL": "amqp://guest:wrong@127.0.0.1:5672//"}, "refused the connection: (0, 0): (403) ACCESS_REFUSED"),
        ("bots-job2queue", ["-c", str(env.configdir), "-p", "0", "bots-engine"], {}, "priority must be"),
        ("bots-job2queue", ["-c", str(env.configdir)], {}, "no COMMAND given"),
        ("bots-job2queue", ["-c", str(env.configdir), "bots-engine", "nope"], {}, "unknown route 'nope'"),
        ("bots-job2queue", ["-c", str(tmp_path / "none"), "bots-engine"], {}, "config dir does not exist"),
    ]
    for cmd, argv, extra, msg in cases:
        r = _run(cmd, *argv, env_vars=extra)
        assert r.returncode == 1 and msg in r.stderr and r.stderr.count("\n") == 1 and r.stdout == "", (cmd, r)
    assert PendingRegistry(env.config()).count() == 0


@pytest.mark.procs
def test_celery_cli_finds_the_app_and_names_a_bad_config_in_one_line(env, tmp_path):
    r = _run("celery", "-A", "tasks", "report", env_vars={"BOTSQ_CONFIG": str(env.configdir)}, cwd=tmp_path)
    assert r.returncode == 0 and "broker_url: 'memory://" in r.stdout and "botsq_configdir" in r.stdout
    r = _run("celery", "-A", "tasks", "report", env_vars={"BOTSQ_CONFIG": str(tmp_path / "nope")}, cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.strip().endswith("config dir does not exist (use -c DIR or set BOTSQ_CONFIG)")
    assert r.stderr.count("\n") == 1
    code = ("import tasks; from tasks.celeryapp import app_for; a = tasks.app; "
            "print(type(a).__name__, type(tasks.celery).__name__, tasks.celery is a)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "BOTSQ_CONFIG": str(env.configdir)})
    assert r.stdout.strip() == "Celery Celery True", r.stderr
