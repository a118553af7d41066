"""``bots-engine``: one engine run from the command line (Bots' options and exit codes).

Exit codes: 0 ok · 1 system error (bad arguments or config, unknown route, database
unreachable) · 2 ran, with file or communication errors · 3 locked by a live run. Over routes of
several lanes (or a default run of a config with lanes) it runs lane after lane, each under its own
lock, one line per lane, and exits with the most serious code: 1, then 3, then 2, then 0.

With ``[engine] kind = bots`` it runs the Bots installation's engine instead, the way a queued job
does (:func:`engine.botsengine.run_bots_engine`): the child's lines are printed as they come, and
its exit code is passed through (0, 2, 3; 1 also for an unknown route and a child ended by a signal).

:func:`parse_engine_args` is the one place a bots-engine command line becomes commands, routes
and a config dir - for ``bots-engine`` itself and for the job lines of ``bots-job2queue``,
``[schedule.NAME] job`` and the demo.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

from engine.botsengine import run_bots_engine
from engine.cli.common import ArgumentParser, run_cli
from engine.config import Config, add_config_argument, load_config
from engine.config.engine import bots_console_problem
from engine.errors import ConfigError, DatabaseError, ExitCode, Terminated, UsageError, one_line
from engine.log import get_logger, register_secrets
from engine.run import ENGINE_COMMANDS


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="bots-engine", description="Run the Bots EDI engine once: receive, translate, send.")
    p.add_argument("--new", action="store_true", help="receive, translate and send new files (default)")
    p.add_argument("--rereceive", action="store_true", help="process again the incoming files marked for rereceive")
    p.add_argument("--resend", action="store_true", help="send again the outgoing files marked for resend")
    p.add_argument("--automaticretrycommunication", action="store_true",
                   help="send again outgoing files whose communication failed (first use sets the starting point)")
    p.add_argument("--cleanup", action="store_true", help="remove records and archive older than maxdays")
    add_config_argument(p)
    p.add_argument("routes", nargs="*", metavar="ROUTE", help="routes to run (default: all active routes)")
    return p


@dataclass(frozen=True)
class EngineArgs:
    """A bots-engine command line, understood."""
    commands: tuple[str, ...]           # in Bots' order; () when none was given (a run does "new")
    routes: tuple[str, ...]             # as given; () = the default run
    configdir: str | None               # its own -c/-C/--configdir, or None


def parse_engine_args(args: Sequence[str]) -> EngineArgs:
    """The options and routes of a bots-engine command line (without the program name);
    UsageError (one line) for an unknown option."""
    ns = build_parser().parse_args(list(args))
    return EngineArgs(tuple(c for c in ENGINE_COMMANDS if getattr(ns, c)), tuple(ns.routes), ns.configdir)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def _main() -> int:
    args = parse_engine_args(sys.argv[1:])
    cfg = load_config(args.configdir)
    signal.signal(signal.SIGTERM, _on_sigterm)
    if cfg.engine.is_bots:
        return _run_bots(cfg, args)
    from engine.progress import ProgressBar
    from engine.run import run_engine      # the ORM comes with it: kind = bots (above) runs without
    bar = ProgressBar()
    bar.clear_for_logs(logging.getLogger("botsq.engine"))
    try:
        result = run_engine(cfg, args.commands or ["new"], args.routes, progress=bar)
    except Terminated:
        bar.finish()
        print("bots-engine: error: terminated (SIGTERM); the lock is released, the next run finishes the files",
              file=sys.stderr)
        return ExitCode.SYSTEM
    except Exception as exc:
        bar.finish()
        if isinstance(exc, (ConfigError, DatabaseError, UsageError)):
            raise
        logging.getLogger("botsq.engine").exception("engine run failed")
        print(f"bots-engine: error: {one_line(exc, with_type=True)}", file=sys.stderr)
        return ExitCode.SYSTEM
    bar.finish()
    for lane in result.lanes or [result]:
        if lane.exit_code == ExitCode.SYSTEM:       # a lane's system error while other lanes ran
            print(f"bots-engine: error: {lane.message}", file=sys.stderr)
        else:
            print(lane.message)
    return result.exit_code


def _run_bots(cfg: Config, args: EngineArgs) -> int:
    """``kind = bots``: the Bots engine as a child, its lines on stdout, its log in
    ``botssys/logging/botsq-engine.log`` (Bots' own ``engine.log`` stays Bots')."""
    register_secrets(cfg.secrets())
    try:
        log = get_logger("botsq-engine", cfg.directories.logging, console=False)
    except OSError as exc:
        raise ConfigError(f"{cfg.directories.logging}: cannot write the log: {exc.strerror or exc}") from None
    warning = bots_console_problem(cfg.engine, cfg.configdir)
    if warning:
        log.warning("%s", warning)
        print(f"bots-engine: warning: {warning}", file=sys.stderr, flush=True)
    try:
        result = run_bots_engine(cfg, args.commands or ["new"], args.routes, log=log, echo=sys.stdout)
    except Terminated:
        print("bots-engine: error: terminated (SIGTERM); the Bots engine was stopped", file=sys.stderr)
        return ExitCode.SYSTEM
    if result.exit_code == ExitCode.SYSTEM:
        print(f"bots-engine: error: {result.message}", file=sys.stderr)
    else:
        print(result.message)
    return result.exit_code


def main() -> None:
    run_cli("bots-engine", _main)


if __name__ == "__main__":
    main()
