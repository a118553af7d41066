"""``botsq files list|rereceive|resend``: what Bots users do in the monitor's file views.

* ``list``: incoming and outgoing files, newest first, filtered by route, status, run, date range.
* ``rereceive IDS | FILTERS``: mark incoming files; ``bots-engine --rereceive`` processes them again
  from the archive.
* ``resend IDS | FILTERS``: mark outgoing files; ``bots-engine --resend`` sends them again.

Filters: ``--route``, ``--status``, ``--run``, ``--since``, ``--until`` (ISO date or date-time,
local time). Marking without ids needs at least one filter, or ``--all``.
"""
from __future__ import annotations

import argparse
import json
from datetime import datetime, time, timezone
from typing import Any

from sqlalchemy import select, update

from engine.config import Config, add_config_argument, load_config
from engine.db import session_scope
from engine.errors import UsageError
from engine.models import CommStatus, InStatus, Incoming, Outgoing, SourceRemoval

IN_STATUSES = tuple(InStatus)
OUT_STATUSES = tuple(CommStatus)


def parse_when(raw: str, end: bool = False) -> datetime:
    """An ISO date or date-time (local time unless it carries an offset) as naive UTC."""
    try:
        if len(raw) == 10:
            d = datetime.fromisoformat(raw)
            dt = datetime.combine(d.date(), time.max if end else time.min)
        else:
            dt = datetime.fromisoformat(raw)
    except ValueError:
        raise UsageError(f"bad date {raw!r}: expected YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS]") from None
    if dt.tzinfo is None:
        dt = dt.astimezone()          # local time
    return dt.astimezone(timezone.utc).replace(tzinfo=None)


def _filters(args: argparse.Namespace, model: type, kind: str) -> list[Any]:
    where: list[Any] = []
    if getattr(args, "route", None):
        where.append(model.route.in_(args.route))
    if getattr(args, "run", None):
        where.append(model.run_id == args.run)
    if getattr(args, "since", None):
        where.append(model.created >= parse_when(args.since))
    if getattr(args, "until", None):
        where.append(model.created <= parse_when(args.until, end=True))
    status = getattr(args, "status", None)
    if status and status not in IN_STATUSES + OUT_STATUSES:
        raise UsageError(f"unknown status {status!r} (incoming: {', '.join(IN_STATUSES)}; outgoing: "
                         f"{', '.join(OUT_STATUSES)})")
    if status:
        if kind == "in":
            st = {"failed": InStatus.ERROR, "sent": InStatus.DONE}.get(status, status)
            where.append(model.status.in_([InStatus.ERROR, InStatus.COMMERROR]) if st == "error" else model.status == st)
        else:
            st = {"error": CommStatus.FAILED, "commerror": CommStatus.FAILED, "done": CommStatus.SENT}.get(status, status)
            where.append(model.commstatus == st)
    return where


def _add_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--route", action="append", metavar="ROUTE", help="only this route (repeatable)")
    p.add_argument("--status", help=f"in: {', '.join(IN_STATUSES)}; out: {', '.join(OUT_STATUSES)}; "
                                    "'error' matches failed files of both")
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
    if args.files_command == "list":
        return _list(cfg, args)
    return _mark(cfg, args, args.files_command)


def _list(cfg: Config, args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError(f"--limit must be at least 1 (got {args.limit})")
    rows: list[dict] = []
    with session_scope(cfg.database_url) as s:
        if args.kind in ("in", "all"):
            q = select(Incoming).where(*_filters(args, Incoming, "in")).order_by(Incoming.id.desc()).limit(args.limit)
            ins = [r.as_dict() for r in s.scalars(q)]
            # received, but not yet removed at the source (the next run removes it, never processes it again)
            # (a small table: only files whose removal failed; a range, not an IN list of --limit ids)
            pending = set(s.scalars(select(SourceRemoval.incoming_id).where(
                SourceRemoval.incoming_id >= min(r["id"] for r in ins)))) if ins else set()
            for r in ins:
                r["removal_pending"] = r["id"] in pending
            rows += ins
        if args.kind in ("out", "all"):
            q = select(Outgoing).where(*_filters(args, Outgoing, "out")).order_by(Outgoing.id.desc()).limit(args.limit)
            rows += [r.as_dict() for r in s.scalars(q)]
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
    model = Incoming if action == "rereceive" else Outgoing
    kind = "in" if action == "rereceive" else "out"
    flag = "rereceive" if action == "rereceive" else "resend"
    where = _filters(args, model, kind)
    if args.ids:
        where.append(model.id.in_(args.ids))
    elif not where and not args.all:
        raise UsageError(f"files {action}: give file ids, a filter (--route, --status, --run, --since, --until) "
                         "or --all")
    if action == "rereceive":
        where.append(model.archive_path != "")          # only files that reached the archive
    with session_scope(cfg.database_url) as s:
        ids = list(s.scalars(select(model.id).where(*where).order_by(model.id)))
        for i in range(0, len(ids), 500):
            s.execute(update(model).where(model.id.in_(ids[i:i + 500])).values({flag: not args.unmark}))
    missing = sorted(set(args.ids) - set(ids)) if args.ids else []
    if args.json:
        print(json.dumps({"action": action, "marked" if not args.unmark else "unmarked": ids, "not_found": missing}))
    else:
        verb = "unmarked" if args.unmark else "marked"
        print(f"{len(ids)} {'incoming' if kind == 'in' else 'outgoing'} file(s) {verb} for {action}"
              + ("" if args.unmark or not ids else f"; run: bots-engine --{action}"))
        if missing:
            print(f"not found{' (or never archived)' if kind == 'in' else ''}: {', '.join(map(str, missing))}")
    return 1 if missing and not ids else 0
