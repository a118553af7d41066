"""The directory monitor's loop, in huey's style: ``initialize(now)``, then ``loop(now)`` again and
again (each returns the seconds until something is due), ``shutdown()`` at the end. The clock is
passed in, so a test steps the loop without sleeping; :meth:`Monitor.run` drives it with
``time.monotonic()``, waiting for filesystem events in between.
"""
from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.config import Config, DirMonitor
from engine.errors import UsageError
from ops.dirmonitor.agreement import check
from ops.dirmonitor.arrivals import Arrivals
from ops.dirmonitor.heartbeat import HEARTBEAT_EVERY, heartbeat_path, write_heartbeat
from ops.dirmonitor.triggering import JobSender, Submit, Triggers
from ops.dirmonitor.watching import Watch, Watching

SUPERVISE_EVERY = 1.0       # seconds between checks that every folder is (still) watched
MAX_EVENTS_PER_LOOP = 10000


class Monitor:
    """All ``[dirmonitorN]`` watches of one environment, and their pending jobs."""

    def __init__(self, cfg: Config, log: logging.Logger, submit: Submit | None = None,
                 heartbeat_file: Path | None = None) -> None:
        self.cfg = cfg
        self.log = log
        self.heartbeat_file = heartbeat_file or heartbeat_path(cfg)
        self.watching = Watching(cfg.dirmonitors, log, check(cfg, log))   # recursive = True: UsageError
        self.triggers = Triggers(submit or JobSender(cfg), log)
        self.arrivals = Arrivals(self.watching, self._on_ready, log)
        self.stop_event = threading.Event()
        self.started = datetime.now(UTC)
        self._next_heartbeat = 0.0
        self._next_supervise = 0.0

    @property
    def watches(self) -> list[Watch]:
        return self.watching.watches

    def _on_ready(self, mon: DirMonitor, path: str, now: float) -> None:
        self.triggers.add(mon, path, now)

    # ------------------------------------------------------------------ the loop
    def initialize(self, now: float | None = None) -> None:
        """Watch every folder (UsageError when one cannot be watched), then count the files already
        waiting - after the watches, so nothing falls in between; with Bots' ``[dirmonitor]
        process_existing = False`` they are only noted (as counted), so that neither the start nor a
        rescan queues a job for them: the next file that arrives does, as in Bots."""
        now = time.monotonic() if now is None else now
        self.watching.listen_for_overflow(True)
        for w in self.watches:
            if not self.watching.watch(w):
                raise UsageError(f"{self.cfg.ini_path}: [{w.mon.name}] path: cannot watch {w.root}")
            kind = "polling" if w.mon.polling else "inotify"
            self.log.info("[%s] watching %s%s for %s -> route %s (priority %d, debounce %.2f s, %s)",
                          w.mon.name, w.root, " (recursive)" if w.readers.recursive else "", w.mon.filemask,
                          w.mon.route or "(default run)", w.mon.priority, w.mon.debounce, kind)
        for w in self.watches:
            if w.mon.process_existing:
                n = self.arrivals.rescan(w, now)
                if n:
                    self.log.info("[%s] %d file(s) already waiting", w.mon.name, n)
            else:
                n = self.arrivals.known(w)
                self.log.info("[%s] %d file(s) already waiting left for the next job ([dirmonitor] "
                              "process_existing = False)", w.mon.name, n)
            w.next_rescan = now + w.mon.rescan
        self.write_heartbeat()
        self._next_heartbeat = now + HEARTBEAT_EVERY
        self._next_supervise = now + SUPERVISE_EVERY

    def loop(self, now: float | None = None) -> float:
        """Handle the events that arrived, count files that became ready, publish due jobs, rescan,
        supervise and beat when due; the seconds until something is due again."""
        now = time.monotonic() if now is None else now
        self._handle_events(now)
        waits = [self.arrivals.check(now), self.triggers.fire(now), self.arrivals.rescans(now)]
        if now >= self._next_supervise:
            self._next_supervise = now + SUPERVISE_EVERY
            self.watching.supervise(now, lambda w: self.arrivals.rescan(w, now))
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + HEARTBEAT_EVERY
            self.write_heartbeat()
        waits += [self._next_supervise - now, self._next_heartbeat - now]
        return max(0.0, min(waits))

    def _handle_events(self, now: float, first: tuple[Watch, Any] | None = None) -> None:
        """``first`` (already taken from the queue), then the queued events in order."""
        item = first
        for _ in range(MAX_EVENTS_PER_LOOP):
            if item is None:
                try:
                    item = self.watching.events.get_nowait()
                except queue.Empty:
                    return
            if self.arrivals.handle(item[0], item[1], now):
                self._next_supervise = now          # the watched folder itself went away
            item = None

    def step(self, max_wait: float = 1.0) -> None:
        """One turn of the loop, then wait - at most ``max_wait`` seconds - for events or until
        something is due; events that arrived are handled at once."""
        wait = min(max_wait, self.loop(time.monotonic()))
        if wait <= 0:
            return
        try:
            first = self.watching.events.get(timeout=wait)
        except queue.Empty:
            return
        self._handle_events(time.monotonic(), first)

    def run(self) -> None:
        self.initialize()
        try:
            while not self.stop_event.is_set():
                self.step()
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Events already seen still count: queue what is ready, then stop watching."""
        self._handle_events(time.monotonic())
        if self.triggers.pending:
            self.triggers.fire(time.monotonic(), flush=True)
        for w in self.watches:
            self.watching.unwatch(w)
        self.watching.listen_for_overflow(False)
        waiting = sum(len(w.candidates) for w in self.watches)
        if waiting:
            self.log.info("%d file(s) were not ready yet; they are picked up at the next start", waiting)
        self.write_heartbeat("stopped")
        self.log.info("stopped")

    # ------------------------------------------------------------------ heartbeat
    def write_heartbeat(self, state: str = "running") -> None:
        t = self.triggers
        data: dict[str, Any] = {
            "pid": os.getpid(), "host": socket.gethostname(), "state": state,
            "time": datetime.now(UTC).isoformat(), "timestamp": time.time(),
            "started": self.started.isoformat(), "interval": HEARTBEAT_EVERY,
            "monitors": [{"name": w.mon.name, "path": w.root, "route": w.mon.route,
                          "watching": w.missing_since is None and w.observer is not None,
                          "waiting_files": len(w.candidates)} for w in self.watches],
            "pending_jobs": len(t.pending), "jobs_sent": t.jobs_sent,
            "last_job_at": t.last_job_at, "broker_ok": t.broker_ok,
        }
        write_heartbeat(self.heartbeat_file, data, self.log)
