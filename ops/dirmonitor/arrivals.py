"""Files arriving in a watched folder, until they are ready (:mod:`engine.readiness`).

Events (or a rescan) make a file a :class:`~ops.dirmonitor.watching.Candidate`; a candidate that
is ready is counted once (:meth:`Arrivals.ready`: unchanged files are never counted twice) and
handed to ``on_ready`` - the monitor adds it to its route's job. Every time is the monitor's
clock (``now``, seconds), passed in; only a file's age on disk is compared with the wall clock.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from watchdog import events as ev

from engine.config import DirMonitor
from engine.readiness import Signature, open_for_writing, signature
from ops.dirmonitor.watching import Candidate, CandidateKind, Watch, Watching

CHECK_EVERY = 0.05          # seconds between checks while files wait for readiness
CREATED_SETTLE = 0.03       # a bare "created" waits this long for an "opened" that marks a writer
WRITING_RECHECK = 1.0       # files seen open for writing are re-checked this often (lost events)

OnReady = Callable[[DirMonitor, str, float], None]   # (section, path, now)


class Arrivals:
    def __init__(self, watching: Watching, on_ready: OnReady, log: logging.Logger) -> None:
        self.watching, self.on_ready, self.log = watching, on_ready, log
        self._proc_complete: bool | None = None

    # ------------------------------------------------------------------ events
    def handle(self, w: Watch, event: Any, now: float) -> bool:
        """One watchdog event; True when the watched folder itself went away (supervise now)."""
        etype = type(event)
        src = os.fsdecode(event.src_path)
        if event.is_directory:
            if etype is ev.DirDeletedEvent and src == w.root:
                return True
            if etype in (ev.DirCreatedEvent, ev.DirMovedEvent) and w.readers.recursive:
                # files that arrive inside a moved-in folder bring no events of their own
                self.rescan(w, now, os.fsdecode(getattr(event, "dest_path", "") or src))
            return False        # a sub-folder's files count only with recursive (kind = bots, agreement.py)
        if etype is ev.FileMovedEvent:
            w.candidates.pop(src, None)
            w.done.pop(src, None)
            dest = os.fsdecode(event.dest_path)
            if dest and w.matches(dest):
                w.candidates.pop(dest, None)
                self.ready(w, dest, now)
            return False
        if not w.matches(src):
            return False
        if etype is ev.FileClosedEvent:                       # closed after writing
            w.candidates.pop(src, None)
            self.ready(w, src, now)
        elif etype is ev.FileCreatedEvent:
            if w.mon.polling:
                self.settle(w, src, now)
            else:                                             # written here, or moved in from outside
                w.candidates[src] = Candidate(CandidateKind.CREATED, now)
        elif etype is ev.FileOpenedEvent:
            c = w.candidates.get(src)
            if c is not None and c.kind == CandidateKind.CREATED:
                c.kind, c.checked = CandidateKind.WRITING, now
        elif etype is ev.FileClosedNoWriteEvent:
            c = w.candidates.get(src)
            if c is not None and c.kind == CandidateKind.WRITING:   # that open was a reader: look again
                c.kind = CandidateKind.CREATED
        elif etype is ev.FileModifiedEvent:
            if w.mon.polling:
                self.settle(w, src, now)
        elif etype is ev.FileDeletedEvent:
            w.candidates.pop(src, None)
            w.done.pop(src, None)
        return False

    def settle(self, w: Watch, path: str, now: float) -> None:
        c = w.candidates.get(path)
        sig = signature(path)
        if c is None or c.kind != CandidateKind.SETTLE:
            w.candidates[path] = Candidate(CandidateKind.SETTLE, now, sig, now)
        elif sig != c.sig:
            c.sig, c.sig_at = sig, now

    def ready(self, w: Watch, path: str, now: float, sig: Signature | None = None) -> bool:
        """Count a ready file; False if gone or counted before unchanged."""
        sig = sig or signature(path)
        if sig is None:                                        # gone already (or not a file)
            return False
        if w.done.get(path) == sig:                            # counted before, unchanged
            return False
        w.done[path] = sig
        self.on_ready(w.mon, path, now)
        return True

    # ------------------------------------------------------------------ waiting files
    def check(self, now: float) -> float:
        """Count candidates that became ready; seconds until the next check (inf when none wait)."""
        waiting = False
        to_check: list[tuple[Watch, str, Candidate]] = []
        for w in self.watching.watches:
            for path, c in list(w.candidates.items()):
                waiting = True
                if c.kind == CandidateKind.CREATED:
                    if now - c.since >= CREATED_SETTLE:
                        to_check.append((w, path, c))
                    continue
                # WRITING: someone had it open; look again now and then. SETTLE: no close events
                # (polling), so a file counts once it has not changed for the debounce.
                if c.kind == CandidateKind.WRITING:
                    if now - c.checked < WRITING_RECHECK:
                        continue
                    c.checked = now
                hold = max(w.mon.debounce, WRITING_RECHECK) if c.kind == CandidateKind.WRITING else w.mon.debounce
                sig = signature(path)
                if sig is None:
                    del w.candidates[path]
                elif sig != c.sig:
                    c.sig, c.sig_at = sig, now
                elif now - c.sig_at >= hold:
                    to_check.append((w, path, c))
        if to_check:
            writers, complete = open_for_writing({p for _, p, _ in to_check})
            if self._proc_complete != complete:
                self._proc_complete = complete
                if not complete:
                    self.log.info("cannot see every process's open files (/proc); a moved-in file also "
                                  "waits until its size is stable for the debounce time")
            for w, path, c in to_check:
                if path in writers:
                    c.kind, c.checked = CandidateKind.WRITING, now
                    continue
                if c.kind == CandidateKind.CREATED and not complete:
                    c.kind = CandidateKind.SETTLE
                    c.sig, c.sig_at = signature(path), now
                    continue
                w.candidates.pop(path, None)
                self.ready(w, path, now)
        return CHECK_EVERY if waiting else float("inf")

    # ------------------------------------------------------------------ rescans
    @staticmethod
    def _walk(w: Watch, top: str) -> list[str]:
        """The files under ``top`` that count (sub-folders only when they count: agreement.py)."""
        out: list[str] = []
        stack = [top]
        while stack:
            d = stack.pop()
            try:
                with os.scandir(d) as it:
                    for entry in it:
                        try:
                            if entry.is_dir(follow_symlinks=False):
                                if w.readers.recursive:
                                    stack.append(entry.path)
                            elif entry.is_file() and w.matches(entry.path):
                                out.append(entry.path)
                        except OSError:
                            continue
            except OSError:
                continue
        return out

    def rescan(self, w: Watch, now: float, top: str | None = None) -> int:
        """Look at every matching file (under ``top``, default the whole folder): ready ones count,
        young ones wait. Returns files counted."""
        wall = time.time()                      # a file's age on disk is wall-clock time
        found = self._walk(w, top or w.root)
        seen = set(found)
        if top is None:
            for path in [p for p in w.done if p not in seen]:
                del w.done[path]
            for path in [p for p in w.candidates if p not in seen]:
                del w.candidates[path]
        old: dict[str, Signature] = {}
        for path in found:
            sig = signature(path)
            if sig is None or w.done.get(path) == sig:
                continue
            c = w.candidates.get(path)
            if c is not None and c.kind == CandidateKind.WRITING:
                continue
            try:
                age = wall - os.stat(path).st_mtime
            except OSError:
                continue
            if age >= w.mon.debounce:
                old[path] = sig
            elif c is None:
                w.candidates[path] = Candidate(CandidateKind.SETTLE, now, sig, now)
        if not old:
            return 0
        writers, _complete = open_for_writing(set(old))
        counted = 0
        for path, sig in old.items():
            if path in writers:
                w.candidates[path] = Candidate(CandidateKind.WRITING, now, sig, now, now)
            else:
                w.candidates.pop(path, None)
                counted += self.ready(w, path, now, sig)
        return counted

    def known(self, w: Watch) -> int:
        """Note every matching file in the folder as counted, as it is now, without queueing a job
        (``[dirmonitor] process_existing = False``); how many. A file that changes later counts then."""
        noted = 0
        for path in self._walk(w, w.root):
            sig = signature(path)
            if sig is not None:
                w.done[path] = sig
                noted += 1
        return noted

    def rescans(self, now: float) -> float:
        """The periodic rescans, and one of every folder after an inotify overflow; seconds until the next."""
        if self.watching.overflow.is_set():
            self.watching.overflow.clear()
            self.log.warning("inotify queue overflowed: events were lost; rescanning every folder")
            for w in self.watching.watches:
                if w.missing_since is None:
                    n = self.rescan(w, now)
                    w.next_rescan = now + w.mon.rescan
                    if n:
                        self.log.info("[%s] rescan found %d file(s) ready", w.mon.name, n)
        nxt = float("inf")
        for w in self.watching.watches:
            if w.mon.rescan > 0 and w.missing_since is None:
                if now >= w.next_rescan:
                    w.next_rescan = now + w.mon.rescan
                    n = self.rescan(w, now)
                    if n:
                        self.log.info("[%s] rescan found %d file(s) ready that no event announced", w.mon.name, n)
                nxt = min(nxt, w.next_rescan - now)
        return nxt
