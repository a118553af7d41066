"""``botsq files list|rereceive|resend``: what Bots users do in the monitor's file views.

* ``list``: incoming and outgoing files, newest first, filtered by route, status, run, date range.
* ``rereceive IDS | FILTERS``: mark incoming files; ``bots-engine --rereceive`` processes them again
  from the archive.
* ``resend IDS | FILTERS``: mark outgoing files; ``bots-engine --resend`` sends them again.

Filters: ``--route``, ``--channel``, ``--status``, ``--name``, ``--run``, ``--since``, ``--until``
(ISO date or date-time, local time); their rules live in :mod:`engine.records`, shared with the web
console. Marking without ids needs at least one filter, or ``--all``.
"""
from __future__ import annotations

import argparse
import json

from engine.config import Config, add_config_argument, load_config
from engine.errors import UsageError
from engine.records import (
    IN_STATUSES,
    OUT_STATUSES,
    FileFilter,
    FilterError,
    list_files,
    mark_files,
    parse_when,
)


def file_filter(args: argparse.Namespace) -> FileFilter:
    """The filter the command-line options ask for."""
    return FileFilter(
        routes=tuple(args.route or ()), channels=tuple(args.channel or ()), status=args.status or "",
        name=args.name or "", run=args.run,
        since=parse_when(args.since) if args.since else None,
        until=parse_when(args.until, end=True) if args.until else None,
    )


def _add_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--route", action="append", metavar="ROUTE", help="only this route (repeatable)")
    p.add_argument("--channel", action="append", metavar="CHANNEL", help="only this channel (repeatable)")
    p.add_argument("--status", help=f"in: {', '.join(IN_STATUSES)}; out: {', '.join(OUT_STATUSES)}; "
                                    "'error' matches failed files of both")
    p.add_argument("--name", metavar="TEXT", help="file name contains TEXT (case-insensitive)")
    p.add_argument("--run", type=int, metavar="ID", help="only files of this run")
    p.add_argument("--since", metavar="DATE", help="created at or after (YYYY-MM-DD[THH:MM])")
    p.add_argument("--until", metavar="DATE", help="created at or before (YYYY-MM-DD[THH:MM])")
    add_config_argument(p)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="files_command", metavar="ACTION")
    sub.required = True
    lp = sub.add_parser("list", help="list incoming and outgoing files, newest first")
    lp.add_argument("--kind", choices=("in", "out", "all"), default="all", help="incoming, outgoing or both")
    lp.add_argument("--limit", type=int, default=100, help="at most this many of each kind (default 100)")
    lp.add_argument("--json", action="store_true", help="machine-readable output")
    _add_filters(lp)
    for name, what in (("rereceive", "incoming files to process again (bots-engine --rereceive)"),
                       ("resend", "outgoing files to send again (bots-engine --resend)")):
        mp = sub.add_parser(name, help=f"mark {what}")
        mp.add_argument("ids", nargs="*", type=int, metavar="ID", help="file ids (from 'botsq files list')")
        mp.add_argument("--all", action="store_true", help="with no ids and no filter: every file")
        mp.add_argument("--unmark", action="store_true", help="remove the mark instead")
        mp.add_argument("--json", action="store_true", help="machine-readable output")
        _add_filters(mp)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.configdir)
    try:
        if args.files_command == "list":
            return _list(cfg, args)
        return _mark(cfg, args, args.files_command)
    except FilterError as exc:
        raise UsageError(str(exc)) from None


def _list(cfg: Config, args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError(f"--limit must be at least 1 (got {args.limit})")
    flt = file_filter(args)
    rows: list[dict] = []
    for kind in ("in", "out"):
        if args.kind in (kind, "all"):
            rows += list_files(cfg.database_url, kind, flt, args.limit)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print("no files")
        return 0
    # tries: delivery attempts of an outgoing file, times processed of an incoming one
    print(f"{'kind':4} {'id':>7} {'run':>6} {'route':14} {'status':9} {'tries':>5} {'mark':4} {'created (UTC)':19} "
          f"file / error")
    for r in rows:
        status = r["status"] if r["kind"] == "in" else r["commstatus"]
        tries = r["times_processed"] if r["kind"] == "in" else r["attempts"]
        mark = "R" if r.get("rereceive") or r.get("resend") else ""
        created = (r["created"] or "")[:19].replace("T", " ")
        extra = f"  ({r['error']})" if r.get("error") else ""
        if r.get("removal_pending"):
            extra += "  [still at the source: removal pending]"
        print(f"{r['kind']:4} {r['id']:>7} {r['run_id'] or '':>6} {r['route'][:14]:14} {status:9} {tries or 0:>5} "
              f"{mark:4} {created:19} {r['filename']}{extra}")
    return 0


def _mark(cfg: Config, args: argparse.Namespace, action: str) -> int:
    flt = file_filter(args)
    if not args.ids and flt.empty and not args.all:
        raise UsageError(f"files {action}: give file ids, a filter (--route, --channel, --status, --name, --run, "
                         "--since, --until) or --all")
    res = mark_files(cfg.database_url, action, args.ids, flt, every=args.all, unmark=args.unmark)
    kind = "in" if action == "rereceive" else "out"
    ids, missing = res.ids, res.not_found
    if args.json:
        print(json.dumps({"action": action, "marked" if not args.unmark else "unmarked": ids, "not_found": missing}))
    else:
        verb = "unmarked" if args.unmark else "marked"
        print(f"{len(ids)} {'incoming' if kind == 'in' else 'outgoing'} file(s) {verb} for {action}"
              + ("" if args.unmark or not ids else f"; run: bots-engine --{action}"))
        if missing:
            print(f"not found{' (or never archived)' if kind == 'in' else ''}: {', '.join(map(str, missing))}")
    return 1 if missing and not ids else 0
