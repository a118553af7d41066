"""Removal at the source, and the pending-removal marks that keep a file from being processed twice.

A received file's removal is marked pending in the same commit as its record (table
``source_removals``), and the mark goes once the channel removed it. A mark left behind (the
removal failed, or the connection or the run died in between) tells a later run that a file of
that name on that channel was received already: when its size and sha256 are the same it is
only removed at the source, never processed (and sent) again; a different file under that name
is a new file. A mark whose file has gone from the source is dropped, so a later file of that
name is always new.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from engine.channels.base import Channel, IncomingItem, safe_name
from engine.errors import ConfigError
from engine.run.channel_pool import communication_error
from engine.run.context import RunContext


def pending_removals(ctx: RunContext, channel: str, listing: Iterable[IncomingItem]) -> dict[str, list[Any]]:
    """Files received on ``channel`` whose removal at the source is still pending, by (safe) name.

    Marks whose name is no longer listed are settled: the file is gone from the source (removed
    after all, or by someone else), so a later file of that name is a new one.
    """
    rows = ctx.tracker.pending_removals(channel)
    if not rows:
        return {}
    listed = {safe_name(item.name) for item in listing}
    ctx.tracker.drop_removals([r.id for r in rows if r.filename not in listed])
    pending: dict[str, list[Any]] = {}
    for r in rows:
        if r.filename in listed:
            pending.setdefault(r.filename, []).append(r)
    if pending:
        ctx.log.info("channel %s: %d file(s) received earlier are still at the source (their removal failed); "
                     "each is compared with its record and removed, not processed again, when it is the same",
                     channel, sum(len(v) for v in pending.values()))
    return pending


def remove_at_source(ctx: RunContext, ch: Channel, item: IncomingItem, route: str, filename: str) -> bool:
    """Remove a received (archived and recorded) file at the partner; a failure is a communication
    error and leaves its mark pending for the next run."""
    try:
        ch.delete(item)
        return True
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a channel raises is a communication error
        err = communication_error(exc, ch.name, f"removing {filename!r} failed", ctx.log)
        ctx.comm_error(route, filename, f"received, but not removed at the source (the next run removes it "
                                        f"without processing it again): {err}")
        return False
