"""What the steps of one run share: the config, the log, the run's id and counts, its errors for
the report, its open channels and their readiness rule, progress reporting and the lock check.

Every step (receive, deliver, recovery, the commands) takes the :class:`RunContext`; only the
session (:mod:`engine.run.session`) creates one.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from engine.config import Config
from engine.config.lanes import DEFAULT_LANE
from engine.lock import EngineLockHandle
from engine.readiness import Readiness
from engine.run.channel_pool import ChannelPool
from engine.run.tracking import Tracker
from engine.sightings import EmptySightings

ProgressCallback = Callable[[dict[str, Any]], None]
PROGRESS_EVERY = 0.5        # seconds between progress callbacks
MAX_REPORTED_ERRORS = 1000  # errors listed one by one in a report (all are in the log and the database)


class LockLost(Exception):
    """Another run took the engine lock over: this run stops at the next file."""


class ErrorKind(StrEnum):
    FILE = "file"
    COMMUNICATION = "communication"


@dataclass(slots=True)
class RunError:
    kind: ErrorKind
    route: str
    file: str
    reason: str


@dataclass(slots=True)
class Counts:
    """What a run did; ``as_dict()`` is :attr:`engine.run.RunResult.counts`."""
    received: int = 0
    processed: int = 0
    sent: int = 0
    file_errors: int = 0
    comm_errors: int = 0
    rereceived: int = 0
    resent: int = 0
    retried: int = 0
    recovered: int = 0
    cleaned: int = 0
    removed_late: int = 0       # received before, only removed at the source now

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class RunContext:
    def __init__(self, cfg: Config, log: logging.Logger, progress: ProgressCallback | None = None,
                 lane: str = DEFAULT_LANE) -> None:
        self.cfg = cfg
        self.log = log
        self.lane = lane                    # the run's lane: its lock, its routes, its recovery
        self.tracker = Tracker(cfg.database_url)
        self.botssys = cfg.directories.botssys
        self.channels = ChannelPool(cfg, log)
        self.readiness = Readiness(EmptySightings(cfg.database_url), log)   # in-channels: complete files only
        self.progress_cb = progress
        self.run_id = 0
        self.lock: EngineLockHandle | None = None
        self.day = datetime.now().strftime("%Y%m%d")
        self.counts = Counts()
        self.errors: list[RunError] = []
        self._in_seq = 0
        self._out_seq = 0
        self._last_progress = 0.0
        self._dirs_made: set[Path] = set()

    # ------------------------------------------------------------------ names and folders
    def next_archive_name(self) -> str:
        """``<run>-<n>``: the archive name of the next received file (unique within the day's folder)."""
        self._in_seq += 1
        return f"{self.run_id}-{self._in_seq}"

    def next_output_seq(self) -> int:
        """The output number within the run (the ``{seq}`` of file name templates)."""
        self._out_seq += 1
        return self._out_seq

    def folder(self, p: Path) -> Path:
        """``p``, created once per run."""
        if p not in self._dirs_made:
            p.mkdir(parents=True, exist_ok=True)
            self._dirs_made.add(p)
        return p

    # ------------------------------------------------------------------ outcomes
    def file_error(self, route: str, file: str, reason: str) -> None:
        self.counts.file_errors += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(RunError(ErrorKind.FILE, route, file, reason))
        self.log.error("route %s, file %s: %s", route, file, reason)

    def comm_error(self, route: str, file: str, reason: str) -> None:
        self.counts.comm_errors += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(RunError(ErrorKind.COMMUNICATION, route, file, reason))
        self.log.error("route %s, %s: %s", route, file or "channel", reason)

    def check_lock(self) -> None:
        """Raise LockLost when another run took the lock over (checked between files and batches)."""
        if self.lock is not None and self.lock.lost:
            raise LockLost()

    # ------------------------------------------------------------------ progress
    @property
    def wants_progress(self) -> bool:
        return self.progress_cb is not None

    def progress(self, force: bool = False, **info: Any) -> None:
        """Tell the progress callback (at most every PROGRESS_EVERY seconds unless ``force``):
        ``phase``, ``route``, ``part``, ``files_done``, ``files_total``."""
        if self.progress_cb is None:
            return
        now = time.monotonic()
        if not force and now - self._last_progress < PROGRESS_EVERY:
            return
        self._last_progress = now
        data: dict[str, Any] = dict(route=None, part=None, files_done=0, files_total=None, phase=None)
        data.update(info)
        try:
            self.progress_cb(data)
        except Exception:  # noqa: BLE001 - a progress consumer never breaks a run
            self.log.debug("progress callback failed", exc_info=True)
