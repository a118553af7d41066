"""Tracking tables: runs, incoming and outgoing files, the deliveries journal, leases, small engine
state, remote files seen empty.

Times are naive UTC (``utcnow()``) so SQLite and PostgreSQL store and compare them alike.
Every column a run or a command-line filter queries on carries an index. States are ``StrEnum``
members: stored, compared and written to JSON as the same plain strings as ever.

The queue's tables (:mod:`tasks.registry`) share :class:`Base`; :mod:`engine.db` creates what
is missing on first use.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from engine.config.engine import EngineKind
from engine.config.lanes import DEFAULT_LANE, MAX_LANE_LENGTH
# the states and the clock live without SQLAlchemy (bots-engine with kind = bots never imports it); re-exported here
from engine.states import CommStatus, InStatus, OutStatus, RunStatus, iso_utc, utcnow  # noqa: F401


class Base(DeclarativeBase):
    pass


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    commands: Mapped[str] = mapped_column(String(200), default="new")
    routes: Mapped[str] = mapped_column(Text, default="")          # comma separated; "" = default run
    # the lane whose engine lock the run held; a column added later: older databases gain it on first use
    lane: Mapped[str] = mapped_column(String(MAX_LANE_LENGTH), default=DEFAULT_LANE, server_default=DEFAULT_LANE,
                                      index=True)
    host: Mapped[str] = mapped_column(String(255), default="")
    pid: Mapped[int] = mapped_column(Integer, default=0)
    started: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    ended: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    status: Mapped[str] = mapped_column(String(20), default=RunStatus.RUNNING, index=True)
    returncode: Mapped[int | None] = mapped_column(Integer, nullable=True)
    received: Mapped[int] = mapped_column(Integer, default=0)
    processed: Mapped[int] = mapped_column(Integer, default=0)
    sent: Mapped[int] = mapped_column(Integer, default=0)
    file_errors: Mapped[int] = mapped_column(Integer, default=0)
    comm_errors: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[str] = mapped_column(Text, default="")
    # which engine did the run ([engine] kind); columns added for Bots engine runs (older databases gain them on first use):
    kind: Mapped[str] = mapped_column(String(20), default=EngineKind.BUILTIN,
                                      server_default=EngineKind.BUILTIN, index=True)
    command_line: Mapped[str] = mapped_column(Text, default="", server_default="")   # the child's argv, shell-quoted
    exit_signal: Mapped[int | None] = mapped_column(Integer, nullable=True)          # the signal that ended the child
    summary: Mapped[str] = mapped_column(Text, default="", server_default="")        # Bots' summary lines, as printed
    output: Mapped[str] = mapped_column(Text, default="", server_default="")         # the child's last lines

    def as_dict(self) -> dict:
        return {
            "id": self.id, "kind": self.kind, "commands": self.commands, "routes": self.routes, "lane": self.lane,
            "command_line": self.command_line, "exit_signal": self.exit_signal, "summary": self.summary,
            "output": self.output,
            "host": self.host,
            "pid": self.pid,
            "started": iso_utc(self.started), "ended": iso_utc(self.ended), "status": self.status,
            "returncode": self.returncode, "received": self.received, "processed": self.processed,
            "sent": self.sent, "file_errors": self.file_errors, "comm_errors": self.comm_errors,
            "message": self.message,
        }


class Incoming(Base):
    __tablename__ = "incoming"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"), nullable=True, index=True)
    route: Mapped[str] = mapped_column(String(200), index=True)
    part: Mapped[int] = mapped_column(Integer, default=1)          # 1-based (Bots' seq)
    channel: Mapped[str] = mapped_column(String(200), index=True)
    filename: Mapped[str] = mapped_column(Text)                    # the partner's name (safe_name'd)
    size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    checksum: Mapped[str] = mapped_column(String(64), default="")  # sha256 hex
    archive_path: Mapped[str] = mapped_column(Text, default="")    # relative to botssys
    status: Mapped[str] = mapped_column(String(20), default=InStatus.RECEIVED, index=True)
    error: Mapped[str] = mapped_column(Text, default="")
    rereceive: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    times_processed: Mapped[int] = mapped_column(Integer, default=0)
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)   # indexed with status, below
    updated: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    def as_dict(self) -> dict:
        return {
            "kind": "in", "id": self.id, "run_id": self.run_id, "route": self.route, "part": self.part,
            "channel": self.channel, "filename": self.filename, "size": self.size, "checksum": self.checksum,
            "archive_path": self.archive_path, "status": self.status, "error": self.error,
            "rereceive": self.rereceive, "times_processed": self.times_processed,
            "created": iso_utc(self.created), "updated": iso_utc(self.updated),
        }


class Outgoing(Base):
    __tablename__ = "outgoing"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"), nullable=True, index=True)
    incoming_id: Mapped[int | None] = mapped_column(ForeignKey("incoming.id", ondelete="SET NULL"), nullable=True,
                                                    index=True)
    route: Mapped[str] = mapped_column(String(200), index=True)
    part: Mapped[int] = mapped_column(Integer, default=1)
    channel: Mapped[str] = mapped_column(String(200), index=True)
    filename: Mapped[str] = mapped_column(Text)                    # the name it is delivered under
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    checksum: Mapped[str] = mapped_column(String(64), default="")
    store_path: Mapped[str] = mapped_column(Text)                  # content under botssys, relative
    status: Mapped[str] = mapped_column(String(20), default=OutStatus.OK)
    # no index of its own: ix_outgoing_comm_id (commstatus, id) below serves every filter on it, and each
    # index is one more b-tree insert per delivered file (databases made before keep theirs, unused)
    commstatus: Mapped[str] = mapped_column(String(20), default=CommStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    resend: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True, index=True)

    def as_dict(self) -> dict:
        return {
            "kind": "out", "id": self.id, "run_id": self.run_id, "incoming_id": self.incoming_id,
            "route": self.route, "part": self.part, "channel": self.channel, "filename": self.filename,
            "size": self.size, "checksum": self.checksum, "store_path": self.store_path, "status": self.status,
            "commstatus": self.commstatus, "attempts": self.attempts, "error": self.error, "resend": self.resend,
            "created": iso_utc(self.created), "sent_at": iso_utc(self.sent_at),
        }


Index("ix_outgoing_comm_id", Outgoing.commstatus, Outgoing.id)
# date-range filters, and files per hour by status read from the index alone (the console's chart)
Index("ix_incoming_created_status", Incoming.created, Incoming.status)


class SourceRemoval(Base):
    """A received file whose removal at the source is still pending.

    Written in the same commit as the incoming record (before the source is removed) and
    dropped once the channel removed the file. A row left behind (the delete failed, the
    connection or the run died in between) tells a later run that a file of this name on this
    channel was already received: if its size and sha256 are the same, it is only removed at
    the source, never processed (and sent) a second time. A table of its own, not a column, so
    databases made before it simply gain it on first use (create_all adds missing tables).
    """
    __tablename__ = "source_removals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    incoming_id: Mapped[int] = mapped_column(ForeignKey("incoming.id", ondelete="CASCADE"), index=True)
    channel: Mapped[str] = mapped_column(String(200), index=True)
    filename: Mapped[str] = mapped_column(Text)                    # safe_name'd, as in incoming
    size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    checksum: Mapped[str] = mapped_column(String(64), default="")
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Delivery(Base):
    """The deliveries journal: one row per file the partner accepted, committed right after it took it.

    A batch's outgoing records are written in one commit after all of its files were sent; a run
    killed before that commit would leave every delivery of the batch unrecorded, and the next run
    would send them again. So each accepted delivery is committed here at once (one small insert,
    no secondary index), and the batch's commit that records it in ``outgoing`` deletes its row.
    A row left behind belongs to a run that died: crash recovery (:meth:`engine.run.tracking.Tracker.leftovers`)
    folds it into the records - the output is recorded as sent by the run that sent it, and not
    sent again - before anything else is sent. Only the file in flight (accepted by the partner,
    not yet journaled) can be delivered twice.

    ``outgoing_id`` is set when a recorded outgoing file was sent again (resend, retry, recovery);
    otherwise the row is a new output: ``incoming_id`` and ``output_no`` (its place among that
    file's outputs, 0-based) say which, and the other columns hold its outgoing record.
    """
    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(Integer)                   # the run that delivered it
    outgoing_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    incoming_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    output_no: Mapped[int] = mapped_column(Integer, default=0)
    route: Mapped[str] = mapped_column(String(200))
    part: Mapped[int] = mapped_column(Integer, default=1)
    channel: Mapped[str] = mapped_column(String(200))
    filename: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    checksum: Mapped[str] = mapped_column(String(64), default="")
    store_path: Mapped[str] = mapped_column(Text, default="")
    sent_at: Mapped[datetime] = mapped_column(DateTime)


class Lease(Base):
    """A named lease: who holds it (host, pid), since when, and the holder's last heartbeat.

    The engine lock of a lane (``engine`` for lane default) and the beat lock are leases; the one
    rule deciding whether a holder is alive is :func:`engine.lease.holder_alive`. ``token`` is the
    holder's secret: only a writer knowing it may refresh or release the row.
    """
    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    token: Mapped[str] = mapped_column(String(200))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started: Mapped[datetime] = mapped_column(DateTime)
    heartbeat: Mapped[datetime] = mapped_column(DateTime)
    run_id: Mapped[int | None] = mapped_column(Integer, nullable=True)    # the engine lock: the run holding it


class EngineState(Base):
    """Small key/value memory of the engine (retry starting point, last cleanup day)."""
    __tablename__ = "engine_state"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text, default="")


class EmptySighting(Base):
    """A remote file seen at 0 bytes, and since when (first seen empty, naive UTC).

    An upload that has not sent its first byte yet looks like an empty file; it is taken (and
    reported as empty) only once it has stayed empty past readiness.EMPTY_AFTER, across runs. A row
    goes as soon as its file is no longer listed empty. Behind engine.sightings.EmptySightings.
    """
    __tablename__ = "empty_sightings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    channel: Mapped[str] = mapped_column(String(200), index=True)
    filename: Mapped[str] = mapped_column(Text)                    # the partner's name, as listed
    first_seen: Mapped[datetime] = mapped_column(DateTime)
