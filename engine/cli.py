"""``bots-engine``: one engine run from the command line (Bots' options and exit codes).

Exit codes: 0 ok · 1 system error (bad arguments or config, unknown route, database
unreachable) · 2 ran, with file or communication errors · 3 locked by a live run.
"""
from __future__ import annotations

import argparse
import signal
import sys

from engine.cli_util import ArgumentParser, run_cli
from engine.config import add_config_argument, load_config
from engine.errors import ConfigError, DatabaseError, ExitCode, UsageError, one_line



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


class Terminated(BaseException):
    """SIGTERM (systemd, a scheduler's timeout): stop like Ctrl-C, releasing the lock on the way out."""


def _on_sigterm(signum, frame):  # type: ignore[no-untyped-def]
    raise Terminated()


def _main() -> int:
    from engine.progress import ProgressBar
    from engine.run import ENGINE_COMMANDS, run_engine

    args = build_parser().parse_args()
    commands = [c for c in ENGINE_COMMANDS if getattr(args, c)] or ["new"]
    cfg = load_config(args.configdir)
    bar = ProgressBar()
    import logging
    bar.clear_for_logs(logging.getLogger("botsq.engine"))
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        result = run_engine(cfg, commands, args.routes, progress=bar)
    except Terminated:
        bar.finish()
        print("bots-engine: error: terminated (SIGTERM); the lock is released, the next run finishes the files",
              file=sys.stderr)
        return ExitCode.SYSTEM
    except Exception as exc:
        bar.finish()
        if isinstance(exc, (ConfigError, DatabaseError, UsageError)):
            raise
        import logging
        logging.getLogger("botsq.engine").exception("engine run failed")
        print(f"bots-engine: error: {one_line(exc, with_type=True)}", file=sys.stderr)
        return ExitCode.SYSTEM
    bar.finish()
    print(result.message)
    return result.exit_code


def main() -> None:
    run_cli("bots-engine", _main)


if __name__ == "__main__":
    main()
