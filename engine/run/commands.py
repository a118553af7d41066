"""The five engine commands (Bots' run options), each over the routes the run selected.

``new`` receives every part of every route in order (part 2 can pick up what part 1
delivered); ``rereceive`` and ``resend`` do the files marked with ``botsq files``;
``automaticretrycommunication`` sends again the files whose delivery failed since its starting
point (set by its first use); ``cleanup`` removes what is older than maxdays.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy.sql import ColumnElement

from engine.cleanup import cleanup
from engine.config import Route
from engine.models import CommStatus, Incoming, InStatus, Outgoing
from engine.run.context import RunContext
from engine.run.deliver import BATCH, Deliverer
from engine.run.receive import input_error, receive_part
from engine.run.selection import select_routes
from engine.run.tracking import InRec

STATE_RETRY_START = "retry_start"     # engine_state: the first outgoing id automaticretrycommunication retries
STATE_LAST_CLEANUP = "last_cleanup"   # engine_state: the day of the last cleanup (whencleanup = daily)


class Commands:
    def __init__(self, ctx: RunContext, deliverer: Deliverer, route_names: Sequence[str]) -> None:
        self.ctx, self.deliverer, self.route_names = ctx, deliverer, list(route_names)

    def by_name(self, command: str) -> Callable[[], None]:
        return {"new": self.new, "rereceive": self.rereceive, "resend": self.resend,
                "automaticretrycommunication": self.automaticretrycommunication, "cleanup": self.cleanup}[command]

    def routes_for(self, command: str) -> list[Route]:
        return select_routes(self.ctx.cfg, [command], self.route_names, self.ctx.lane)

    def new(self) -> None:
        for route in self.routes_for("new"):
            for partno, part in enumerate(route.parts, 1):
                receive_part(self.ctx, self.deliverer, route, partno, part)

    def rereceive(self) -> None:
        ctx = self.ctx
        names = [r.name for r in self.routes_for("rereceive")]
        if not names:
            return
        incs = ctx.tracker.incoming(Incoming.rereceive.is_(True), Incoming.route.in_(names))
        if not incs:
            return
        ctx.log.info("rereceive: %d file(s) marked", len(incs))
        ctx.progress(force=True, files_done=0, files_total=len(incs), phase="rereceive")
        before = ctx.counts.processed
        self.deliverer.process(self._input_checked(incs))
        ctx.counts.rereceived += ctx.counts.processed - before

    def _input_checked(self, incs: list[InRec]) -> list[InRec]:
        """The marked files that pass the input checks a received file passes (:func:`input_error`),
        measured on the archived copy that would be processed; the others are file errors again,
        recorded (their marks cleared) without being processed. Whatever channel type received a
        file, its rereceive comes this way."""
        ctx = self.ctx
        passed, failed = [], []
        for inc in incs:
            try:
                size = (ctx.botssys / inc.archive_path).stat().st_size if inc.archive_path else None
            except OSError:
                size = None             # missing archived copy: processing reports it
            error = input_error(size, ctx.cfg.settings.maxfilesizeincoming) if size is not None else ""
            if not error:
                passed.append(inc)
                continue
            inc.times_processed += 1
            inc.status, inc.error = InStatus.ERROR, error
            ctx.file_error(inc.route, inc.filename, error)
            failed.append(inc)
        if failed:
            ctx.tracker.record_processed(failed, [], ctx.run_id)
        return passed

    def _send_selected(self, where: list[ColumnElement[bool]], phase: str, count: str) -> int:
        ctx = self.ctx
        outs = ctx.tracker.outgoing(*where)
        total = len(outs)
        for start in range(0, total, BATCH):
            ctx.check_lock()
            self.deliverer.resend(outs[start:start + BATCH], count)
            ctx.progress(files_done=min(start + BATCH, total), files_total=total, phase=phase)
        return total

    def resend(self) -> None:
        names = [r.name for r in self.routes_for("resend")]
        if names:
            n = self._send_selected([Outgoing.resend.is_(True), Outgoing.route.in_(names)], "resend", "resent")
            if n:
                self.ctx.log.info("resend: %d file(s) marked, %d sent", n, self.ctx.counts.resent)

    def automaticretrycommunication(self) -> None:
        ctx = self.ctx
        start = ctx.tracker.state(STATE_RETRY_START)
        if start is None:
            ctx.tracker.set_state(STATE_RETRY_START, str(ctx.tracker.last_outgoing_id()))
            ctx.log.info("automaticretrycommunication: first use, starting point set (files with communication "
                         "errors from now on are retried)")
            return
        names = [r.name for r in self.routes_for("automaticretrycommunication")]
        if names:
            n = self._send_selected([Outgoing.commstatus == CommStatus.FAILED, Outgoing.id > int(start),
                                     Outgoing.route.in_(names)], "automaticretrycommunication", "retried")
            if n:
                ctx.log.info("automaticretrycommunication: %d file(s) retried, %d sent", n, ctx.counts.retried)

    def cleanup(self) -> None:
        ctx = self.ctx
        ctx.progress(force=True, phase="cleanup")
        ctx.counts.cleaned += cleanup(ctx.cfg, ctx.log)
        ctx.tracker.set_state(STATE_LAST_CLEANUP, datetime.now().date().isoformat())

    def claim_daily_cleanup(self) -> bool:
        """``whencleanup = daily``: the first run of the day cleans up, in whichever lane it runs. The day is
        claimed in one conditional write, so of two lanes starting together only one cleans up."""
        return self.ctx.cfg.settings.whencleanup == "daily" and \
            self.ctx.tracker.claim_state(STATE_LAST_CLEANUP, datetime.now().date().isoformat())
