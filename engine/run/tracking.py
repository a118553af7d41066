"""The records of a run and their SQL: the one place the engine reads and writes the tracking tables.

:class:`InRec` and :class:`OutRec` are light stand-ins for an incoming and an outgoing file on
their way through a run (the ORM rows cost too much per file). The hot path writes them with
SQLAlchemy Core in one commit per batch (:meth:`Tracker.tx`): a batch of received files is
inserted with its pending-removal marks, a batch of processed files is updated together with
the insert of its outputs.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import ColumnElement

from engine.config.lanes import DEFAULT_LANE
from engine.db import get_engine, session_scope
from engine.models import CommStatus, EngineState, Incoming, InStatus, Outgoing, OutStatus, Run, RunStatus, \
    SourceRemoval, utcnow

_IN = Incoming.__table__
_OUT = Outgoing.__table__
_SR = SourceRemoval.__table__
_UPDATE_IN = (update(_IN).where(_IN.c.id == bindparam("b_id"))
              .values(status=bindparam("b_status"), error=bindparam("b_error"), updated=bindparam("b_updated"),
                      run_id=bindparam("b_run"), times_processed=bindparam("b_tp"), rereceive=False))
_UPDATE_OUT = (update(_OUT).where(_OUT.c.id == bindparam("b_id"))
               .values(commstatus=bindparam("b_comm"), attempts=bindparam("b_attempts"), error=bindparam("b_error"),
                       sent_at=bindparam("b_sent"), resend=bindparam("b_resend")))
CHUNK = 500                 # ids per IN (...) list
_OUT_OK = str(OutStatus.OK)
# States go to the driver as plain str (str() of a StrEnum member): sqlite3 binds an str subclass
# through its adapter lookup, about 1 us per value - several per file on the hot path.


@dataclass(slots=True, kw_only=True)
class InRec:
    """An incoming file on its way through a run."""
    id: int | None = None
    run_id: int | None
    route: str
    part: int                           # 1-based (Bots' seq)
    channel: str
    filename: str                       # the partner's name, safe_name'd
    size: int | None
    checksum: str = ""                  # sha256 hex
    archive_path: str = ""              # relative to botssys
    status: str = InStatus.RECEIVED
    error: str = ""
    times_processed: int = 0

    @classmethod
    def of(cls, r: Incoming) -> InRec:
        return cls(id=r.id, run_id=r.run_id, route=r.route, part=r.part, channel=r.channel, filename=r.filename,
                   size=r.size, checksum=r.checksum, archive_path=r.archive_path, status=r.status, error=r.error,
                   times_processed=r.times_processed or 0)


@dataclass(slots=True, kw_only=True)
class OutRec:
    """An outgoing file on its way through a run."""
    id: int | None = None
    run_id: int | None
    incoming_id: int | None
    route: str
    part: int
    channel: str
    filename: str                       # the name it is delivered under
    size: int
    checksum: str
    store_path: str                     # its content under botssys, relative
    commstatus: str = CommStatus.PENDING
    attempts: int = 0
    error: str = ""
    sent_at: datetime | None = None
    resend: bool = False

    @classmethod
    def of(cls, o: Outgoing) -> OutRec:
        return cls(id=o.id, run_id=o.run_id, incoming_id=o.incoming_id, route=o.route, part=o.part,
                   channel=o.channel, filename=o.filename, size=o.size, checksum=o.checksum, store_path=o.store_path,
                   commstatus=o.commstatus, attempts=o.attempts or 0, error=o.error, sent_at=o.sent_at,
                   resend=o.resend)

    def row(self, now: datetime) -> dict[str, Any]:
        return dict(run_id=self.run_id, incoming_id=self.incoming_id, route=self.route, part=self.part,
                    channel=self.channel, filename=self.filename, size=self.size, checksum=self.checksum,
                    store_path=self.store_path, status=_OUT_OK, commstatus=str(self.commstatus),
                    attempts=self.attempts, error=self.error, resend=False, created=now, sent_at=self.sent_at)


@dataclass
class Leftovers:
    """What earlier runs left half-way, found by :meth:`Tracker.leftovers`."""
    crashed_runs: list[Run] = field(default_factory=list)   # were "running": now recorded as crashed
    incoming: list[InRec] = field(default_factory=list)     # received, not processed
    outgoing: list[OutRec] = field(default_factory=list)    # made, not sent
    partial: list[OutRec] = field(default_factory=list)     # outputs of an unprocessed file: made again


def chunks(seq: Sequence[Any], n: int = CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


class Tracker:
    """The tracking database of one environment, as the engine run uses it."""

    def __init__(self, url: str) -> None:
        self.url = url

    def tx(self) -> AbstractContextManager[Connection]:
        """A Core connection in a transaction (commits on success): the hot path skips the ORM."""
        return get_engine(self.url).begin()

    # ------------------------------------------------------------------ the run record
    def start_run(self, commands: Sequence[str], routes: Sequence[str], host: str, pid: int,
                  started: datetime, lane: str = DEFAULT_LANE) -> int:
        with session_scope(self.url) as s:
            run = Run(commands=",".join(commands), routes=",".join(routes), lane=lane, host=host, pid=pid,
                      started=started, status=RunStatus.RUNNING)
            s.add(run)
            s.flush()
            return run.id

    def finish_run(self, run_id: int, status: RunStatus, returncode: int, message: str,
                   counts: dict[str, int]) -> None:
        with session_scope(self.url) as s:
            s.execute(update(Run).where(Run.id == run_id).values(
                ended=utcnow(), status=status, returncode=returncode, message=message,
                **{k: counts[k] for k in ("received", "processed", "sent", "file_errors", "comm_errors")}))

    # ------------------------------------------------------------------ small engine state
    def state(self, key: str) -> str | None:
        with session_scope(self.url) as s:
            row = s.get(EngineState, key)
            return row.value if row is not None else None

    def claim_state(self, key: str, value: str) -> bool:
        """Set ``key`` to ``value`` unless it has that value already; True when this call changed it. Of two
        callers at the same time only one gets True (a conditional update; a key conflict on insert)."""
        try:
            with session_scope(self.url) as s:
                if s.execute(update(EngineState).where(EngineState.key == key, EngineState.value != value)
                             .values(value=value)).rowcount:
                    return True
                if s.get(EngineState, key) is not None:
                    return False
                s.add(EngineState(key=key, value=value))
                s.flush()
                return True
        except IntegrityError:
            return False                     # another caller inserted it first

    def set_state(self, key: str, value: str) -> None:
        with session_scope(self.url) as s:
            row = s.get(EngineState, key)
            if row is None:
                s.add(EngineState(key=key, value=value))
            else:
                row.value = value

    # ------------------------------------------------------------------ receiving
    def insert_incoming(self, recs: list[InRec], removing: Sequence[InRec] = (), stale: Sequence[int] = ()) -> None:
        """Record incoming files in one commit (their ids are set); ``removing`` (some of ``recs``) are about to
        be removed at the source, so their removal is marked pending in the same commit; ``stale`` marks go."""
        if not recs and not stale:
            return
        now = utcnow()
        rows = [dict(run_id=r.run_id, route=r.route, part=r.part, channel=r.channel, filename=r.filename, size=r.size,
                     checksum=r.checksum, archive_path=r.archive_path, status=str(r.status), error=r.error,
                     rereceive=False, times_processed=0, created=now, updated=now) for r in recs]
        with self.tx() as conn:
            if rows:
                result = conn.execute(insert(_IN).returning(_IN.c.id, sort_by_parameter_order=True), rows)
                for rec, row in zip(recs, result):
                    rec.id = row[0]
            if removing:
                conn.execute(insert(_SR), [dict(incoming_id=r.id, channel=r.channel, filename=r.filename,
                                                size=r.size, checksum=r.checksum, created=now) for r in removing])
            if stale:
                conn.execute(delete(_SR).where(_SR.c.id.in_(list(stale))))

    def pending_removals(self, channel: str) -> list[Any]:
        """Pending-removal marks of ``channel`` (rows: id, incoming_id, filename, size, checksum), oldest first."""
        with self.tx() as conn:
            return list(conn.execute(select(_SR.c.id, _SR.c.incoming_id, _SR.c.filename, _SR.c.size, _SR.c.checksum)
                                     .where(_SR.c.channel == channel).order_by(_SR.c.id)))

    def drop_removals(self, mark_ids: Sequence[int]) -> None:
        """Pending-removal marks whose files are gone from the source go."""
        if not mark_ids:
            return
        with self.tx() as conn:
            for chunk in chunks(mark_ids):
                conn.execute(delete(_SR).where(_SR.c.id.in_(list(chunk))))

    def clear_removals(self, incoming_ids: Sequence[int], mark_ids: Sequence[int]) -> None:
        """The files were removed at the source: their pending marks go (one commit)."""
        if not incoming_ids and not mark_ids:
            return
        with self.tx() as conn:
            if incoming_ids:
                conn.execute(delete(_SR).where(_SR.c.incoming_id.in_(list(incoming_ids))))
            if mark_ids:
                conn.execute(delete(_SR).where(_SR.c.id.in_(list(mark_ids))))

    # ------------------------------------------------------------------ processing and sending
    def record_processed(self, batch: Sequence[InRec], outs: Sequence[OutRec], run_id: int) -> None:
        """The new state of processed incoming files and their outputs, in one commit."""
        now = utcnow()
        with self.tx() as conn:
            conn.execute(_UPDATE_IN, [dict(b_id=i.id, b_status=str(i.status), b_error=i.error, b_updated=now,
                                           b_run=run_id, b_tp=i.times_processed) for i in batch])
            if outs:
                conn.execute(insert(_OUT), [o.row(now) for o in outs])

    def record_sent(self, outs: Sequence[OutRec]) -> None:
        """The delivery results of recorded outgoing files, in one commit."""
        with self.tx() as conn:
            conn.execute(_UPDATE_OUT, [dict(b_id=o.id, b_comm=str(o.commstatus), b_attempts=o.attempts, b_error=o.error,
                                            b_sent=o.sent_at, b_resend=o.resend) for o in outs])

    # ------------------------------------------------------------------ selections
    def incoming(self, *where: ColumnElement[bool]) -> list[InRec]:
        with session_scope(self.url) as s:
            return [InRec.of(r) for r in s.scalars(select(Incoming).where(*where).order_by(Incoming.id))]

    def outgoing(self, *where: ColumnElement[bool]) -> list[OutRec]:
        with session_scope(self.url) as s:
            return [OutRec.of(o) for o in s.scalars(select(Outgoing).where(*where).order_by(Outgoing.id))]

    def last_outgoing_id(self) -> int:
        with session_scope(self.url) as s:
            return s.scalar(select(func.max(Outgoing.id))) or 0

    def leftovers(self, run_id: int, crashed_message: str, lane: str = DEFAULT_LANE,
                  lane_routes: Sequence[str] = (), other_lanes_routes: Sequence[str] = ()) -> Leftovers:
        """What runs of ``lane`` left half-way: its runs still "running" (other than ``run_id``, which holds
        the lane's lock) are recorded as crashed with ``crashed_message``; the files of the lane's routes
        they left are found (outputs of a received-but-unprocessed file are deleted: made again).

        A lane owns its routes (``lane_routes``); lane default also owns every route not in another lane
        (``other_lanes_routes``: the routes of every other lane), so files of a route removed from the config
        are still finished. A file of a run still running in another lane is never touched (a route moved
        to another lane while its old lane's run goes on)."""
        now = utcnow()
        found = Leftovers()
        busy = select(Run.id).where(Run.status == RunStatus.RUNNING, Run.lane != lane)

        def owned(route: Any, run: Any) -> ColumnElement[bool]:
            mine = route.notin_(list(other_lanes_routes)) if lane == DEFAULT_LANE else route.in_(list(lane_routes))
            return mine & or_(run.is_(None), run.notin_(busy))

        with session_scope(self.url) as s:
            found.crashed_runs = list(s.scalars(select(Run).where(Run.status == RunStatus.RUNNING, Run.id != run_id,
                                                                  Run.lane == lane)))
            for r in found.crashed_runs:
                r.status, r.ended, r.message = RunStatus.CRASHED, now, crashed_message
            found.incoming = [InRec.of(i) for i in s.scalars(select(Incoming).where(
                Incoming.status == InStatus.RECEIVED, owned(Incoming.route, Incoming.run_id)).order_by(Incoming.id))]
            in_ids = {i.id for i in found.incoming}
            pending = [OutRec.of(o) for o in s.scalars(select(Outgoing).where(
                Outgoing.commstatus == CommStatus.PENDING, owned(Outgoing.route, Outgoing.run_id))
                .order_by(Outgoing.id))]
            found.partial = [o for o in pending if o.incoming_id in in_ids]
            found.outgoing = [o for o in pending if o.incoming_id not in in_ids]
            for chunk in chunks([o.id for o in found.partial]):
                s.execute(delete(Outgoing).where(Outgoing.id.in_(list(chunk))))
        return found
