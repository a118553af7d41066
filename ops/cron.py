"""Cron arithmetic in a time zone: :class:`ZonedCron`, the Celery beat schedule of botsq's jobs.

Times are wall-clock times in the configured zone, computed here (not by Celery's ``crontab``,
whose daylight-saving handling is wrong: celery/celery#10107). Rules:

* a job at a fixed time (minute and hour fields without ``*``) runs once per day it is due:
  when that time is skipped (clocks go forward) it runs at the moment of the change,
  when it happens twice (clocks go back) it runs at the first one only;
* a job whose minute or hour field has ``*`` (every 5 minutes, hourly) follows real time:
  it runs in both passes of a repeated hour and not in a skipped one.

After beat was down, each job whose slot passed runs once at start, not once per missed slot.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time as dtime, timedelta, tzinfo
from typing import Any

from celery.schedules import BaseSchedule, schedstate

from engine.config.schedule import WEEKDAYS, resolve_timezone

MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}
MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
          "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}
_SEARCH_DAYS = 366 * 9   # long enough for 29 February after a skipped leap year (2096 -> 2104)


# --------------------------------------------------------------------------- cron expressions

def _parse_field(spec: str, lo: int, hi: int, names: dict[str, int] | None, what: str) -> frozenset[int]:
    values: set[int] = set()

    def num(tok: str) -> int:
        t = tok.strip().lower()
        if names and t[:3] in names and t.isalpha():
            return names[t[:3]]
        if not t.isdigit():
            raise ValueError(f"{what}: {tok!r} is not a number")
        n = int(t)
        if what == "weekday" and n == 7:
            n = 0
        if not lo <= n <= hi:
            raise ValueError(f"{what}: {n} is outside {lo}-{hi}")
        return n

    for part in spec.split(","):
        if not part:
            raise ValueError(f"{what}: empty list item in {spec!r}")
        rng, _, step_s = part.partition("/")
        step = 1
        if step_s:
            if not step_s.isdigit() or int(step_s) == 0:
                raise ValueError(f"{what}: bad step {step_s!r}")
            step = int(step_s)
        if rng == "*":
            start, end = lo, hi
        elif "-" in rng:
            a, b = rng.split("-", 1)
            start, end = num(a), num(b)
            if what == "weekday" and b.strip() == "7":
                end = 7
            if end < start:
                raise ValueError(f"{what}: range {rng!r} runs backwards")
        else:
            start = num(rng)
            end = hi if step_s else start
        values.update(v % 7 if what == "weekday" else v for v in range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class CronExpr:
    """A five-field cron expression (minute hour day-of-month month weekday), Vixie semantics."""

    text: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]          # 0 = Sunday
    day_star: bool
    weekday_star: bool
    fixed_time: bool                  # neither minute nor hour field starts with '*'

    @classmethod
    def parse(cls, text: str) -> "CronExpr":
        raw = " ".join(text.split())
        expanded = MACROS.get(raw.lower(), raw)
        fields = expanded.split(" ")
        if len(fields) != 5:
            raise ValueError(f"expected 5 fields (minute hour day month weekday), got {len(fields)} in {text!r}")
        mi, ho, dom, mon, dow = fields
        return cls(
            text=raw,
            minutes=tuple(sorted(_parse_field(mi, 0, 59, None, "minute"))),
            hours=tuple(sorted(_parse_field(ho, 0, 23, None, "hour"))),
            days=_parse_field(dom, 1, 31, None, "day of month"),
            months=_parse_field(mon, 1, 12, MONTHS, "month"),
            weekdays=_parse_field(dow, 0, 7, WEEKDAYS, "weekday"),
            day_star=dom.startswith("*"), weekday_star=dow.startswith("*"),
            fixed_time=not (mi.startswith("*") or ho.startswith("*")),
        )

    def day_matches(self, d: date) -> bool:
        if d.month not in self.months:
            return False
        dom_ok = d.day in self.days
        dow_ok = (d.weekday() + 1) % 7 in self.weekdays
        if self.day_star and self.weekday_star:
            return True
        if self.day_star:
            return dow_ok
        if self.weekday_star:
            return dom_ok
        return dom_ok or dow_ok      # both restricted: either matches (as cron does)


def _aware(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


class ZonedCron(BaseSchedule):
    """A Celery beat schedule: a cron expression in wall-clock time of a zone, or an interval.

    ``next_after(t)`` is exact across daylight-saving changes (see the module doc); it is a
    pure function of ``t``, so beat's fake-clock tests drive it directly.
    """

    def __init__(self, cron: str | None = None, timezone: str = "UTC", seconds: float | None = None,
                 nowfun: Callable[[], datetime] | None = None, app: Any = None) -> None:
        super().__init__(nowfun=nowfun, app=app)
        if (cron is None) == (seconds is None):
            raise ValueError("give either a cron expression or an interval in seconds")
        self.cron_text = cron
        self.seconds = seconds
        self.timezone = timezone
        self.expr = CronExpr.parse(cron) if cron is not None else None
        if seconds is not None and seconds <= 0:
            raise ValueError("interval must be more than 0 seconds")
        self._zone: tzinfo | None = None

    # pickling / equality: beat compares schedules to see whether the config changed
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return self.__class__, (self.cron_text, self.timezone, self.seconds)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ZonedCron):
            return (self.cron_text, self.timezone, self.seconds) == (other.cron_text, other.timezone, other.seconds)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.cron_text, self.timezone, self.seconds))

    def __repr__(self) -> str:
        if self.expr is None:
            return f"<ZonedCron: every {self.seconds:g}s>"
        return f"<ZonedCron: {self.cron_text} {self.timezone}>"

    @property
    def zone(self) -> tzinfo:
        if self._zone is None:
            self._zone = resolve_timezone(self.timezone)[1]
        return self._zone

    def now(self) -> datetime:
        return _aware(self.nowfun()) if self.nowfun else datetime.now(UTC)

    # ------------------------------------------------------------------ the calculation
    def _instants(self, wall: datetime) -> list[datetime]:
        """The UTC instants at which the naive local time ``wall`` is due (0, 1 or 2)."""
        zone = self.zone
        a = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
        b = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
        if a == b:
            return [a]
        a_ok = a.astimezone(zone).replace(tzinfo=None) == wall
        b_ok = b.astimezone(zone).replace(tzinfo=None) == wall
        assert self.expr is not None
        if a_ok and b_ok:                                   # repeated (clocks went back)
            first, second = sorted((a, b))
            return [first] if self.expr.fixed_time else [first, second]
        if self.expr.fixed_time:                            # skipped: run when the clocks jump
            lo, hi = sorted((a, b))                         # lo is before the jump, hi after it
            while hi - lo > timedelta(seconds=1):
                mid = lo + (hi - lo) / 2
                if mid.astimezone(zone).replace(tzinfo=None) >= wall:
                    hi = mid
                else:
                    lo = mid
            return [hi.replace(microsecond=0)]
        return []

    def next_after(self, t: datetime) -> datetime:
        """The first run strictly after instant ``t`` (aware, UTC)."""
        t = _aware(t)
        if self.expr is None:
            assert self.seconds is not None
            return t + timedelta(seconds=self.seconds)
        expr = self.expr
        local = t.astimezone(self.zone).replace(tzinfo=None)
        start = local.date() - timedelta(days=1)
        for i in range(_SEARCH_DAYS):
            d = start + timedelta(days=i)
            if not expr.day_matches(d):
                continue
            best: datetime | None = None
            best_wall: datetime | None = None
            for h in expr.hours:
                if best_wall is not None and datetime.combine(d, dtime(h)) > best_wall + timedelta(hours=4):
                    break
                # skip hours that end well before t (a whole day of minute jobs stays cheap)
                if datetime.combine(d, dtime(h)) < local - timedelta(hours=4):
                    continue
                for m in expr.minutes:
                    wall = datetime.combine(d, dtime(h, m))
                    for inst in self._instants(wall):
                        if inst > t and (best is None or inst < best):
                            best, best_wall = inst, wall
            if best is not None:
                return best
        raise ValueError(f"cron expression {expr.text!r} never matches a date")

    def next_runs(self, after: datetime, count: int) -> list[datetime]:
        out, t = [], _aware(after)
        for _ in range(count):
            t = self.next_after(t)
            out.append(t)
        return out

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        return self.next_after(last_run_at) - self.now()

    def first_due(self, last_run_at: datetime, now: datetime) -> datetime:
        """The instant beat sends the job next (aware, UTC): the first slot after ``last_run_at``, or
        ``now`` when that slot has passed (one make-up run, never more). A last run more than 60 s
        after ``now`` (the clock was set back) counts from ``now``. An interval job's next run is
        thus its last run + the interval, not now + the interval."""
        now, last = _aware(now), _aware(last_run_at)
        if last > now + timedelta(seconds=60):      # the clock was set back: start counting afresh
            last = now
        return max(self.next_after(last), now)

    def upcoming(self, last_run_at: datetime, now: datetime, count: int) -> list[datetime]:
        """The next ``count`` instants beat sends the job, given its last run: :meth:`first_due`,
        then each slot after the one before (a make-up run at ``now`` counts from ``now``, as
        :meth:`is_due` does). ``botsq schedule`` shows these."""
        first = self.first_due(last_run_at, now)
        return [first, *self.next_runs(first, count - 1)] if count > 0 else []

    def is_due(self, last_run_at: datetime) -> schedstate:
        """Due when the first slot after ``last_run_at`` has come (:meth:`first_due`); the second
        value is the seconds until beat should look again."""
        now = self.now()
        first = self.first_due(last_run_at, now)
        if first <= now:
            return schedstate(True, max((self.next_after(now) - now).total_seconds(), 0.0))
        return schedstate(False, (first - now).total_seconds())
