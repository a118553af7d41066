"""The watched folders: one watchdog observer per ``[dirmonitorN]`` folder, every event into one
queue, and what the monitor knows per folder (files waiting to be ready, files counted).

A folder that goes away is noticed (and watched again when it comes back); an observer that died
is replaced; an inotify queue overflow - which watchdog only logs - sets :attr:`Watching.overflow`.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from watchdog import events as ev
from watchdog.events import FileSystemEventHandler
from watchdog.observers.inotify import InotifyObserver
from watchdog.observers.polling import PollingObserver

from engine.config import DirMonitor
from engine.readiness import Signature
from ops.dirmonitor.agreement import FolderReaders

_WATCHDOG_LOGGERS = ("watchdog.observers.inotify_c", "watchdog.observers.inotify")


class CandidateKind(StrEnum):
    CREATED = "created"        # appeared without a close: written here, or moved in from outside
    WRITING = "writing"        # someone had it open for writing: looked at again now and then
    SETTLE = "settle"          # no close events (polling): counts once unchanged for the debounce


@dataclass
class Candidate:
    """A file seen in a watched folder that is not ready yet. Times: the monitor's clock (seconds)."""
    kind: CandidateKind
    since: float                # first seen
    sig: Signature | None = None
    sig_at: float = 0.0         # when sig last changed
    checked: float = 0.0        # last writer check


@dataclass
class Watch:
    """One watched folder: its section, its observer, and its files."""
    mon: DirMonitor
    root: str                                                           # real path
    observer: Any = None
    ident: tuple[int, int] | None = None                                # (st_dev, st_ino) it was watched as
    missing_since: float | None = None
    candidates: dict[str, Candidate] = field(default_factory=dict)      # not ready yet
    done: dict[str, Signature] = field(default_factory=dict)            # counted, as they were then
    next_rescan: float = 0.0

    readers: FolderReaders = field(default_factory=lambda: FolderReaders({}))   # channels reading the folder

    def matches(self, path: str) -> bool:
        """Does the file count: the section's mask and the file channel's rule (ops/dirmonitor/agreement.py)."""
        return self.readers.counts(self.root, path, self.mon.filemask)


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


class Watching:
    def __init__(self, monitors: tuple[DirMonitor, ...], log: logging.Logger,
                 readers: dict[str, FolderReaders] | None = None) -> None:
        self.log = log
        self.watches = [Watch(m, os.path.realpath(m.path), readers=(readers or {}).get(m.name, FolderReaders({})))
                        for m in monitors]
        self.events: queue.SimpleQueue[tuple[Watch, Any]] = queue.SimpleQueue()
        self.overflow = threading.Event()
        self._overflow_handler = _OverflowFlag(self.overflow)
        self.drop_events = False            # tests: what an inotify overflow does to events

    def listen_for_overflow(self, on: bool) -> None:
        for name in _WATCHDOG_LOGGERS:
            logger = logging.getLogger(name)
            (logger.addHandler if on else logger.removeHandler)(self._overflow_handler)

    def _handler(self, w: Watch) -> FileSystemEventHandler:
        watching = self

        class Handler(FileSystemEventHandler):
            def dispatch(self, event: Any) -> None:  # every event, in the observer thread
                if not watching.drop_events:
                    watching.events.put((w, event))

        return Handler()

    @staticmethod
    def _event_filter(polling: bool) -> list[type]:
        base = [ev.FileCreatedEvent, ev.FileMovedEvent, ev.FileDeletedEvent, ev.DirDeletedEvent,
                ev.DirCreatedEvent, ev.DirMovedEvent]
        if polling:
            return base + [ev.FileModifiedEvent]
        return base + [ev.FileClosedEvent, ev.FileClosedNoWriteEvent, ev.FileOpenedEvent]

    def watch(self, w: Watch) -> bool:
        """(Re)start the observer of one folder; False when the folder is missing."""
        self.unwatch(w)
        try:
            st = os.stat(w.root)
        except OSError:
            return False
        if w.mon.polling:
            obs: Any = PollingObserver(timeout=max(0.1, min(1.0, w.mon.debounce / 2)))
        else:
            obs = InotifyObserver()
        try:
            obs.schedule(self._handler(w), w.root, recursive=w.readers.recursive,  # see agreement.py
                         event_filter=self._event_filter(w.mon.polling))
            obs.start()
        except OSError as exc:
            self.log.error("[%s] cannot watch %s: %s", w.mon.name, w.root, exc)
            return False
        w.observer = obs
        w.ident = (st.st_dev, st.st_ino)
        return True

    def unwatch(self, w: Watch) -> None:
        obs, w.observer = w.observer, None
        if obs is not None:
            try:
                obs.stop()
                obs.join(timeout=5)
            except Exception:  # noqa: BLE001 - stopping a dead observer
                pass

    def is_watching(self, w: Watch) -> bool:
        obs = w.observer
        if obs is None or not obs.is_alive():
            return False
        return all(e.is_alive() for e in obs.emitters) and bool(obs.emitters)

    def supervise(self, now: float, rescan: Callable[[Watch], object]) -> None:
        """Watch folders that came back (then ``rescan`` them); notice folders that went away or
        stopped being watched."""
        for w in self.watches:
            try:
                st = os.stat(w.root)
                ident: tuple[int, int] | None = (st.st_dev, st.st_ino) if os.path.isdir(w.root) else None
            except OSError:
                ident = None
            if ident is None:
                if w.missing_since is None:
                    w.missing_since = now
                    self.log.warning("[%s] folder %s is gone; watching for it to come back", w.mon.name, w.root)
                    self.unwatch(w)
                    w.candidates.clear()
                continue
            if w.missing_since is not None or ident != w.ident or not self.is_watching(w):
                was_missing = w.missing_since is not None
                if self.watch(w):
                    if was_missing:
                        self.log.info("[%s] folder %s is back; watching it again", w.mon.name, w.root)
                    else:
                        self.log.warning("[%s] watch on %s was lost; watching again", w.mon.name, w.root)
                    w.missing_since = None
                    rescan(w)
