"""Schedules: cron arithmetic in a zone, daylight-saving days, make-up runs, config parsing."""
from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from beat_schedule import load_jobs
from engine.config.schedule import machine_timezone
from engine.errors import ConfigError
from ops.cron import CronExpr, ZonedCron

AMS = ZoneInfo("Europe/Amsterdam")


def utc(*a: int) -> datetime:
    return datetime(*a, tzinfo=UTC)


# --------------------------------------------------------------------------- a reference

def reference_next(expr: CronExpr, zone: ZoneInfo, t: datetime) -> datetime:
    """Minute-by-minute in real time: the slow, obviously right answer for the documented rules."""
    u = t.replace(second=0, microsecond=0) + timedelta(minutes=1)
    prev_wall = (u - timedelta(minutes=1)).astimezone(zone).replace(tzinfo=None)
    for _ in range(60 * 24 * 400):
        loc = u.astimezone(zone)
        wall = loc.replace(tzinfo=None)

        def matches(w: datetime) -> bool:
            return expr.day_matches(w.date()) and w.hour in expr.hours and w.minute in expr.minutes

        if matches(wall) and (not expr.fixed_time or loc.fold == 0):
            return u
        if expr.fixed_time and wall - prev_wall > timedelta(minutes=1):   # clocks jumped forward
            w = prev_wall + timedelta(minutes=1)
            while w < wall:
                if matches(w):
                    return u
                w += timedelta(minutes=1)
        prev_wall = wall
        u += timedelta(minutes=1)
    raise AssertionError("no match")


EXPRS = ["0 1 * * *", "30 2 * * *", "*/5 * * * *", "0 * * * *", "15 2 * * 0", "*/20 2 * * *",
         "0 0 * * 1-5", "45 2,3 * * *", "0 2 * * 6", "10 1-3 * * *"]
ZONES = ["Europe/Amsterdam", "America/New_York", "Australia/Lord_Howe", "Pacific/Chatham", "UTC"]


@pytest.mark.slow
def test_next_after_agrees_with_minute_by_minute_reference_around_dst_changes():
    rnd = random.Random(7)
    starts = [utc(2026, 3, 28, 22), utc(2026, 10, 24, 23, 30), utc(2026, 3, 7, 5), utc(2026, 11, 1, 4, 10),
              utc(2026, 4, 4, 14), utc(2026, 9, 26, 12), utc(2026, 4, 4, 13, 30)]
    checked = 0
    for zone_name in ZONES:
        zone = ZoneInfo(zone_name)
        for text in EXPRS:
            s = ZonedCron(cron=text, timezone=zone_name)
            for start in rnd.sample(starts, 2):
                t = start
                for _ in range(3):
                    got, want = s.next_after(t), reference_next(s.expr, zone, t)
                    assert got == want, (zone_name, text, t, got, want)
                    t = got
                    checked += 1
    assert checked > 100


def simulate(s: ZonedCron, start: datetime, end: datetime, max_sleep: float = 300.0) -> list[datetime]:
    """Drive is_due like beat does: check, run when due, sleep what it says (at most max_sleep)."""
    runs: list[datetime] = []
    clock = [start]
    s.nowfun = lambda: clock[0]
    last = start
    while clock[0] < end:
        due, nxt = s.is_due(last)
        if due:
            runs.append(clock[0])
            last = clock[0]
        clock[0] += timedelta(seconds=max(0.5, min(nxt, max_sleep)))
    return runs


def per_local_day(runs: list[datetime], zone: ZoneInfo) -> Counter[date]:
    return Counter(r.astimezone(zone).date() for r in runs)


@pytest.mark.parametrize("max_sleep", [300.0, 29.0])
def test_daily_0100_runs_exactly_once_on_both_dst_change_days(max_sleep):
    """celery/celery#10107: a 01:00 daily job must run once on 29 March and once on 25 October."""
    s = ZonedCron(cron="0 1 * * *", timezone="Europe/Amsterdam")
    for a, b, change in [(utc(2026, 3, 26), utc(2026, 4, 1), date(2026, 3, 29)),
                         (utc(2026, 10, 22), utc(2026, 10, 29), date(2026, 10, 25))]:
        runs = simulate(s, a, b, max_sleep)
        days = per_local_day(runs, AMS)
        assert all(n == 1 for n in days.values()), days
        assert days[change] == 1 and days[change - timedelta(days=1)] == 1 and days[change + timedelta(days=1)] == 1
        assert all(r.astimezone(AMS).strftime("%H:%M") == "01:00" for r in runs)


def test_times_inside_the_changed_hour():
    # 02:30 is skipped on 29 March (02:00 -> 03:00): it runs once, at the change; on 25 October
    # it happens twice: it runs once, at the first.
    s = ZonedCron(cron="30 2 * * *", timezone="Europe/Amsterdam")
    spring = simulate(s, utc(2026, 3, 27), utc(2026, 3, 31))
    assert [r.astimezone(AMS).strftime("%m-%d %H:%M %Z") for r in spring] == [
        "03-27 02:30 CET", "03-28 02:30 CET", "03-29 03:00 CEST", "03-30 02:30 CEST"]
    autumn = simulate(s, utc(2026, 10, 23), utc(2026, 10, 27))
    assert [r.astimezone(AMS).strftime("%m-%d %H:%M %Z") for r in autumn] == [
        "10-23 02:30 CEST", "10-24 02:30 CEST", "10-25 02:30 CEST", "10-26 02:30 CET"]


def test_hourly_and_5min_follow_real_time_across_dst():
    hourly = ZonedCron(cron="0 * * * *", timezone="Europe/Amsterdam")
    assert per_local_day(simulate(hourly, utc(2026, 3, 28, 22, 30), utc(2026, 3, 29, 22, 30)), AMS)[date(2026, 3, 29)] == 23
    autumn = simulate(hourly, utc(2026, 10, 24, 21, 30), utc(2026, 10, 25, 23, 30))
    assert per_local_day(autumn, AMS)[date(2026, 10, 25)] == 25       # celery#10107 drops one of these
    gaps = {b - a for a, b in zip(autumn, autumn[1:])}
    assert gaps == {timedelta(hours=1)}
    five = ZonedCron(cron="*/5 * * * *", timezone="Europe/Amsterdam")
    runs = simulate(five, utc(2026, 10, 24, 23), utc(2026, 10, 25, 3))
    assert {b - a for a, b in zip(runs, runs[1:])} == {timedelta(minutes=5)}
    assert len(runs) == 4 * 12 - 1                 # the run at the start instant is not counted


def test_weekly_and_monthly_in_zone():
    weekly = ZonedCron(cron="0 1 * * 1", timezone="Europe/Amsterdam")
    runs = weekly.next_runs(utc(2026, 10, 20), 3)
    assert [r.astimezone(AMS).strftime("%a %m-%d %H:%M") for r in runs] == [
        "Mon 10-26 01:00", "Mon 11-02 01:00", "Mon 11-09 01:00"]
    monthly = ZonedCron(cron="0 1 1 * *", timezone="Europe/Amsterdam")
    assert [r.astimezone(AMS).strftime("%m-%d %H:%M") for r in monthly.next_runs(utc(2026, 2, 15), 3)] == [
        "03-01 01:00", "04-01 01:00", "05-01 01:00"]
    assert ZonedCron(cron="0 0 29 2 *", timezone="UTC").next_after(utc(2096, 3, 1)) == utc(2104, 2, 29)


def test_missed_runs_are_made_up_once_not_once_per_slot():
    s = ZonedCron(cron="0 1 * * *", timezone="Europe/Amsterdam")
    last = utc(2026, 6, 1, 23)                       # 01:00 on 2 June, then beat was down 3 days
    now = utc(2026, 6, 5, 10)
    s.nowfun = lambda: now
    due, nxt = s.is_due(last)
    assert due and abs(nxt - (utc(2026, 6, 5, 23) - now).total_seconds()) < 1
    assert s.is_due(now) == (False, nxt)             # once made up, the next is tomorrow 01:00
    five = ZonedCron(cron="*/5 * * * *", timezone="UTC")
    five.nowfun = lambda: now
    assert five.is_due(now - timedelta(hours=5)).is_due
    assert not five.is_due(now).is_due


def test_interval_and_clock_set_back():
    s = ZonedCron(seconds=2, timezone="UTC")
    now = utc(2026, 1, 1, 12)
    s.nowfun = lambda: now
    assert s.is_due(now - timedelta(seconds=3)) == (True, 2.0)
    assert s.is_due(now - timedelta(seconds=1)) == (False, 1.0)
    daily = ZonedCron(cron="0 1 * * *", timezone="UTC")
    daily.nowfun = lambda: now
    # a last run "in the future" (clock set back by a day) does not stall the job for a day
    assert daily.is_due(now + timedelta(days=1)).next == pytest.approx(13 * 3600)


def test_upcoming_counts_from_the_last_run_as_beat_does():
    now = utc(2026, 12, 1, 6, 33, 31)
    every20 = ZonedCron(seconds=20, timezone="Europe/Amsterdam")
    last = now - timedelta(seconds=10)
    # the tester's case: sent at 07:33:21 local, shown at 07:33:31: next is last + 20 s, not now + 20 s
    assert every20.upcoming(last, now, 3) == [last + timedelta(seconds=20 * k) for k in (1, 2, 3)]
    every20.nowfun = lambda: now
    assert every20.is_due(last) == (False, 10.0)
    # overdue (beat was down): one make-up run now, then counted from it
    assert every20.upcoming(now - timedelta(minutes=5), now, 2) == [now, now + timedelta(seconds=20)]
    assert every20.is_due(now - timedelta(minutes=5)).is_due
    # a last run in the future (clock set back) counts from now
    assert every20.upcoming(now + timedelta(hours=1), now, 1) == [now + timedelta(seconds=20)]
    daily = ZonedCron(cron="0 1 * * *", timezone="UTC")
    assert daily.upcoming(now - timedelta(hours=1), now, 2) == [utc(2026, 12, 2, 1), utc(2026, 12, 3, 1)]
    assert daily.upcoming(now - timedelta(days=2), now, 2) == [now, utc(2026, 12, 2, 1)]
    assert daily.upcoming(now, now, 0) == []


def test_schedule_pickles_and_compares():
    import pickle

    s = ZonedCron(cron="*/5 * * * *", timezone="Europe/Amsterdam")
    t = pickle.loads(pickle.dumps(s))
    assert t == s and t.next_after(utc(2026, 1, 1)) == utc(2026, 1, 1, 0, 5)
    assert ZonedCron(cron="*/5 * * * *", timezone="UTC") != s


@pytest.mark.parametrize("text,err", [
    ("0 1 * *", "expected 5 fields"), ("61 * * * *", "minute: 61 is outside"),
    ("0 25 * * *", "hour"), ("0 1 * * funday", "weekday"), ("0 1 5-2 * *", "backwards"), ("*/0 * * * *", "step"),
])
def test_bad_cron_expressions(text, err):
    with pytest.raises(ValueError, match=err):
        CronExpr.parse(text)


def test_cron_names_macros_and_sunday_seven():
    assert CronExpr.parse("0 1 * * mon-fri").weekdays == frozenset({1, 2, 3, 4, 5})
    assert CronExpr.parse("0 1 * * 7").weekdays == frozenset({0})
    assert CronExpr.parse("0 1 * jan,dec *").months == frozenset({1, 12})
    assert CronExpr.parse("@hourly").minutes == (0,) and not CronExpr.parse("@hourly").fixed_time
    # day of month and weekday both restricted: either matches (cron's rule)
    e = CronExpr.parse("0 1 13 * 5")
    assert e.day_matches(date(2026, 2, 13)) and e.day_matches(date(2026, 2, 6)) and not e.day_matches(date(2026, 2, 7))


# --------------------------------------------------------------------------- from bots.ini

SCHED_INI = """
[jobqueue]
enabled = True
[schedule]
timezone = Europe/Amsterdam
[schedule.every5min]
cadence = 5min
job = bots-engine --new
priority = 1
[schedule.alerts]
cadence = hourly
minute = 15
job = bots-engine r1
priority = 2
[schedule.housekeeping]
cadence = daily
time = 01:00
job = bots-engine --cleanup
priority = 3
[schedule.weekly]
cadence = weekly
weekday = monday, friday
time = 6:30
job = bots-engine r1
[schedule.monthly]
cadence = monthly
day = 1
time = 01:00
job = bots-engine r1
priority = 9
[schedule.workdays]
cadence = cron
cron = 0 7 * * 1-5
job = bots-engine --new r1
[schedule.fast]
cadence = interval
seconds = 1.5
job = bots-engine r1
[schedule.off]
cadence = daily
job = bots-engine r1
enabled = False
"""


def test_cadences_from_config(make_env):
    jobs = {j.name: j for j in load_jobs(make_env(ini=SCHED_INI).config(), validate=False)}
    assert set(jobs) == {"every5min", "alerts", "housekeeping", "weekly", "monthly", "workdays", "fast"}
    crons = {n: j.schedule.cron_text for n, j in jobs.items() if j.schedule.expr}
    assert crons == {"every5min": "*/5 * * * *", "alerts": "15 * * * *", "housekeeping": "0 1 * * *",
                     "weekly": "30 6 * * 1,5", "monthly": "0 1 1 * *", "workdays": "0 7 * * 1-5"}
    assert jobs["fast"].schedule.seconds == 1.5
    assert {n: j.priority for n, j in jobs.items()} == {
        "every5min": 1, "alerts": 2, "housekeeping": 3, "weekly": 5, "monthly": 9, "workdays": 5, "fast": 5}
    assert jobs["workdays"].argv == ["bots-engine", "--new", "r1"]
    assert {j.schedule.timezone for j in jobs.values()} == {"Europe/Amsterdam"}


def test_timezone_defaults_to_the_machines(make_env, monkeypatch):
    monkeypatch.setenv("TZ", "America/New_York")
    assert machine_timezone() == "America/New_York"
    ini = SCHED_INI.replace("timezone = Europe/Amsterdam", "")
    jobs = load_jobs(make_env(ini=ini).config(), validate=False)
    assert {j.schedule.timezone for j in jobs} == {"America/New_York"}


@pytest.mark.parametrize("section,err", [
    ("[schedule.x]\ncadence = fortnightly\njob = bots-engine\n", r"\[schedule.x\] cadence: expected one of"),
    ("[schedule.x]\njob = bots-engine\n", r"\[schedule.x\] cadence: required"),
    ("[schedule.x]\ncadence = daily\n", r"\[schedule.x\] job: required"),
    ("[schedule.x]\ncadence = daily\ntime = 25:00\njob = bots-engine\n", r"\[schedule.x\] time: expected a time"),
    ("[schedule.x]\ncadence = weekly\nweekday = someday\njob = bots-engine\n", r"\[schedule.x\] weekday"),
    ("[schedule.x]\ncadence = monthly\nday = 32\njob = bots-engine\n", r"\[schedule.x\] day: expected"),
    ("[schedule.x]\ncadence = cron\ncron = 0 1 * *\njob = bots-engine\n", r"\[schedule.x\] cron: expected 5 fields"),
    ("[schedule.x]\ncadence = cron\ncron = 0 1 31 2 *\njob = bots-engine\n", r"\[schedule.x\] cron: .* never comes"),
    ("[schedule.x]\ncadence = daily\njob = bots-engine\npriority = 0\n", r"\[schedule.x\] priority: expected 1"),
    ("[schedule.x]\ncadence = daily\njob = bots-engine\nwhen = now\n", r"\[schedule.x\] when: unknown key"),
    ("[schedule.x]\ncadence = interval\njob = bots-engine\n", r"\[schedule.x\] seconds: required"),
    ("[schedule]\ntimezone = Mars/Olympus\n", r"\[schedule\] timezone: unknown time zone"),
    ("[schedule]\njob = bots-engine\n", r"\[schedule\] job: unknown key"),
])
def test_schedule_config_errors_name_file_and_key(make_env, section, err):
    env = make_env(ini="[jobqueue]\nenabled = True\n" + section)
    with pytest.raises(ConfigError, match=err) as info:
        load_jobs(env.config(), validate=False)
    assert str(env.configdir / "bots.ini") in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------- entries, template, CLI

ROUTES2 = """
[channels.in]
type = "file"
path = "data/in"
[routes.r1]
[[routes.r1.parts]]
fromchannel = "in"
[routes.r2]
notindefaultrun = true
[[routes.r2.parts]]
fromchannel = "in"
"""


def test_build_schedule_gives_celery_entries(make_env):
    from beat_schedule import build_schedule

    ini = """
    [jobqueue]
    enabled = True
    [jobqueue.commands]
    sweep = /bin/true --days 7
    [schedule]
    timezone = Europe/Amsterdam
    [schedule.every5min]
    cadence = 5min
    job = bots-engine.py --new
    priority = 1
    [schedule.both]
    cadence = hourly
    job = python3 /usr/local/bin/bots-engine.py --automaticretrycommunication r2 r1
    priority = 7
    [schedule.sweep]
    cadence = weekly
    weekday = sunday
    time = 03:00
    job = sweep
    """
    env = make_env(ini=ini, routes=ROUTES2)
    sched = build_schedule(env.config())
    cdir = str(env.configdir)
    assert sched["every5min"]["task"] == "bots.engine"
    assert sched["every5min"]["kwargs"] == {"commands": ["new"], "routes": [], "configdir": cdir}
    assert sched["every5min"]["options"] == {"priority": 1, "queue": "engine"}
    assert sched["both"]["kwargs"] == {"commands": ["automaticretrycommunication"], "routes": ["r1", "r2"],
                                       "configdir": cdir}
    assert sched["sweep"]["task"] == "bots.command"
    assert sched["sweep"]["kwargs"] == {"name": "sweep", "args": [], "configdir": cdir}
    assert sched["sweep"]["schedule"] == ZonedCron(cron="0 3 * * 0", timezone="Europe/Amsterdam")


@pytest.mark.parametrize("job,err", [
    ("bots-engine nosuchroute", r"\[schedule.bad\] job: unknown route 'nosuchroute'"),
    ("rm -rf /", r"\[schedule.bad\] job: command not allowed"),
    ("bots-engine --bogus", r"\[schedule.bad\] job: bots-engine"),
])
def test_unknown_route_or_command_is_a_config_error(make_env, job, err):
    from beat_schedule import build_schedule

    env = make_env(ini=f"[jobqueue]\nenabled = True\n[schedule.bad]\ncadence = hourly\njob = {job}\n", routes=ROUTES2)
    with pytest.raises(ConfigError, match=err) as info:
        build_schedule(env.config())
    assert "\n" not in str(info.value)


def test_a_relative_config_dir_in_a_schedule_job_is_the_environment_folders(make_env, tmp_path, monkeypatch):
    """README's own example line (``-Cconfigprod``) means the same to beat under systemd and to
    ``botsq schedule`` typed in any shell (tester finding 12)."""
    from beat_schedule import build_schedule

    job = "python3 /usr/local/bin/bots-engine.py --new -Cconfigprod r1"
    ini = f"[jobqueue]\nenabled = True\nconfigdirs = configprod\n[schedule.prod]\ncadence = hourly\njob = {job}\n"
    env = make_env(ini=ini, routes=ROUTES2)
    prod = env.root / "configprod"
    prod.mkdir()
    for name in ("bots.ini", "routes.toml"):
        (prod / name).write_text((env.configdir / name).read_text())
    monkeypatch.chdir(tmp_path)                       # not the environment folder
    assert build_schedule(env.config())["prod"]["kwargs"]["configdir"] == str(prod)
    env.write(ini=ini.replace("-Cconfigprod", "-Cconfigprd"))
    with pytest.raises(ConfigError) as info:
        build_schedule(env.config())
    assert str(info.value) == (f"{env.configdir / 'bots.ini'}: [schedule.prod] job: config dir {env.root}/configprd "
                               f"does not exist (a relative one is read from the environment folder {env.root})")


@pytest.mark.parametrize("demo", [False, True])
def test_botsq_init_writes_the_default_schedule_and_it_validates(tmp_path, demo):
    from engine.cli.init import init_environment
    from engine.config import load_config

    cfg = load_config(init_environment(tmp_path / "env", demo=demo))
    jobs = {j.name: j for j in load_jobs(cfg)}
    got = {(j.describe(), j.job.describe(), j.priority) for j in jobs.values()}
    assert got == {
        ("every 5 minutes", "bots-engine --new", 1),
        ("hourly (0 * * * *)", "bots-engine --new hourly_alerts", 2),
        ("hourly (0 * * * *)", "bots-engine --new ProductionOrders RemitAdvice ftp_cleanup", 6),
        ("hourly (0 * * * *)", "bots-engine --automaticretrycommunication", 7),
        ("daily (0 1 * * *)", "bots-engine --new daily_housekeeping", 3),
        ("daily (0 1 * * *)", "bots-engine --new SAP_Expired_Contracts daily_reports", 9),
        ("weekly (0 1 * * 1)", "bots-engine --new weekly_reports", 8),
        ("monthly (0 1 1 * *)", "bots-engine --new monthly_reports", 8),
    }
    # the routes they name are reached only by naming them
    from engine.run import select_routes
    named = {r for j in jobs.values() for r in j.kwargs["routes"]}
    assert named and not named & {r.name for r in select_routes(cfg, ["new"], [])}
    assert cfg.dirmonitors == ()                     # the [dirmonitor1] example is commented out


@pytest.mark.procs
def test_botsq_schedule_prints_next_run_times(make_env):
    ini = """
    [jobqueue]
    enabled = True
    [schedule]
    timezone = Europe/Amsterdam
    [schedule.nightly]
    cadence = daily
    time = 01:00
    job = bots-engine r2
    priority = 3
    """
    env = make_env(ini=ini, routes=ROUTES2)
    import subprocess

    from conftest import bin_path
    res = subprocess.run([bin_path("botsq"), "schedule", "-c", str(env.configdir), "-n", "2"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "timezone: Europe/Amsterdam" in out and "beat: not running" in out
    assert "nightly  p3  daily (0 1 * * *)" in out and "job:  bots-engine r2" in out
    nexts = [ln for ln in out.splitlines() if "01:00:00 CE" in ln]
    assert len(nexts) == 2
    res = subprocess.run([bin_path("botsq"), "schedule", "-c", str(env.configdir), "--json"],
                         capture_output=True, text=True, timeout=60)
    import json
    data = json.loads(res.stdout)
    assert data["jobs"][0]["kwargs"]["routes"] == ["r2"] and len(data["jobs"][0]["next_runs"]) == 3
    # an invalid schedule: exit 1, one line
    env.write(ini=ini.replace("bots-engine r2", "bots-engine nope"))
    res = subprocess.run([bin_path("botsq"), "schedule", "-c", str(env.configdir)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and res.stderr.count("\n") == 1
    assert "[schedule.nightly] job: unknown route 'nope'" in res.stderr
