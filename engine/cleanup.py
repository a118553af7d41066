"""Cleanup: run and file records, archived and stored files older than ``maxdays`` go.

Called by ``bots-engine --cleanup`` and automatically by the first run of a day when
``whencleanup = daily``. Day folders (``botssys/data/YYYYMMDD``, ``botssys/outfiles/YYYYMMDD``)
are removed whole; leftover `.tmp-` files of interrupted fetches (botsq before it archived under
the final name) go too.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import time
from datetime import datetime, timedelta

from sqlalchemy import delete

from engine.config import Config
from engine.db import session_scope
from engine.models import EmptySighting, Incoming, Outgoing, Run, RunStatus, utcnow

_DAY = re.compile(r"^\d{8}$")


def cleanup(cfg: Config, log: logging.Logger, now: datetime | None = None) -> int:
    """Remove what is older than maxdays; returns the number of records removed."""
    maxdays = cfg.settings.maxdays
    cutoff = (now or utcnow()) - timedelta(days=maxdays)
    removed = 0
    with session_scope(cfg.database_url) as s:
        removed += s.execute(delete(Outgoing).where(Outgoing.created < cutoff)).rowcount or 0
        removed += s.execute(delete(Incoming).where(Incoming.created < cutoff)).rowcount or 0
        removed += s.execute(delete(Run).where(Run.started < cutoff, Run.status != RunStatus.RUNNING)).rowcount or 0
        # sightings of a channel no longer listed (renamed, removed) are never settled by a listing
        s.execute(delete(EmptySighting).where(EmptySighting.first_seen < cutoff))
    cutoff_day = (datetime.now() - timedelta(days=maxdays)).strftime("%Y%m%d") if now is None \
        else (now - timedelta(days=maxdays)).strftime("%Y%m%d")
    folders = 0
    for sub in ("data", "outfiles"):
        base = cfg.directories.botssys / sub
        if not base.is_dir():
            continue
        for entry in os.scandir(base):
            if entry.is_dir() and _DAY.match(entry.name) and entry.name < cutoff_day:
                shutil.rmtree(entry.path, ignore_errors=True)
                folders += 1
            elif entry.is_dir():
                _remove_stale_tmp(entry.path)
    log.info("cleanup: %d record(s) and %d day folder(s) older than %d days removed", removed, folders, maxdays)
    return removed


def _remove_stale_tmp(folder: str, older_than: float = 86400) -> None:
    limit = time.time() - older_than
    try:
        for entry in os.scandir(folder):
            if entry.name.startswith(".tmp-") and entry.stat().st_mtime < limit:
                try:
                    os.unlink(entry.path)
                except OSError:
                    pass
    except OSError:
        pass
