"""Logging: one logger per component, to ``botssys/logging/<component>.log`` and the console.

Secrets from the config never reach a log line: every handler set up here redacts them.
"""
from __future__ import annotations

import logging
import os
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:                       # annotation only: engine.config imports this module
    from engine.config import Config

_secrets: set[str] = set()
_configured: set[tuple[str, str]] = set()
FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def register_secrets(values: list[str]) -> None:
    """Values that must never appear in a log line."""
    _secrets.update(v for v in values if v and len(v) >= 3)


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    for s in sorted(_secrets, key=len, reverse=True):
        text = text.replace(s, "***")
    return text


def redact_data(data: Any) -> Any:
    """A JSON-like value (dicts, lists, strings ...) with :func:`redact` applied to every string in
    it, keys included - before it is serialised, where an escaped secret would no longer match."""
    if isinstance(data, str):
        return redact(data)
    if isinstance(data, dict):
        return {redact_data(k): redact_data(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [redact_data(v) for v in data]
    return data


_URL_PASSWORD = re.compile(r"^([a-z0-9+]+://[^:/@]*):([^@]*)@")


def url_password(url: str) -> str:
    """The password in a URL such as ``amqp://user:secret@host//`` ("" when none)."""
    m = _URL_PASSWORD.match(url or "")
    return m.group(2) if m else ""


def mask_url(url: str) -> str:
    """A URL with its password replaced by ***, safe for messages and logs."""
    return _URL_PASSWORD.sub(r"\1:***@", url or "")


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def get_logger(component: str, logdir: Path | None = None, console: bool = True,
               level: int = logging.INFO) -> logging.Logger:
    """The logger ``botsq.<component>``, writing to ``<logdir>/<component>.log`` and stderr."""
    logger = logging.getLogger(f"botsq.{component}")
    logger.setLevel(level)
    logger.propagate = False
    fmt = RedactingFormatter(FORMAT)
    if logdir is not None and (component, str(logdir)) not in _configured:
        logdir.mkdir(parents=True, exist_ok=True)
        for h in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
            logger.removeHandler(h)
            h.close()
        # backslashreplace: a line holding a name's undecodable bytes is written, never a logging error
        fh = logging.FileHandler(logdir / f"{component}.log", encoding="utf-8", errors="backslashreplace")
        fh.setFormatter(fmt)
        logger.addHandler(fh)
        _configured.add((component, str(logdir)))
    if console and not any(getattr(h, "_botsq_console", False) for h in logger.handlers):
        ch = logging.StreamHandler(sys.stderr)
        ch.setFormatter(fmt)
        ch._botsq_console = True  # type: ignore[attr-defined]
        logger.addHandler(ch)
    return logger


def component_logger(component: str, cfg: Config) -> logging.Logger:
    """The component's logger for an environment (an :class:`engine.config.Config`), with its
    secrets registered. Raises OSError when the log folder cannot be written."""
    register_secrets(cfg.secrets())
    return get_logger(component, cfg.directories.logging)


def log_file(cfg: Config, component: str) -> Path:
    """Where :func:`component_logger` writes the component's log: ``botssys/logging/<component>.log``."""
    return cfg.directories.logging / f"{component}.log"


_STAMP = re.compile(rb"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")   # FORMAT's asctime, local time


def _local_key(when: datetime) -> bytes:
    """A naive UTC time as the asctime prefix FORMAT writes (local time), for comparing lines."""
    return when.replace(tzinfo=timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M:%S").encode()


def _next_stamp(fh: BinaryIO) -> bytes | None:
    while line := fh.readline():
        if _STAMP.match(line):
            return line[:19]
    return None


def lines_between(path: Path, start: datetime, end: datetime | None, limit: int = 1000) -> list[str]:
    """The lines a component's log got from ``start`` to ``end`` (naive UTC; None: up to now), at most
    ``limit``; lines without a time stamp (a traceback) go with the line before them. The log is
    appended in time order, so the first line is found by bisection: a large log costs a few reads.
    [] when the file does not exist."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError:
        return []
    with fh:
        size = os.fstat(fh.fileno()).st_size
        first, last = _local_key(start), _local_key(end) if end is not None else None
        lo, hi = 0, size
        while lo < hi:      # smallest offset after which the next stamped line is at or after `first`
            mid = (lo + hi) // 2
            fh.seek(mid)
            if mid:
                fh.readline()
            stamp = _next_stamp(fh)
            if stamp is None or stamp >= first:
                hi = mid
            else:
                lo = mid + 1
        fh.seek(max(lo - 1, 0))
        if lo:
            fh.readline()
        out: list[str] = []
        keep = False
        while len(out) < limit and (line := fh.readline()):
            if _STAMP.match(line):
                stamp = line[:19]
                if last is not None and stamp > last:
                    break
                keep = stamp >= first
            if keep:
                out.append(line.decode("utf-8", errors="replace").rstrip("\r\n"))
        return out
