"""One engine run, as steps (``run_engine(cfg, commands, routes, lane=None, progress=None) -> RunResult``):

* :mod:`~engine.run.session` - the run start to end: lock, run record, recovery, commands in
  Bots' order, finish, summary, report;
* :mod:`~engine.run.selection` - which commands and routes (Bots' rules), and how a job splits by lane;
* :mod:`~engine.run.commands` - new, rereceive, resend, automaticretrycommunication, cleanup;
* :mod:`~engine.run.receive` - list -> fetch -> archive -> record -> remove at the source, per batch;
  :mod:`~engine.run.removal` - the pending source removals; :mod:`~engine.run.archive` - the disk;
* :mod:`~engine.run.deliver` - translate, name and store outputs, send;
* :mod:`~engine.run.recovery` - finish what a crashed run left;
* :mod:`~engine.run.tracking` - the file records and their SQL;
* :mod:`~engine.run.context` and :mod:`~engine.run.channel_pool` - what the steps share.

Every file is tracked and none is lost: a run that dies half-way leaves records saying how far
each file got, and the next run finishes them before it does anything else.
"""
from __future__ import annotations

from typing import Any

from engine.run.selection import ENGINE_COMMANDS, LanePart, lane_plan, normalise_commands, select_routes


def __getattr__(name: str) -> Any:
    # run_engine and RunResult come with the ORM (session -> tracking -> SQLAlchemy); imported on first
    # use so that what needs only the selection rules (bots-engine with kind = bots) does not pay it
    if name in ("run_engine", "RunResult"):
        from engine.run.session import RunResult, run_engine
        return {"run_engine": run_engine, "RunResult": RunResult}[name]
    raise AttributeError(f"module 'engine.run' has no attribute {name!r}")


__all__ = ["run_engine", "RunResult", "ENGINE_COMMANDS", "normalise_commands", "select_routes", "lane_plan",
           "LanePart"]
