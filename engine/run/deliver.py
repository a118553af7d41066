"""Delivering received files: translate each one, name and store its outputs, send them.

* translate: ``passthrough`` (the archived file itself is the output), ``none`` (receive and
  archive only), or a mapping (:mod:`engine.translate`); an exception in a mapping is a file error
  of that file only;
* outputs are stored under ``botssys/outfiles/YYYYMMDD/`` (passthrough reuses the archived file)
  so a failed delivery can be sent again, and named by the out-channel's ``filename`` template
  (placeholders ``route``, ``run``, ``seq``, ``infile``, ``datetime``; a mapping's
  ``meta["filename"]`` wins);
* send: each delivery result is recorded, under the name the partner got (an output whose name is
  taken there - by an earlier output of this run or anything else - gets the next free name,
  never overwriting it: :func:`engine.channels.base.unique_names`); a failure keeps the file for
  ``--automaticretrycommunication`` and ``--resend``.

A batch of incoming files is recorded with their outputs in one commit. Each delivery the partner
accepted is committed to the deliveries journal at once (:meth:`engine.run.tracking.Tracker.journal`),
so a run that dies before its batch's commit has not lost what it sent: crash recovery records
those outputs as sent and does not send them again (``delivered`` of :meth:`Deliverer.process`).
"""
from __future__ import annotations

import hashlib
import string
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from engine.channels.base import CommunicationError, safe_name
from engine.config import Config, RoutePart
from engine.errors import ConfigError
from engine.models import CommStatus, InStatus, utcnow
from engine.run.archive import unlink_quietly
from engine.run.channel_pool import communication_error
from engine.run.context import RunContext
from engine.run.tracking import InRec, OutRec
from engine.translate import Output, TranslateError, Translator

DEFAULT_FILENAME = "{route}_{run}_{seq}_{infile}"
PLACEHOLDERS = ("route", "run", "seq", "infile", "datetime")
BATCH = 250                 # files per commit


def check_filename_templates(cfg: Config) -> None:
    """Every out-channel's filename template uses known placeholders only (ConfigError otherwise)."""
    used = {p.tochannel for r in cfg.routes.values() for p in r.parts if p.tochannel}
    for name in sorted(used):
        tpl = cfg.channels[name].get("filename") or DEFAULT_FILENAME
        where = f"{cfg.configdir / 'routes.toml'}: channels.{name}.filename"
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(tpl) if f is not None]
        except ValueError as exc:
            raise ConfigError(f"{where}: bad template {tpl!r}: {exc}") from None
        for f in fields:
            if f.split(".")[0].split("[")[0] not in PLACEHOLDERS:
                raise ConfigError(f"{where}: unknown placeholder {{{f}}} (expected {', '.join(PLACEHOLDERS)})")


def render_filename(tpl: str, **values: Any) -> str:
    """A template filled in and made safe as one path component."""
    return safe_name(tpl.format(**values), fallback=f"{values.get('run')}_{values.get('seq')}")


class Deliverer:
    """Translates and sends the files of one run (see the module doc)."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.translator = Translator(ctx.cfg)

    def part_of(self, route_name: str, partno: int) -> RoutePart | None:
        route = self.ctx.cfg.routes.get(route_name)
        if route is None or not 1 <= partno <= len(route.parts):
            return None
        return route.parts[partno - 1]

    # ------------------------------------------------------------------ a batch
    def process(self, incs: list[InRec], where: dict[str, Any] | None = None,
                delivered: dict[int, dict[int, OutRec]] | None = None) -> None:
        """Translate recorded incoming files, send their outputs, record both (one commit per batch).

        ``where`` (route, part, files_done, files_total of the receiving part) lets a long batch show
        progress per file (throttled), not only once per batch. ``delivered`` (crash recovery: incoming
        id -> output_no -> record) are outputs a run that died had delivered: they take the place of
        the outputs made again and are recorded as sent, not sent again."""
        ctx = self.ctx
        for start in range(0, len(incs), BATCH):
            ctx.check_lock()
            batch = incs[start:start + BATCH]
            outs: list[OutRec] = []
            for n, inc in enumerate(batch):
                if where is not None and ctx.wants_progress:
                    ctx.progress(**{**where, "files_done": where["files_done"] + start + n}, phase="process")
                made = self.translate(inc)
                for no, out in enumerate(made):
                    out.output_no = no
                if delivered and inc.id in delivered:
                    made = self._already_delivered(made, delivered.pop(inc.id))
                outs.extend(made)
            for out in outs:
                if out.journal_id is None:      # else delivered by a run that died: recorded, not sent again
                    self.send(out)
            ctx.tracker.record_processed(batch, outs, ctx.run_id, ctx.counts.as_dict())

    def _already_delivered(self, made: list[OutRec], delivered: dict[int, OutRec]) -> list[OutRec]:
        """The outputs of a file made again, those a dead run delivered replaced by its records (what it
        sent under which name); a delivered output the file no longer makes is recorded all the same."""
        outs = list(made)
        for no, old in sorted(delivered.items()):
            if no < len(outs):
                if outs[no].store_path != old.store_path and outs[no].store_path.startswith("outfiles/"):
                    unlink_quietly(self.ctx.botssys / outs[no].store_path)   # made again, not needed
                outs[no] = old
            else:
                outs.append(old)
        return outs

    def resend(self, outs: Sequence[OutRec], count: str | None = None) -> None:
        """Send recorded outgoing files again and record each result (one commit)."""
        if not outs:
            return
        for out in outs:
            self.send(out, count)
        self.ctx.tracker.record_sent(outs, self.ctx.run_id, self.ctx.counts.as_dict())

    # ------------------------------------------------------------------ one file
    def translate(self, inc: InRec) -> list[OutRec]:
        """The outputs of one incoming file, stored and named; sets its status (done or a file error)."""
        ctx = self.ctx
        part = self.part_of(inc.route, inc.part)
        inc.times_processed += 1
        if part is None:
            return self._failed(inc, f"route {inc.route!r} part {inc.part} is no longer configured")
        src = ctx.botssys / inc.archive_path
        if not inc.archive_path or not src.is_file():
            return self._failed(inc, f"archived copy {inc.archive_path or '(none)'} is missing")
        written: list[Path] = []
        try:
            if part.translate == "passthrough":
                results: list[Output] = [(None, {})]
            else:
                meta = dict(route=inc.route, part=inc.part, filename=inc.filename, channel=inc.channel,
                            run=ctx.run_id, incoming_id=inc.id, size=inc.size, checksum=inc.checksum)
                results = self.translator.translate(part.translate, src, meta)
            outs = [self._output(inc, part, content, ometa, written)
                    for content, ometa in (results if part.tochannel else [])]
        except TranslateError as exc:
            for p in written:
                unlink_quietly(p)
            return self._failed(inc, str(exc))
        inc.status, inc.error = InStatus.DONE, ""
        ctx.counts.processed += 1
        if not outs and part.translate != "none" and part.tochannel:
            ctx.log.info("route %s, file %s: no output", inc.route, inc.filename)
        return outs

    def _failed(self, inc: InRec, reason: str) -> list[OutRec]:
        inc.status, inc.error = InStatus.ERROR, reason
        self.ctx.file_error(inc.route, inc.filename, reason)
        return []

    def _output(self, inc: InRec, part: RoutePart, content: bytes | None, ometa: dict[str, Any],
                written: list[Path]) -> OutRec:
        """One output: stored (None content: the archived file itself) and named."""
        ctx = self.ctx
        seq = ctx.next_output_seq()
        if content is None:
            store, size, checksum = inc.archive_path, inc.size or 0, inc.checksum
        else:
            rel = f"outfiles/{ctx.day}/{ctx.run_id}-{seq}"
            path = ctx.folder(ctx.botssys / "outfiles" / ctx.day) / f"{ctx.run_id}-{seq}"
            try:
                path.write_bytes(content)
            except OSError as exc:
                raise ConfigError(f"{ctx.botssys}: cannot store an outgoing file: {exc.strerror or exc}") from None
            written.append(path)
            store, size, checksum = rel, len(content), hashlib.sha256(content).hexdigest()
        assert part.tochannel is not None
        tpl = ctx.cfg.channels[part.tochannel].get("filename") or DEFAULT_FILENAME
        if ometa.get("filename"):
            filename = safe_name(str(ometa["filename"]))
        elif tpl == "{infile}":
            filename = inc.filename
        else:
            filename = render_filename(tpl, route=inc.route, run=ctx.run_id, seq=seq, infile=inc.filename,
                                       datetime=datetime.now().strftime("%Y%m%d%H%M%S"))
        return OutRec(run_id=ctx.run_id, incoming_id=inc.id, route=inc.route, part=inc.part, channel=part.tochannel,
                      filename=filename, size=size, checksum=checksum, store_path=store)

    def send(self, out: OutRec, count: str | None = None) -> None:
        """Deliver one outgoing file and set its delivery result; ``count`` names an extra
        :class:`~engine.run.context.Counts` field to raise when it was sent (resent, retried)."""
        ctx = self.ctx
        out.attempts += 1
        out.resend = False
        src = ctx.botssys / out.store_path
        try:
            if out.channel not in ctx.cfg.channels:
                raise CommunicationError(f"channel {out.channel!r} is no longer configured")
            ch = ctx.channels.get(out.channel)
            try:
                final = ch.send(src, out.filename)
            except ConfigError:
                raise
            except Exception as exc:  # noqa: BLE001 - the file is kept for retry whatever went wrong
                if not src.is_file():
                    raise CommunicationError(f"stored content {out.store_path} is missing") from None
                raise communication_error(exc, out.channel, f"sending {out.filename!r} failed", ctx.log) from None
        except CommunicationError as exc:
            out.commstatus, out.error = CommStatus.FAILED, str(exc)
            ctx.comm_error(out.route, out.filename, str(exc))
            return
        if final != out.filename:     # a file of that name was there: never overwritten (channels.base.unique_names)
            ctx.log.warning("route %s: channel %s already holds a file named %r; %s sent as %r", out.route,
                            out.channel, out.filename, out.filename, final)
            out.filename = final
        out.commstatus, out.error, out.sent_at = CommStatus.SENT, "", utcnow()
        ctx.tracker.journal(out, ctx.run_id)    # the partner took it: journaled before anything else happens
        ctx.counts.sent += 1
        if count:
            setattr(ctx.counts, count, getattr(ctx.counts, count) + 1)
