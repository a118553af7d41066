"""``bots-dirmonitor``: watch the ``[dirmonitorN]`` folders and queue an engine job the moment
files are ready.

A file counts only when it is ready:

* inotify (default): closed after writing (``IN_CLOSE_WRITE``), renamed into the folder, or
  moved in from elsewhere. watchdog 7 reports a move from outside the tree as a bare "created"
  with no open/close; a created file is therefore ready only when no "opened" followed it and no
  process holds it open for writing (checked in ``/proc/*/fd``; when ``/proc`` is not fully
  readable, its size and mtime must also stay unchanged for the debounce time);
* ``polling = True`` (network shares, no close events): when its size and mtime have been stable
  for the debounce time and no process holds it open for writing.

Ready files coalesce per route for ``debounce`` seconds (default 0.5) into one job, published
through ``tasks.submit.submit`` - the bots-job2queue path, so priority and dedup apply: a burst
of 10,000 files gives a handful of jobs. Files already waiting at start trigger a job. Every
``rescan`` seconds (and at once when inotify's queue overflowed, which watchdog only logs) the
folders are rescanned; a watched folder that is deleted and re-created is watched again; a job
that cannot be published (broker down) is kept and retried, never dropped.

Logs to ``botssys/logging/dirmonitor.log``; writes ``botssys/dirmonitor.heartbeat`` (JSON:
pid, host, time, state, monitors, pending jobs) for ``botsq status``. SIGTERM stops cleanly.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import os
import queue
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Callable

from engine.cli_util import ArgumentParser, UsageError, run_cli
from engine.config import Config, DirMonitor, add_config_argument, load_config
from engine.readiness import open_for_writing

HEARTBEAT_NAME = "dirmonitor.heartbeat"
HEARTBEAT_EVERY = 2.0
SUPERVISE_EVERY = 1.0
CHECK_EVERY = 0.05          # while files wait for readiness
CREATED_SETTLE = 0.03       # a bare "created" waits this long for an "opened" that marks a writer
WRITING_RECHECK = 1.0       # files seen open for writing are re-checked this often (lost events)
RETRY_MIN, RETRY_MAX = 0.5, 15.0

Signature = tuple[int, int, int]        # inode, size, mtime_ns


def _signature(path: str) -> Signature | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    import stat as _stat
    if not _stat.S_ISREG(st.st_mode):
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


# --------------------------------------------------------------------------- state

@dataclass
class Candidate:
    kind: str                 # created | writing | settle
    since: float              # monotonic, first seen
    sig: Signature | None = None
    sig_at: float = 0.0       # monotonic, when sig last changed
    checked: float = 0.0      # monotonic, last writer check


@dataclass
class Watch:
    mon: DirMonitor
    root: str
    observer: Any = None
    ident: tuple[int, int] | None = None
    missing_since: float | None = None
    candidates: dict[str, Candidate] = field(default_factory=dict)
    done: dict[str, Signature] = field(default_factory=dict)
    next_rescan: float = 0.0

    def matches(self, path: str) -> bool:
        parent, name = os.path.split(path)
        if not self.mon.recursive and parent != self.root:
            return False
        if self.mon.recursive and not (parent == self.root or parent.startswith(self.root + os.sep)):
            return False
        return fnmatch.fnmatch(name, self.mon.filemask)


@dataclass
class Trigger:
    route: str
    priority: int
    due: float
    files: set[str] = field(default_factory=set)
    attempts: int = 0
    next_try: float = 0.0
    failing_since: float | None = None


class _OverflowFlag(logging.Handler):
    """watchdog logs an inotify overflow but tells no handler: catch the log line."""

    def __init__(self, flag: threading.Event) -> None:
        super().__init__(logging.WARNING)
        self.flag = flag

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if "overflow" in record.getMessage().lower():
                self.flag.set()
        except Exception:  # noqa: BLE001
            pass


# --------------------------------------------------------------------------- the monitor

class Monitor:
    """All ``[dirmonitorN]`` watches of one environment, and their pending jobs."""

    def __init__(self, cfg: Config, log: logging.Logger,
                 submit: Callable[[str, int], str] | None = None,
                 heartbeat_path: Path | None = None) -> None:
        self.cfg = cfg
        self.log = log
        self.submit = submit or self._submit
        self.heartbeat_path = heartbeat_path or (cfg.directories.botssys / HEARTBEAT_NAME)
        self.watches = [Watch(m, os.path.realpath(m.path)) for m in cfg.dirmonitors]
        self.events: queue.SimpleQueue[tuple[Watch, Any]] = queue.SimpleQueue()
        self.triggers: dict[str, Trigger] = {}
        self.stop_event = threading.Event()
        self.overflow = threading.Event()
        self._overflow_handler = _OverflowFlag(self.overflow)
        self._jobs: dict[str, Any] = {}
        self.started = datetime.now(UTC)
        self.jobs_sent = 0
        self.last_job_at: str | None = None
        self.broker_ok = True
        self._next_heartbeat = 0.0
        self._next_supervise = 0.0
        self._proc_complete: bool | None = None
        self.drop_events = False            # tests: simulate events lost in an inotify overflow

    # ------------------------------------------------------------------ publishing
    def _job(self, route: str) -> Any:
        if route not in self._jobs:
            from tasks.jobs import job_from_argv

            self._jobs[route] = job_from_argv(self.cfg, ["bots-engine", "--new", *([route] if route else [])])
        return self._jobs[route]

    def _submit(self, route: str, priority: int) -> str:
        from tasks.submit import submit

        res = submit(self.cfg, self._job(route), priority=priority)
        return str(getattr(res, "status", res))

    # ------------------------------------------------------------------ watching
    def _handler(self, w: Watch) -> Any:
        from watchdog.events import FileSystemEventHandler

        monitor = self

        class Handler(FileSystemEventHandler):
            def dispatch(self, event: Any) -> None:  # every event, in the observer thread
                if not monitor.drop_events:
                    monitor.events.put((w, event))

        return Handler()

    def _event_filter(self, polling: bool) -> list[type]:
        from watchdog import events as ev

        base = [ev.FileCreatedEvent, ev.FileMovedEvent, ev.FileDeletedEvent, ev.DirDeletedEvent,
                ev.DirCreatedEvent, ev.DirMovedEvent]
        if polling:
            return base + [ev.FileModifiedEvent]
        return base + [ev.FileClosedEvent, ev.FileClosedNoWriteEvent, ev.FileOpenedEvent]

    def _watch(self, w: Watch) -> bool:
        """(Re)start the observer of one folder; False when the folder is missing."""
        self._unwatch(w)
        try:
            st = os.stat(w.root)
        except OSError:
            return False
        if w.mon.polling:
            from watchdog.observers.polling import PollingObserver

            obs = PollingObserver(timeout=max(0.1, min(1.0, w.mon.debounce / 2)))
        else:
            from watchdog.observers.inotify import InotifyObserver

            obs = InotifyObserver()
        try:
            obs.schedule(self._handler(w), w.root, recursive=w.mon.recursive,
                         event_filter=self._event_filter(w.mon.polling))
            obs.start()
        except OSError as exc:
            self.log.error("[%s] cannot watch %s: %s", w.mon.name, w.root, exc)
            return False
        w.observer = obs
        w.ident = (st.st_dev, st.st_ino)
        return True

    def _unwatch(self, w: Watch) -> None:
        obs, w.observer = w.observer, None
        if obs is not None:
            try:
                obs.stop()
                obs.join(timeout=5)
            except Exception:  # noqa: BLE001
                pass

    def _watching(self, w: Watch) -> bool:
        obs = w.observer
        if obs is None or not obs.is_alive():
            return False
        return all(e.is_alive() for e in obs.emitters) and bool(obs.emitters)

    def _supervise(self) -> None:
        """Watch folders that came back; notice folders that went away or stopped being watched."""
        for w in self.watches:
            try:
                st = os.stat(w.root)
                ident: tuple[int, int] | None = (st.st_dev, st.st_ino) if os.path.isdir(w.root) else None
            except OSError:
                ident = None
            if ident is None:
                if w.missing_since is None:
                    w.missing_since = time.monotonic()
                    self.log.warning("[%s] folder %s is gone; watching for it to come back", w.mon.name, w.root)
                    self._unwatch(w)
                    w.candidates.clear()
                continue
            if w.missing_since is not None or ident != w.ident or not self._watching(w):
                was_missing = w.missing_since is not None
                if self._watch(w):
                    if was_missing:
                        self.log.info("[%s] folder %s is back; watching it again", w.mon.name, w.root)
                    else:
                        self.log.warning("[%s] watch on %s was lost; watching again", w.mon.name, w.root)
                    w.missing_since = None
                    self.rescan(w)

    # ------------------------------------------------------------------ events
    def _handle(self, w: Watch, event: Any) -> None:
        from watchdog import events as ev

        now = time.monotonic()
        etype = type(event)
        src = os.fsdecode(event.src_path)
        if event.is_directory:
            if etype is ev.DirDeletedEvent and src == w.root:
                self._next_supervise = 0.0          # the watched folder itself went away
            elif etype in (ev.DirCreatedEvent, ev.DirMovedEvent) and w.mon.recursive:
                # files that arrive inside a moved-in folder bring no events of their own
                self.rescan(w, os.fsdecode(getattr(event, "dest_path", "") or src))
            return
        if etype is ev.FileMovedEvent:
            w.candidates.pop(src, None)
            w.done.pop(src, None)
            dest = os.fsdecode(event.dest_path)
            if dest and w.matches(dest):
                w.candidates.pop(dest, None)
                self._ready(w, dest)
            return
        if not w.matches(src):
            return
        if etype is ev.FileClosedEvent:                       # closed after writing
            w.candidates.pop(src, None)
            self._ready(w, src)
        elif etype is ev.FileCreatedEvent:
            if w.mon.polling:
                self._settle(w, src, now)
            else:                                             # written here, or moved in from outside
                w.candidates[src] = Candidate("created", now)
        elif etype is ev.FileOpenedEvent:
            c = w.candidates.get(src)
            if c is not None and c.kind == "created":
                c.kind, c.checked = "writing", now
        elif etype is ev.FileClosedNoWriteEvent:
            c = w.candidates.get(src)
            if c is not None and c.kind == "writing":         # that open was a reader: look again
                c.kind = "created"
        elif etype is ev.FileModifiedEvent:
            if w.mon.polling:
                self._settle(w, src, now)
        elif etype is ev.FileDeletedEvent:
            w.candidates.pop(src, None)
            w.done.pop(src, None)

    def _settle(self, w: Watch, path: str, now: float) -> None:
        c = w.candidates.get(path)
        sig = _signature(path)
        if c is None or c.kind != "settle":
            w.candidates[path] = Candidate("settle", now, sig, now)
        elif sig != c.sig:
            c.sig, c.sig_at = sig, now

    def _ready(self, w: Watch, path: str, sig: Signature | None = None) -> bool:
        """Count a ready file into its route's pending job; False if gone or counted before."""
        sig = sig or _signature(path)
        if sig is None:                                        # gone already (or not a file)
            return False
        if w.done.get(path) == sig:                            # counted before, unchanged
            return False
        w.done[path] = sig
        route = w.mon.route
        t = self.triggers.get(route)
        if t is None:
            t = self.triggers[route] = Trigger(route, w.mon.priority, time.monotonic() + w.mon.debounce)
        t.priority = min(t.priority, w.mon.priority)
        t.files.add(path)
        return True

    def _check_candidates(self) -> float:
        """Promote candidates that became ready; returns seconds until the next check (or inf)."""
        now = time.monotonic()
        waiting = False
        to_check: list[tuple[Watch, str, Candidate]] = []
        for w in self.watches:
            for path, c in list(w.candidates.items()):
                waiting = True
                if c.kind == "created":
                    if now - c.since >= CREATED_SETTLE:
                        to_check.append((w, path, c))
                else:
                    # "writing": someone had it open; look again now and then. "settle": no close
                    # events (polling), so a file counts once it has not changed for the debounce.
                    if c.kind == "writing":
                        if now - c.checked < WRITING_RECHECK:
                            continue
                        c.checked = now
                    hold = max(w.mon.debounce, WRITING_RECHECK) if c.kind == "writing" else w.mon.debounce
                    sig = _signature(path)
                    if sig is None:
                        del w.candidates[path]
                    elif sig != c.sig:
                        c.sig, c.sig_at = sig, now
                    elif now - c.sig_at >= hold:
                        to_check.append((w, path, c))
        if to_check:
            writers, complete = open_for_writing({p for _, p, _ in to_check})
            if self._proc_complete is None or self._proc_complete != complete:
                self._proc_complete = complete
                if not complete:
                    self.log.info("cannot see every process's open files (/proc); a moved-in file also "
                                  "waits until its size is stable for the debounce time")
            for w, path, c in to_check:
                if path in writers:
                    c.kind, c.checked = "writing", now
                    continue
                if c.kind == "created" and not complete:
                    c.kind = "settle"
                    c.sig, c.sig_at = _signature(path), now
                    continue
                w.candidates.pop(path, None)
                self._ready(w, path)
        return CHECK_EVERY if waiting else float("inf")

    # ------------------------------------------------------------------ rescans
    def _walk(self, w: Watch, top: str) -> list[str]:
        out: list[str] = []
        stack = [top]
        while stack:
            d = stack.pop()
            try:
                with os.scandir(d) as it:
                    for entry in it:
                        try:
                            if entry.is_dir(follow_symlinks=False):
                                if w.mon.recursive:
                                    stack.append(entry.path)
                            elif entry.is_file() and w.matches(entry.path):
                                out.append(entry.path)
                        except OSError:
                            continue
            except OSError:
                continue
        return out

    def rescan(self, w: Watch, top: str | None = None) -> int:
        """Look at every matching file: ready ones count, young ones wait. Returns files counted."""
        now, wall = time.monotonic(), time.time()
        found = self._walk(w, top or w.root)
        seen = set(found)
        if top is None:
            for path in [p for p in w.done if p not in seen]:
                del w.done[path]
            for path in [p for p in w.candidates if p not in seen]:
                del w.candidates[path]
        old: dict[str, Signature] = {}
        for path in found:
            sig = _signature(path)
            if sig is None or w.done.get(path) == sig:
                continue
            c = w.candidates.get(path)
            if c is not None and c.kind == "writing":
                continue
            try:
                age = wall - os.stat(path).st_mtime
            except OSError:
                continue
            if age >= w.mon.debounce:
                old[path] = sig
            elif c is None:
                w.candidates[path] = Candidate("settle", now, sig, now)
        if not old:
            return 0
        writers, _complete = open_for_writing(set(old))
        counted = 0
        for path, sig in old.items():
            if path in writers:
                w.candidates[path] = Candidate("writing", now, sig, now, now)
            else:
                w.candidates.pop(path, None)
                counted += self._ready(w, path, sig)
        return counted

    def _rescans(self) -> float:
        now = time.monotonic()
        if self.overflow.is_set():
            self.overflow.clear()
            self.log.warning("inotify queue overflowed: events were lost; rescanning every folder")
            for w in self.watches:
                if w.missing_since is None:
                    n = self.rescan(w)
                    w.next_rescan = now + w.mon.rescan
                    if n:
                        self.log.info("[%s] rescan found %d file(s) ready", w.mon.name, n)
        nxt = float("inf")
        for w in self.watches:
            if w.mon.rescan > 0 and w.missing_since is None:
                if now >= w.next_rescan:
                    w.next_rescan = now + w.mon.rescan
                    n = self.rescan(w)
                    if n:
                        self.log.info("[%s] rescan found %d file(s) ready that no event announced", w.mon.name, n)
                nxt = min(nxt, w.next_rescan - now)
        return nxt

    # ------------------------------------------------------------------ jobs
    def _fire(self, flush: bool = False) -> float:
        now = time.monotonic()
        nxt = float("inf")
        for route, t in list(self.triggers.items()):
            if not flush and (now < t.due or now < t.next_try):
                nxt = min(nxt, max(t.due, t.next_try) - now)
                continue
            if not any(os.path.exists(p) for p in t.files):
                # every file is gone already: a running engine job took them
                del self.triggers[route]
                continue
            label = route or "(default run)"
            try:
                status = self.submit(route, t.priority)
            except Exception as exc:  # noqa: BLE001 - QueueError, broker errors: keep it, retry
                t.attempts += 1
                delay = min(RETRY_MAX, RETRY_MIN * 2 ** (t.attempts - 1))
                t.next_try = time.monotonic() + delay
                if t.failing_since is None:
                    t.failing_since = now
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                level = logging.WARNING if t.attempts in (1, 2, 4, 8) or t.attempts % 20 == 0 else logging.DEBUG
                self.log.log(level, "route %s: job not queued (%s); %d file(s) waiting, retrying in %.1f s",
                             label, msg, len(t.files), delay)
                self.broker_ok = False
                nxt = min(nxt, delay)
                if flush:
                    self.log.error("route %s: stopping with the job not queued; its %d file(s) stay in the "
                                   "folder and are picked up at the next start", label, len(t.files))
                continue
            del self.triggers[route]
            self.broker_ok = True
            self.jobs_sent += 1
            self.last_job_at = datetime.now(UTC).isoformat()
            extra = f" after {t.attempts} failed attempt(s)" if t.attempts else ""
            if status == "duplicate":
                self.log.info("route %s: %d file(s) ready; an identical job is already waiting%s",
                              label, len(t.files), extra)
            else:
                self.log.info("route %s: %d file(s) ready; job %s (priority %d)%s",
                              label, len(t.files), status, t.priority, extra)
        return nxt

    # ------------------------------------------------------------------ heartbeat
    def write_heartbeat(self, state: str = "running") -> None:
        data = {
            "pid": os.getpid(), "host": socket.gethostname(), "state": state,
            "time": datetime.now(UTC).isoformat(), "timestamp": time.time(),
            "started": self.started.isoformat(), "interval": HEARTBEAT_EVERY,
            "monitors": [{"name": w.mon.name, "path": w.root, "route": w.mon.route,
                          "watching": w.missing_since is None and w.observer is not None,
                          "waiting_files": len(w.candidates)} for w in self.watches],
            "pending_jobs": len(self.triggers), "jobs_sent": self.jobs_sent,
            "last_job_at": self.last_job_at, "broker_ok": self.broker_ok,
        }
        try:
            self.heartbeat_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.heartbeat_path.with_name(self.heartbeat_path.name + f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data), encoding="utf-8")
            os.replace(tmp, self.heartbeat_path)
        except OSError as exc:
            self.log.warning("cannot write heartbeat %s: %s", self.heartbeat_path, exc)

    # ------------------------------------------------------------------ main loop
    def start(self) -> None:
        logging.getLogger("watchdog.observers.inotify_c").addHandler(self._overflow_handler)
        logging.getLogger("watchdog.observers.inotify").addHandler(self._overflow_handler)
        now = time.monotonic()
        for w in self.watches:
            if not self._watch(w):
                raise UsageError(f"{self.cfg.ini_path}: [{w.mon.name}] path: cannot watch {w.root}")
            kind = "polling" if w.mon.polling else "inotify"
            self.log.info("[%s] watching %s%s for %s -> route %s (priority %d, debounce %.2f s, %s)",
                          w.mon.name, w.root, " (recursive)" if w.mon.recursive else "", w.mon.filemask,
                          w.mon.route or "(default run)", w.mon.priority, w.mon.debounce, kind)
        for w in self.watches:                        # after the watches: nothing falls in between
            n = self.rescan(w)
            w.next_rescan = now + w.mon.rescan
            if n:
                self.log.info("[%s] %d file(s) already waiting", w.mon.name, n)
        self.write_heartbeat()
        self._next_heartbeat = time.monotonic() + HEARTBEAT_EVERY
        self._next_supervise = time.monotonic() + SUPERVISE_EVERY

    def step(self, max_wait: float = 1.0) -> None:
        """Handle events and timers once; blocks at most ``max_wait`` seconds."""
        now = time.monotonic()
        waits = [max_wait, self._next_heartbeat - now, self._next_supervise - now]
        waits.append(self._check_candidates())
        waits.append(self._fire())
        waits.append(self._rescans())
        timeout = max(0.0, min(waits))
        try:
            w, ev = self.events.get(timeout=timeout) if timeout > 0 else self.events.get_nowait()
            self._handle(w, ev)
            for _ in range(10000):                       # drain what is there without blocking
                w, ev = self.events.get_nowait()
                self._handle(w, ev)
        except queue.Empty:
            pass
        now = time.monotonic()
        if now >= self._next_supervise:
            self._next_supervise = now + SUPERVISE_EVERY
            self._supervise()
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + HEARTBEAT_EVERY
            self.write_heartbeat()

    def run(self) -> None:
        self.start()
        try:
            while not self.stop_event.is_set():
                self.step()
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        # events already seen still count; queue what is ready before leaving
        try:
            while True:
                w, ev = self.events.get_nowait()
                self._handle(w, ev)
        except queue.Empty:
            pass
        if self.triggers:
            self._fire(flush=True)
        for w in self.watches:
            self._unwatch(w)
        logging.getLogger("watchdog.observers.inotify_c").removeHandler(self._overflow_handler)
        logging.getLogger("watchdog.observers.inotify").removeHandler(self._overflow_handler)
        waiting = sum(len(w.candidates) for w in self.watches)
        if waiting:
            self.log.info("%d file(s) were not ready yet; they are picked up at the next start", waiting)
        self.write_heartbeat("stopped")
        self.log.info("stopped")


# --------------------------------------------------------------------------- status

HEARTBEAT_LIMIT = 30.0      # seconds of silence after which `botsq status` calls the monitor dead


def read_heartbeat(cfg: Config) -> dict[str, Any] | None:
    """The monitor's last heartbeat (see :meth:`Monitor.write_heartbeat`), or None."""
    try:
        return json.loads((cfg.directories.botssys / HEARTBEAT_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def heartbeat_age(cfg: Config) -> tuple[float | None, float]:
    """(seconds since the running monitor's last heartbeat or None when it is not running, limit)."""
    hb = read_heartbeat(cfg)
    if not hb or hb.get("state") != "running":
        return None, HEARTBEAT_LIMIT
    if hb.get("host") == socket.gethostname():
        try:
            os.kill(int(hb["pid"]), 0)
        except ProcessLookupError:
            return None, HEARTBEAT_LIMIT
        except (PermissionError, KeyError, ValueError, TypeError):
            pass
    return max(0.0, time.time() - float(hb.get("timestamp", 0))), HEARTBEAT_LIMIT


# --------------------------------------------------------------------------- command line

def check_config(cfg: Config) -> None:
    """Refuse to start (one line) when the monitor could do nothing useful."""
    if not cfg.jobqueue.enabled:
        raise UsageError(f"{cfg.ini_path}: [jobqueue] enabled: the queue is disabled; "
                         "the directory monitor only queues jobs")
    if not cfg.dirmonitors:
        raise UsageError(f"{cfg.ini_path}: no [dirmonitorN] section (path, filemask, route): nothing to watch")
    for mon in cfg.dirmonitors:
        if not mon.path.is_dir():
            what = "is not a folder" if mon.path.exists() else "does not exist"
            raise UsageError(f"{cfg.ini_path}: [{mon.name}] path: {mon.path} {what}")
        if mon.debounce < 0:
            raise UsageError(f"{cfg.ini_path}: [{mon.name}] debounce: must be 0 or more seconds")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="bots-dirmonitor",
        description="Watch the [dirmonitorN] folders of bots.ini and queue an engine job "
                    "(bots-engine --new ROUTE) as soon as files are ready.")
    add_config_argument(p)
    return p


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = load_config(args.configdir)
    check_config(cfg)
    from engine.log import component_logger

    log = component_logger("dirmonitor", cfg)
    mon = Monitor(cfg, log)
    for route in {m.route for m in cfg.dirmonitors}:
        try:
            mon._job(route)                         # refuse now, not at the first file
        except Exception as exc:  # noqa: BLE001
            raise UsageError(f"route {route!r}: {exc}") from None

    try:                                            # connect now: the first file need not wait for it
        from tasks.celeryapp import app_for
        from tasks.submit import connect

        connect(app_for(cfg), cfg.jobqueue.connect_timeout).release()
    except Exception as exc:  # noqa: BLE001 - not fatal: jobs are retried until the broker answers
        log.warning("broker not reachable yet (%s); jobs are kept and retried until it is",
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    def stop(signum: int, _frame: Any) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        mon.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("bots-dirmonitor starting (pid %d, config %s)", os.getpid(), cfg.configdir)
    mon.run()
    return 0


def main() -> None:
    run_cli("bots-dirmonitor", _main)


if __name__ == "__main__":  # pragma: no cover
    main()
