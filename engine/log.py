"""Logging: one logger per component, to ``botssys/logging/<component>.log`` and the console.

Secrets from the config never reach a log line: every handler set up here redacts them.
"""
from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:                       # annotation only: engine.config imports this module
    from engine.config import Config

_secrets: set[str] = set()
_configured: set[tuple[str, str]] = set()
FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def register_secrets(values: list[str]) -> None:
    """Values that must never appear in a log line."""
    _secrets.update(v for v in values if v and len(v) >= 3)


def redact(text: str) -> str:
    for s in sorted(_secrets, key=len, reverse=True):
        text = text.replace(s, "***")
    return text


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
        fh = logging.FileHandler(logdir / f"{component}.log", encoding="utf-8")
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
