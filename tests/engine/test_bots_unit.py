"""``[engine]`` read like every section, and the reading of a Bots engine's output - no process."""
from __future__ import annotations

import logging

import pytest

from bots_helpers import BOTS_OWN_KEYS, STANDIN
from engine.botsengine import OutputReader, bots_argv, locked_wait_seconds
from engine.config import load_config
from engine.config.engine import EngineKind, engine_problem
from engine.errors import ConfigError
from engine.run.selection import lane_plan, select_routes


def test_bots_kind_needs_no_routes_toml_and_accepts_bots_own_keys(make_env):
    env = make_env(ini=BOTS_OWN_KEYS + f"[engine]\nkind = bots\ncommand = bin/bots-engine -x\n"
                                       "[dirmonitor1]\npath = data/in\nroute = any_bots_route\n", routes=None)
    cfg = env.config()
    assert cfg.engine.kind == EngineKind.BOTS and cfg.routes == {}
    assert cfg.engine.command == (str(env.root / "bin" / "bots-engine"), "-x")     # relative: the environment's
    assert cfg.database_url.endswith("/botssys/sqlitedb/botsq.sqlite")
    assert cfg.dirmonitors[0].route == "any_bots_route"          # Bots' route: not checked against routes.toml
    assert cfg.lanes == ("default",)
    # routes are Bots': any name is accepted here, Bots says whether it knows it; all in lane default
    assert select_routes(cfg, ["new"], ["orders"]) == []
    [part] = lane_plan(cfg, ["new", "cleanup"], ["orders", "invoices"])
    assert (part.lane, part.routes) == ("default", ("orders", "invoices"))


def test_builtin_is_the_default_and_a_routes_toml_still_matters(make_env):
    cfg = make_env().config()
    assert cfg.engine.kind == EngineKind.BUILTIN and not cfg.engine.is_bots
    assert cfg.database_url.endswith("/botssys/sqlitedb/botsdb.sqlite")
    assert engine_problem(cfg.engine, cfg.configdir) is None


@pytest.mark.parametrize("section, expected", [
    ("kind = bots\n", "[engine] command: required with kind = bots"),
    ("kind = other\n", "[engine] kind: expected one of builtin, bots, got 'other'"),
    ("kind = bots\ncommand = 'unclosed\n", "[engine] command: cannot split command line"),
    ("kind = bots\ncommand = x\ngrace = -1\n", "[engine] grace: must be 0 or more seconds"),
])
def test_bad_engine_section_is_one_config_error(make_env, section, expected):
    env = make_env(ini="[engine]\n" + section, routes=None)
    with pytest.raises(ConfigError) as err:
        load_config(env.configdir)
    assert expected in str(err.value) and str(env.configdir / "bots.ini") in str(err.value)


def test_argv_options_in_bots_order_configdir_joined_routes_once(make_env, tmp_path):
    env = make_env(ini=f"[engine]\nkind = bots\ncommand = python2 {STANDIN}\n", routes=None)
    cfg = env.config()
    assert bots_argv(cfg, ["cleanup", "new", "resend"], ["b", "a", "b"]) == [
        "python2", str(STANDIN), "--resend", "--new", "--cleanup", f"-c{env.configdir}", "b", "a"]
    assert bots_argv(cfg, [], []) == ["python2", str(STANDIN), "--new", f"-c{env.configdir}"]


def test_output_reader_counts_bots_summary_and_unknown_routes():
    r = OutputReader(logging.getLogger("test.bots"), "job 1 | bots-engine")
    for line in [b"INFO     Bots Report; type: new, time: 2025-01-01 10:00:00, duration: 0:00:01 \n",
                 b"    12 files received/processed in run.\n", b"    9 files without errors,\n",
                 b"    2 files with errors,\n", b"    1 files got stuck,\n", b"    1 system errors,\n",
                 b"    3 errors in processes.\n", b"    8 files send in run.\n",
                 b'CRITICAL There is no (active) route "nosuch".\n',
                 b'WARNING  there is no (active) route "old3".\n',          # Bots 3's wording
                 b"\xff\xfe not utf-8\n"]:
        r.feed(line)
    assert r.counts == {"received": 12, "processed": 9, "file_errors": 2, "stuck": 1, "system_errors": 1,
                        "process_errors": 3, "sent": 8}
    assert r.summary[0] == "12 files received/processed in run." and len(r.summary) == 7
    assert r.unknown_routes == ["nosuch", "old3"]
    assert r.tail[-1] == "\ufffd\ufffd not utf-8"


def test_output_reader_sums_the_reports_of_one_bots_process():
    """Bots' crash recovery prints a report of its own before the run's: the record counts both."""
    r = OutputReader(logging.getLogger("test.bots"), "bots-engine")
    for line in [b"INFO     Bots Report; type: crashrecovery\n", b"    1 files received/processed in run.\n",
                 b"    1 files without errors,\n", b"    1 files send in run.\n",
                 b"INFO     Bots Report; type: new\n", b"    2 files received/processed in run.\n",
                 b"    1 files without errors,\n", b"    1 files with errors,\n", b"    0 files send in run.\n"]:
        r.feed(line)
    assert r.counts == {"received": 3, "processed": 2, "file_errors": 1, "sent": 1}
    assert len(r.summary) == 7


def test_locked_waits_grow_and_are_capped():
    assert [locked_wait_seconds(n, 1.0, 60.0) for n in (1, 2, 3, 6, 7, 20)] == [1, 2, 4, 32, 60, 60]
