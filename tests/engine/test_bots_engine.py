"""``[engine] kind = bots``: botsq's bots-engine runs a Bots installation's engine (the stand-in,
tests/bots_standin.py) as a child - exit codes, records, summary counts, hard time limit, signals,
bad output and bad config. The queue side: tests/tasks/test_bots_brokers.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bots_helpers import BOTS_OWN_KEYS, STANDIN, engine_section, standin_events, standin_started
from conftest import bin_path

pytestmark = pytest.mark.procs


@pytest.fixture
def bots_env(make_env):
    def make(extra_engine: str = "", more: str = "", command: str | None = None):
        ini = BOTS_OWN_KEYS + more + (engine_section(extra=extra_engine) if command is None
                                      else engine_section(command, extra_engine))
        return make_env(ini=ini, routes=None)
    return make


def botsq(env, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([bin_path("botsq"), *argv, "-c", str(env.configdir)], cwd=env.root, capture_output=True,
                          text=True, timeout=60)


def runs(env) -> list[dict]:
    r = botsq(env, "runs", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_ok_run_passes_options_configdir_and_routes_and_records_summary(bots_env):
    env = bots_env()
    assert not (env.configdir / "routes.toml").exists()
    r = env.run("--new", "--resend", "orders", "invoices")
    assert r.returncode == 0, r.stderr
    assert "3 files received/processed in run." in r.stdout          # the child's lines, as they came
    [start] = standin_started(env.configdir)
    assert start["argv"] == ["--resend", "--new", f"-c{env.configdir}", "orders", "invoices"]
    [run] = runs(env)
    assert run["kind"] == "bots" and run["status"] == "ok" and run["returncode"] == 0
    assert run["command_line"].endswith(f"bots_standin.py --resend --new -c{env.configdir} orders invoices")
    assert (run["received"], run["processed"], run["file_errors"], run["sent"]) == (3, 2, 1, 2)
    assert run["summary"].startswith("3 files received/processed in run.")
    assert "files send in run" in run["output"]
    assert run["ended"] and run["exit_signal"] is None
    # botsq's own log and database stay out of Bots' files
    assert (env.root / "botssys" / "logging" / "botsq-engine.log").exists()
    assert not (env.root / "botssys" / "logging" / "engine.log").exists()
    assert (env.root / "botssys" / "sqlitedb" / "botsq.sqlite").exists()
    table = botsq(env, "runs").stdout
    assert " bots " in table and f"-c{env.configdir}" in table


def test_default_run_is_new_and_engine_configdir_is_passed(bots_env, tmp_path):
    bots_dir = tmp_path / "bots-config"
    bots_dir.mkdir()
    env = bots_env(extra_engine=f"configdir = {bots_dir}")
    r = env.run()
    assert r.returncode == 0, r.stderr
    [start] = standin_started(bots_dir)
    assert start["argv"] == ["--new", f"-c{bots_dir}"]


@pytest.mark.parametrize("route, code, status", [("exit2", 2, "errors"), ("exit1", 1, "failed")])
def test_exit_codes_pass_through_and_are_recorded(bots_env, route, code, status):
    env = bots_env()
    r = env.run(route)
    assert r.returncode == code, (r.stdout, r.stderr)
    [run] = runs(env)
    assert (run["status"], run["returncode"]) == (status, code)
    if code == 1:
        assert r.stderr.strip().splitlines()[-1].startswith("bots-engine: error: run ")
        assert "a system error in the stand-in" in r.stderr


def test_unknown_route_is_exit_1_though_bots_exits_0(bots_env):
    env = bots_env()
    r = env.run("unknown_route_x")
    assert r.returncode == 1
    assert "Bots has no (active) route unknown_route_x" in r.stderr
    [run] = runs(env)
    assert (run["status"], run["returncode"]) == ("failed", 0)


def test_child_killed_by_a_signal_is_recorded_as_killed_not_exit_0(bots_env):
    env = bots_env()
    r = env.run("sigkill")
    assert r.returncode == 1
    assert "killed by signal SIGKILL" in r.stderr
    [run] = runs(env)
    assert (run["status"], run["returncode"], run["exit_signal"]) == ("killed", None, signal.SIGKILL)
    assert " sig9 " in botsq(env, "runs").stdout


def test_non_utf8_output_is_kept_with_replacement_characters(bots_env):
    env = bots_env()
    r = env.run("nonutf8")
    assert r.returncode == 0, r.stderr
    [run] = runs(env)
    assert "latin-1: caf\ufffd" in run["output"] and run["received"] == 1


def test_hard_time_limit_ends_a_silent_hang_sigterm_then_sigkill(bots_env):
    env = bots_env(extra_engine="grace = 0.5", more="\n[jobqueue]\nhardtimelimit = 0.03\n")   # 1.8 s
    t0 = time.monotonic()
    r = env.run("hang")
    assert r.returncode == 1 and "hard time limit" in r.stderr and "SIGTERM" in r.stderr
    [run] = runs(env)
    assert (run["status"], run["exit_signal"]) == ("killed", signal.SIGTERM)
    r = env.run("stubborn")                             # ignores SIGTERM: SIGKILL after the grace
    assert r.returncode == 1 and "SIGKILL" in r.stderr
    assert time.monotonic() - t0 < 30
    assert runs(env)[0]["exit_signal"] == signal.SIGKILL


def test_secrets_never_reach_output_log_or_record(bots_env, monkeypatch):
    env = bots_env(more="\n[email]\npassword = ${BOTSQ_TEST_SECRET}\n")
    secret = "s3cr3t-Pa55"
    monkeypatch.setenv("BOTSQ_TEST_SECRET", secret)
    r = env.run("secret", env={"BOTS_STANDIN_SECRET": secret})
    assert r.returncode == 0, r.stderr
    assert "connecting with password ***" in r.stdout and secret not in r.stdout
    assert secret not in json.dumps(runs(env))
    assert secret not in (env.root / "botssys" / "logging" / "botsq-engine.log").read_text()


def test_bots_locked_exit_3_passes_through(bots_env, tmp_path):
    env = bots_env()
    lock = tmp_path / "bots.lock"
    lock.write_text("held")
    r = env.run(env={"BOTS_STANDIN_LOCKFILE": str(lock)})
    assert r.returncode == 3, r.stderr
    assert runs(env)[0]["status"] == "locked"


def test_botsq_lock_held_gives_exit_3_and_starts_nothing(bots_env):
    from engine import lock
    env = bots_env()
    cfg = env.config()
    import logging
    got = lock.acquire(cfg, logging.getLogger("test"))
    assert got.lock is not None
    try:
        r = env.run()
        assert r.returncode == 3 and "engine is locked" in r.stdout
        assert standin_started(env.configdir) == []
    finally:
        got.lock.release()


def _hanging_bots_engine(env) -> tuple[subprocess.Popen[str], dict]:
    """botsq's bots-engine running a Bots engine that hangs; the process and the child's start."""
    proc = subprocess.Popen([bin_path("bots-engine"), "-c", str(env.configdir), "hang"], cwd=env.root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not standin_started(env.configdir) and time.monotonic() < deadline:
        time.sleep(0.05)
    [start] = standin_started(env.configdir)
    return proc, start


def _gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not Path(f"/proc/{pid}").exists()


@pytest.mark.parametrize("sig, code, said", [(signal.SIGTERM, 1, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_sigterm_or_ctrl_c_of_bots_engine_stops_the_child_and_records_it(bots_env, sig, code, said):
    """The Bots child runs in its own process group (a terminal's Ctrl-C reaches only botsq's
    bots-engine): botsq stops it and records the run killed."""
    env = bots_env()
    proc, start = _hanging_bots_engine(env)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == code and said in err, err
    assert _gone(start["pid"]), "the Bots engine child outlived bots-engine"
    assert runs(env)[0]["status"] == "killed"


def test_a_killed_bots_engine_run_is_recorded_crashed_by_the_next_run(bots_env):
    """kill -9 of botsq's bots-engine (or of the worker running a job): the child dies with it
    (tied to its parent) and the run record stays 'running' until the next run takes the stale lock
    over and records it crashed."""
    env = bots_env()
    proc, start = _hanging_bots_engine(env)
    proc.kill()
    proc.communicate(timeout=30)
    assert _gone(start["pid"]), "the Bots engine child outlived a killed bots-engine"
    [killed] = runs(env)
    assert killed["status"] == "running"
    r = env.run()
    assert r.returncode == 0, r.stderr
    after = {run["id"]: run for run in runs(env)}
    assert after[killed["id"]]["status"] == "crashed" and after[killed["id"]]["ended"]
    assert f"taken over by run {killed['id'] + 1}" in after[killed["id"]]["message"]
    assert after[killed["id"] + 1]["status"] == "ok"


# --------------------------------------------------------------------------- bad config

@pytest.mark.parametrize("engine, expected", [
    ("[engine]\nkind = bots\n", "[engine] command: required with kind = bots"),
    ("[engine]\nkind = bots\ncommand = /nonexistent/bots-engine\n", "[engine] command: /nonexistent/bots-engine: not found"),
    ("[engine]\nkind = bots\ncommand = no-such-bots-engine-xyz\n", "no-such-bots-engine-xyz: not found on PATH"),
    (f"[engine]\nkind = bots\ncommand = {STANDIN.with_name('bots_helpers.py')}\n", "not executable"),
    (f"[engine]\nkind = bots\ncommand = {STANDIN}\nconfigdir = /nonexistent/bots/config\n",
     "[engine] configdir: /nonexistent/bots/config: no such directory"),
    ("[engine]\nkind = bot\n", "[engine] kind: expected one of builtin, bots"),
    (f"[engine]\nkind = bots\ncommand = {sys.executable} -u /nonexistent/bots-engine.py\n",
     "[engine] command: /nonexistent/bots-engine.py: not found (the script"),
    (f"[engine]\nkind = bots\ncommand = {bin_path('bots-engine')}\n", "is botsq's own bots-engine"),
])
def test_bad_engine_config_is_one_line_exit_1(make_env, engine, expected):
    env = make_env(ini=BOTS_OWN_KEYS + engine, routes=None)
    r = env.run()
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bots-engine: error: ") and expected in lines[0], r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("settings, said", [
    ("log_console = False", "[settings] log_console = False: botsq sees no Bots summary"),
    ("log_console_level = ERROR", "[settings] log_console_level = ERROR: Bots' summary"),
])
def test_bots_console_off_is_warned_by_bots_engine_and_status(make_env, settings, said):
    """Bots prints its summary and an unknown route only to its console: off, botsq would record a
    route Bots does not know as ok - it says so (bots-engine, botsq status), and still runs."""
    env = make_env(ini=BOTS_OWN_KEYS.replace("log_console = True", settings) + engine_section(), routes=None)
    r = env.run()
    assert r.returncode == 0
    assert f"bots-engine: warning: {env.configdir / 'bots.ini'}: {said}" in r.stderr, r.stderr
    st = botsq(env, "status", "--json")
    assert said in json.loads(st.stdout)["engine"]["warning"]
    fine = make_env(ini=BOTS_OWN_KEYS + engine_section(), routes=None)
    assert "warning" not in fine.run().stderr


def test_status_reports_engine_kind_and_command_health(make_env, bots_env):
    env = bots_env()
    r = botsq(env, "status", "--json")
    data = json.loads(r.stdout)
    assert data["engine"] == {"kind": "bots", "command": data["engine"]["command"], "healthy": True, "problem": None,
                              "warning": None}
    bad = make_env(ini=BOTS_OWN_KEYS + "[engine]\nkind = bots\ncommand = /nonexistent/bots-engine\n", routes=None)
    r = botsq(bad, "status", "--json")
    assert r.returncode == 1
    data = json.loads(r.stdout)
    assert data["engine"]["healthy"] is False and "not found" in data["engine"]["problem"]
    assert "engine    FAIL  bots" in botsq(bad, "status").stdout


def test_web_console_lists_bots_runs_with_kind_command_line_exit_and_counts(make_env):
    from web_helpers import login, make_web_env, serve
    env = make_web_env(make_env, extra=engine_section())
    assert env.run("orders").returncode == 0
    assert env.run("sigkill").returncode == 1
    with serve(env) as base:
        s = login(base)
        page = s.get(f"{base}/runs", timeout=30).text
        assert page.count('<td class="kind">bots</td>') == 2
        assert "signal 9" in page and f"-c{env.configdir} orders" in page
        detail = s.get(f"{base}/runs/1", timeout=30).text
        assert "bots engine" in detail and "3 files received/processed in run." in detail
        api = s.get(f"{base}/api/runs", timeout=30).json()
        rows = api["runs"] if isinstance(api, dict) else api
        assert {r["kind"] for r in rows} == {"bots"}
