"""One engine run: lock, recover, retry/resend/rereceive/new, cleanup, summary, report.

Every file is tracked and none is lost:

* receive: fetched to a temporary name in the archive under botssys, checksummed, renamed,
  flushed to disk once per batch, its record committed (with a pending-removal mark), and
  only then removed at the partner (when the channel says ``remove``); a file whose removal
  failed is found again by a later run, compared (size, sha256) and only removed, never
  processed twice;
* translate: the outputs are written under botssys (passthrough reuses the archived file)
  and recorded with the incoming file's new status in one commit;
* send: each outgoing file's delivery result is recorded; a failure keeps the file for
  ``--automaticretrycommunication`` and ``--resend``.

A run that dies half-way leaves records saying how far each file got; the next run finds
them (``received`` incoming files are processed again from the archive, ``pending`` outgoing
files are sent) before it does anything else.

``run_engine`` raises ConfigError / UsageError / DatabaseError for system errors (exit 1)
and never raises for file or communication errors (exit 2).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import itertools
import os
import string
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from engine.channels import Channel, CommunicationError, FileGone, Refused, make_channel, safe_name
from engine.cli_util import EXIT_ERRORS, EXIT_LOCKED, EXIT_OK, UsageError
from engine.config import Config, ConfigError, Route, RoutePart, mask_url
from engine.db import DatabaseError, get_engine, session_scope
from engine.lock import LockInfo, acquire, hostname, overtime_minutes
from engine.log import component_logger
from engine.models import (COMM_FAILED, COMM_PENDING, COMM_SENT, IN_COMMERROR, IN_DONE, IN_ERROR, IN_RECEIVED,
                           OUT_OK, RUN_CRASHED, RUN_ERRORS, RUN_FAILED, RUN_OK, RUN_RUNNING, EngineState, Incoming,
                           Outgoing, Run, SourceRemoval, utcnow)
from engine.readiness import Readiness
from engine.report import send_report
from engine.sightings import EmptySightings
from engine.translate import TranslateError, Translator

ENGINE_COMMANDS = ("automaticretrycommunication", "resend", "rereceive", "new", "cleanup")
DEFAULT_FILENAME = "{route}_{run}_{seq}_{infile}"
PLACEHOLDERS = ("route", "run", "seq", "infile", "datetime")
BATCH = 250                 # files per commit
PROGRESS_EVERY = 0.5        # seconds between progress callbacks
MAX_REPORTED_ERRORS = 1000  # errors listed one by one in a report (all are in the log and the database)
MAX_FETCH_FAILURES = 5      # consecutive fetch failures before giving up on an in-channel for this run


@dataclass
class RunResult:
    run_id: int | None
    exit_code: int              # 0 ok, 2 ran with file/communication errors, 3 locked by a live run
    message: str                # one-line summary
    locked_by: str | None = None
    counts: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------- selection

def normalise_commands(commands: Sequence[str]) -> list[str]:
    """Commands in Bots' order, duplicates dropped; none means ``new``; unknown is a UsageError."""
    wanted = []
    for c in commands or ():
        c = str(c).lstrip("-").lower()
        if c not in ENGINE_COMMANDS:
            raise UsageError(f"unknown engine command {c!r} (expected one of {', '.join(ENGINE_COMMANDS)})")
        wanted.append(c)
    if not wanted:
        wanted = ["new"]
    return [c for c in ENGINE_COMMANDS if c in wanted]


def select_routes(cfg: Config, commands: Sequence[str], routes: Sequence[str]) -> list[Route]:
    """The routes a run works on.

    Named routes must exist (UsageError naming the first unknown one); inactive ones are
    left out. No names: every active route, except that a run doing only ``new`` (and
    ``cleanup``) leaves out ``notindefaultrun`` routes, as Bots' default run does.
    """
    cmds = normalise_commands(commands)
    unknown = [r for r in routes if r not in cfg.routes]
    if unknown:
        known = ", ".join(cfg.routes) or "none"
        raise UsageError(f"unknown route {unknown[0]!r} (routes in {cfg.configdir / 'routes.toml'}: {known})")
    if routes:
        return [cfg.routes[r] for r in dict.fromkeys(routes) if cfg.routes[r].active]
    only_new = set(cmds) <= {"new", "cleanup"}
    return [r for r in cfg.routes.values() if r.active and not (only_new and r.notindefaultrun)]


def check_filename_templates(cfg: Config) -> None:
    """Every out-channel's filename template uses known placeholders only (ConfigError otherwise)."""
    used = {p.tochannel for r in cfg.routes.values() for p in r.parts if p.tochannel}
    for name in sorted(used):
        spec = cfg.channels[name]
        tpl = spec.get("filename") or DEFAULT_FILENAME
        where = f"{cfg.configdir / 'routes.toml'}: channels.{name}.filename"
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(tpl) if f is not None]
        except ValueError as exc:
            raise ConfigError(f"{where}: bad template {tpl!r}: {exc}") from None
        for f in fields:
            if f.split(".")[0].split("[")[0] not in PLACEHOLDERS:
                raise ConfigError(f"{where}: unknown placeholder {{{f}}} (expected {', '.join(PLACEHOLDERS)})")


def render_filename(tpl: str, **values: Any) -> str:
    return safe_name(tpl.format(**values), fallback=f"{values.get('run')}_{values.get('seq')}")


# --------------------------------------------------------------------------- durability

_libc = None


def _syncfs(path: Path) -> None:
    """Flush the file system holding ``path`` once (a batch's worth of files), not per file."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fd = os.open(path, os.O_RDONLY)
        try:
            if _libc.syncfs(fd) != 0:
                os.sync()
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        os.sync()


def _digest(path: Path | str) -> tuple[int, str]:
    with open(path, "rb") as f:
        h = hashlib.file_digest(f, "sha256")
        return f.tell(), h.hexdigest()


# --------------------------------------------------------------------------- the run

class _LockLost(Exception):
    pass


@dataclass
class _Error:
    kind: str       # "file" | "communication"
    route: str
    file: str
    reason: str


_IN = Incoming.__table__
_OUT = Outgoing.__table__
_SR = SourceRemoval.__table__
_UPDATE_IN = (update(_IN).where(_IN.c.id == bindparam("b_id"))
              .values(status=bindparam("b_status"), error=bindparam("b_error"), updated=bindparam("b_updated"),
                      run_id=bindparam("b_run"), times_processed=bindparam("b_tp"), rereceive=False))
_UPDATE_OUT = (update(_OUT).where(_OUT.c.id == bindparam("b_id"))
               .values(commstatus=bindparam("b_comm"), attempts=bindparam("b_attempts"), error=bindparam("b_error"),
                       sent_at=bindparam("b_sent"), resend=bindparam("b_resend")))


class InRec:
    """An incoming file on its way through a run (a light stand-in for the ORM row)."""
    __slots__ = ("id", "run_id", "route", "part", "channel", "filename", "size", "checksum", "archive_path",
                 "status", "error", "times_processed")

    def __init__(self, *, id: int | None = None, run_id: int | None, route: str, part: int, channel: str,
                 filename: str, size: int | None, checksum: str = "", archive_path: str = "",
                 status: str = IN_RECEIVED, error: str = "", times_processed: int = 0) -> None:
        self.id, self.run_id, self.route, self.part, self.channel = id, run_id, route, part, channel
        self.filename, self.size, self.checksum, self.archive_path = filename, size, checksum, archive_path
        self.status, self.error, self.times_processed = status, error, times_processed

    @classmethod
    def of(cls, r: Incoming) -> "InRec":
        return cls(id=r.id, run_id=r.run_id, route=r.route, part=r.part, channel=r.channel, filename=r.filename,
                   size=r.size, checksum=r.checksum, archive_path=r.archive_path, status=r.status, error=r.error,
                   times_processed=r.times_processed or 0)


class OutRec:
    """An outgoing file on its way through a run."""
    __slots__ = ("id", "run_id", "incoming_id", "route", "part", "channel", "filename", "size", "checksum",
                 "store_path", "commstatus", "attempts", "error", "sent_at", "resend")

    def __init__(self, *, id: int | None = None, run_id: int | None, incoming_id: int | None, route: str, part: int,
                 channel: str, filename: str, size: int, checksum: str, store_path: str,
                 commstatus: str = COMM_PENDING, attempts: int = 0, error: str = "", sent_at: datetime | None = None,
                 resend: bool = False) -> None:
        self.id, self.run_id, self.incoming_id, self.route, self.part = id, run_id, incoming_id, route, part
        self.channel, self.filename, self.size, self.checksum = channel, filename, size, checksum
        self.store_path, self.commstatus, self.attempts, self.error = store_path, commstatus, attempts, error
        self.sent_at, self.resend = sent_at, resend

    @classmethod
    def of(cls, o: Outgoing) -> "OutRec":
        return cls(id=o.id, run_id=o.run_id, incoming_id=o.incoming_id, route=o.route, part=o.part,
                   channel=o.channel, filename=o.filename, size=o.size, checksum=o.checksum, store_path=o.store_path,
                   commstatus=o.commstatus, attempts=o.attempts or 0, error=o.error, sent_at=o.sent_at,
                   resend=o.resend)

    def row(self, now: datetime) -> dict:
        return dict(run_id=self.run_id, incoming_id=self.incoming_id, route=self.route, part=self.part,
                    channel=self.channel, filename=self.filename, size=self.size, checksum=self.checksum,
                    store_path=self.store_path, status=OUT_OK, commstatus=self.commstatus, attempts=self.attempts,
                    error=self.error, resend=False, created=now, sent_at=self.sent_at)


class EngineRun:
    def __init__(self, cfg: Config, commands: list[str], route_names: Sequence[str],
                 progress: Callable[[dict], None] | None) -> None:
        self.cfg = cfg
        self.commands = commands
        self.route_names = list(route_names)
        self.progress_cb = progress
        try:
            self.log = component_logger("engine", cfg)
        except OSError as exc:
            raise ConfigError(f"{cfg.directories.logging}: cannot write the engine log: {exc.strerror or exc}") \
                from None
        self.url = cfg.database_url
        self.botssys = cfg.directories.botssys
        self.counts: dict[str, int] = dict(received=0, processed=0, sent=0, file_errors=0, comm_errors=0,
                                           rereceived=0, resent=0, retried=0, recovered=0, cleaned=0,
                                           removed_late=0)
        self.errors: list[_Error] = []
        self.channels: dict[str, Channel | CommunicationError] = {}
        self.translator = Translator(cfg)
        self.readiness = Readiness(EmptySightings(self.url), self.log)   # issue 9: only complete files
        self.run_id: int = 0
        self.lock = None
        self.day = datetime.now().strftime("%Y%m%d")
        self._in_seq = 0
        self._out_seq = 0
        self._last_progress = 0.0
        self._dirs_made: set[Path] = set()

    # ------------------------------------------------------------------ helpers
    def progress(self, force: bool = False, **info: Any) -> None:
        if self.progress_cb is None:
            return
        now = time.monotonic()
        if not force and now - self._last_progress < PROGRESS_EVERY:
            return
        self._last_progress = now
        data = dict(route=None, part=None, files_done=0, files_total=None, phase=None)
        data.update(info)
        try:
            self.progress_cb(data)
        except Exception:  # noqa: BLE001 - a progress consumer never breaks a run
            self.log.debug("progress callback failed", exc_info=True)

    def tx(self):  # type: ignore[no-untyped-def]
        """A Core connection in a transaction (commits on success): the hot path skips the ORM."""
        return get_engine(self.url).begin()

    def _dir(self, p: Path) -> Path:
        if p not in self._dirs_made:
            p.mkdir(parents=True, exist_ok=True)
            self._dirs_made.add(p)
        return p

    def file_error(self, route: str, file: str, reason: str) -> None:
        self.counts["file_errors"] += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(_Error("file", route, file, reason))
        self.log.error("route %s, file %s: %s", route, file, reason)

    def comm_error(self, route: str, file: str, reason: str) -> None:
        self.counts["comm_errors"] += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(_Error("communication", route, file, reason))
        self.log.error("route %s, %s: %s", route, file or "channel", reason)

    def check_lock(self) -> None:
        if self.lock is not None and self.lock.lost:
            raise _LockLost()

    def channel(self, name: str) -> Channel:
        """The run's one open channel object for ``name`` (connection reuse); raises CommunicationError."""
        ch = self.channels.get(name)
        if ch is None:
            spec = self.cfg.channels[name]
            try:
                obj = make_channel(spec, self.cfg, self.log)
                obj.open()
                ch = obj
            except ImportError as exc:
                ch = CommunicationError(f"channel {name!r}: {spec.type} channels are not available: {exc}")
            except ConfigError:
                raise
            except Exception as exc:  # noqa: BLE001
                ch = self._comm(exc, name, "opening failed")
            self.channels[name] = ch
        if isinstance(ch, CommunicationError):
            raise ch
        return ch

    def _comm(self, exc: BaseException, channel: str, what: str) -> CommunicationError:
        """Any failure inside a channel as a CommunicationError (one line, no secrets)."""
        if isinstance(exc, CommunicationError):
            return exc
        self.log.debug("channel %s: %s", channel, what, exc_info=exc)
        text = str(exc).strip().splitlines()
        return CommunicationError(f"channel {channel!r}: {what}: {type(exc).__name__}"
                                  f"{': ' + text[0] if text else ''}")

    def close_channels(self) -> None:
        for ch in self.channels.values():
            if isinstance(ch, Channel):
                try:
                    ch.close()
                except Exception:  # noqa: BLE001
                    self.log.debug("closing %s failed", ch.name, exc_info=True)
        self.channels.clear()

    def state(self, key: str) -> str | None:
        with session_scope(self.url) as s:
            row = s.get(EngineState, key)
            return row.value if row is not None else None

    def set_state(self, key: str, value: str) -> None:
        with session_scope(self.url) as s:
            row = s.get(EngineState, key)
            if row is None:
                s.add(EngineState(key=key, value=value))
            else:
                row.value = value

    def part_of(self, route_name: str, partno: int) -> RoutePart | None:
        route = self.cfg.routes.get(route_name)
        if route is None or not 1 <= partno <= len(route.parts):
            return None
        return route.parts[partno - 1]

    # ------------------------------------------------------------------ receive
    def receive_part(self, route: Route, partno: int, part: RoutePart) -> None:
        inname = part.fromchannel
        try:
            ch = self.channel(inname)
            listing = self.readiness.listing(ch)      # the files that are complete (settled listing)
            # a sized listing is consumed as it goes (a 100,000-file folder never sits in memory
            # as objects); anything else is read whole here, where its errors belong to the listing
            if not hasattr(listing, "__len__"):
                listing = list(listing)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever a channel raises is a communication error
            self.comm_error(route.name, f"in-channel {inname}", str(self._comm(exc, inname, "listing failed")))
            return
        spec = self.cfg.channels[inname]
        remove = bool(spec.get("remove", False))
        # files an earlier run received but could not remove at the source (usually none: one query);
        # looked at even when nothing is listed, so marks of files gone meanwhile are settled
        pending = self.pending_removals(inname, getattr(listing, "listed", listing)) if remove else {}
        total = len(listing)
        if not total:
            return
        items = iter(listing)
        limit = spec.get("maxsecondsperchannel") or self.cfg.settings.maxsecondsperchannel
        deadline = time.monotonic() + limit if limit else None
        maxsize = self.cfg.settings.maxfilesizeincoming
        done = 0
        failures = 0
        stop = False
        self.progress(force=True, route=route.name, part=partno, files_done=0, files_total=total, phase="receive")
        archive_day = self._dir(self.cfg.directories.archive / self.day)
        adir = str(archive_day)
        rel_prefix = f"data/{self.day}/"
        while not stop:
            self.check_lock()
            if deadline is not None and time.monotonic() > deadline:
                self.log.info("route %s: maxsecondsperchannel (%ss) reached for channel %s; %d file(s) left for the "
                              "next run", route.name, limit, inname, total - done)
                break
            batch = list(itertools.islice(items, BATCH))
            if not batch:
                break
            got: list[tuple[Any, InRec]] = []
            recs: list[InRec] = []
            again: list[tuple[Any, Any]] = []     # (item, pending row): received before, only to be removed
            stale: list[int] = []                 # pending rows whose name now holds another file
            for item in batch:
                if deadline is not None and time.monotonic() > deadline:
                    stop = True
                    break
                name = safe_name(item.name)
                self._in_seq += 1
                base = f"{self.run_id}-{self._in_seq}"
                tmp = f"{adir}/.tmp-{base}"
                try:
                    fetched = ch.fetch(item, Path(tmp))
                except ConfigError:
                    raise
                except Exception as exc:  # noqa: BLE001
                    exc = self._comm(exc, inname, f"fetching {name!r} failed")
                    _unlink(tmp)
                    if isinstance(exc, FileGone):       # taken by someone else since the listing: not ours
                        self.log.info("route %s: %s", route.name, exc)
                        continue
                    self.comm_error(route.name, name, str(exc))
                    recs.append(InRec(run_id=self.run_id, route=route.name, part=partno, channel=inname,
                                      filename=name, size=item.size, status=IN_COMMERROR, error=str(exc)))
                    failures = 0 if isinstance(exc, Refused) else failures + 1   # a refusal is that file's
                    if failures >= MAX_FETCH_FAILURES:
                        self.log.error("route %s: %d fetches in a row failed on channel %s; the rest waits for the "
                                       "next run", route.name, failures, inname)
                        stop = True
                        break
                    continue
                failures = 0
                if self.progress_cb is not None:
                    self.progress(route=route.name, part=partno, files_done=done + len(recs) + len(again),
                              files_total=total, phase="receive")
                try:
                    # a channel may hand back (size, sha256) it computed while copying; else read it back
                    if isinstance(fetched, tuple) and len(fetched) == 2:
                        size, checksum = fetched
                    else:
                        size, checksum = _digest(tmp)
                    if pending and name in pending:
                        prior = pending.pop(name)
                        same = next((p for p in prior if p.size == size and p.checksum == checksum), None)
                        if same is not None:
                            _unlink(tmp)
                            again.append((item, same))
                            continue
                        stale.extend(p.id for p in prior)
                    os.replace(tmp, f"{adir}/{base}")
                except OSError as exc:
                    _unlink(tmp)
                    raise ConfigError(f"{self.cfg.directories.archive}: cannot write the archive: "
                                      f"{exc.strerror or exc}") from None
                status, error = IN_RECEIVED, ""
                if size > maxsize:
                    status, error = IN_ERROR, (f"file too large: {size} bytes, more than maxfilesizeincoming "
                                               f"({maxsize}) in bots.ini")
                elif size == 0:
                    status, error = IN_ERROR, "empty file (0 bytes)"
                rec = InRec(run_id=self.run_id, route=route.name, part=partno, channel=inname, filename=name,
                            size=size, checksum=checksum, archive_path=rel_prefix + base, status=status, error=error)
                recs.append(rec)
                got.append((item, rec))
            if got:
                _syncfs(archive_day)            # archived copies are on disk before any source goes
            # ... and recorded (committed), with their removal at the source marked pending
            self.insert_incoming(recs, [rec for _i, rec in got] if remove else (), stale)
            self.counts["received"] += len(got)
            for _item, rec in got:
                if rec.status == IN_ERROR:
                    self.file_error(route.name, rec.filename, rec.error)
            if remove:
                removed: list[int] = []
                for item, rec in got:
                    if self.remove_at_source(ch, item, route.name, rec.filename):
                        removed.append(rec.id)
                removed_again: list[int] = []
                for item, prior in again:
                    if self.remove_at_source(ch, item, route.name, safe_name(item.name)):
                        removed_again.append(prior.id)
                        self.counts["removed_late"] += 1
                        self.log.info("route %s, file %s: already received (incoming %s, same size and sha256) but "
                                      "left at the source when its removal failed; removed at the source now, not "
                                      "processed again", route.name, safe_name(item.name), prior.incoming_id)
                self.clear_removals(removed, removed_again)
            self.process([rec for _i, rec in got if rec.status == IN_RECEIVED],
                         dict(route=route.name, part=partno, files_done=done, files_total=total))
            done += len(recs) + len(again)
            self.progress(route=route.name, part=partno, files_done=done, files_total=total, phase="receive")
            if stop:
                break

    def insert_incoming(self, recs: list[InRec], removing: Sequence[InRec] = (), stale: Sequence[int] = ()) -> None:
        """Record incoming files in one commit; ``removing`` (some of ``recs``) are about to be removed at the
        source, so their removal is recorded as pending in the same commit; ``stale`` pending rows go."""
        if not recs and not stale:
            return
        now = utcnow()
        rows = [dict(run_id=r.run_id, route=r.route, part=r.part, channel=r.channel, filename=r.filename, size=r.size,
                     checksum=r.checksum, archive_path=r.archive_path, status=r.status, error=r.error,
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

    # ------------------------------------------------------------------ removal at the source
    def pending_removals(self, channel: str, listing: Iterable[Any]) -> dict[str, list[Any]]:
        """Files received on ``channel`` whose removal at the source is still pending, by (safe) name.

        A pending row whose name is no longer listed is settled: the file is gone from the source
        (removed after all, or by someone else), so a later file of that name is a new one.
        """
        with self.tx() as conn:
            rows = list(conn.execute(select(_SR.c.id, _SR.c.incoming_id, _SR.c.filename, _SR.c.size, _SR.c.checksum)
                                     .where(_SR.c.channel == channel).order_by(_SR.c.id)))
            if not rows:
                return {}
            listed = {safe_name(item.name) for item in listing}
            gone = [r.id for r in rows if r.filename not in listed]
            for chunk in _chunks(gone, 500):
                conn.execute(delete(_SR).where(_SR.c.id.in_(chunk)))
        pending: dict[str, list[Any]] = {}
        for r in rows:
            if r.filename in listed:
                pending.setdefault(r.filename, []).append(r)
        if pending:
            self.log.info("channel %s: %d file(s) received earlier are still at the source (their removal failed); "
                          "each is compared with its record and removed, not processed again, when it is the same",
                          channel, sum(len(v) for v in pending.values()))
        return pending

    def remove_at_source(self, ch: Channel, item: Any, route: str, filename: str) -> bool:
        try:
            ch.delete(item)
            return True
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001
            exc = self._comm(exc, ch.name, f"removing {filename!r} failed")
            self.comm_error(route, filename, f"received, but not removed at the source (the next run removes it "
                                             f"without processing it again): {exc}")
            return False

    def clear_removals(self, incoming_ids: list[int], pending_ids: list[int]) -> None:
        """The files were removed at the source: their pending marks go (one commit)."""
        if not incoming_ids and not pending_ids:
            return
        with self.tx() as conn:
            if incoming_ids:
                conn.execute(delete(_SR).where(_SR.c.incoming_id.in_(incoming_ids)))
            if pending_ids:
                conn.execute(delete(_SR).where(_SR.c.id.in_(pending_ids)))

    # ------------------------------------------------------------------ translate + send
    def process(self, incs: list[InRec], where: dict | None = None) -> None:
        """Translate recorded incoming files, send their outputs, record both (one commit per batch).

        ``where`` (route, part, files_done, files_total of the receiving part) lets a long batch show
        progress per file (throttled), not only once per batch."""
        for start in range(0, len(incs), BATCH):
            self.check_lock()
            batch = incs[start:start + BATCH]
            outs: list[OutRec] = []
            for n, inc in enumerate(batch):
                if where is not None and self.progress_cb is not None:
                    self.progress(**{**where, "files_done": where["files_done"] + start + n}, phase="process")
                outs.extend(self.translate_one(inc))
            for out in outs:
                self.send_one(out)
            now = utcnow()
            with self.tx() as conn:
                conn.execute(_UPDATE_IN, [dict(b_id=i.id, b_status=i.status, b_error=i.error, b_updated=now,
                                               b_run=self.run_id, b_tp=i.times_processed) for i in batch])
                if outs:
                    conn.execute(insert(_OUT), [o.row(now) for o in outs])

    def translate_one(self, inc: InRec) -> list[OutRec]:
        part = self.part_of(inc.route, inc.part)
        inc.times_processed += 1
        if part is None:
            inc.status, inc.error = IN_ERROR, f"route {inc.route!r} part {inc.part} is no longer configured"
            self.file_error(inc.route, inc.filename, inc.error)
            return []
        src = self.botssys / inc.archive_path
        if not inc.archive_path or not src.is_file():
            inc.status, inc.error = IN_ERROR, f"archived copy {inc.archive_path or '(none)'} is missing"
            self.file_error(inc.route, inc.filename, inc.error)
            return []
        written: list[Path] = []
        try:
            if part.translate == "passthrough":
                results: list = [(None, {})]
            else:
                meta = dict(route=inc.route, part=inc.part, filename=inc.filename, channel=inc.channel,
                            run=self.run_id, incoming_id=inc.id, size=inc.size, checksum=inc.checksum)
                results = self.translator.translate(part.translate, src, meta)
            if not part.tochannel:
                results = []
            outs = []
            tpl = (self.cfg.channels[part.tochannel].get("filename") or DEFAULT_FILENAME) if part.tochannel else ""
            for content, ometa in results:
                self._out_seq += 1
                seq = self._out_seq
                if content is None:
                    store, size, checksum = inc.archive_path, inc.size or 0, inc.checksum
                else:
                    rel = f"outfiles/{self.day}/{self.run_id}-{seq}"
                    path = self._dir(self.botssys / "outfiles" / self.day) / f"{self.run_id}-{seq}"
                    try:
                        path.write_bytes(content)
                    except OSError as exc:
                        raise ConfigError(f"{self.botssys}: cannot store an outgoing file: {exc.strerror or exc}") \
                            from None
                    written.append(path)
                    store, size, checksum = rel, len(content), hashlib.sha256(content).hexdigest()
                if ometa.get("filename"):
                    filename = safe_name(str(ometa["filename"]))
                elif tpl == "{infile}":
                    filename = inc.filename
                else:
                    filename = render_filename(tpl, route=inc.route, run=self.run_id, seq=seq, infile=inc.filename,
                                               datetime=datetime.now().strftime("%Y%m%d%H%M%S"))
                outs.append(OutRec(run_id=self.run_id, incoming_id=inc.id, route=inc.route, part=inc.part,
                                   channel=part.tochannel, filename=filename, size=size, checksum=checksum,
                                   store_path=store))
        except TranslateError as exc:
            for p in written:
                _unlink(p)
            inc.status, inc.error = IN_ERROR, str(exc)
            self.file_error(inc.route, inc.filename, inc.error)
            return []
        inc.status, inc.error = IN_DONE, ""
        self.counts["processed"] += 1
        if not outs and part.translate != "none" and part.tochannel:
            self.log.info("route %s, file %s: no output", inc.route, inc.filename)
        return outs

    def send_one(self, out: OutRec, count: str | None = None) -> None:
        out.attempts += 1
        out.resend = False
        src = self.botssys / out.store_path
        try:
            if out.channel not in self.cfg.channels:
                raise CommunicationError(f"channel {out.channel!r} is no longer configured")
            ch = self.channel(out.channel)
            try:
                ch.send(src, out.filename)
            except ConfigError:
                raise
            except Exception as exc:  # noqa: BLE001 - the file is kept for retry whatever went wrong
                if not src.is_file():
                    raise CommunicationError(f"stored content {out.store_path} is missing") from None
                raise self._comm(exc, out.channel, f"sending {out.filename!r} failed") from None
        except CommunicationError as exc:
            out.commstatus, out.error = COMM_FAILED, str(exc)
            self.comm_error(out.route, out.filename, str(exc))
            return
        out.commstatus, out.error, out.sent_at = COMM_SENT, "", utcnow()
        self.counts["sent"] += 1
        if count:
            self.counts[count] += 1

    def resend_existing(self, outs: list[OutRec], count: str | None = None) -> None:
        """Send recorded outgoing files again and record each result (one commit)."""
        if not outs:
            return
        for out in outs:
            self.send_one(out, count)
        with self.tx() as conn:
            conn.execute(_UPDATE_OUT, [dict(b_id=o.id, b_comm=o.commstatus, b_attempts=o.attempts, b_error=o.error,
                                            b_sent=o.sent_at, b_resend=o.resend) for o in outs])

    # ------------------------------------------------------------------ commands
    def routes_for(self, command: str) -> list[Route]:
        return select_routes(self.cfg, [command], self.route_names)

    def cmd_new(self) -> None:
        for route in self.routes_for("new"):
            for partno, part in enumerate(route.parts, 1):
                self.receive_part(route, partno, part)

    def cmd_rereceive(self) -> None:
        names = [r.name for r in self.routes_for("rereceive")]
        if not names:
            return
        with session_scope(self.url) as s:
            incs = [InRec.of(r) for r in s.scalars(select(Incoming).where(
                Incoming.rereceive.is_(True), Incoming.route.in_(names)).order_by(Incoming.id))]
        if not incs:
            return
        self.log.info("rereceive: %d file(s) marked", len(incs))
        self.progress(force=True, files_done=0, files_total=len(incs), phase="rereceive")
        before = self.counts["processed"]
        self.process(incs)
        self.counts["rereceived"] += self.counts["processed"] - before

    def _send_selected(self, where, phase: str, count: str) -> int:  # type: ignore[no-untyped-def]
        with session_scope(self.url) as s:
            outs = [OutRec.of(o) for o in s.scalars(select(Outgoing).where(*where).order_by(Outgoing.id))]
        total = len(outs)
        for start in range(0, total, BATCH):
            self.check_lock()
            self.resend_existing(outs[start:start + BATCH], count)
            self.progress(files_done=min(start + BATCH, total), files_total=total, phase=phase)
        return total

    def cmd_resend(self) -> None:
        names = [r.name for r in self.routes_for("resend")]
        if names:
            n = self._send_selected([Outgoing.resend.is_(True), Outgoing.route.in_(names)], "resend", "resent")
            if n:
                self.log.info("resend: %d file(s) marked, %d sent", n, self.counts["resent"])

    def cmd_automaticretrycommunication(self) -> None:
        start = self.state("retry_start")
        if start is None:
            with session_scope(self.url) as s:
                top = s.scalar(select(func.max(Outgoing.id))) or 0
            self.set_state("retry_start", str(top))
            self.log.info("automaticretrycommunication: first use, starting point set (files with communication "
                          "errors from now on are retried)")
            return
        names = [r.name for r in self.routes_for("automaticretrycommunication")]
        if names:
            n = self._send_selected([Outgoing.commstatus == COMM_FAILED, Outgoing.id > int(start),
                                     Outgoing.route.in_(names)], "automaticretrycommunication", "retried")
            if n:
                self.log.info("automaticretrycommunication: %d file(s) retried, %d sent", n, self.counts["retried"])

    def cmd_cleanup(self) -> None:
        from engine.cleanup import cleanup
        self.progress(force=True, phase="cleanup")
        self.counts["cleaned"] += cleanup(self.cfg, self.log)
        self.set_state("last_cleanup", datetime.now().date().isoformat())

    # ------------------------------------------------------------------ crash recovery
    def recover(self, crashed: LockInfo | None) -> None:
        """Finish what earlier runs left half-way (crashed or interrupted); nothing is lost.

        ``received`` incoming files (archived and recorded, not processed) are processed again
        from the archive; ``pending`` outgoing files are sent.
        """
        now = utcnow()
        with session_scope(self.url) as s:
            stale = list(s.scalars(select(Run).where(Run.status == RUN_RUNNING, Run.id != self.run_id)))
            for r in stale:
                r.status = RUN_CRASHED
                r.ended = now
                why = (f"holder {crashed.describe()} gone (process ended or heartbeat silent since "
                       f"{crashed.heartbeat.isoformat(timespec='seconds')})") if crashed else "did not finish"
                r.message = f"crashed: {why}; recovered by run {self.run_id}"
            left_in = [InRec.of(i) for i in s.scalars(select(Incoming).where(Incoming.status == IN_RECEIVED)
                                                      .order_by(Incoming.id))]
            in_ids = {i.id for i in left_in}
            left_out = [OutRec.of(o) for o in s.scalars(select(Outgoing).where(Outgoing.commstatus == COMM_PENDING)
                                                        .order_by(Outgoing.id))]
            partial = [o for o in left_out if o.incoming_id in in_ids]
            left_out = [o for o in left_out if o.incoming_id not in in_ids]
            for chunk in _chunks([o.id for o in partial], 500):
                s.execute(delete(Outgoing).where(Outgoing.id.in_(chunk)))
        for o in partial:
            if o.store_path.startswith("outfiles/"):
                _unlink(self.botssys / o.store_path)
        if crashed is None and not stale and not left_in and not left_out:
            return
        lines = []
        if crashed is not None:
            lines.append(f"The engine run holding the lock ({crashed.describe()}, run {crashed.run_id}) is gone: "
                         f"its process no longer exists or its heartbeat was silent past the grace period.")
        for r in stale:
            lines.append(f"Run {r.id} (started {r.started:%Y-%m-%d %H:%M:%S} UTC, {r.commands}) is recorded as "
                         f"crashed.")
        lines.append(f"{len(left_in)} received file(s) not yet processed are processed again from the archive; "
                     f"{len(left_out)} outgoing file(s) not yet sent are sent now.")
        self.log.warning("crash recovery: %s", " ".join(lines))
        self.progress(force=True, files_done=0, files_total=len(left_in) + len(left_out), phase="recover")
        self.process(left_in)
        self.resend_existing(left_out)
        self.counts["recovered"] += len(left_in) + len(left_out)
        if crashed is not None or stale:
            files = [f"  incoming {i.id}: route {i.route}, file {i.filename} -> {i.status}"
                     f"{' (' + i.error + ')' if i.error else ''}" for i in left_in]
            files += [f"  outgoing {o.id}: route {o.route}, file {o.filename} -> {o.commstatus}"
                      f"{' (' + o.error + ')' if o.error else ''}" for o in left_out]
            body = "\n".join(lines) + "\n\nRecovered files:\n" + ("\n".join(files) if files else "  (none)") + "\n"
            which = f"run {crashed.run_id} crashed" if crashed is not None and crashed.run_id else "a run crashed"
            send_report(self.cfg, f"crash recovery by run {self.run_id}: {which}, "
                                  f"{len(left_in) + len(left_out)} file(s) recovered", body)

    # ------------------------------------------------------------------ overall
    def overtime_alert(self, minutes: float) -> None:
        msg = (f"engine run {self.run_id} has been running for {minutes:.0f} minutes, longer than maxruntime "
               f"({self.cfg.settings.maxruntime}); it is alive and keeps the lock")
        self.log.warning(msg)
        send_report(self.cfg, f"run {self.run_id} exceeds maxruntime", msg + f"\nhost {hostname()} pid {os.getpid()}\n")

    def execute(self) -> RunResult:
        cfg = self.cfg
        t0 = time.monotonic()
        get_engine(self.url)
        got = acquire(cfg, self.log, on_overtime=self.overtime_alert)
        if got.lock is None:
            holder = got.holder
            if holder is None:
                raise DatabaseError(f"database {mask_url(self.url)}: the engine lock could not be taken")
            msg = f"engine is locked by a running engine run: {holder.describe()}"
            over = overtime_minutes(holder, cfg)
            if over is not None:
                self.log.warning("%s; it has run %.0f minutes, longer than maxruntime (%d), but it is alive "
                                 "(heartbeat %s), so it is not taken over", msg, holder.age_minutes(),
                                 cfg.settings.maxruntime, holder.heartbeat.isoformat(timespec="seconds"))
            else:
                self.log.info(msg)
            return RunResult(None, EXIT_LOCKED, msg, locked_by=holder.describe())
        self.lock = got.lock
        status = RUN_FAILED
        message = "run failed"
        try:
            with session_scope(self.url) as s:
                run = Run(commands=",".join(self.commands), routes=",".join(self.route_names), host=hostname(),
                          pid=os.getpid(), started=self.lock.started, status=RUN_RUNNING)
                s.add(run)
                s.flush()
                self.run_id = run.id
            self.lock.set_run(self.run_id)
            self.lock.start_heartbeat()
            if got.crashed is not None:
                self.log.warning("engine lock of %s (run %s) is stale: that run crashed; taking over",
                                 got.crashed.describe(), got.crashed.run_id)
            self.log.info("run %d started: %s%s", self.run_id, " ".join(f"--{c}" for c in self.commands),
                          (" routes " + ", ".join(self.route_names)) if self.route_names else "")
            if not cfg.routes:
                routes_toml = cfg.configdir / "routes.toml"
                self.log.warning("no routes in %s (%s): this run only does what needs no route", routes_toml,
                                 "the file is empty" if routes_toml.exists() else "the file does not exist")
            for name in self.route_names:
                if not cfg.routes[name].active:
                    self.log.warning("route %s is not active (active = false in routes.toml): skipped", name)
            self.recover(got.crashed)
            for command in self.commands:
                self.check_lock()
                getattr(self, f"cmd_{command}")()
            if "cleanup" not in self.commands and cfg.settings.whencleanup == "daily" \
                    and self.state("last_cleanup") != datetime.now().date().isoformat():
                self.log.info("daily cleanup (first run of the day)")
                self.cmd_cleanup()
            status = RUN_ERRORS if self.counts["file_errors"] or self.counts["comm_errors"] else RUN_OK
            message = self.summary(time.monotonic() - t0)
        except _LockLost:
            status = RUN_ERRORS
            message = f"run {self.run_id}: stopped, the engine lock was taken over by another run"
            self.log.error(message)
        except SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            message = f"database {mask_url(self.url)} cannot be used: {reason[0] if reason else type(exc).__name__}"
            raise DatabaseError(message) from None
        except BaseException as exc:
            message = (f"run {self.run_id}: interrupted ({type(exc).__name__}); files left half-way are finished "
                       f"by the next run")
            self.log.error(message, exc_info=not isinstance(exc, (KeyboardInterrupt, SystemExit)))
            raise
        finally:
            self.close_channels()
            code = EXIT_OK if status == RUN_OK else EXIT_ERRORS
            if self.run_id:
                try:
                    with session_scope(self.url) as s:
                        s.execute(update(Run).where(Run.id == self.run_id).values(
                            ended=utcnow(), status=status, returncode=code if status != RUN_FAILED else 1,
                            message=message, **{k: self.counts[k] for k in
                                                ("received", "processed", "sent", "file_errors", "comm_errors")}))
                except SQLAlchemyError as exc:
                    self.log.error("could not record the end of run %s: %s", self.run_id,
                                   str(getattr(exc, "orig", exc)).splitlines()[0])
            self.lock.release()             # deletes the lock row only while it is still ours
        self.log.info(message)
        if status == RUN_ERRORS:
            self.maybe_report(message)
        return RunResult(self.run_id, code, message, counts=dict(self.counts))

    def summary(self, seconds: float) -> str:
        c = self.counts
        parts = [f"{c['received']} received", f"{c['processed']} processed", f"{c['sent']} sent"]
        for key, label in (("rereceived", "rereceived"), ("resent", "resent"), ("retried", "retried"),
                           ("recovered", "recovered"), ("cleaned", "cleaned up"),
                           ("removed_late", "already received (only removed at the source)")):
            if c[key]:
                parts.append(f"{c[key]} {label}")
        parts += [f"{c['file_errors']} file error(s)", f"{c['comm_errors']} communication error(s)"]
        return f"run {self.run_id}: " + ", ".join(parts) + f" in {seconds:.1f} s"

    def maybe_report(self, message: str) -> None:
        s = self.cfg.settings
        fe, ce = self.counts["file_errors"], self.counts["comm_errors"]
        if not ((s.sendreportiferror and fe) or (s.sendreportifprocesserror and ce) or (s.sendreportiferror and ce)):
            return
        subject = f"run {self.run_id} had errors: {fe} file error(s), {ce} communication error(s)"
        lines = [message, "", "Errors:"]
        for e in self.errors:
            lines.append(f"  [{e.kind}] route {e.route}, file {e.file}: {e.reason}")
        if fe + ce > len(self.errors):
            lines.append(f"  ... and {fe + ce - len(self.errors)} more (see botssys/logging/engine.log and "
                         f"'botsq files list --status error')")
        lines += ["", f"Commands: {', '.join(self.commands)}; routes: {', '.join(self.route_names) or '(default run)'}",
                  f"Host {hostname()}, config {self.cfg.configdir}"]
        send_report(self.cfg, subject, "\n".join(lines) + "\n")


def _unlink(p: Path | str) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def _chunks(seq: list, n: int) -> Iterable[list]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def run_engine(cfg: Config, commands: Sequence[str] = ("new",), routes: Sequence[str] = (), *,
               progress: Callable[[dict], None] | None = None) -> RunResult:
    """One engine run. Raises ConfigError / UsageError / DatabaseError (exit 1); never for file or
    communication errors (exit 2); a live run holding the lock gives exit 3."""
    cmds = normalise_commands(commands)
    select_routes(cfg, cmds, routes)          # unknown route names: UsageError before anything happens
    check_filename_templates(cfg)
    return EngineRun(cfg, cmds, routes, progress).execute()
