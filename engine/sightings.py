"""The tracking database's memory of remote files seen empty (table ``empty_sightings``).

Used by :class:`engine.readiness.Readiness`: a zero-byte remote file is taken only after it has
stayed empty for ``EMPTY_AFTER`` seconds, which spans runs, so the first sighting is recorded.
"""
from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import delete, insert, select

from engine.db import get_engine
from engine.models import EmptySighting

_ES = EmptySighting.__table__


class EmptySightings:
    """``empty_since(channel, names, now)``: since when each of ``names`` has been seen empty.

    One transaction per call: names not seen before are recorded as first seen ``now``; the
    channel's rows for names not in ``names`` (filled since, or gone) are dropped. Times are
    naive UTC. Raises SQLAlchemy errors (the run turns them into a database error, exit 1).
    """

    def __init__(self, url: str) -> None:
        self.url = url

    def empty_since(self, channel: str, names: Collection[str], now: datetime) -> dict[str, datetime]:
        wanted = set(names)
        with get_engine(self.url).begin() as conn:
            rows = list(conn.execute(select(_ES.c.id, _ES.c.filename, _ES.c.first_seen)
                                     .where(_ES.c.channel == channel)))
            known = {r.filename: r.first_seen for r in rows if r.filename in wanted}
            stale = [r.id for r in rows if r.filename not in wanted]
            if stale:
                conn.execute(delete(_ES).where(_ES.c.id.in_(stale)))
            new = sorted(wanted - set(known))
            if new:
                conn.execute(insert(_ES), [dict(channel=channel, filename=n, first_seen=now) for n in new])
        return {**known, **{n: now for n in new}}
