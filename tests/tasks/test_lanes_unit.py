"""Lanes in the queue without a broker: job identity and the split, placing a message sent without a
lane, the router, the app's queues, the publish result, the worker forwarding other lanes' parts
(memory transport), and bots-jobqueueserver's lane arguments."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from queue_helpers import SLOW_ROUTES, make_queue_env

from engine.errors import UsageError
from tasks.jobs import COMMAND_TASK, ENGINE_TASK, Job, JobError, job_from_argv, message_lane, place, split_job
from tasks.publish import LaneSubmit, SubmitResult
from tasks.registry import PendingRegistry, RegistrationStatus

# routes of queue_helpers: r1 (lane default), slow and slow2 -> lane slow; a route fast in lane fast
LANE_ROUTES = SLOW_ROUTES.replace("[routes.slow]\n", '[routes.slow]\nlane = "slow"\n') \
    .replace("[routes.slow2]\n", '[routes.slow2]\nlane = "slow"\n') + """
[channels.fin]
type = "file"
path = "data/fin"

[routes.fast]
lane = "fast"
[[routes.fast.parts]]
fromchannel = "fin"
tochannel = "sout"
"""


@pytest.fixture
def env(tmp_path):
    e = make_queue_env(tmp_path / "q", "memory://",
                       commands="sweep = /bin/true\nfrec = /bin/true\n[jobqueue.commands.lanes]\nfrec = fast")
    e.write(routes=LANE_ROUTES)
    return e


def test_identity_gains_the_lane_and_a_job_over_several_lanes_is_none_of_its_parts(env):
    cfg = env.config()
    whole = job_from_argv(cfg, ["bots-engine", "--new"])
    parts = split_job(cfg, whole)
    assert [(p.lane, p.routes) for p in parts] == [("default", ()), ("slow", ()), ("fast", ())]
    keys = {p.key for p in parts} | {whole.key}
    assert len(keys) == 4                                  # a lane's default run is not the whole default run
    default_part = parts[0]
    assert default_part.kwargs == {"commands": ["new"], "routes": [], "configdir": str(env.configdir),
                                   "lane": "default"}
    assert Job.from_message(ENGINE_TASK, [], default_part.kwargs, "/elsewhere") == default_part
    assert str(parts[1]).endswith(f"[config {env.configdir} lane slow]")
    with pytest.raises(JobError, match=r"bots.engine: lane must be a lane name .*, got 'a b'"):
        Job.from_message(ENGINE_TASK, [], {"routes": ["r1"], "lane": "a b"}, env.configdir)
    with pytest.raises(JobError, match="got 7"):
        Job.from_message(COMMAND_TASK, [], {"name": "sweep", "lane": 7}, env.configdir)


def test_split_groups_routes_and_puts_commands_in_their_lane(env):
    cfg = env.config()
    job = job_from_argv(cfg, ["bots-engine", "--new", "--cleanup", "fast", "slow", "r1", "slow2"])
    assert [(p.lane, p.commands, p.routes) for p in split_job(cfg, job)] == [
        ("default", ("cleanup", "new"), ("r1",)), ("slow", ("new",), ("slow", "slow2")), ("fast", ("new",), ("fast",))]
    assert [p.lane for p in split_job(cfg, job_from_argv(cfg, ["frec", "x"]))] == ["fast"]
    assert [p.lane for p in split_job(cfg, job_from_argv(cfg, ["sweep"]))] == ["default"]


def test_a_job_waiting_in_a_lane_its_route_has_left_splits_to_the_new_lane(env):
    cfg = env.config()
    waited = Job.engine(env.configdir, ["new"], ["fast"], lane="fast")
    env.write(routes=LANE_ROUTES.replace('lane = "fast"', 'lane = "slow"'))
    moved = env.config()
    assert [(p.lane, p.routes) for p in split_job(moved, waited)] == [("slow", ("fast",))]
    assert message_lane(moved, waited) == "fast"           # its message stays in lane fast, whose worker forwards it
    assert message_lane(cfg, waited) == "fast"


def test_a_message_without_a_lane_is_placed_in_its_routes_lane(env):
    cfg = env.config()
    one = Job.from_message(ENGINE_TASK, [], {"routes": ["slow2", "slow"]}, env.configdir)
    assert place(cfg, one) == split_job(cfg, one)[0] and place(cfg, one).lane == "slow"
    # the same identity as bots-job2queue's job for those routes: one is the other's duplicate
    (queued,) = split_job(cfg, job_from_argv(cfg, ["bots-engine", "slow", "slow2"]))
    assert place(cfg, one).key == queued.key
    mixed = Job.from_message(ENGINE_TASK, [], {"routes": ["slow", "fast"]}, env.configdir)
    assert place(cfg, mixed) is mixed and mixed.lane is None and message_lane(cfg, mixed) == "default"
    assert place(cfg, Job.from_message(COMMAND_TASK, [], {"name": "frec"}, env.configdir)).lane == "fast"
    # a job with route-less work beside a lane's routes is split, so it is not one lane's work
    assert place(cfg, Job.engine(env.configdir, ["new", "cleanup"], ["slow"])).lane is None
    unknown = Job.engine(env.configdir, ["new"], ["nope"])
    assert place(cfg, unknown) is unknown                  # the worker rejects it, naming the route


def test_the_router_sends_each_job_to_its_lanes_queue_declared_with_priorities(env, monkeypatch):
    from tasks.celeryapp import settings

    monkeypatch.setenv("BOTSQ_BROKER_URL", "amqp://guest:guest@127.0.0.1:1//")
    s = settings(env.config())
    assert [(q.name, q.queue_arguments) for q in s["task_queues"]] == [
        ("engine", {"x-max-priority": 10}), ("engine.slow", {"x-max-priority": 10}),
        ("engine.fast", {"x-max-priority": 10})]
    assert s["task_queue_max_priority"] == 10              # also a queue a worker names with -Q on its own
    (router,) = s["task_routes"]
    for kwargs, queue in (({"routes": ["slow"]}, "engine.slow"), ({"routes": ["r1"]}, "engine"),
                          ({"routes": ["slow", "fast"]}, "engine"), ({}, "engine"),
                          ({"routes": ["r1"], "lane": "fast"}, "engine.fast"),
                          ({"routes": ["slow"], "lane": "gone"}, "engine"), ({"routes": "x" * 3}, "engine"),
                          ({"bad": 1}, "engine")):
        got = router("bots.engine", (), kwargs, {})["queue"]
        assert (got.name, got.queue_arguments) == (queue, {"x-max-priority": 10}), kwargs
    assert router("bots.command", (), {"name": "frec"}, {})["queue"].name == "engine.fast"
    assert router("celery.ping", (), {}, {}) is None


def test_the_result_of_a_split_submit_says_what_each_lane_got(env):
    job = Job.engine(env.configdir, ["new"], ["r1"], "default")
    part = lambda status, lane: LaneSubmit(lane, job, status, f"id-{lane}", 5)  # noqa: E731
    added, dup, raised = RegistrationStatus.ADDED, RegistrationStatus.DUPLICATE, RegistrationStatus.RAISED
    assert SubmitResult((part(dup, "a"), part(added, "b"))).status == added
    assert SubmitResult((part(dup, "a"), part(added, "b"))).task_id == "id-b"
    assert SubmitResult((part(dup, "a"), part(raised, "b"))).status == raised
    assert SubmitResult((part(dup, "a"), part(dup, "b"))).status == dup
    assert part(dup, "slow").describe() == "lane slow: duplicate, not added (bots-engine --new r1)"
    assert part(raised, "x").describe() == "lane x: priority of the waiting job raised to 5 (bots-engine --new r1)"


def test_the_publish_handler_places_a_celery_call_in_its_lane_and_writes_the_lane_into_it(env, monkeypatch):
    from tasks.celeryapp import app_for
    from tasks.signals import PAST, before_publish, publish_settled

    monkeypatch.setenv("BOTSQ_BROKER_URL", "memory://")
    app_for(env.config())
    kwargs = {"routes": ["slow"]}
    before_publish(sender="bots.engine", body=([], kwargs, {}), headers={"id": "c1"}, properties={})
    publish_settled("c1", "memory://")                      # the broker has it
    assert kwargs["lane"] == "slow"
    (waiting,) = PendingRegistry(env.config()).waiting()
    assert (waiting.lane, waiting.task_id) == ("slow", "c1")
    # the same job from submit's path (lane in its kwargs) is its duplicate
    headers = {"id": "c2"}
    before_publish(sender="bots.engine", body=([], {"routes": ["slow"], "lane": "slow"}, {}), headers=headers,
                   properties={})
    assert headers["expires"] == PAST
    mixed = {"routes": ["slow", "fast"]}
    before_publish(sender="bots.engine", body=([], mixed, {}), headers={"id": "c3"}, properties={})
    assert "lane" not in mixed                             # several lanes: lane default's worker splits it


def test_the_worker_runs_its_lanes_part_and_forwards_the_others(env, monkeypatch):
    from tasks import executors
    from tasks.celeryapp import app_for

    monkeypatch.setenv("BOTSQ_BROKER_URL", "memory://")
    cfg = env.config()
    app = app_for(cfg)
    ran = []
    monkeypatch.setattr(executors, "run_engine", lambda cfg, commands, routes, lane=None, progress=None:
                        ran.append((lane, tuple(routes))) or SimpleNamespace(exit_code=0, run_id=1, message="ok",
                                                                             counts={}))
    res = app.tasks["bots.engine"].apply(kwargs={"routes": ["r1", "slow", "fast"]}, task_id="mixed-1")
    assert res.result["exit_code"] == 0 and ran == [("default", ("r1",))]
    waiting = sorted((w.lane, w.kwargs["routes"]) for w in PendingRegistry(cfg).waiting())
    assert waiting == [("fast", ["fast"]), ("slow", ["slow"])]
    log = (env.root / "botssys/logging/jobqueue.log").read_text()
    assert "job mixed-1 (bots-engine --new fast r1 slow, lane default): forwarded bots-engine --new slow to lane " \
           "slow: added" in log
    # again while those wait: the forwarded parts are duplicates, nothing more waits
    app.tasks["bots.engine"].apply(kwargs={"routes": ["r1", "slow", "fast"]}, task_id="mixed-2")
    assert len(PendingRegistry(cfg).waiting()) == 2
    assert "forwarded bots-engine --new slow to lane slow: duplicate" in \
        (env.root / "botssys/logging/jobqueue.log").read_text()
    # a message whose route moved to another lane: nothing of it is in its lane, all of it is forwarded
    PendingRegistry(cfg).clear()
    ran.clear()
    res = app.tasks["bots.engine"].apply(kwargs={"routes": ["fast"], "lane": "slow"}, task_id="moved-1")
    assert res.result == {"forwarded": True} and ran == []
    assert [(w.lane, w.kwargs["routes"]) for w in PendingRegistry(cfg).waiting()] == [("fast", ["fast"])]


def test_a_forwarded_part_keeps_the_messages_priority(env, monkeypatch):
    from tasks import executors
    from tasks.celeryapp import app_for

    monkeypatch.setenv("BOTSQ_BROKER_URL", "memory://")
    cfg = env.config()
    app = app_for(cfg)
    monkeypatch.setattr(executors, "run_engine", lambda *a, **k: SimpleNamespace(exit_code=0, run_id=1, message="ok",
                                                                                  counts={}))
    # delivered at Bots priority 2 (the memory transport's scale is Redis', Bots' own numbers)
    app.tasks["bots.engine"].apply(kwargs={"routes": ["r1", "slow"]}, task_id="p2", priority=2)
    assert [(w.lane, w.priority) for w in PendingRegistry(cfg).waiting()] == [("slow", 2)]


# --------------------------------------------------------------------------- bots-jobqueueserver

def test_jobqueueserver_lanes_node_names_and_worker_arguments(env):
    from tasks.cli.jobqueueserver import chosen_lanes, node_name, worker_argv

    cfg = env.config()
    assert chosen_lanes(cfg, None) == ["default", "slow", "fast"]
    assert chosen_lanes(cfg, ["fast", "default", "fast"]) == ["default", "fast"]
    with pytest.raises(UsageError) as err:
        chosen_lanes(cfg, ["fast", "nope"])
    assert str(err.value) == f"unknown lane 'nope' (lanes of {env.configdir}: default, slow, fast)"
    assert node_name(None, "default") == "botsq@%h" and node_name(None, "slow") == "botsq-slow@%h"
    assert node_name("w1@host2", "slow") == "w1-slow@host2" and node_name("w1", "fast") == "w1-fast"
    argv = worker_argv("INFO", None, "slow")
    assert argv[argv.index("-Q") + 1] == "engine.slow" and argv[argv.index("-c") + 1] == "1"
    assert argv[argv.index("-n") + 1] == "botsq-slow@%h" and "prefork" in argv
    assert worker_argv()[worker_argv().index("-Q") + 1] == "engine"                        # today's worker
