"""Receiving one route part: list the in-channel (its complete files only: :mod:`engine.readiness`),
then batch by batch fetch -> archive -> record -> remove at the source -> deliver.

No file is lost: each file is fetched into the archive under its archive name and checksummed
(no temporary name: an archived file counts only once its record is committed); the batch is
flushed to disk once (:func:`engine.run.archive.syncfs`) and recorded in one commit together
with its pending-removal marks; only then are the sources removed (``remove = true``). A file whose earlier removal failed is recognised by its mark and only
removed (:mod:`engine.run.removal`). A file that cannot be fetched is recorded as a
communication error and stays at the partner; after MAX_FETCH_FAILURES failures in a row the
rest of the channel waits for the next run (a refusal of one file, ``Refused``, is that file's and
does not count towards them; a file gone since the listing, ``FileGone``, is nobody's error). ``maxsecondsperchannel`` bounds the time spent.
"""
from __future__ import annotations

import itertools
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.channels.base import Channel, FileGone, IncomingItem, Refused, safe_name
from engine.config import Route, RoutePart
from engine.errors import ConfigError
from engine.models import InStatus
from engine.run.archive import digest, syncfs, unlink_quietly
from engine.run.channel_pool import communication_error
from engine.run.context import RunContext
from engine.run.deliver import BATCH, Deliverer
from engine.run.removal import pending_removals, remove_at_source
from engine.run.tracking import InRec

MAX_FETCH_FAILURES = 5      # consecutive fetch failures before giving up on an in-channel for this run


def input_error(size: int, maxsize: int) -> str:
    """Bots' input checks of an incoming file of ``size`` bytes: "" when it passes, else the file
    error (one line). ``maxsize`` is ``[settings] maxfilesizeincoming`` in bytes. The one place of
    the rule: a received file is checked here, and a rereceived one again
    (:meth:`engine.run.commands.Commands.rereceive`), so a file never passes on a second try a
    check it failed on the first."""
    if size > maxsize:
        return f"file too large: {size} bytes, more than maxfilesizeincoming ({maxsize}) in bots.ini"
    if size == 0:
        return "empty file (0 bytes)"
    return ""


@dataclass
class _Batch:
    """One batch of listed files, fetched."""
    got: list[tuple[IncomingItem, InRec]] = field(default_factory=list)   # archived (received or file error)
    recs: list[InRec] = field(default_factory=list)                       # every record to insert
    again: list[tuple[IncomingItem, Any]] = field(default_factory=list)   # received before: only to be removed
    stale: list[int] = field(default_factory=list)                        # marks whose name now holds another file
    stop: bool = False                                                    # the channel is done for this run

    @property
    def handled(self) -> int:
        return len(self.recs) + len(self.again)


def receive_part(ctx: RunContext, deliverer: Deliverer, route: Route, partno: int, part: RoutePart) -> None:
    """Receive (and deliver) what waits at the part's in-channel; see the module doc."""
    _PartReceiver(ctx, deliverer, route, partno, part).run()


class _PartReceiver:
    def __init__(self, ctx: RunContext, deliverer: Deliverer, route: Route, partno: int, part: RoutePart) -> None:
        self.ctx, self.deliverer, self.route, self.partno = ctx, deliverer, route.name, partno
        self.inname = part.fromchannel
        spec = ctx.cfg.channels[self.inname]
        self.remove = bool(spec.get("remove", False))
        self.limit = spec.get("maxsecondsperchannel") or ctx.cfg.settings.maxsecondsperchannel
        self.maxsize = ctx.cfg.settings.maxfilesizeincoming
        self.pending: dict[str, list[Any]] = {}
        self.failures = 0
        self.done = 0
        self.total = 0
        self.deadline: float | None = None

    def _list(self) -> tuple[Channel, Collection[IncomingItem]] | None:
        try:
            ch = self.ctx.channels.get(self.inname)
            listing = self.ctx.readiness.listing(ch)      # the files that are complete (settled listing)
            # a sized listing is consumed as it goes (a 100,000-file folder never sits in memory
            # as objects); anything else is read whole here, where its errors belong to the listing
            if not hasattr(listing, "__len__"):
                listing = list(listing)
            return ch, listing  # type: ignore[return-value]
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever a channel raises is a communication error
            err = communication_error(exc, self.inname, "listing failed", self.ctx.log)
            self.ctx.comm_error(self.route, f"in-channel {self.inname}", str(err))
            return None

    def run(self) -> None:
        ctx = self.ctx
        listed = self._list()
        if listed is None:
            return
        ch, listing = listed
        # files an earlier run received but could not remove at the source (usually none: one query);
        # looked at even when nothing is listed, so marks of files gone meanwhile are settled
        if self.remove:
            # every file listed, held back or not: a file still at the source keeps its mark
            self.pending = pending_removals(ctx, self.inname, getattr(listing, "listed", listing))
        self.total = len(listing)
        if not self.total:
            return
        items = iter(listing)
        self.deadline = time.monotonic() + self.limit if self.limit else None
        ctx.progress(force=True, route=self.route, part=self.partno, files_done=0, files_total=self.total,
                     phase="receive")
        archive_day = ctx.folder(ctx.cfg.directories.archive / ctx.day)
        while True:
            ctx.check_lock()
            if self._past_deadline():
                ctx.log.info("route %s: maxsecondsperchannel (%ss) reached for channel %s; %d file(s) left for "
                             "the next run", self.route, self.limit, self.inname, self.total - self.done)
                return
            items_batch = list(itertools.islice(items, BATCH))
            if not items_batch:
                return
            batch = self._fetch(ch, items_batch, archive_day)
            if batch.got:
                syncfs(archive_day)            # archived copies are on disk before any source goes
            self._record_and_remove(ch, batch)
            self.deliverer.process([rec for _i, rec in batch.got if rec.status == InStatus.RECEIVED],
                                   dict(route=self.route, part=self.partno, files_done=self.done,
                                        files_total=self.total))
            self.done += batch.handled
            ctx.progress(route=self.route, part=self.partno, files_done=self.done, files_total=self.total,
                         phase="receive")
            if batch.stop:
                return

    def _past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    # ------------------------------------------------------------------ fetch and archive
    def _fetch(self, ch: Channel, items: list[IncomingItem], archive_day: Path) -> _Batch:
        ctx = self.ctx
        batch = _Batch()
        adir = str(archive_day)
        rel_prefix = f"data/{ctx.day}/"
        for item in items:
            if self._past_deadline():
                batch.stop = True
                break
            name = safe_name(item.name)
            base = ctx.next_archive_name()
            # fetched straight under its archive name, no temporary name and rename: an archived file
            # counts only once its record is committed (after the batch's flush), so a file cut short
            # by a crash is in the same state as the batch's complete ones fetched before it - a file
            # no record names, its source still at the partner and fetched again by the next run
            dest = f"{adir}/{base}"
            try:
                fetched = ch.fetch(item, Path(dest))
            except ConfigError:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever a channel raises is a communication error
                batch.stop = self._fetch_failed(exc, item, name, dest, batch)
                if batch.stop:
                    break
                continue
            self.failures = 0
            if ctx.wants_progress:
                ctx.progress(route=self.route, part=self.partno, files_done=self.done + batch.handled,
                             files_total=self.total, phase="receive")
            try:
                # a channel may hand back (size, sha256) it computed while copying; else read it back
                size, checksum = fetched if isinstance(fetched, tuple) and len(fetched) == 2 else digest(dest)
                if self._received_before(item, name, size, checksum, dest, batch):
                    continue
            except OSError as exc:
                unlink_quietly(dest)
                raise ConfigError(f"{ctx.cfg.directories.archive}: cannot write the archive: "
                                  f"{exc.strerror or exc}") from None
            error = input_error(size, self.maxsize)
            status = InStatus.ERROR if error else InStatus.RECEIVED
            rec = InRec(run_id=ctx.run_id, route=self.route, part=self.partno, channel=self.inname, filename=name,
                        size=size, checksum=checksum, archive_path=rel_prefix + base, status=status, error=error)
            batch.recs.append(rec)
            batch.got.append((item, rec))
        return batch

    def _fetch_failed(self, exc: Exception, item: IncomingItem, name: str, tmp: str, batch: _Batch) -> bool:
        """Record a failed fetch (the file stays at the partner); True when the channel is done for this run."""
        ctx = self.ctx
        err = communication_error(exc, self.inname, f"fetching {name!r} failed", ctx.log)
        unlink_quietly(tmp)
        if isinstance(err, FileGone):        # taken by someone else since the listing: not ours
            ctx.log.info("route %s: %s", self.route, err)
            return False
        ctx.comm_error(self.route, name, str(err))
        batch.recs.append(InRec(run_id=ctx.run_id, route=self.route, part=self.partno, channel=self.inname,
                                filename=name, size=item.size, status=InStatus.COMMERROR, error=str(err)))
        self.failures = 0 if isinstance(err, Refused) else self.failures + 1   # a refusal is that file's
        if self.failures < MAX_FETCH_FAILURES:
            return False
        ctx.log.error("route %s: %d fetches in a row failed on channel %s; the rest waits for the next run",
                      self.route, self.failures, self.inname)
        return True

    def _received_before(self, item: IncomingItem, name: str, size: int, checksum: str, tmp: str,
                         batch: _Batch) -> bool:
        """The file is one whose removal failed earlier (same size and sha256): only to be removed now.
        A different file under a marked name makes those marks stale."""
        if not self.pending or name not in self.pending:
            return False
        prior = self.pending.pop(name)
        same = next((p for p in prior if p.size == size and p.checksum == checksum), None)
        if same is None:
            batch.stale.extend(p.id for p in prior)
            return False
        unlink_quietly(tmp)
        batch.again.append((item, same))
        return True

    # ------------------------------------------------------------------ record, then remove at the source
    def _record_and_remove(self, ch: Channel, batch: _Batch) -> None:
        ctx = self.ctx
        # recorded (committed), with their removal at the source marked pending
        ctx.counts.received += len(batch.got)
        ctx.tracker.insert_incoming(batch.recs, [rec for _i, rec in batch.got] if self.remove else (), batch.stale,
                                    ctx.run_id, ctx.counts.as_dict())
        for _item, rec in batch.got:
            if rec.status == InStatus.ERROR:
                ctx.file_error(self.route, rec.filename, rec.error)
        if not self.remove:
            return
        removed = [rec.id for item, rec in batch.got if remove_at_source(ctx, ch, item, self.route, rec.filename)]
        removed_again: list[int] = []
        for item, prior in batch.again:
            name = safe_name(item.name)
            if remove_at_source(ctx, ch, item, self.route, name):
                removed_again.append(prior.id)
                ctx.counts.removed_late += 1
                ctx.log.info("route %s, file %s: already received (incoming %s, same size and sha256) but left at "
                             "the source when its removal failed; removed at the source now, not processed again",
                             self.route, name, prior.incoming_id)
        ctx.tracker.clear_removals([i for i in removed if i is not None], removed_again)
