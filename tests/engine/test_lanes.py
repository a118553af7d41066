"""Lanes in the engine: the config keys, the one split rule, a lock per lane, bots-engine over several
lanes, per-lane crash recovery, and old databases gaining the lane column (SQLite and PostgreSQL)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import timedelta

import pytest
from sqlalchemy import select, text

from conftest import DEFAULT_INI, lane_route
from engine.config.lanes import DEFAULT_LANE
from engine.db import dispose_all, get_engine, session_scope
from engine.errors import ConfigError, UsageError
from engine.models import Incoming, InStatus, Lease, Outgoing, Run, RunStatus, utcnow
from engine.run import lane_plan, run_engine, select_routes
from engine.run.tracking import Tracker

INI = DEFAULT_INI + "\n[jobqueue.commands]\nsweep = /bin/true\nrec = /bin/echo\n"


OUT = """
[channels.out]
type = "file"
path = "data/out"
filename = "{infile}"
"""

# lane default: d; lane fast: f; lane slow: s1, s2 (s2 only when named); lane idle: an inactive route
LANES = OUT + lane_route("d", "din") + lane_route("f", "fin", "fast") + lane_route("s1", "sin1", "slow") \
    + lane_route("s2", "sin2", "slow", notindefaultrun=True) + lane_route("i", "iin", "idle", active=False)


@pytest.fixture
def env(make_env, db_ini):
    e = make_env(ini=INI + db_ini, routes=LANES)
    for d in ("din", "fin", "sin1", "sin2", "iin", "out"):
        e.path(f"data/{d}").mkdir(parents=True, exist_ok=True)
    return e


def runs(cfg) -> list[dict]:
    with session_scope(cfg.database_url) as s:
        return [r.as_dict() for r in s.scalars(select(Run).order_by(Run.id))]


# --------------------------------------------------------------------------- config

@pytest.mark.parametrize("db_kind", ["sqlite"])
def test_a_routes_lane_and_the_lanes_of_a_config(env):
    cfg = env.config()
    assert {r.name: r.lane for r in cfg.routes.values()} == {"d": "default", "f": "fast", "s1": "slow", "s2": "slow",
                                                             "i": "idle"}
    assert cfg.lanes == ("default", "fast", "slow", "idle")
    assert cfg.lane_of("s2") == "slow" and cfg.lane_of("d") == "default" and cfg.lane_of("gone") == "default"
    assert cfg.command_lane("sweep") == "default"


@pytest.mark.parametrize("bad", ["slow lane", "a.b", "", "x" * 65, "ünï", "engine/x"])
def test_a_lane_name_that_cannot_name_a_queue_is_a_config_error_naming_route_and_key(make_env, bad):
    env = make_env(routes=OUT + lane_route("r", "rin", bad))
    with pytest.raises(ConfigError) as err:
        env.config()
    msg = str(err.value)
    assert f"routes.r.lane: {bad!r} is not a lane name" in msg
    assert "1 to 64 characters: letters A-Z a-z, digits 0-9, '_' and '-'" in msg and "\n" not in msg


def test_a_lane_that_is_not_a_string_is_a_config_error(make_env):
    env = make_env(routes=OUT + lane_route("r", "rin").replace("notindefaultrun", "lane = 3\nnotindefaultrun"))
    with pytest.raises(ConfigError, match=r"routes\.r\.lane: expected a string, got 3"):
        env.config()


def test_lane_names_may_use_letters_digits_underscore_and_dash(make_env):
    env = make_env(routes=OUT + lane_route("r", "rin", "Slow_Partners-2"))
    assert env.config().lanes == ("default", "Slow_Partners-2")


def test_commands_are_mapped_to_lanes_and_an_unknown_command_there_is_an_error(make_env):
    cfg = make_env(ini=INI + "[jobqueue.commands.lanes]\nsweep = nightly\n", routes=LANES).config()
    assert cfg.command_lane("sweep") == "nightly" and cfg.command_lane("rec") == "default"
    assert cfg.lanes == ("default", "fast", "slow", "idle", "nightly")
    env = make_env(ini=INI + "[jobqueue.commands.lanes]\nsweeep = nightly\n", routes=LANES)
    with pytest.raises(ConfigError) as err:
        env.config()
    assert "[jobqueue.commands.lanes] sweeep: no command named 'sweeep' in [jobqueue.commands] (listed: sweep, rec)" \
        in str(err.value)
    env = make_env(ini=INI + "[jobqueue.commands.lanes]\nsweep = night shift\n", routes=LANES)
    with pytest.raises(ConfigError, match=r"\[jobqueue.commands.lanes\] sweep: 'night shift' is not a lane name"):
        env.config()


def test_an_in_channel_read_by_routes_of_two_lanes_is_refused(make_env):
    shared = OUT + lane_route("a", "rin", "one") + lane_route("b", "other", "one").replace('fromchannel = "other"',
                                                                                'fromchannel = "rin"')
    assert make_env(routes=shared).config().lanes == ("default", "one")          # one lane: fine, as today
    env = make_env(routes=shared.replace('lane = "one"\nnotindefaultrun = false\nactive = true\n[[routes.b',
                                         'lane = "two"\nnotindefaultrun = false\nactive = true\n[[routes.b'))
    with pytest.raises(ConfigError) as err:
        env.config()
    assert "routes.b.lane: channel 'rin' is read by route a (lane 'one') and route b (lane 'two'); an in-channel " \
           "belongs to one lane" in str(err.value)


# --------------------------------------------------------------------------- the split rule

def parts(cfg, commands, routes, lane=None):
    return [(p.lane, p.commands, p.routes) for p in lane_plan(cfg, commands, routes, lane)]


@pytest.mark.parametrize("db_kind", ["sqlite"])
def test_lane_plan_groups_routes_by_lane_and_splits_a_default_run(env):
    cfg = env.config()
    assert parts(cfg, ["new"], ["s2", "d", "f", "s1"]) == [("default", ("new",), ("d",)), ("fast", ("new",), ("f",)),
                                                          ("slow", ("new",), ("s2", "s1"))]
    # a default run: one per lane with routes in it (s2 is notindefaultrun but s1 is not; idle is inactive)
    assert parts(cfg, ["new"], []) == [("default", ("new",), ()), ("fast", ("new",), ()), ("slow", ("new",), ())]
    # a lane's own default run
    assert parts(cfg, ["new"], [], "slow") == [("slow", ("new",), ())]
    # route-less work goes to lane default, joining its part when it has one
    assert parts(cfg, ["new", "cleanup"], ["f"]) == [("default", ("cleanup",), ()), ("fast", ("new",), ("f",))]
    assert parts(cfg, ["cleanup", "new"], ["d", "f"]) == [("default", ("new", "cleanup"), ("d",)),
                                                         ("fast", ("new",), ("f",))]
    assert parts(cfg, ["cleanup"], ["f"]) == [("default", ("cleanup",), ())]
    with pytest.raises(UsageError, match="unknown route 'nope'"):
        lane_plan(cfg, ["new"], ["nope"])


def test_without_lanes_the_plan_is_the_job_as_it_is(make_env):
    cfg = make_env().config()
    for cmds, rts in ((["new"], []), (["new"], ["r1"]), (["cleanup"], ["r1"]), (["resend", "cleanup"], []),
                      (["rereceive"], ["r1", "r1"])):
        (only,) = lane_plan(cfg, cmds, rts)
        assert (only.lane, list(only.routes)) == ("default", list(dict.fromkeys(rts)))
    empty = make_env(routes="").config()
    assert parts(empty, ["new"], []) == [("default", ("new",), ())]       # nothing to run: lane default, as today


@pytest.mark.parametrize("db_kind", ["sqlite"])
def test_a_run_in_a_lane_refuses_a_route_of_another_lane(env):
    cfg = env.config()
    assert [r.name for r in select_routes(cfg, ["new"], [], "slow")] == ["s1"]
    with pytest.raises(UsageError, match="route 'f' is in lane 'fast', not in lane 'slow'"):
        run_engine(cfg, ["new"], ["s1", "f"], lane="slow")


# --------------------------------------------------------------------------- runs, locks, exit codes

def hold_lock(cfg, lane: str, run_id: int | None = None) -> None:
    """A live holder of the lane's engine lock: this test process, heartbeat now."""
    get_engine(cfg.database_url)
    now = utcnow()
    with session_scope(cfg.database_url) as s:
        s.add(Lease(name="engine" if lane == DEFAULT_LANE else f"engine.{lane}", token="t" * 32,
                    host=socket.gethostname(), pid=os.getpid(), started=now, heartbeat=now, run_id=run_id))


def test_a_default_run_runs_lane_after_lane_each_recorded_with_its_lane(env):
    for d, name in (("din", "a"), ("fin", "b"), ("sin1", "c"), ("sin2", "e")):
        env.drop(f"data/{d}/{name}", name)
    cfg = env.config()
    res = run_engine(cfg, ["new"])
    assert res.exit_code == 0
    assert [(r["lane"], r["routes"], r["received"], r["status"]) for r in runs(cfg)] == \
        [("default", "", 1, "ok"), ("fast", "", 1, "ok"), ("slow", "", 1, "ok")]
    assert res.message.splitlines()[1].startswith("lane fast: run 2: 1 received")
    assert env.path("data/sin2/e").exists()               # notindefaultrun: only when named
    assert run_engine(cfg, ["new"], ["s2"]).lane == "slow"
    assert not env.path("data/sin2/e").exists()


def test_a_locked_lane_does_not_stop_the_others_and_exit_3_names_it(env):
    cfg = env.config()
    env.drop("data/fin/x", "x")
    hold_lock(cfg, "slow")
    res = run_engine(cfg, ["new"], ["s1", "f"])
    assert res.exit_code == 3
    by_lane = {r.lane: r for r in res.lanes}
    assert by_lane["fast"].exit_code == 0 and env.path("data/out/x").exists()
    assert by_lane["slow"].message.startswith(f"lane slow: engine is locked by a running engine run: host "
                                              f"{socket.gethostname()} pid {os.getpid()}")
    # the same lane alone: exit 3, the message names it
    alone = run_engine(cfg, ["new"], ["s1"])
    assert alone.exit_code == 3 and alone.message.startswith("lane slow: engine is locked")
    # lane default is not locked by lane slow's holder
    assert run_engine(cfg, ["new"], ["d"]).exit_code == 0


def test_exit_code_over_lanes_is_the_most_serious_system_then_locked_then_errors(env, monkeypatch):
    from engine.run import session

    cfg = env.config()
    env.drop("data/din/a", "a")
    hold_lock(cfg, "slow")
    env.path("data/out").rmdir()                           # lane default: a communication error (exit 2)
    assert run_engine(cfg, ["new"], ["d", "s1"]).exit_code == 3
    env.drop("data/din/b", "b")
    assert run_engine(cfg, ["new"], ["d", "f"]).exit_code == 2

    real = session.RunSession.execute

    def broken(self):
        if self.lane == "fast":
            raise session.DatabaseError("database x cannot be used: gone")
        return real(self)

    monkeypatch.setattr(session.RunSession, "execute", broken)
    env.drop("data/din/c", "c")
    res = run_engine(cfg, ["new"], ["d", "f", "s1"])
    assert res.exit_code == 1
    assert [(r.lane, r.exit_code) for r in res.lanes] == [("default", 2), ("fast", 1), ("slow", 3)]
    assert "lane fast: database x cannot be used: gone" in res.message.splitlines()


@pytest.mark.procs
@pytest.mark.parametrize("db_kind", ["sqlite"])
def test_bots_engine_by_hand_over_two_lanes_prints_a_line_per_lane(env):
    cfg = env.config()
    hold_lock(cfg, "slow")
    env.drop("data/fin/x", "x")
    r = env.run("--new", "f", "s1")
    assert r.returncode == 3, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("lane fast: run 1: 1 received") and lines[1].startswith("lane slow: engine is locked")
    env.write(routes=LANES.replace('lane = "slow"', 'lane = "slow lane"', 1))
    r = env.run("--new")
    assert r.returncode == 1
    assert r.stderr.startswith("bots-engine: error: ") and "routes.s1.lane: 'slow lane' is not a lane name" in r.stderr


# --------------------------------------------------------------------------- crash recovery per lane

def _run_row(cfg, lane: str, status: RunStatus = RunStatus.RUNNING) -> int:
    with session_scope(cfg.database_url) as s:
        run = Run(commands="new", routes="", lane=lane, host=socket.gethostname(), pid=os.getpid(),
                  started=utcnow() - timedelta(seconds=5), status=status)
        s.add(run)
        s.flush()
        return run.id


def _received(cfg, env, run_id: int, route: str, name: str) -> int:
    """An incoming file a run archived and recorded but did not process yet (what a run leaves mid-way)."""
    arch = env.path(f"botssys/data/{name}")
    arch.parent.mkdir(parents=True, exist_ok=True)
    arch.write_text(name)
    with session_scope(cfg.database_url) as s:
        rec = Incoming(run_id=run_id, route=route, part=1, channel="x", filename=name, size=len(name),
                       archive_path=f"data/{name}", status=InStatus.RECEIVED)
        s.add(rec)
        s.flush()
        return rec.id


def _status(cfg, model, ident):
    with session_scope(cfg.database_url) as s:
        return s.get(model, ident).status


def test_recovery_never_marks_a_run_of_another_lane_crashed_nor_takes_its_files(env):
    """Before lanes, a run recorded every other running run as crashed and finished all received files:
    with lanes that would take the files of a live run in another lane."""
    cfg = env.config()
    get_engine(cfg.database_url)
    live_slow = _run_row(cfg, "slow")                      # runs in lane slow right now (its lock held)
    hold_lock(cfg, "slow", live_slow)
    slow_file = _received(cfg, env, live_slow, "s1", "slowfile")
    dead_fast = _run_row(cfg, "fast")                      # lane fast's last run died half-way
    fast_file = _received(cfg, env, dead_fast, "f", "fastfile")
    dead_default = _run_row(cfg, "default")
    default_file = _received(cfg, env, dead_default, "d", "defaultfile")
    gone_route = _received(cfg, env, dead_default, "removed_route", "orphan")   # its route left the config

    assert run_engine(cfg, ["new"], lane="fast").exit_code == 0
    assert _status(cfg, Run, dead_fast) == RunStatus.CRASHED and _status(cfg, Incoming, fast_file) == InStatus.DONE
    assert env.path("data/out/fastfile").read_text() == "fastfile"
    assert _status(cfg, Run, live_slow) == RunStatus.RUNNING and _status(cfg, Incoming, slow_file) == InStatus.RECEIVED
    assert _status(cfg, Run, dead_default) == RunStatus.RUNNING                 # lane default's business
    assert _status(cfg, Incoming, default_file) == InStatus.RECEIVED

    assert run_engine(cfg, ["new"], lane="default").exit_code == 2               # the orphan's route is gone
    assert _status(cfg, Run, dead_default) == RunStatus.CRASHED
    assert _status(cfg, Incoming, default_file) == InStatus.DONE
    assert _status(cfg, Incoming, gone_route) != InStatus.RECEIVED              # lane default owns unknown routes
    assert _status(cfg, Run, live_slow) == RunStatus.RUNNING and _status(cfg, Incoming, slow_file) == InStatus.RECEIVED


def test_a_route_moved_to_another_lane_is_not_recovered_while_its_old_lanes_run_goes_on(env):
    cfg = env.config()
    get_engine(cfg.database_url)
    old_lane_run = _run_row(cfg, "default")               # was running route f when f was still in lane default
    hold_lock(cfg, "default", old_lane_run)
    moved = _received(cfg, env, old_lane_run, "f", "moved")
    assert run_engine(cfg, ["new"], lane="fast").exit_code == 0
    assert _status(cfg, Incoming, moved) == InStatus.RECEIVED                  # the live run in lane default has it
    with session_scope(cfg.database_url) as s:
        s.execute(Lease.__table__.delete())
        s.get(Run, old_lane_run).status = RunStatus.CRASHED                    # that run is over now
    assert run_engine(cfg, ["new"], lane="fast").exit_code == 0
    assert _status(cfg, Incoming, moved) == InStatus.DONE


def test_outputs_waiting_to_be_sent_are_recovered_by_their_own_lane(env):
    cfg = env.config()
    get_engine(cfg.database_url)
    dead = _run_row(cfg, "slow")
    store = env.path("botssys/outfiles/o1")
    store.parent.mkdir(parents=True, exist_ok=True)
    store.write_text("o1")
    with session_scope(cfg.database_url) as s:
        s.add(Outgoing(run_id=dead, route="s1", part=1, channel="out", filename="o1", size=2,
                       store_path="outfiles/o1"))
    assert run_engine(cfg, ["new"], lane="fast").exit_code == 0
    assert not env.path("data/out/o1").exists()
    assert run_engine(cfg, ["new"], lane="slow").exit_code == 0
    assert env.path("data/out/o1").read_text() == "o1"


# --------------------------------------------------------------------------- the daily cleanup

@pytest.mark.parametrize("db_kind", ["sqlite"])
def test_the_daily_cleanup_is_claimed_once_whichever_lane_runs_first(env):
    cfg = env.config()
    tracker = Tracker(cfg.database_url)
    assert tracker.claim_state("day", "2026-01-01") and not tracker.claim_state("day", "2026-01-01")
    assert tracker.claim_state("day", "2026-01-02")
    env.write(ini=(INI).replace("whencleanup = never", "whencleanup = daily"))
    cfg = env.config()
    run_engine(cfg, ["new"], lane="slow")
    run_engine(cfg, ["new"], lane="fast")
    log = env.path("botssys/logging/engine.log").read_text()
    assert log.count("daily cleanup (first run of the day)") == 1


# --------------------------------------------------------------------------- old databases

def test_an_old_database_gains_the_lane_column_with_lane_default_for_its_runs(env, db_kind):
    """Databases made before lanes have no runs.lane (and no jobqueue_started.lane): the first use adds them."""
    from tasks.registry import StartedJobs, forget_tables

    cfg = env.config()
    StartedJobs(cfg)
    eng = get_engine(cfg.database_url)
    with eng.begin() as conn:
        conn.execute(text("DROP INDEX ix_runs_lane"))
        conn.execute(text("ALTER TABLE runs DROP COLUMN lane"))
        conn.execute(text("ALTER TABLE jobqueue_started DROP COLUMN lane"))
        conn.execute(text("INSERT INTO runs (commands, routes, host, pid, started, status, received, processed, "
                          "sent, file_errors, comm_errors, message) VALUES ('new', '', 'h', 1, :t, 'ok', 0, 0, 0, 0, "
                          "0, '')"), {"t": utcnow()})
    dispose_all()
    forget_tables()
    assert run_engine(env.config(), ["new"], lane="slow").exit_code == 0
    assert [(r["id"], r["lane"]) for r in runs(cfg)] == [(1, "default"), (2, "slow")]
    from sqlalchemy import inspect
    insp = inspect(get_engine(cfg.database_url))
    assert "ix_runs_lane" in {i["name"] for i in insp.get_indexes("runs")}
    StartedJobs(cfg)
    assert "lane" in {c["name"] for c in inspect(get_engine(cfg.database_url)).get_columns("jobqueue_started")}


@pytest.mark.procs
@pytest.mark.parametrize("db_kind", ["sqlite"])
def test_processes_starting_together_on_an_old_database_add_the_column_once(env):
    cfg = env.config()
    eng = get_engine(cfg.database_url)
    with eng.begin() as conn:
        conn.execute(text("DROP INDEX ix_runs_lane"))
        conn.execute(text("ALTER TABLE runs DROP COLUMN lane"))
    dispose_all()
    code = ("import sys; from engine.db import get_engine; get_engine(sys.argv[1]); "
            "from sqlalchemy import inspect; print(sorted(c['name'] for c in inspect(get_engine(sys.argv[1]))"
            ".get_columns('runs')).count('lane'))")
    procs = [subprocess.Popen([sys.executable, "-c", code, cfg.database_url], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0] * 4 and outs == ["1"] * 4
