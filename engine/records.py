"""Reading and marking the tracking records: the one place of the file and run filters.

What Bots' monitor shows and what ``botsq files`` / ``botsq runs`` and the web console share:
incoming and outgoing files filtered by route, channel, status, name, run and date range
(:class:`FileFilter`), paged, newest first; marking them for rereceive or resend
(:func:`mark_files`); runs filtered by status, route and date (:class:`RunFilter`); a file's or a
run's page (:func:`file_detail`, :func:`run_detail`); files received, sent and in error per hour
(:func:`activity`); and the stored content of a file (:func:`stored_path`).

Functions take the database URL and open their own session (``engine.db.session_scope``), so
callers need no SQL. Times in and out are naive UTC, as in every tracking column.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Select, and_, case, func, or_, select, true, update
from sqlalchemy.orm import Session

from engine.db import get_engine, session_scope
from engine.models import CommStatus, Incoming, InStatus, Outgoing, Run, RunStatus, SourceRemoval

IN_STATUSES = tuple(InStatus)
OUT_STATUSES = tuple(CommStatus)
RUN_STATUSES = tuple(RunStatus)
KINDS = ("in", "out")
MARK_ACTIONS = {"rereceive": "in", "resend": "out"}     # Bots' two marks and the files they apply to
_CHUNK = 500                                             # ids per UPDATE (SQLite's parameter limit)


class FilterError(ValueError):
    """A filter value that cannot be used (unknown status, bad page); str() is one line."""


def parse_when(raw: str, end: bool = False) -> datetime:
    """An ISO date or date-time (local time unless it carries an offset) as naive UTC; a bare date
    means its first moment, or with ``end`` its last. FilterError on anything else."""
    try:
        if len(raw) == 10:
            d = datetime.fromisoformat(raw)
            dt = datetime.combine(d.date(), time.max if end else time.min)
        else:
            dt = datetime.fromisoformat(raw)
    except ValueError:
        raise FilterError(f"bad date {raw!r}: expected YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS]") from None
    if dt.tzinfo is None:
        dt = dt.astimezone()          # local time
    return dt.astimezone(timezone.utc).replace(tzinfo=None)


def _within(col: Any, since: datetime | None, until: datetime | None) -> list[Any]:
    """``since <= col <= until``, each bound only when given."""
    return ([col >= since] if since is not None else []) + ([col <= until] if until is not None else [])


def _literal(text: str) -> str:
    """``text`` for a LIKE pattern (escape character \\), its own % and _ taken literally."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@dataclass(frozen=True)
class FileFilter:
    """Which files: every field narrows; empty fields do not.

    ``status`` is an incoming status (received, done, error, commerror) or an outgoing delivery
    status (pending, sent, failed); ``error`` matches the failed files of both kinds and ``sent``/
    ``done`` the finished ones, as ``botsq files list --status`` always did. ``name`` is a part of
    the file name (case-insensitive). ``since``/``until`` bound the record's creation, naive UTC.
    """
    routes: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    status: str = ""
    name: str = ""
    run: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    marked: bool = False                 # only files marked for rereceive / resend

    def __post_init__(self) -> None:
        if self.status and self.status not in IN_STATUSES + OUT_STATUSES:
            raise FilterError(f"unknown status {self.status!r} (incoming: {', '.join(IN_STATUSES)}; outgoing: "
                              f"{', '.join(OUT_STATUSES)})")

    @property
    def empty(self) -> bool:
        return self == FileFilter()

    def where(self, kind: str, dialect: str = "") -> list[Any]:
        """The WHERE terms for files of ``kind`` ("in"/"out") in a database of ``dialect``."""
        model = _model(kind)
        where: list[Any] = []
        if self.routes:
            where.append(model.route.in_(self.routes))
        if self.channels:
            where.append(model.channel.in_(self.channels))
        if self.run is not None:
            where.append(model.run_id == self.run)
        where += _within(model.created, self.since, self.until)
        if self.name:
            pattern = f"%{_literal(self.name)}%"
            # Every name is read (a part of a name has no index): SQLite's LIKE ignores ASCII case by
            # itself (lower() on each row would triple the scan); on PostgreSQL lower() LIKE reads a
            # third faster than ILIKE.
            where.append(model.filename.like(pattern, escape="\\") if dialect == "sqlite"
                         else func.lower(model.filename).like(pattern.lower(), escape="\\"))
        if self.marked:         # "= true", not "IS true": only the former uses the index on PostgreSQL
            where.append((Incoming.rereceive if kind == "in" else Outgoing.resend) == true())
        if self.status:
            if kind == "in":
                st = {"failed": InStatus.ERROR, "sent": InStatus.DONE}.get(self.status, self.status)
                where.append(Incoming.status.in_([InStatus.ERROR, InStatus.COMMERROR]) if st == InStatus.ERROR
                             else Incoming.status == st)
            else:
                # an incoming word names the matching delivery state
                st = {InStatus.ERROR: CommStatus.FAILED, InStatus.COMMERROR: CommStatus.FAILED,
                      InStatus.DONE: CommStatus.SENT}.get(self.status, self.status)
                where.append(Outgoing.commstatus == st)
        return where


def _dialect(url: str) -> str:
    return get_engine(url).dialect.name


def _model(kind: str) -> type[Incoming] | type[Outgoing]:
    if kind not in KINDS:
        raise FilterError(f"unknown kind {kind!r} (expected in or out)")
    return Incoming if kind == "in" else Outgoing


def _check_page(limit: int, offset: int) -> None:
    if limit < 1:
        raise FilterError(f"limit must be at least 1 (got {limit})")
    if offset < 0:
        raise FilterError(f"offset must be 0 or more (got {offset})")


def _removal_pending(s: Session, rows: list[dict[str, Any]]) -> None:
    """Mark incoming rows still at the source (their removal failed); the table is small."""
    if not rows:
        return
    ids = [r["id"] for r in rows]
    pending = set(s.scalars(select(SourceRemoval.incoming_id).where(SourceRemoval.incoming_id.between(min(ids),
                                                                                                       max(ids)))))
    for r in rows:
        r["removal_pending"] = r["id"] in pending


def list_files(url: str, kind: str, flt: FileFilter = FileFilter(), limit: int = 100,
               offset: int = 0) -> list[dict[str, Any]]:
    """Files of ``kind`` ("in" or "out") matching ``flt``, newest first: ``as_dict()`` rows
    (incoming ones with ``removal_pending``), the shape of ``botsq files list --json``."""
    _check_page(limit, offset)
    model = _model(kind)
    q = select(model).where(*flt.where(kind, _dialect(url))).order_by(model.id.desc()).limit(limit).offset(offset)
    with session_scope(url) as s:
        rows = [r.as_dict() for r in s.scalars(q)]
        if kind == "in":
            _removal_pending(s, rows)
    return rows


def page_files(url: str, kind: str, flt: FileFilter = FileFilter(), limit: int = 50,
               offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """One page of :func:`list_files` and the number of files matching ``flt``.

    With a name filter every name is read (a part of a name has no index), so the page and the
    count come from that one read (a window count) instead of two; otherwise both are index reads.
    """
    if not flt.name:
        return list_files(url, kind, flt, limit, offset), count_files(url, kind, flt)
    _check_page(limit, offset)
    model = _model(kind)
    q = (select(model, func.count().over()).where(*flt.where(kind, _dialect(url))).order_by(model.id.desc())
         .limit(limit).offset(offset))
    with session_scope(url) as s:
        found = s.execute(q).all()
        rows = [r.as_dict() for r, _total in found]
        if kind == "in":
            _removal_pending(s, rows)
    return rows, (found[0][1] if found else count_files(url, kind, flt) if offset else 0)


def count_files(url: str, kind: str, flt: FileFilter = FileFilter()) -> int:
    model = _model(kind)
    with session_scope(url) as s:
        return int(s.scalar(select(func.count()).select_from(model).where(*flt.where(kind, _dialect(url)))) or 0)


@dataclass
class MarkResult:
    action: str                          # rereceive | resend
    ids: list[int]                       # the files whose mark was set (or cleared)
    not_found: list[int] = field(default_factory=list)   # asked-for ids that are not there (or never archived)
    unmark: bool = False


def mark_files(url: str, action: str, ids: Sequence[int] = (), flt: FileFilter = FileFilter(),
               every: bool = False, unmark: bool = False) -> MarkResult:
    """Set (or with ``unmark`` clear) Bots' rereceive mark on incoming / resend mark on outgoing files.

    The files are ``ids`` narrowed by ``flt``, or with no ids every file matching ``flt``; with
    neither ids nor a filter only ``every=True`` marks everything (FilterError otherwise). Only
    incoming files that reached the archive can be rereceived. ``bots-engine --rereceive`` /
    ``--resend`` then processes or sends the marked files again and clears the marks.
    """
    kind = MARK_ACTIONS.get(action)
    if kind is None:
        raise FilterError(f"unknown action {action!r} (expected rereceive or resend)")
    model = _model(kind)
    flag = "rereceive" if kind == "in" else "resend"
    where = flt.where(kind, _dialect(url))
    if ids:
        where.append(model.id.in_(list(ids)))
    elif flt.empty and not every:
        raise FilterError(f"{action}: name the files (ids), a filter, or all of them")
    if kind == "in":
        where.append(Incoming.archive_path != "")
    with session_scope(url) as s:
        found = list(s.scalars(select(model.id).where(*where).order_by(model.id)))
        for i in range(0, len(found), _CHUNK):
            s.execute(update(model).where(model.id.in_(found[i:i + _CHUNK])).values({flag: not unmark}))
    missing = sorted(set(ids) - set(found)) if ids else []
    return MarkResult(action, found, missing, unmark)


# --------------------------------------------------------------------------- one file

def file_detail(url: str, kind: str, file_id: int) -> dict[str, Any] | None:
    """One file's record with what surrounds it, or None.

    Incoming: ``as_dict()`` plus ``removal_pending``, ``run`` (the receiving run's summary or None)
    and ``outputs`` (its outgoing files). Outgoing: ``as_dict()`` plus ``run`` and ``source``
    (the incoming file it came from, or None).
    """
    model = _model(kind)
    with session_scope(url) as s:
        row = s.get(model, file_id)
        if row is None:
            return None
        out = row.as_dict()
        run = s.get(Run, row.run_id) if row.run_id else None
        out["run"] = run.as_dict() if run else None
        if kind == "in":
            _removal_pending(s, [out])
            out["outputs"] = [o.as_dict() for o in s.scalars(
                select(Outgoing).where(Outgoing.incoming_id == file_id).order_by(Outgoing.id).limit(1000))]
        else:
            src = s.get(Incoming, row.incoming_id) if row.incoming_id else None
            out["source"] = src.as_dict() if src else None
    return out


def stored_path(botssys: Path, record: dict[str, Any]) -> Path | None:
    """The file holding a record's content under ``botssys`` (incoming: the archived copy,
    outgoing: the stored output), or None when there is none or it would lie outside botssys
    (a crafted path never leads elsewhere)."""
    rel = record.get("archive_path") if record.get("kind") == "in" else record.get("store_path")
    if not rel:
        return None
    root = botssys.resolve()
    path = (root / rel).resolve()
    if not path.is_relative_to(root) or path == root or not path.is_file():
        return None
    return path


# --------------------------------------------------------------------------- runs

@dataclass(frozen=True)
class RunFilter:
    """Which runs: ``status`` (running, ok, errors, crashed, failed), ``route`` (runs that named it,
    and default runs that received or sent files of it), ``since``/``until`` on the start (naive UTC)."""
    status: str = ""
    route: str = ""
    since: datetime | None = None
    until: datetime | None = None
    run_id: int | None = None

    def __post_init__(self) -> None:
        if self.status and self.status not in RUN_STATUSES:
            raise FilterError(f"unknown run status {self.status!r} (expected one of {', '.join(RUN_STATUSES)})")

    def where(self) -> list[Any]:
        where: list[Any] = []
        if self.status:
            where.append(Run.status == self.status)
        if self.run_id is not None:
            where.append(Run.id == self.run_id)
        where += _within(Run.started, self.since, self.until)
        if self.route:
            r = _literal(self.route)
            named = or_(Run.routes == self.route, Run.routes.like(f"{r},%", escape="\\"),
                        Run.routes.like(f"%,{r}", escape="\\"), Run.routes.like(f"%,{r},%", escape="\\"))
            touched = or_(Run.id.in_(select(Incoming.run_id).where(Incoming.route == self.route)),
                          Run.id.in_(select(Outgoing.run_id).where(Outgoing.route == self.route)))
            where.append(or_(named, and_(Run.routes == "", touched)))
        return where


def _runs_query(flt: RunFilter) -> Select[Any]:
    return select(Run).where(*flt.where())


def list_runs(url: str, flt: RunFilter = RunFilter(), limit: int = 20, offset: int = 0) -> list[dict[str, Any]]:
    """Runs matching ``flt``, newest first: ``Run.as_dict()`` rows, the shape of ``botsq runs --json``."""
    _check_page(limit, offset)
    with session_scope(url) as s:
        return [r.as_dict() for r in s.scalars(_runs_query(flt).order_by(Run.id.desc()).limit(limit).offset(offset))]


def count_runs(url: str, flt: RunFilter = RunFilter()) -> int:
    with session_scope(url) as s:
        return int(s.scalar(select(func.count()).select_from(Run).where(*flt.where())) or 0)


def run_totals(url: str, since: datetime, until: datetime | None = None) -> dict[str, int]:
    """The files the runs started from ``since`` to ``until`` (naive UTC; None: now) counted:
    ``{"received", "sent", "errors"}`` (errors: file plus communication errors). For an engine
    whose file records botsq does not have (``[engine] kind = bots``: the counts of Bots' summary
    lines, kept in each run's record)."""
    with session_scope(url) as s:
        row = s.execute(select(func.sum(Run.received), func.sum(Run.sent),
                               func.sum(Run.file_errors + Run.comm_errors))
                        .where(*_within(Run.started, since, until))).one()
    return {"received": int(row[0] or 0), "sent": int(row[1] or 0), "errors": int(row[2] or 0)}


def run_detail(url: str, run_id: int, files: int = 200) -> dict[str, Any] | None:
    """A run's record plus its first ``files`` incoming and outgoing files and its failed files
    (``incoming``, ``outgoing``, ``errors``: as_dict rows), or None."""
    with session_scope(url) as s:
        run = s.get(Run, run_id)
        if run is None:
            return None
        out = run.as_dict()
        out["incoming"] = [r.as_dict() for r in s.scalars(
            select(Incoming).where(Incoming.run_id == run_id).order_by(Incoming.id).limit(files))]
        out["outgoing"] = [r.as_dict() for r in s.scalars(
            select(Outgoing).where(Outgoing.run_id == run_id).order_by(Outgoing.id).limit(files))]
        errors = [r.as_dict() for r in s.scalars(
            select(Incoming).where(Incoming.run_id == run_id, Incoming.status.in_([InStatus.ERROR, InStatus.COMMERROR]))
            .order_by(Incoming.id).limit(files))]
        errors += [r.as_dict() for r in s.scalars(
            select(Outgoing).where(Outgoing.run_id == run_id, Outgoing.commstatus == CommStatus.FAILED)
            .order_by(Outgoing.id).limit(files))]
        out["errors"] = errors
    return out


# --------------------------------------------------------------------------- activity (charts)

@dataclass
class Bucket:
    """Files in one hour (local to the caller's offset): received, sent, in error."""
    hour: datetime                       # start of the hour, naive, shifted by the offset
    received: int = 0
    sent: int = 0
    errors: int = 0


def _hour_of(dialect: str, col: Any, offset_minutes: int) -> tuple[Any, timedelta]:
    """(SQL for the hour of ``col``, shift still to add in Python) for grouping by hour.

    A whole-hour offset is added after grouping by the UTC hour, which the databases do cheaply:
    SQLite by the first 13 characters of the stored time (SQLAlchemy stores "YYYY-MM-DD HH:MM:SS...";
    3 times faster than strftime), PostgreSQL by date_trunc. Other offsets shift every row first.
    """
    whole = offset_minutes % 60 == 0
    if dialect == "sqlite":
        if whole:
            return func.substr(col, 1, 13), timedelta(minutes=offset_minutes)
        return func.strftime("%Y-%m-%d %H", col, f"{offset_minutes:+d} minutes"), timedelta(0)
    if dialect == "postgresql":
        if whole:
            return func.date_trunc("hour", col), timedelta(minutes=offset_minutes)
        return func.date_trunc("hour", col + timedelta(minutes=offset_minutes)), timedelta(0)
    raise ValueError(dialect)


def activity(url: str, since: datetime, offset_minutes: int = 0,
             until: datetime | None = None) -> dict[datetime, Bucket]:
    """Files received, sent and in error per hour from ``since`` to before ``until`` (naive UTC; None:
    now), keyed by the hour's start shifted by ``offset_minutes`` (the viewer's UTC offset). Received
    counts incoming files by their record's creation (not ``commerror`` ones: those were never
    fetched); sent counts outgoing files by ``sent_at``; errors are failed incoming (error,
    commerror) and outgoing (failed) files by creation. SQLite and PostgreSQL group in the
    database; another database is binned here."""
    dialect = _dialect(url)
    buckets: dict[datetime, Bucket] = {}

    def add(key: Any, shift: timedelta, field_: str, n: Any) -> None:
        if key is None or not n:
            return
        hour = key if isinstance(key, datetime) else datetime.fromisoformat(f"{key}:00")   # "YYYY-MM-DD HH"
        hour = (hour + shift).replace(minute=0, second=0, microsecond=0)
        b = buckets.setdefault(hour, Bucket(hour))
        setattr(b, field_, getattr(b, field_) + int(n))

    def span(col: Any) -> list[Any]:
        return [col >= since] + ([col < until] if until is not None else [])

    failed_in = case((Incoming.status.in_([InStatus.ERROR, InStatus.COMMERROR]), 1), else_=0)
    never_fetched = case((Incoming.status == InStatus.COMMERROR, 1), else_=0)
    failed_out = Outgoing.commstatus == CommStatus.FAILED
    with session_scope(url) as s:
        if dialect not in ("sqlite", "postgresql"):
            shift = timedelta(minutes=offset_minutes)
            for created, status in s.execute(select(Incoming.created, Incoming.status).where(*span(Incoming.created))):
                add(created, shift, "received", status != InStatus.COMMERROR)
                add(created, shift, "errors", status in (InStatus.ERROR, InStatus.COMMERROR))
            for sent_at, in s.execute(select(Outgoing.sent_at).where(*span(Outgoing.sent_at))):
                add(sent_at, shift, "sent", 1)
            for created, in s.execute(select(Outgoing.created).where(*span(Outgoing.created), failed_out)):
                add(created, shift, "errors", 1)
            return buckets
        hour, shift = _hour_of(dialect, Incoming.created, offset_minutes)
        for key, total, failed, unfetched in s.execute(
                select(hour, func.count(), func.sum(failed_in), func.sum(never_fetched))
                .where(*span(Incoming.created)).group_by(hour)):
            add(key, shift, "received", total - (unfetched or 0))
            add(key, shift, "errors", failed)
        hour, shift = _hour_of(dialect, Outgoing.sent_at, offset_minutes)
        for key, n in s.execute(select(hour, func.count()).where(*span(Outgoing.sent_at)).group_by(hour)):
            add(key, shift, "sent", n)
        hour, shift = _hour_of(dialect, Outgoing.created, offset_minutes)
        for key, n in s.execute(select(hour, func.count()).where(*span(Outgoing.created), failed_out).group_by(hour)):
            add(key, shift, "errors", n)
    return buckets
