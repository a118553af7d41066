"""Lanes with real worker processes on real RabbitMQ and Redis: two lanes overlap (one server serving
both, and two workers of their own), a lane never overlaps itself and survives a killed worker,
priorities and dedup hold within a lane while the other is busy, every trigger ends in the right
lane, and bad input is refused clearly."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import Env, bin_path, lane_route
from e2e_procs import Proc, beat, dirmonitor, wait_for
from queue_helpers import (PY, REC, botsq, celery_call, ended, in_process, job2queue, jobqueue_log, proc_vars, purge,
                           queue_ini, started)

pytestmark = [pytest.mark.procs]

# A mapping that records "start ROUTE PID T" / "end ROUTE PID T"; a file saying "wait PATH" holds it
# until PATH exists (at most 90 s), "sleep N" for N seconds.
HOLD = r'''
import os, time
def run(content, meta):
    def line(what):
        fd = os.open(os.environ["BOTSQ_TEST_TRACE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, f"{what} {meta.get('route')} {os.getpid()} {time.time():.6f}\n".encode())
        os.close(fd)
    line("start")
    text = content.decode().strip()
    if text.startswith("wait "):
        end = time.time() + 90
        while not os.path.exists(text[5:]) and time.time() < end:
            time.sleep(0.05)
    elif text.startswith("sleep "):
        time.sleep(float(text[6:]))
    line("end")
    return content
'''

COMMANDS = f"""frec = {PY} {{root}}/rec.py {{root}}/order.log
srec = {PY} {{root}}/rec.py {{root}}/order.log

[jobqueue.commands.lanes]
frec = fast
srec = slow
"""


# lane default: d; lane fast: fast; lane slow: slow, slow2
ROUTES = """
[channels.out]
type = "file"
path = "data/out"
filename = "{infile}"
""" + "".join(lane_route(name, channel, lane, "hold.run") for name, channel, lane in (
    ("d", "din", None), ("fast", "fin", "fast"), ("slow", "sin", "slow"), ("slow2", "sin2", "slow")))


def make_env(root: Path, broker: str, extra: str = "", more: str = "") -> Env:
    root.mkdir(parents=True, exist_ok=True)
    ini = queue_ini(broker, extra, COMMANDS.format(root=root) + more, root=str(root))
    env = Env(root).write(ini, ROUTES)
    (root / "rec.py").write_text(REC, encoding="utf-8")
    env.drop("usersys/mappings/hold.py", HOLD)
    for d in ("din", "fin", "sin", "sin2", "out"):
        (root / "data" / d).mkdir(parents=True, exist_ok=True)
    return env


@pytest.fixture(params=[pytest.param("rabbitmq", marks=[pytest.mark.rabbitmq, pytest.mark.slow]),
                        pytest.param("redis", marks=[pytest.mark.redis, pytest.mark.slow])])
def broker(request) -> str:
    return request.getfixturevalue("rabbit_url" if request.param == "rabbitmq" else "redis_url")


class Server(Proc):
    """A worker process: ``bots-jobqueueserver ARGS`` (default) or ``celery -A tasks worker ARGS``."""

    def __init__(self, env: Env, broker: str, *args: str, celery_cli: bool = False, name: str = "") -> None:
        self.env = env
        argv = ([bin_path("celery"), "-A", "tasks", "worker", "-c", "1", "-P", "prefork", "-E", "--without-mingle",
                 "--without-gossip", "-l", "INFO", *args] if celery_cli
                else [bin_path("bots-jobqueueserver"), "-c", str(env.configdir), *args])
        super().__init__(f"server-{name or uuid.uuid4().hex[:6]}", argv, proc_vars(env, broker), env.root, env.root)

    def wait_ready(self, workers: int = 1, timeout: float = 60) -> "Server":
        wait_for(lambda: self.output().count(" ready.") >= workers, timeout, f"{self.name}: {workers} worker(s) ready",
                 [self])
        return self

    def tree(self) -> list[int]:
        """This process and every process under it (the supervised workers and their pool processes)."""
        out, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            try:
                todo += [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
            except OSError:
                pass
        return out

    def stop(self, timeout: float = 30.0) -> int:
        """Warm shutdown (SIGTERM); anything of it still there after ``timeout`` is killed."""
        pids = self.tree()
        code = super().stop(timeout)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return code


@pytest.fixture
def procs():
    """Processes a test starts; stopped (and released) whatever happens."""
    running: list[Proc] = []
    yield running
    for env in {p.env for p in running if isinstance(p, Server)}:
        for name in RELEASES:               # a test that failed half-way: let held jobs end
            (env.root / name).write_text("go")
    for p in reversed(running):
        p.stop()


RELEASES = ("release", "fast.release")     # the files the held jobs of these tests wait for


def runs(cfg) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from engine.db import session_scope
    from engine.models import Run

    with session_scope(cfg.database_url) as s:
        return [r.as_dict() for r in s.scalars(select(Run).order_by(Run.id))]


def lane_runs(cfg, lane: str, status: str | None = None) -> list[dict[str, Any]]:
    return [r for r in runs(cfg) if r["lane"] == lane and (status is None or r["status"] == status)]


def queue(env: Env, broker: str, *argv: str) -> subprocess.CompletedProcess[str]:
    r = job2queue(env, broker, *argv)
    assert r.returncode in (0, 4), r.stdout + r.stderr
    return r


def trace(env: Env) -> list[tuple[str, str, int, float]]:
    p = env.root / "trace.log"
    rows = [ln.split() for ln in p.read_text().splitlines()] if p.exists() else []
    return [(w, route, int(pid), float(t)) for w, route, pid, t in rows]


def new_env(tmp_path: Path, broker: str, **kw: str) -> tuple[Env, Any]:
    env = make_env(tmp_path / "env", broker, **kw)
    purge(env, broker)
    return env, in_process(env, broker)


# --------------------------------------------------------------------------- two lanes at once

def _fast_runs_while_slow_blocks(env: Env, broker: str, cfg: Any, procs: list[Proc],
                                 meanwhile: Callable[[], None] = lambda: None) -> None:
    """A blocking slow run; two fast jobs run and finish meanwhile; the overlap, proven from the run records.
    ``meanwhile`` runs while the slow run still blocks."""
    env.drop("data/sin/big.edi", f"wait {env.root / 'release'}")
    queue(env, broker, "bots-engine", "--new", "slow")
    wait_for(lambda: any(w == "start" and r == "slow" for w, r, _p, _t in trace(env)), 30, "the slow run to block",
             procs)
    for i in (1, 2):
        env.drop(f"data/fin/f{i}.edi", "x")
        queue(env, broker, "-p", "3", "bots-engine", "--new", "fast")
        wait_for(lambda: len(lane_runs(cfg, "fast", "ok")) == i, 30, f"fast run {i}", procs)
    [slow] = lane_runs(cfg, "slow")
    assert slow["status"] == "running" and slow["ended"] is None
    meanwhile()
    (env.root / "release").write_text("go")
    wait_for(lambda: lane_runs(cfg, "slow", "ok"), 30, "the slow run to end", procs)
    [slow] = lane_runs(cfg, "slow")
    fast = lane_runs(cfg, "fast")
    assert len(fast) == 2 and all(r["received"] == 1 for r in fast)
    for r in fast:                                          # each fast run lies inside the slow one
        assert slow["started"] <= r["started"] and r["ended"] <= slow["ended"], (slow, r)
    assert sorted(os.listdir(env.root / "data/out")) == ["big.edi", "f1.edi", "f2.edi"]


@pytest.mark.timeout(240)
def test_one_server_serving_both_lanes_runs_fast_jobs_while_a_slow_one_blocks(broker, tmp_path, procs):
    env, cfg = new_env(tmp_path, broker)
    server = Server(env, broker, name="all")
    procs.append(server)
    server.wait_ready(workers=3)                         # lanes default, fast and slow: one worker each
    out = server.output()
    for lane, queue_ in (("fast", "engine.fast"), ("slow", "engine.slow"), ("default", "engine")):
        node = "botsq" if lane == "default" else f"botsq-{lane}"
        assert f"worker ready: {node}@" in out and f"consuming queue {queue_}\n" in out

    def per_lane_views() -> None:
        r = botsq(env, broker, "status", "--json")
        assert r.returncode == 0, r.stdout + r.stderr                       # healthy: every lane has its worker
        lanes = {lane["lane"]: lane for lane in json.loads(r.stdout)["lanes"]}
        assert list(lanes) == ["default", "fast", "slow"]
        slow = lanes["slow"]
        assert slow["lock"]["held"] and slow["lock"]["alive"]
        assert slow["lock"]["run_id"] == lane_runs(cfg, "slow")[0]["id"]
        assert [w.split("@")[0] for w in slow["workers"]] == ["botsq-slow"] and slow["queue"] == "engine.slow"
        assert [j["job"] for j in slow["running"]] == ["bots-engine --new slow"]
        assert not lanes["fast"]["lock"]["held"] and lanes["fast"]["by_priority"] == {}
        r = botsq(env, broker, "queue")
        assert r.returncode == 0 and "lane slow (queue engine.slow): 0 waiting, 0 at the broker, lock held by run" \
            in r.stdout, r.stdout

    _fast_runs_while_slow_blocks(env, broker, cfg, procs, per_lane_views)
    assert server.stop() == 0                            # SIGTERM: a warm shutdown of every lane's worker
    assert server.output().count("Warm shutdown") == 3


@pytest.mark.timeout(240)
def test_two_workers_with_node_names_of_their_own_serve_a_lane_each(broker, tmp_path, procs):
    env, cfg = new_env(tmp_path, broker)
    slow = Server(env, broker, "-Q", "engine.slow", "-n", "slowone@%h", celery_cli=True, name="slow")
    fast = Server(env, broker, "--lane", "fast", "-n", "fastone@%h", name="fast")
    procs += [slow, fast]
    slow.wait_ready()
    fast.wait_ready()
    _fast_runs_while_slow_blocks(env, broker, cfg, procs)
    r = botsq(env, broker, "status")                                      # no worker serves lane default
    assert r.returncode == 1 and "no worker consumes queue 'engine' (lane default)" in r.stdout, r.stdout
    assert "slowone@" in slow.output() and "consuming queue engine.slow" in slow.output()
    assert "fastone@" in fast.output() and "consuming queue engine.fast" in fast.output()
    assert slow.output().count("bots.engine[") >= 1 and fast.output().count("bots.engine[") >= 2


@pytest.mark.rabbitmq
@pytest.mark.timeout(120)
def test_when_one_lanes_worker_dies_the_server_stops_the_others_and_exits_1(rabbit_url, tmp_path, procs):
    env, _cfg = new_env(tmp_path, rabbit_url)
    server = Server(env, rabbit_url, name="all")
    procs.append(server)
    server.wait_ready(workers=3)
    pid = server.proc.pid
    children = [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    [fast] = [c for c in children if b"--lane\0fast\0" in Path(f"/proc/{c}/cmdline").read_bytes()]
    everything = server.tree()
    os.kill(fast, signal.SIGKILL)
    assert server.proc.wait(60) == 1                   # rather than run on with a lane unserved
    out = server.output()
    assert "the worker of lane-fast exited with code -9: stopping the others" in out
    assert out.count("Warm shutdown") == 2
    wait_for(lambda: not any(Path(f"/proc/{p}").exists() for p in everything), 30, "every worker to be gone")


# --------------------------------------------------------------------------- one lane, two workers

@pytest.mark.timeout(240)
def test_two_workers_on_one_lane_never_overlap(broker, tmp_path, procs):
    env, cfg = new_env(tmp_path, broker)
    for name in ("one", "two"):
        procs.append(Server(env, broker, "--lane", "slow", "-n", f"{name}@%h", name=name))
    for p in procs:
        p.wait_ready()
    # the first run's mapping sleeps longer than bots-job2queue takes to start on a loaded machine,
    # and the second job is queued once the first run is under way: it must meet a busy lane
    env.drop("data/sin/a.edi", "sleep 6")
    env.drop("data/sin2/b.edi", "sleep 1.5")
    queue(env, broker, "bots-engine", "--new", "slow")
    wait_for(lambda: [w for w, *_ in trace(env)] == ["start"], 60, "the first run's mapping to start", procs)
    queue(env, broker, "bots-engine", "--new", "slow2")
    wait_for(lambda: len(lane_runs(cfg, "slow", "ok")) == 2, 60, "both runs", procs)
    first, second = lane_runs(cfg, "slow")
    assert first["ended"] <= second["started"], (first, second)           # one after the other
    spans = [t for _w, _r, _p, t in trace(env)]
    assert len(spans) == 4 and spans == sorted(spans)                     # start, end, start, end
    assert [w for w, *_ in trace(env)] == ["start", "end", "start", "end"]
    assert all("bots.engine[" in p.output() for p in procs)               # each worker took one of the jobs
    assert "waits for the engine" in jobqueue_log(env)


@pytest.mark.timeout(300)
def test_a_worker_killed_mid_run_is_taken_over_by_the_other_after_recovery(broker, tmp_path, procs):
    # Redis hands an unacknowledged message out again only after visibility_timeout: shortened here
    extra = ("visibility_timeout = 2\n[jobqueue.transport_options]\nunacked_restore_interval = 1\n"
             "unacked_restore_throttle = 1\n") if broker.startswith("redis") else ""
    env, cfg = new_env(tmp_path, broker, extra=extra)
    for name in ("one", "two"):
        procs.append(Server(env, broker, "--lane", "slow", "-n", f"{name}@%h", name=name))
    for p in procs:
        p.wait_ready()
    env.drop("data/sin/k1.edi", f"wait {env.root / 'release'}")
    env.drop("data/sin/k2.edi", "k2")
    queue(env, broker, "bots-engine", "--new", "slow")
    [(_w, _r, pid, _t)] = wait_for(lambda: trace(env), 30, "the run to start", procs)
    [victim] = [p for p in procs if pid in p.tree()]
    other = next(p for p in procs if p is not victim)
    assert not list((env.root / "data/sin").iterdir())       # both files received, archived and recorded
    os.kill(victim.proc.pid, signal.SIGKILL)                  # the worker dies; its pool process with it
    victim.proc.wait(10)
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 10, "the pool process to die with its worker")
    (env.root / "release").write_text("go")
    wait_for(lambda: lane_runs(cfg, "slow", "ok"), 90, "the other worker to run the job again", [other])
    crashed, ok = lane_runs(cfg, "slow")
    assert crashed["status"] == "crashed" and ok["status"] == "ok" and "recovered" in ok["message"]
    assert sorted(os.listdir(env.root / "data/out")) == ["k1.edi", "k2.edi"]                # nothing lost
    assert (env.root / "data/out/k2.edi").read_text() == "k2"
    from sqlalchemy import select

    from engine.db import session_scope
    from engine.models import Incoming
    with session_scope(cfg.database_url) as s:
        assert sorted((i.filename, i.status) for i in s.scalars(select(Incoming))) == [("k1.edi", "done"),
                                                                                        ("k2.edi", "done")]
    starts = [(r, p) for w, r, p, _t in trace(env) if w == "start"]
    assert starts[0] == ("slow", pid) and all(p != pid for _r, p in starts[1:])
    assert "run again: the worker running it was lost (attempt 2)" in jobqueue_log(env)
    from engine.lock import read_lock
    assert read_lock(cfg, "slow") is None


# --------------------------------------------------------------------------- priority and dedup in a lane

@pytest.mark.timeout(240)
def test_priority_order_and_dedup_within_a_lane_while_the_other_lane_is_busy(broker, tmp_path, procs):
    env, cfg = new_env(tmp_path, broker)
    server = Server(env, broker, "--lane", "fast", "--lane", "slow", name="fs")
    procs.append(server)
    server.wait_ready(workers=2)
    rel_fast, rel_slow = env.root / "fast.release", env.root / "release"
    queue(env, broker, "srec", "sblock", f"@{rel_slow}")
    queue(env, broker, "frec", "fblock", f"@{rel_fast}")
    wait_for(lambda: {"sblock", "fblock"} <= set(started(env)), 30, "both lanes to be busy", procs)
    for p, name in ((9, "a"), (1, "b"), (5, "c")):
        r = queue(env, broker, "-p", str(p), "frec", name)
        assert r.stdout.strip() == "OK, job is added to queue"
    r = queue(env, broker, "-p", "9", "frec", "a")
    assert (r.returncode, r.stdout.strip()) == (4, "Duplicate job, not added.")
    call = celery_call(env, broker, "bots.command", {"name": "frec", "args": ["c"]})   # lands in lane fast too
    assert call.returncode == 0, call.stderr
    dup_id = call.stdout.strip().splitlines()[-1]
    assert queue(env, broker, "srec", "a").returncode == 0          # the same words in lane slow: another job
    rel_fast.write_text("go")
    wait_for(lambda: {"a", "b", "c"} <= set(ended(env)), 30, "lane fast's jobs", procs)
    assert started(env)[started(env).index("fblock") + 1:] == ["b", "c", "a"]
    assert "sblock" not in ended(env)                               # lane slow was busy all along
    wait_for(lambda: f"dropped unrun {dup_id}" in jobqueue_log(env), 20, "the duplicate to be dropped", procs)
    rel_slow.write_text("go")
    wait_for(lambda: started(env).count("a") == 2, 30, "lane slow's job", procs)
    assert started(env).count("c") == 1
    log = jobqueue_log(env)
    assert f"duplicate discarded: frec c [config {env.configdir} lane fast]" in log
    assert f"added" in log and f"srec a [config {env.configdir} lane slow]" in log


# --------------------------------------------------------------------------- every trigger in its lane

@pytest.mark.timeout(300)
def test_a_job_over_two_lanes_a_default_run_the_monitor_and_beat_each_end_in_their_lanes(broker, tmp_path, procs):
    more = ("[dirmonitor1]\npath = data/sin2\nroute = slow2\ndebounce = 0.2\n\n"
            "[schedule.tick]\ncadence = interval\nseconds = 1\njob = bots-engine --new d fast\n")
    env, cfg = new_env(tmp_path, broker, more=more)
    server = Server(env, broker, name="all")
    procs.append(server)
    server.wait_ready(workers=3)

    env.drop("data/din/x.edi", "x")
    env.drop("data/fin/y.edi", "y")
    r = queue(env, broker, "bots-engine", "--new", "d", "fast")
    assert r.stdout.splitlines() == ["OK, job is added to queue", "lane default: added (bots-engine --new d)",
                                     "lane fast: added (bots-engine --new fast)"]
    wait_for(lambda: len(runs(cfg)) == 2 and all(r_["ended"] for r_ in runs(cfg)), 30, "a run in each lane", procs)
    assert sorted((r_["lane"], r_["routes"], r_["received"]) for r_ in runs(cfg)) == [("default", "d", 1),
                                                                                    ("fast", "fast", 1)]
    r = queue(env, broker, "bots-engine", "--new", "d", "fast")
    assert r.returncode == 0                                        # nothing waits: both added again
    wait_for(lambda: len(runs(cfg)) == 4 and all(r_["ended"] for r_ in runs(cfg)), 30, "the second pair", procs)

    for d in ("din", "fin", "sin", "sin2"):
        env.drop(f"data/{d}/z.edi", d)
    before = len(runs(cfg))
    r = queue(env, broker, "bots-engine")                          # a default run: one job per lane
    assert r.stdout.splitlines()[1:] == ["lane default: added (bots-engine --new)", "lane fast: added "
                                         "(bots-engine --new)", "lane slow: added (bots-engine --new)"]
    wait_for(lambda: len(runs(cfg)) == before + 3 and all(r_["ended"] for r_ in runs(cfg)), 30, "three runs", procs)
    assert sorted((r_["lane"], r_["routes"]) for r_ in runs(cfg)[before:]) == [("default", ""), ("fast", ""),
                                                                              ("slow", "")]
    # four z.edi from four routes into one out-folder: none overwrites another (README "Channels")
    assert sorted(os.listdir(env.root / "data/out")) == ["x.edi", "y.edi", "z.edi", "z_1.edi", "z_2.edi", "z_3.edi"]
    assert runs(cfg)[-1]["received"] + runs(cfg)[-2]["received"] + runs(cfg)[-3]["received"] == 4

    monitor = dirmonitor(env.root, env.configdir, broker)
    procs.append(monitor)
    wait_for(lambda: "watching" in monitor.output().lower() or (env.root / "botssys/logging/dirmonitor.log").exists(),
             30, "the monitor", procs)
    time.sleep(1)
    before = len(runs(cfg))
    env.drop("data/sin2/m.edi", "m")
    wait_for(lambda: (env.root / "data/out/m.edi").exists(), 30, "the monitor's job", procs)
    wait_for(lambda: any(r_["routes"] == "slow2" and r_["ended"] for r_ in runs(cfg)[before:]), 10, "its run")
    assert {(r_["lane"], r_["routes"]) for r_ in runs(cfg)[before:]} == {("slow", "slow2")}
    monitor.stop()
    procs.remove(monitor)

    ticker = beat(env.root, env.configdir, broker)
    procs.append(ticker)
    before = len(runs(cfg))
    wait_for(lambda: {r_["lane"] for r_ in runs(cfg)[before:] if r_["ended"]} >= {"default", "fast"}, 40,
             "beat's job in both lanes", procs)
    ticker.stop()
    procs.remove(ticker)
    assert {(r_["lane"], r_["routes"]) for r_ in runs(cfg)[before:]} == {("default", "d"), ("fast", "fast")}
    assert "added job bots-engine --new d fast" in (env.root / "botssys/logging/beat.log").read_text()


# --------------------------------------------------------------------------- bad input

@pytest.mark.timeout(240)
def test_a_route_moved_to_another_lane_while_its_job_waits_runs_once_under_the_new_lanes_lock(broker, tmp_path,
                                                                                                procs):
    env, cfg = new_env(tmp_path, broker)
    server = Server(env, broker, name="all")
    procs.append(server)
    server.wait_ready(workers=3)
    rel = env.root / "fast.release"
    queue(env, broker, "frec", "block", f"@{rel}")
    wait_for(lambda: "block" in started(env), 30, "lane fast to be busy", procs)
    env.drop("data/fin/moved.edi", "moved")
    queue(env, broker, "bots-engine", "--new", "fast")              # waits in lane fast
    env.write(routes=ROUTES.replace('[routes.fast]\nlane = "fast"', '[routes.fast]\nlane = "slow"'))
    rel.write_text("go")
    wait_for(lambda: (env.root / "data/out/moved.edi").exists(), 30, "the moved route's run", procs)
    wait_for(lambda: all(r_["ended"] for r_ in runs(cfg)), 10, "its record")
    assert [(r_["lane"], r_["routes"], r_["received"]) for r_ in runs(cfg)] == [("slow", "fast", 1)]
    assert "forwarded bots-engine --new fast to lane slow: added" in jobqueue_log(env)


def test_an_unknown_lane_on_the_worker_command_line_is_refused_naming_the_lanes(tmp_path):
    env = make_env(tmp_path / "env", "amqp://guest:guest@127.0.0.1:1//")
    for argv in (["--lane", "nope"], ["--lane", "fast", "--lane", "slow lane"]):
        r = env.run(*argv, cmd="bots-jobqueueserver", timeout=60)
        assert r.returncode == 1, r.stdout + r.stderr
        bad = argv[-1]
        assert r.stderr.strip() == (f"bots-jobqueueserver: error: unknown lane {bad!r} (lanes of {env.configdir}: "
                                    "default, fast, slow)")


def test_an_invalid_lane_name_is_refused_by_every_command(tmp_path):
    env = make_env(tmp_path / "env", "amqp://guest:guest@127.0.0.1:1//")
    env.write(routes=ROUTES.replace('lane = "slow"', 'lane = "slow.partners"', 1))
    for cmd, argv in (("bots-engine", ["--new"]), ("bots-job2queue", ["bots-engine"]),
                      ("bots-jobqueueserver", []), ("bots-dirmonitor", [])):
        r = env.run(*argv, cmd=cmd, timeout=60)
        assert r.returncode == 1, (cmd, r.stdout, r.stderr)
        assert r.stderr.startswith(f"{cmd}: error: ") and len(r.stderr.strip().splitlines()) == 1, (cmd, r.stderr)
        assert "routes.slow.lane: 'slow.partners' is not a lane name (1 to 64 characters: letters A-Z a-z, digits " \
               "0-9, '_' and '-')" in r.stderr
