"""When a file waiting at an in-channel is complete: the one rule for the engine and the directory monitor.

A file is taken only when its writer is done (issue 9, section 1):

* local folder (``file`` channels, and the directory monitor's watched folders): no process holds
  it open for writing (:func:`open_for_writing`, from ``/proc``) and - where a write is not
  announced by a close (the engine's listing, polling, network shares, a file moved in while
  ``/proc`` is not fully readable) - its :func:`signature` (inode, size, mtime) has stayed the same
  for the settle time;
* remote folder (``ftp``, ``ftps``, ``sftp``): its size (and its time, where the server lists one)
  is the same in two listings ``settle`` seconds apart;
* a zero-byte remote file is an upload that has not sent data yet (connections can take seconds
  before the first byte; Bots skips zero-byte FTP files altogether): it is left alone until it has
  stayed empty for :data:`EMPTY_AFTER` seconds across runs (remembered in the tracking database,
  :class:`engine.sightings.EmptySightings`), then taken and reported as an empty file.

The engine applies it through :class:`Readiness` (a "settled listing" per channel per run); the
directory monitor (``ops/dirmonitor/arrivals.py``) calls :func:`open_for_writing` and
:func:`signature` itself with its ``debounce`` as the settle time. The settle time of a channel
is its ``settle`` key, by default its type's (:data:`engine.channels.types.CHANNEL_TYPES`). The
wait costs at most one ``settle`` and one extra listing per channel per run, never per file, and
nothing when no file could still be changing (a local file older than ``settle`` that nobody holds
open; an empty remote folder). ``settle = 0`` turns the check off (files are taken as listed).
"""
from __future__ import annotations

import itertools
import logging
import os
import stat
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

from engine.channels.base import Channel, IncomingItem
from engine.channels.types import CHANNEL_TYPES

# How long a remote file may stay at 0 bytes before it counts as an empty file (a file error):
# far past any connection's wait for its first byte, short enough that a truly empty file is
# reported the same hour.
EMPTY_AFTER = 60.0
MAX_NAMED = 10          # held-back files named one by one in the log line of a run


class Clock(Protocol):
    """Wall-clock seconds (compared with file times) and a sleep; tests pass their own."""

    def time(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock: ``time.time`` and ``time.sleep``."""

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class Sightings(Protocol):
    """Remembers since when a remote file has been seen empty (see engine.sightings)."""

    def empty_since(self, channel: str, names: Collection[str], now: datetime) -> dict[str, datetime]: ...


# --------------------------------------------------------------------------- who writes a file, has it changed

Signature = tuple[int, int, int]        # inode, size, mtime_ns


def signature(path: str) -> Signature | None:
    """(inode, size, mtime in ns) of a regular file; None when it is gone or not a regular file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def open_for_writing(paths: set[str]) -> tuple[set[str], bool]:
    """(the paths some process holds open for writing, whether every process could be inspected).

    Linux only: each process's ``/proc/PID/fd`` links and ``fdinfo`` flags; a process whose fds
    this user may not read makes the answer incomplete (then the signature rule must decide)."""
    found: set[str] = set()
    complete = True
    if not paths:
        return found, True
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return found, False
    for pid in pids:
        fddir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fddir)
        except PermissionError:
            complete = False
            continue
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fddir}/{fd}")
            except OSError:
                continue
            if target not in paths:
                continue
            try:
                with open(f"/proc/{pid}/fdinfo/{fd}", encoding="ascii") as fh:
                    flags = next((int(line.split()[1], 8) for line in fh if line.startswith("flags:")), 0)
            except (OSError, ValueError):
                flags = os.O_WRONLY
            if flags & 3 in (os.O_WRONLY, os.O_RDWR):
                found.add(target)
    return found, complete


# --------------------------------------------------------------------------- a settled listing

@dataclass
class Settled:
    """The files of a channel's listing that are complete, in listing order, plus those held back.

    Sized and iterable like a channel's listing (the engine receives exactly these); ``held`` maps
    the names left for a later run to why; ``listed`` holds every name listed, ready or not (a
    file still at the source, even one held back, is not "gone" for the pending-removal marks).
    """
    ready: list[IncomingItem] | Any
    held: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ready)

    def __iter__(self) -> Iterator[IncomingItem]:
        return iter(self.ready)

    @property
    def listed(self) -> Iterator[IncomingItem]:
        """Every file listed, ready or held back, made one at a time (100,000 files stay small)."""
        return itertools.chain(self.ready, (IncomingItem(name, None, None) for name in self.held))


class Readiness:
    """The receive step's "settled listing": lists a channel and keeps only its complete files.

    ``clock`` gives wall time and sleeps (tests step it); ``sightings`` remembers empty remote
    files across runs. One object serves a whole run.
    """

    def __init__(self, sightings: Sightings, log: logging.Logger, clock: Clock | None = None) -> None:
        self.sightings, self.log, self.clock = sightings, log, clock or SystemClock()

    def settle_of(self, ch: Channel) -> float:
        """The channel's ``settle`` key in seconds, else its type's default (CHANNEL_TYPES)."""
        value = ch.spec.get("settle")
        return CHANNEL_TYPES[ch.spec.type].settle if value is None else float(value)

    def listing(self, ch: Channel) -> Settled | Any:
        """The channel's files that are complete now; raises what ``list_incoming`` raises.

        With ``settle = 0`` the channel's own listing is returned untouched.
        """
        settle = self.settle_of(ch)
        first = ch.list_incoming()
        if settle <= 0:
            return first
        if ch.local:
            settled = self._local(ch, first, settle)
        else:
            settled = self._remote(ch, list(first), settle)
        if settled.held:
            named = ", ".join(f"{n!r} ({why})" for n, why in list(settled.held.items())[:MAX_NAMED])
            more = len(settled.held) - MAX_NAMED
            self.log.info("channel %s: %d file(s) not complete yet, left for a later run: %s%s", ch.name,
                          len(settled.held), named, f" and {more} more" if more > 0 else "")
        return settled

    # ------------------------------------------------------------------ local
    def _local(self, ch: Channel, listing: Any, settle: float) -> Settled:
        """Held: open for writing; else its signature changed while waited for (once per channel) until
        the newest of the young files (changed within ``settle``) was ``settle`` old."""
        now = self.clock.time()
        paths = {str(item.ref) for item in listing}
        writers, _complete = open_for_writing(paths)
        held: dict[str, str] = {}
        young: dict[str, IncomingItem] = {}
        for item in listing:
            if str(item.ref) in writers:
                held[item.name] = "open for writing"
            elif item.mtime is None or now - item.mtime < settle:
                young[str(item.ref)] = item
        if young:
            before = {path: signature(path) for path in young}
            newest = max((sig[2] / 1e9 for sig in before.values() if sig is not None), default=now)
            self.clock.sleep(min(settle, max(0.0, newest + settle - now)))
            writers, _complete = open_for_writing(set(young))
            for path, item in young.items():
                if path in writers:
                    held[item.name] = "open for writing"
                elif before[path] is None or signature(path) != before[path]:
                    held[item.name] = f"changed within the last {settle:g} s"
        if not held:
            return Settled(listing)
        keep = getattr(listing, "without", None)
        ready = keep(set(held)) if keep is not None else [i for i in listing if i.name not in held]
        return Settled(ready, held)

    # ------------------------------------------------------------------ remote
    def _remote(self, ch: Channel, first: list[IncomingItem], settle: float) -> Settled:
        """Held: changed between two listings ``settle`` apart, new in the second, or empty and young."""
        held: dict[str, str] = {}
        now = self.clock.time()
        empty = [i.name for i in first if i.size == 0]
        since = self.sightings.empty_since(ch.name, empty, datetime.fromtimestamp(now, timezone.utc)
                                           .replace(tzinfo=None))
        candidates: dict[str, IncomingItem] = {}
        for item in first:
            if item.size == 0:
                waited = now - since[item.name].replace(tzinfo=timezone.utc).timestamp()
                if waited < EMPTY_AFTER:
                    held[item.name] = f"empty for {max(waited, 0):.0f} s, the upload may not have begun"
                    continue
            candidates[item.name] = item
        if not candidates:
            return Settled([], held)
        self.clock.sleep(settle)
        ready: list[IncomingItem] = []
        for item in ch.list_incoming():
            before = candidates.get(item.name)
            if before is None:
                if item.name not in held:
                    held[item.name] = "new since the first listing"
            elif _same(before, item):
                ready.append(item)
            else:
                held[item.name] = f"changed within {settle:g} s (size {before.size} -> {item.size})"
        return Settled(ready, held)


def _same(a: IncomingItem, b: IncomingItem) -> bool:
    """Same size, and same time where both listings show one."""
    if a.size != b.size:
        return False
    return a.mtime is None or b.mtime is None or a.mtime == b.mtime
