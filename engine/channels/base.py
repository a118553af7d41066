"""The channel interface every communication type implements.

One channel object serves one channel for a whole run: ``open()`` once, many
``fetch``/``send`` calls over the same connection, ``close()`` at the end. Failures to
reach or talk to the partner raise :class:`CommunicationError` (one line, no secrets).
"""
from __future__ import annotations

import logging
import os
import re
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config import ChannelSpec, Config


class CommunicationError(Exception):
    """Talking to a partner failed; str() is one line naming channel and host, never a password."""


class Refused(CommunicationError):
    """The partner answered "no" to one request (permission denied, rename refused, recipient
    unknown ...); the connection is fine, so it is that file's problem, never the channel's."""


class FileGone(Refused):
    """A listed file was no longer there when it was fetched (taken or removed by someone else):
    nothing to receive, and no error."""


@dataclass(frozen=True)
class IncomingItem:
    """One file waiting at an in-channel. ``ref`` is the channel's own handle for it."""
    name: str          # the partner's name for the file (untrusted; undecodable bytes shown as U+FFFD)
    size: int | None
    ref: Any
    mtime: Any = None  # the time the listing shows (compared between listings only), None if not listed


_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]")


def shown_name(raw: str) -> str:
    """A name as the OS gave it (undecodable bytes as lone surrogates, Python's surrogateescape)
    made valid text: each such byte becomes U+FFFD. The file is still reached under ``raw``; the
    shown name is what the database (SQLite and PostgreSQL refuse lone surrogates), logs, reports
    and out-channel names get."""
    if raw.isascii():
        return raw
    try:
        data = raw.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:       # a surrogate no file system made (a mapping's meta["filename"])
        data = raw.encode("utf-8", "replace")
    return data.decode("utf-8", "replace")


def safe_name(name: str, fallback: str = "file") -> str:
    """A partner's file name made safe to use as one local path component and as a record.

    Remote names are untrusted: directory parts, ``..``, NUL and control characters
    never survive, so nothing can escape the folder the name is joined to; bytes that are not
    text (lone surrogates) become U+FFFD (:func:`shown_name`).
    """
    name = unicodedata.normalize("NFC", shown_name(str(name)))
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE.sub("_", name).strip()
    if name in ("", ".", ".."):
        return fallback
    return name[:200]


MAX_NAME_TRIES = 1000    # NAME, NAME_1 ... NAME_999: past that, the delivery fails (kept for retry)


def unique_names(name: str, tries: int = MAX_NAME_TRIES) -> Iterator[str]:
    """The names an output tries in turn when a file of its name is already at the partner:
    ``INVOIC.edi``, ``INVOIC_1.edi``, ``INVOIC_2.edi`` ... (the number before the extension, so a
    partner's mask such as ``*.edi`` still matches). Never overwriting is the rule of every
    out-channel that names files (file, ftp, ftps, sftp): Bots appends to an existing file of
    that name instead (its ``{overwrite}`` replaces), which a delivery through a temporary name and
    a rename cannot do; a unique name loses nothing either."""
    yield name
    stem, ext = os.path.splitext(name)      # only when the name is taken (most sends stop above)
    for n in range(1, tries):
        yield f"{stem}_{n}{ext}"


class Channel(ABC):
    """Base class: subclasses implement the in-side, the out-side, or both."""

    type: str = ""
    local = False    # a folder on this machine: readiness asks /proc who writes its files (refs are paths)

    def __init__(self, spec: ChannelSpec, cfg: Config, log: logging.Logger) -> None:
        self.spec, self.cfg, self.log = spec, cfg, log

    @property
    def name(self) -> str:
        return self.spec.name

    def describe(self) -> str:
        """How the channel is named in errors: ``channel 'x' (ftp host:port)``, no secrets."""
        host = self.spec.get("host")
        where = f"{host}:{self.spec.get('port')}" if host and self.spec.get("port") else (host or self.spec.get("path", ""))
        return f"channel {self.name!r} ({self.spec.type} {where})"

    def open(self) -> None:
        """Connect (remote channels); called once per run before the first transfer."""

    def close(self) -> None:
        """Disconnect; must not raise."""

    def __enter__(self) -> "Channel":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # in-side
    def list_incoming(self) -> Iterable[IncomingItem]:
        raise CommunicationError(f"{self.describe()}: cannot receive")

    def fetch(self, item: IncomingItem, dest: Path) -> None:
        """Write the whole content of ``item`` to the local file ``dest``."""
        raise CommunicationError(f"{self.describe()}: cannot receive")

    def delete(self, item: IncomingItem) -> None:
        """Remove ``item`` at the partner; called only after it is archived and recorded."""
        raise CommunicationError(f"{self.describe()}: cannot receive")

    # out-side
    @abstractmethod
    def send(self, src: Path, filename: str) -> str:
        """Deliver local file ``src`` as ``filename``; partners never see a half file. Returns the name
        the partner got: ``filename``, or when a file of that name is already there the first free
        name of :func:`unique_names` (never overwritten; smtp has no names to clash)."""
