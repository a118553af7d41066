"""``[schedule]`` and ``[schedule.NAME]`` of bots.ini: the beat jobs, typed and checked.

One section per job, so a cron or Windows Task Scheduler line moves over one to one::

    [schedule]
    timezone = Europe/Amsterdam          ; default: the machine's

    [schedule.every5min]
    cadence = 5min                       ; 5min | hourly | daily | weekly | monthly | cron | interval
    job = bots-engine --new              ; what bots-job2queue takes as COMMAND
    priority = 1                         ; 1 (highest) .. 9, default 5
    ; time = 01:00  (daily, weekly, monthly)   weekday = monday (weekly)   day = 1 (monthly)
    ; minute = 0 (hourly)   cron = 0 1 * * 1-5 (cron)   seconds = 30 (interval)   enabled = False

Each cadence becomes a five-field cron text (or an interval) here; computing run times from it
is :mod:`ops.cron`'s, and checking the job line against routes and commands is the queue's
(:func:`beat_schedule.load_jobs`). Read on demand (:func:`load_schedule`), so a bad schedule
stops beat and ``botsq schedule``, never the engine.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from engine.config import Config
from engine.config.ini import IniSection
from engine.errors import ConfigError

CADENCES = ("5min", "hourly", "daily", "weekly", "monthly", "cron", "interval")
SECTION_PREFIX = "schedule."
WEEKDAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
ENTRY_KEYS = frozenset({"cadence", "job", "priority", "time", "weekday", "day", "minute", "cron", "seconds",
                        "enabled", "description"})
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_TIME = re.compile(r"(\d{1,2})(?::(\d{2}))?")


# --------------------------------------------------------------------------- time zones

def machine_timezone() -> str:
    """The machine's IANA zone name (TZ, /etc/timezone, /etc/localtime), else 'UTC'."""
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz:
        try:
            ZoneInfo(tz)
            return tz
        except (ZoneInfoNotFoundError, ValueError):
            pass
    try:
        name = Path("/etc/timezone").read_text(encoding="utf-8").strip()
        if name:
            ZoneInfo(name)
            return name
    except (OSError, ZoneInfoNotFoundError, ValueError):
        pass
    try:
        target = os.path.realpath("/etc/localtime")
        m = re.search(r"zoneinfo/(.+)$", target)
        if m:
            ZoneInfo(m.group(1))
            return m.group(1)
        if os.path.exists("/etc/localtime"):
            return "localtime"
    except (OSError, ZoneInfoNotFoundError, ValueError):
        pass
    return "UTC"


def resolve_timezone(name: str | None) -> tuple[str, tzinfo]:
    """(name, tzinfo) for a zone name; empty = the machine's zone. ZoneInfoNotFoundError,
    ValueError or OSError for a zone that does not exist."""
    if not name:
        name = machine_timezone()
    if name == "localtime":
        with open("/etc/localtime", "rb") as fh:
            return name, ZoneInfo.from_file(fh, key="localtime")
    return name, ZoneInfo(name)


# --------------------------------------------------------------------------- entries

@dataclass(frozen=True)
class ScheduleEntry:
    """One enabled ``[schedule.NAME]`` job: exactly one of ``cron`` and ``seconds`` is set."""
    name: str
    cadence: str                          # one of CADENCES
    argv: tuple[str, ...]                 # the job line, as bots-job2queue takes its COMMAND
    priority: int                         # Bots priority 1 (highest) .. 9
    cron: str | None                      # five fields: minute hour day month weekday
    seconds: float | None                 # cadence = interval
    section: IniSection

    def where(self, key: str) -> str:
        """How an error names one of this job's keys: ``<bots.ini>: [schedule.NAME] <key>``."""
        return self.section.where(key)


@dataclass(frozen=True)
class Schedule:
    timezone: str                         # a zone name resolve_timezone accepts
    entries: tuple[ScheduleEntry, ...]


def _time_of_day(sec: IniSection, key: str = "time") -> tuple[int, int]:
    raw = sec.get(key, str, "00:00")
    m = _TIME.fullmatch(raw)
    if not m or int(m.group(1)) > 23 or int(m.group(2) or 0) > 59:
        raise ConfigError(f"{sec.where(key)}: expected a time of day HH:MM, got {raw!r}")
    return int(m.group(1)), int(m.group(2) or 0)


def _cron_text(sec: IniSection, cadence: str) -> str:
    """The cron fields a cadence stands for (cadence = cron: the text as written)."""
    if cadence == "5min":
        return "*/5 * * * *"
    if cadence == "hourly":
        minute = sec.get("minute", int, 0)
        if not 0 <= minute <= 59:
            raise ConfigError(f"{sec.where('minute')}: expected 0-59, got {minute}")
        return f"{minute} * * * *"
    if cadence == "cron":
        text = " ".join(sec.get("cron", str, "").split())
        if not text:
            raise ConfigError(f"{sec.where('cron')}: required for cadence = cron (e.g. 0 1 * * 1-5)")
        return text
    h, m = _time_of_day(sec)
    if cadence == "daily":
        return f"{m} {h} * * *"
    if cadence == "weekly":
        raw = sec.get("weekday", str, "monday")
        names = [w.strip().lower() for w in raw.split(",") if w.strip()]
        bad = [w for w in names if w[:3] not in WEEKDAYS or not w.isalpha()]
        if not names or bad:
            raise ConfigError(f"{sec.where('weekday')}: expected a weekday name (monday ... sunday), got {raw!r}")
        return f"{m} {h} * * {','.join(str(WEEKDAYS[w[:3]]) for w in names)}"
    if cadence == "monthly":
        day = sec.get("day", int, 1)
        if not 1 <= day <= 31:
            raise ConfigError(f"{sec.where('day')}: expected a day of the month 1-31, got {day}")
        return f"{m} {h} {day} * *"
    raise AssertionError(cadence)


def _entry(cfg: Config, secname: str, sec: IniSection) -> ScheduleEntry | None:
    name = secname[len(SECTION_PREFIX):]
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{cfg.ini_path}: [{secname}]: job names use letters, digits, _ . -")
    for key in sec.keys():
        if key not in ENTRY_KEYS:
            raise ConfigError(f"{sec.where(key)}: unknown key (expected one of {', '.join(sorted(ENTRY_KEYS))})")
    if not sec.get("enabled", bool, True):
        return None
    cadence = sec.choice("cadence", CADENCES, "") if "cadence" in sec.keys() else ""
    if not cadence:
        raise ConfigError(f"{sec.where('cadence')}: required ({' | '.join(CADENCES)})")
    argv = sec.argv("job")
    if not argv:
        raise ConfigError(f"{sec.where('job')}: required (e.g. bots-engine --new)")
    priority = sec.priority()
    if cadence == "interval":
        seconds = sec.get("seconds", float, 0.0)
        if seconds <= 0:
            raise ConfigError(f"{sec.where('seconds')}: required for cadence = interval, more than 0")
        return ScheduleEntry(name, cadence, tuple(argv), priority, None, seconds, sec)
    return ScheduleEntry(name, cadence, tuple(argv), priority, _cron_text(sec, cadence), None, sec)


def load_schedule(cfg: Config) -> Schedule:
    """The time zone and every enabled ``[schedule.NAME]`` job of ``cfg``, in bots.ini order;
    ConfigError (one line, naming file, section and key) on any problem."""
    top = cfg.section("schedule")
    name = top.get("timezone", str, "")
    try:
        tzname = resolve_timezone(name)[0]
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ConfigError(f"{top.where('timezone')}: unknown time zone {name!r} (e.g. Europe/Amsterdam)") from None
    for key in top.keys():
        if key != "timezone":
            raise ConfigError(f"{top.where(key)}: unknown key (jobs go in [schedule.NAME] sections)")
    entries = [_entry(cfg, secname, sec) for secname, sec in cfg.ini.items() if secname.startswith(SECTION_PREFIX)]
    return Schedule(tzname, tuple(e for e in entries if e is not None))
