"""Crash recovery: before anything else, a run finishes what earlier runs left half-way.

Recovery is per lane: a run holds its lane's lock, so runs of its lane still recorded as running are
recorded as crashed - never a run of another lane, which may well be running. Incoming files of the
lane's routes that were ``received`` (archived and recorded, not processed) are processed again
from the archive; outgoing files still ``pending`` are sent; outputs of an unprocessed file are made
again. What a dead run delivered is known from the deliveries journal (committed right after each
partner accepted a file) and is folded into the records first: those outputs are recorded as sent by
that run and are not sent again. So the only file that can reach a partner twice is the one in
flight when the run died (accepted by the partner, not yet journaled); nothing is lost. When a
crashed run was found, the managers get a report.
"""
from __future__ import annotations

from engine.lease import Holder
from engine.models import iso_utc
from engine.report import send_report
from engine.run.archive import unlink_quietly
from engine.run.context import RunContext
from engine.run.deliver import Deliverer


def recover(ctx: RunContext, deliverer: Deliverer, crashed: Holder | None) -> None:
    """Finish what earlier runs left; ``crashed`` is the dead holder of the engine lock, if one was taken over."""
    why = (f"holder {crashed.describe()} gone (process ended or heartbeat silent since "
           f"{iso_utc(crashed.heartbeat)})") if crashed else "did not finish"
    routes = ctx.cfg.routes.values()
    left = ctx.tracker.leftovers(ctx.run_id, f"crashed: {why}; recovered by run {ctx.run_id}", ctx.lane,
                                 lane_routes=[r.name for r in routes if r.lane == ctx.lane],
                                 other_lanes_routes=[r.name for r in routes if r.lane != ctx.lane])
    for o in left.partial:
        if o.store_path.startswith("outfiles/"):
            unlink_quietly(ctx.botssys / o.store_path)
    if crashed is None and not left.crashed_runs and not left.incoming and not left.outgoing and not left.folded:
        return
    lines = []
    if crashed is not None:
        lines.append(f"The engine run holding the lock ({crashed.describe()}, run {crashed.run_id}) is gone: "
                     f"its process no longer exists or its heartbeat was silent past the grace period.")
    for r in left.crashed_runs:
        lines.append(f"Run {r.id} (started {r.started:%Y-%m-%d %H:%M:%S} UTC, {r.commands}) is recorded as crashed.")
    if left.folded:
        lines.append(f"{left.folded} delivery(ies) the partners had accepted were not yet recorded: recorded now as "
                     f"sent by the run that sent them, not sent again.")
    lines.append(f"{len(left.incoming)} received file(s) not yet processed are processed again from the archive; "
                 f"{len(left.outgoing)} outgoing file(s) not yet sent are sent now.")
    ctx.log.warning("crash recovery: %s", " ".join(lines))
    ctx.progress(force=True, files_done=0, files_total=len(left.incoming) + len(left.outgoing), phase="recover")
    deliverer.process(left.incoming, delivered=left.delivered)
    deliverer.resend(left.outgoing)
    ctx.counts.recovered += len(left.incoming) + len(left.outgoing)
    if crashed is None and not left.crashed_runs:
        return
    files = [f"  incoming {i.id}: route {i.route}, file {i.filename} -> {i.status}"
             f"{' (' + i.error + ')' if i.error else ''}" for i in left.incoming]
    files += [f"  outgoing {o.id}: route {o.route}, file {o.filename} -> {o.commstatus}"
              f"{' (' + o.error + ')' if o.error else ''}" for o in left.outgoing]
    body = "\n".join(lines) + "\n\nRecovered files:\n" + ("\n".join(files) if files else "  (none)") + "\n"
    which = f"run {crashed.run_id} crashed" if crashed is not None and crashed.run_id else "a run crashed"
    send_report(ctx.cfg, f"crash recovery by run {ctx.run_id}: {which}, "
                         f"{len(left.incoming) + len(left.outgoing)} file(s) recovered", body)
