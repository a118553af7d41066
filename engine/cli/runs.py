"""``botsq runs``: engine runs, newest first (Bots' monitor "reports" view)."""
from __future__ import annotations

import argparse
import json
from datetime import datetime

from engine.config import DEFAULT_LANE, add_config_argument, load_config
from engine.errors import UsageError
from engine.records import RUN_STATUSES, FilterError, RunFilter, list_runs, parse_when


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, default=20, help="at most this many runs (default 20)")
    parser.add_argument("--status", help=f"only runs with this status: {', '.join(RUN_STATUSES)}")
    parser.add_argument("--id", type=int, metavar="ID", help="only this run")
    parser.add_argument("--route", metavar="ROUTE",
                        help="only runs of this route (named, or default runs with its files)")
    parser.add_argument("--since", metavar="DATE", help="started at or after (YYYY-MM-DD[THH:MM])")
    parser.add_argument("--until", metavar="DATE", help="started at or before (YYYY-MM-DD[THH:MM])")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    add_config_argument(parser)


def run(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError(f"--limit must be at least 1 (got {args.limit})")
    try:
        flt = RunFilter(status=args.status or "", run_id=args.id, route=args.route or "",
                        since=parse_when(args.since) if args.since else None,
                        until=parse_when(args.until, end=True) if args.until else None)
        cfg = load_config(args.configdir)
        rows = list_runs(cfg.database_url, flt, args.limit)
    except FilterError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print("no runs")
        return 0
    print(f"{'id':>6} {'kind':7} {'started (UTC)':19} {'secs':>6} {'status':8} {'rc':>4} {'recv':>6} {'proc':>6} {'sent':>6} "
          f"{'ferr':>5} {'cerr':>5} commands / routes")
    for r in rows:
        secs = ""
        if r["started"] and r["ended"]:
            secs = f"{(datetime.fromisoformat(r['ended']) - datetime.fromisoformat(r['started'])).total_seconds():.0f}"
        rc = "" if r["returncode"] is None else r["returncode"]
        if r["exit_signal"] is not None:            # a Bots engine child ended by a signal
            rc = f"sig{r['exit_signal']}"
        print(f"{r['id']:>6} {r['kind']:7} {r['started'][:19].replace('T', ' '):19} {secs:>6} {r['status']:8} {rc:>4} "
              f"{r['received']:>6} {r['processed']:>6} {r['sent']:>6} {r['file_errors']:>5} {r['comm_errors']:>5} "
              f"{r['commands']}{' / ' + r['routes'] if r['routes'] else ''}"
              f"{'' if r['lane'] == DEFAULT_LANE else ' [lane ' + r['lane'] + ']'}")
        if r["command_line"]:
            print(f"{'':>6} $ {r['command_line']}")
    return 0
