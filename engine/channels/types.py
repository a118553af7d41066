"""The channel types: the one table that both routes.toml validation and ``make_channel`` use.

Per type: its implementation (``module:Class``, imported only when a channel of that type is
opened, so a site without SFTP never loads paramiko), the keys a ``[channels.NAME]`` table may
hold with their types, the keys it must hold, whether it can receive (every type sends) and the
default of its ``settle`` key (:mod:`engine.readiness`). :data:`VALUE_CHECKS` rules out the values
a key's type alone does not. A new channel type is one entry here plus its module.

This module imports nothing from botsq: :mod:`engine.config` reads it while it loads.
"""
from __future__ import annotations

import codecs
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:                       # annotations only: importing them here would be a cycle
    import logging

    from engine.channels.base import Channel
    from engine.config import ChannelSpec, Config

KeyType = type | tuple[type, ...]

# keys every remote type has (see the contract's "Remote channel keys")
_REMOTE: dict[str, KeyType] = {
    "host": str, "port": int, "user": str, "password": str, "path": str, "filemask": str,
    "remove": bool, "filename": str, "timeout": float, "maxsecondsperchannel": float,
}
# keys of the remote types that receive: readiness, and file names where the protocol fixes no encoding
_REMOTE_IN: dict[str, KeyType] = {"settle": float, "encoding": str}

# Default ``settle`` (seconds), see engine/readiness.py. A local folder: 0.5 s, the directory
# monitor's default debounce, so its close -> file received path waits no longer; writers on this
# host are seen in /proc anyway (raise it on network shares, where writers on other hosts are not).
# A remote folder: 2 s, past the one-second resolution of the times FTP (MLSD ``modify``, LIST)
# and SFTP list, so a file still written in that second shows a changed time or size.
SETTLE_LOCAL = 0.5
SETTLE_REMOTE = 2.0


@dataclass(frozen=True)
class ChannelType:
    """One channel type: what implements it and which keys its config takes."""
    name: str
    implementation: str                  # "module:Class"
    keys: Mapping[str, KeyType]          # allowed keys (besides "type") and their types
    required: tuple[str, ...]
    receives: bool = True                # False: an out-channel only (smtp)
    settle: float = 0.0                  # default of the settle key, seconds (types that receive)

    def load(self) -> type:
        """The implementing class (imports its module); ImportError when a library is missing."""
        module, cls = self.implementation.split(":")
        return getattr(importlib.import_module(module), cls)


CHANNEL_TYPES: dict[str, ChannelType] = {t.name: t for t in (
    ChannelType("file", "engine.channels.file:FileChannel",
                {"path": str, "filemask": str, "remove": bool, "filename": str, "maxsecondsperchannel": float,
                 "settle": float},
                required=("path",), settle=SETTLE_LOCAL),
    ChannelType("ftp", "engine.channels.ftp:FtpChannel", {**_REMOTE, **_REMOTE_IN, "passive": bool},
                required=("host",), settle=SETTLE_REMOTE),
    ChannelType("ftps", "engine.channels.ftp:FtpsChannel",
                {**_REMOTE, **_REMOTE_IN, "passive": bool, "cafile": str, "verify": bool}, required=("host",),
                settle=SETTLE_REMOTE),
    ChannelType("sftp", "engine.channels.sftp:SftpChannel",
                {**_REMOTE, **_REMOTE_IN, "known_hosts": str, "key_file": str, "insecure_no_host_key_check": bool},
                required=("host",), settle=SETTLE_REMOTE),
    ChannelType("smtp", "engine.channels.smtp:SmtpChannel",
                {**_REMOTE, "to": (str, list), "sender": str, "starttls": bool, "ssl": bool, "cafile": str,
                 "verify": bool},
                required=("host", "to"), receives=False),
)}


def _known_encoding(name: str) -> bool:
    try:
        return getattr(codecs.lookup(name), "_is_text_encoding", True)   # not rot13 and the like
    except LookupError:
        return False


# values a key's type alone does not rule out: key -> (test of the typed value, what is expected)
VALUE_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "settle": (lambda v: v >= 0, "seconds, 0 or more (0 turns the check off)"),
    "timeout": (lambda v: v > 0, "seconds, more than 0"),
    "encoding": (_known_encoding, "an encoding Python knows, such as \"utf-8\" or \"cp1252\""),
    # a name inside the channel's folder: "sub/{infile}" was silently cut to "{infile}"; the folder is `path`
    "filename": (lambda v: "/" not in v and "\\" not in v,
                 "a file name without a folder (no / or \\; the channel's path is the folder)"),
}


def make_channel(spec: ChannelSpec, cfg: Config, log: logging.Logger) -> Channel:
    """A new, unopened channel object of ``spec``'s type; ImportError when its library is missing."""
    return CHANNEL_TYPES[spec.type].load()(spec, cfg, log)


__all__ = ["ChannelType", "CHANNEL_TYPES", "VALUE_CHECKS", "SETTLE_LOCAL", "SETTLE_REMOTE", "make_channel"]
