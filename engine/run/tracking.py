"""The records of a run and their SQL: the one place the engine reads and writes the tracking tables.

:class:`InRec` and :class:`OutRec` are light stand-ins for an incoming and an outgoing file on
their way through a run (the ORM rows cost too much per file). The hot path writes them with
SQLAlchemy Core in one commit per batch (:meth:`Tracker.tx`): a batch of received files is
inserted with its pending-removal marks, a batch of processed files is updated together with
the insert of its outputs. Each of those commits also writes the run's counts, so a run that dies
leaves a record of what it had done.

Between those commits, each delivery the partner accepted is committed at once to the deliveries
journal (:meth:`Tracker.journal`, table ``deliveries``); the batch's commit deletes the rows it
records. Crash recovery (:meth:`Tracker.leftovers`) folds the rows of a dead run: at most the file
in flight is delivered twice.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.sql import ColumnElement

from engine.config.lanes import DEFAULT_LANE
from engine.db import get_engine, session_scope
from engine.models import CommStatus, Delivery, EngineState, Incoming, InStatus, Outgoing, OutStatus, Run, \
    RunStatus, SourceRemoval, utcnow

_IN = Incoming.__table__
_OUT = Outgoing.__table__
_SR = SourceRemoval.__table__
_J = Delivery.__table__
_RUNS = Run.__table__
COUNTED = ("received", "processed", "sent", "file_errors", "comm_errors")   # the counts a run record keeps
_UPDATE_IN = (update(_IN).where(_IN.c.id == bindparam("b_id"))
              .values(status=bindparam("b_status"), error=bindparam("b_error"), updated=bindparam("b_updated"),
                      run_id=bindparam("b_run"), times_processed=bindparam("b_tp"), rereceive=bindparam("b_rr")))
_IN_COLUMNS = ("run_id", "route", "part", "channel", "filename", "size", "checksum", "archive_path", "status", "error",
               "rereceive", "times_processed", "created", "updated")
_INSERT_IN = insert(_IN).values({c: bindparam(c) for c in _IN_COLUMNS})
_OUT_COLUMNS = ("run_id", "incoming_id", "route", "part", "channel", "filename", "size", "checksum", "store_path",
                "status", "commstatus", "attempts", "error", "resend", "created", "sent_at")
_INSERT_OUT = insert(_OUT).values({c: bindparam(c) for c in _OUT_COLUMNS})
_SR_COLUMNS = ("incoming_id", "channel", "filename", "size", "checksum", "created")
_INSERT_SR = insert(_SR).values({c: bindparam(c) for c in _SR_COLUMNS})
_UPDATE_OUT = (update(_OUT).where(_OUT.c.id == bindparam("b_id"))
               .values(commstatus=bindparam("b_comm"), attempts=bindparam("b_attempts"), error=bindparam("b_error"),
                       sent_at=bindparam("b_sent"), resend=bindparam("b_resend"),
                       filename=bindparam("b_name")))   # a resend may get a free name (channels.base.unique_names)
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
    output_no: int = 0                  # its place among its incoming file's outputs (0-based)
    journal_id: int | None = None       # its row in the deliveries journal, until the batch is recorded

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

    @classmethod
    def delivered(cls, d: Any) -> OutRec:
        """The outgoing record of a journaled new output (a ``deliveries`` row): sent by ``d.run_id``."""
        return cls(run_id=d.run_id, incoming_id=d.incoming_id, route=d.route, part=d.part, channel=d.channel,
                   filename=d.filename, size=d.size, checksum=d.checksum, store_path=d.store_path,
                   commstatus=CommStatus.SENT, attempts=1, sent_at=d.sent_at, output_no=d.output_no,
                   journal_id=d.id)


@dataclass
class Leftovers:
    """What earlier runs left half-way, found by :meth:`Tracker.leftovers`."""
    crashed_runs: list[Run] = field(default_factory=list)   # were "running": now recorded as crashed
    incoming: list[InRec] = field(default_factory=list)     # received, not processed
    outgoing: list[OutRec] = field(default_factory=list)    # made, not sent
    partial: list[OutRec] = field(default_factory=list)     # outputs of an unprocessed file: made again
    # new outputs a dead run delivered (journaled, not recorded): incoming id -> output_no -> its record
    delivered: dict[int, dict[int, OutRec]] = field(default_factory=dict)
    folded: int = 0                                         # journaled deliveries folded into the records


def chunks(seq: Sequence[Any], n: int = CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


class DriverStatement:
    """A Core statement compiled once for a dialect and run on the driver's cursor, with its bind
    processors applied by hand: the hot path's batch statements (a few per 250 files) and the
    journal's insert (one per file). Through ``Connection.execute`` SQLAlchemy builds and processes
    each row's parameters anew, which cost more than the database's own work (BENCHMARKS.md
    "Engine throughput"). The statement must bind every value by name (``bindparam``), no literals.

    Run inside a Core transaction (:meth:`Tracker.tx`) it takes part in it: the driver cursor is the
    transaction's own connection's. Driver errors are raised as SQLAlchemy's ``DBAPIError``, as
    ``Connection.execute`` would raise them (a database error of the run, exit 1)."""

    def __init__(self, stmt: Any, dialect: Any, returning: Any = None) -> None:
        self._dialect = dialect
        # SQLite gives a row's id as the cursor's lastrowid; PostgreSQL with RETURNING
        self.returns_ids = returning is not None and dialect.name != "sqlite"
        compiled = (stmt.returning(returning) if self.returns_ids else stmt).compile(dialect=dialect)
        self.sql: str = compiled.string
        self._names = tuple(compiled.positiontup or ()) if compiled.positional else tuple(compiled.binds)
        self._positional = bool(compiled.positional)
        self._last: dict[int, tuple[Any, Any]] = {}         # position -> (last value, processed)
        self._procs = [(i, name, proc) for i, name in enumerate(self._names)
                       if (proc := compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect))
                       is not None]

    def params(self, values: Mapping[str, Any]) -> Any:
        """Driver parameters of one row (``values``: every bind name -> its Python value)."""
        if self._positional:
            row = [values[n] for n in self._names]
            for i, _name, proc in self._procs:
                row[i] = self._processed(i, proc, row[i])
            return tuple(row)
        out = {n: values[n] for n in self._names}
        for i, name, proc in self._procs:
            out[name] = self._processed(i, proc, out[name])
        return out

    def _processed(self, i: int, proc: Any, value: Any) -> Any:
        # the rows of a batch share one timestamp object (SQLite's DateTime processor formats it
        # into a string, a few microseconds each time): processed once, not once per row
        last = self._last.get(i)
        if last is not None and last[0] is value:
            return last[1]
        done = proc(value)
        if value is not None:
            self._last[i] = (value, done)
        return done

    def _error(self, exc: Exception, params: Any) -> DBAPIError:
        return DBAPIError.instance(self.sql, params, exc, self._dialect.loaded_dbapi.Error)

    def run_many(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run the statement once per row in ``conn``'s transaction (the driver's executemany)."""
        if not rows:
            return
        params = [self.params(r) for r in rows]
        cur = conn.connection.cursor()
        try:
            cur.executemany(self.sql, params)
        except self._dialect.loaded_dbapi.Error as exc:
            raise self._error(exc, params[:1]) from None
        finally:
            cur.close()

    def insert_ids(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> list[int]:
        """Insert ``rows`` in ``conn``'s transaction; the new rows' ids, in the order of ``rows``
        (the statement was made with ``returning`` the id column)."""
        if not rows:
            return []
        params = [self.params(r) for r in rows]
        cur = conn.connection.cursor()
        try:
            if self.returns_ids:         # psycopg: one result set per row, in order
                cur.executemany(self.sql, params, returning=True)
                ids = []
                while True:
                    ids.append(int(cur.fetchone()[0]))
                    if not cur.nextset():
                        break
                return ids
            ids = []
            for p in params:            # sqlite3: no rows back from executemany; a cached statement per row
                cur.execute(self.sql, p)
                ids.append(int(cur.lastrowid))
            return ids
        except self._dialect.loaded_dbapi.Error as exc:
            raise self._error(exc, params[:1]) from None
        finally:
            cur.close()


class DriverStatements:
    """The hot path's statements for one database (compiled at the first use in a process)."""

    def __init__(self, dialect: Any) -> None:
        self.insert_in = DriverStatement(_INSERT_IN, dialect, returning=_IN.c.id)
        self.insert_sr = DriverStatement(_INSERT_SR, dialect)
        self.insert_out = DriverStatement(_INSERT_OUT, dialect)
        self.update_in = DriverStatement(_UPDATE_IN, dialect)


class DeliveryJournal:
    """The writer of the deliveries journal (table ``deliveries``) for one run: a connection of its
    own, and one small INSERT and COMMIT per delivered file - the price of "only the file in flight is
    delivered twice" (BENCHMARKS.md). The statement is compiled once and run on the driver's cursor:
    per file, SQLAlchemy's execution machinery would cost more than the database's own work.

    On PostgreSQL its commits are asynchronous (``synchronous_commit = off``, this connection only):
    the server has a row the moment the commit returns, whatever then happens to the engine's process;
    only a crash of the database server itself can lose its last fraction of a second - as SQLite's
    ``synchronous = NORMAL`` can on a power loss - and those files are then sent again, never lost.
    Driver errors are raised as SQLAlchemy's ``DBAPIError`` (a database error of the run, exit 1)."""

    COLUMNS = ("run_id", "outgoing_id", "incoming_id", "output_no", "route", "part", "channel", "filename",
               "size", "checksum", "store_path", "sent_at")

    def __init__(self, url: str) -> None:
        engine = get_engine(url)
        dialect = engine.dialect
        self._dialect = dialect
        self._pg = dialect.name == "postgresql"
        self._stmt = DriverStatement(insert(_J).values({c: bindparam(c) for c in self.COLUMNS}), dialect,
                                     returning=_J.c.id)
        self._raw = engine.raw_connection()
        if self._pg:
            # each INSERT commits by itself: one round trip per delivery, not two (INSERT, COMMIT)
            self._raw.driver_connection.autocommit = True
        self._cur = self._raw.cursor()
        if self._pg:
            self._run("SET synchronous_commit TO off", None)

    def _run(self, sql: str, params: Any) -> None:
        try:
            if params is None:
                self._cur.execute(sql)
            else:
                self._cur.execute(sql, params)
            if not self._pg:
                self._raw.commit()
        except self._dialect.loaded_dbapi.Error as exc:
            raise DBAPIError.instance(sql, params, exc, self._dialect.loaded_dbapi.Error) from None

    def add(self, run_id: int, out: OutRec) -> int:
        """Journal ``out`` as delivered by run ``run_id``, committed; the row's id."""
        params = self._stmt.params(dict(
            run_id=run_id, outgoing_id=out.id, incoming_id=out.incoming_id, output_no=out.output_no, route=out.route,
            part=out.part, channel=out.channel, filename=out.filename, size=out.size, checksum=out.checksum,
            store_path=out.store_path, sent_at=out.sent_at))
        try:
            self._cur.execute(self._stmt.sql, params)
            row_id = self._cur.fetchone()[0] if self._stmt.returns_ids else self._cur.lastrowid
            if not self._pg:
                self._raw.commit()
        except self._dialect.loaded_dbapi.Error as exc:
            raise DBAPIError.instance(self._stmt.sql, params, exc, self._dialect.loaded_dbapi.Error) from None
        return int(row_id)

    def close(self) -> None:
        """Back to the pool as it came (PostgreSQL: synchronous commits again); a broken connection is dropped."""
        try:
            self._raw.rollback()
            if self._pg:
                self._run("RESET synchronous_commit", None)
                self._raw.driver_connection.autocommit = False
            self._cur.close()
            self._raw.close()
        except (SQLAlchemyError, self._dialect.loaded_dbapi.Error):
            self._raw.invalidate()


class Tracker:
    """The tracking database of one environment, as the engine run uses it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._journal: DeliveryJournal | None = None
        self._statements: DriverStatements | None = None

    @property
    def statements(self) -> DriverStatements:
        """The hot path's batch statements, compiled for this database once per run."""
        if self._statements is None:
            self._statements = DriverStatements(get_engine(self.url).dialect)
        return self._statements

    def tx(self) -> AbstractContextManager[Connection]:
        """A Core connection in a transaction (commits on success): the hot path skips the ORM."""
        return get_engine(self.url).begin()

    # ------------------------------------------------------------------ the deliveries journal
    def journal(self, out: OutRec, run_id: int) -> None:
        """Commit at once that the partner accepted ``out``, delivered by run ``run_id`` (sets
        ``out.journal_id``): one small insert and commit per delivered file (:class:`DeliveryJournal`)."""
        if self._journal is None:
            self._journal = DeliveryJournal(self.url)
        try:
            out.journal_id = self._journal.add(run_id, out)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Give back the journal's connection (at the end of a run)."""
        journal, self._journal = self._journal, None
        if journal is not None:
            journal.close()

    @staticmethod
    def _settle(conn: Connection, outs: Sequence[OutRec], run_id: int | None,
                counts: Mapping[str, int] | None) -> None:
        """In a batch's commit: the journal rows of ``outs`` go (their records hold them now) and the run's
        counts are written, so a run that dies leaves a record of what it had done."""
        ids = [o.journal_id for o in outs if o.journal_id is not None]
        for chunk in chunks(ids):
            conn.execute(delete(_J).where(_J.c.id.in_(list(chunk))))
        for o in outs:
            o.journal_id = None
        if run_id and counts is not None:
            conn.execute(update(_RUNS).where(_RUNS.c.id == run_id).values(**{k: counts[k] for k in COUNTED}))

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
    def insert_incoming(self, recs: list[InRec], removing: Sequence[InRec] = (), stale: Sequence[int] = (),
                        run_id: int | None = None, counts: Mapping[str, int] | None = None) -> None:
        """Record incoming files in one commit (their ids are set); ``removing`` (some of ``recs``) are about to
        be removed at the source, so their removal is marked pending in the same commit; ``stale`` marks go;
        ``counts`` (:data:`COUNTED`) are written to run ``run_id``'s record in the same commit."""
        if not recs and not stale:
            return
        now = utcnow()
        rows = [dict(run_id=r.run_id, route=r.route, part=r.part, channel=r.channel, filename=r.filename, size=r.size,
                     checksum=r.checksum, archive_path=r.archive_path, status=str(r.status), error=r.error,
                     rereceive=False, times_processed=0, created=now, updated=now) for r in recs]
        st = self.statements
        with self.tx() as conn:
            for rec, new_id in zip(recs, st.insert_in.insert_ids(conn, rows)):
                rec.id = new_id
            st.insert_sr.run_many(conn, [dict(incoming_id=r.id, channel=r.channel, filename=r.filename, size=r.size,
                                              checksum=r.checksum, created=now) for r in removing])
            if stale:
                conn.execute(delete(_SR).where(_SR.c.id.in_(list(stale))))
            self._settle(conn, (), run_id, counts)

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
    def record_processed(self, batch: Sequence[InRec], outs: Sequence[OutRec], run_id: int,
                         counts: Mapping[str, int] | None = None) -> None:
        """The new state of processed incoming files and their outputs, in one commit; the outputs' journal
        rows go and ``counts`` are written to the run's record in the same commit."""
        now = utcnow()
        st = self.statements
        with self.tx() as conn:
            st.update_in.run_many(conn, [dict(b_id=i.id, b_status=str(i.status), b_error=i.error, b_updated=now,
                                              b_run=run_id, b_tp=i.times_processed, b_rr=False) for i in batch])
            st.insert_out.run_many(conn, [o.row(now) for o in outs])
            self._settle(conn, outs, run_id, counts)

    def record_sent(self, outs: Sequence[OutRec], run_id: int | None = None,
                    counts: Mapping[str, int] | None = None) -> None:
        """The delivery results of recorded outgoing files, in one commit (their journal rows go; ``counts``
        are written to run ``run_id``'s record)."""
        with self.tx() as conn:
            conn.execute(_UPDATE_OUT, [dict(b_id=o.id, b_comm=str(o.commstatus), b_attempts=o.attempts, b_error=o.error,
                                            b_sent=o.sent_at, b_resend=o.resend, b_name=o.filename) for o in outs])
            self._settle(conn, outs, run_id, counts)

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

        The deliveries journal of runs no longer running is folded first, in this commit: a file sent
        again (a recorded outgoing file) is marked sent; a new output is returned in ``delivered`` (its
        incoming file is among ``incoming``, to be recorded with it and never sent again); a crashed run's
        ``sent`` count gains its journaled deliveries (the rest of its counts were written batch by batch).

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
                # its counts were written with its last batch; what it delivered since is in the journal
                r.sent = (r.sent or 0) + (s.scalar(select(func.count()).select_from(_J).where(_J.c.run_id == r.id))
                                          or 0)
            s.flush()
            journal = list(s.execute(select(_J).where(owned(_J.c.route, _J.c.run_id), _J.c.run_id != run_id)
                                     .order_by(_J.c.id)))
            self._fold_resent(s, [d for d in journal if d.outgoing_id is not None])
            new = [d for d in journal if d.outgoing_id is None]
            found.folded = len(journal)
            journaled_in = sorted({d.incoming_id for d in new if d.incoming_id is not None})
            found.incoming = [InRec.of(i) for i in s.scalars(select(Incoming).where(
                Incoming.status == InStatus.RECEIVED, owned(Incoming.route, Incoming.run_id)).order_by(Incoming.id))]
            have = {i.id for i in found.incoming}
            for chunk in chunks([i for i in journaled_in if i not in have]):
                # a file the dead run was processing again (rereceive): it is finished the same way
                found.incoming += [InRec.of(i) for i in s.scalars(select(Incoming).where(Incoming.id.in_(list(chunk))))]
            found.incoming.sort(key=lambda i: i.id or 0)
            in_ids = {i.id for i in found.incoming}
            orphans = []
            for d in new:
                if d.incoming_id in in_ids:
                    found.delivered.setdefault(d.incoming_id, {})[d.output_no] = OutRec.delivered(d)
                else:
                    orphans.append(OutRec.delivered(d))      # its incoming record is gone: recorded as it is
            if orphans:
                s.execute(insert(_OUT), [o.row(now) for o in orphans])
                for chunk in chunks([o.journal_id for o in orphans]):
                    s.execute(delete(_J).where(_J.c.id.in_(list(chunk))))
            pending = [OutRec.of(o) for o in s.scalars(select(Outgoing).where(
                Outgoing.commstatus == CommStatus.PENDING, owned(Outgoing.route, Outgoing.run_id))
                .order_by(Outgoing.id))]
            found.partial = [o for o in pending if o.incoming_id in in_ids]
            found.outgoing = [o for o in pending if o.incoming_id not in in_ids]
            for chunk in chunks([o.id for o in found.partial]):
                s.execute(delete(Outgoing).where(Outgoing.id.in_(list(chunk))))
        return found

    @staticmethod
    def _fold_resent(s: Any, rows: Sequence[Any]) -> None:
        """Journaled deliveries of recorded outgoing files (sent again by a run that died): marked sent."""
        for d in rows:
            s.execute(update(_OUT).where(_OUT.c.id == d.outgoing_id).values(
                commstatus=str(CommStatus.SENT), error="", resend=False, sent_at=d.sent_at,
                attempts=_OUT.c.attempts + 1))
        for chunk in chunks([d.id for d in rows]):
            s.execute(delete(_J).where(_J.c.id.in_(list(chunk))))
