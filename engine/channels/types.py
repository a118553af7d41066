"""The channel types: the one table that both routes.toml validation and ``make_channel`` use.

Per type: its implementation (``module:Class``, imported only when a channel of that type is
opened, so a site without SFTP never loads paramiko), the keys a ``[channels.NAME]`` table may
hold with their types, the keys it must hold, and whether it can receive (every type sends).
A new channel type is one entry here plus its module.

This module imports nothing from botsq: :mod:`engine.config` reads it while it loads.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

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


@dataclass(frozen=True)
class ChannelType:
    """One channel type: what implements it and which keys its config takes."""
    name: str
    implementation: str                  # "module:Class"
    keys: Mapping[str, KeyType]          # allowed keys (besides "type") and their types
    required: tuple[str, ...]
    receives: bool = True                # False: an out-channel only (smtp)

    def load(self) -> type:
        """The implementing class (imports its module); ImportError when a library is missing."""
        module, cls = self.implementation.split(":")
        return getattr(importlib.import_module(module), cls)


CHANNEL_TYPES: dict[str, ChannelType] = {t.name: t for t in (
    ChannelType("file", "engine.channels.file:FileChannel",
                {"path": str, "filemask": str, "remove": bool, "filename": str, "maxsecondsperchannel": float},
                required=("path",)),
    ChannelType("ftp", "engine.channels.ftp:FtpChannel", {**_REMOTE, "passive": bool}, required=("host",)),
    ChannelType("ftps", "engine.channels.ftp:FtpsChannel",
                {**_REMOTE, "passive": bool, "cafile": str, "verify": bool}, required=("host",)),
    ChannelType("sftp", "engine.channels.sftp:SftpChannel",
                {**_REMOTE, "known_hosts": str, "key_file": str, "insecure_no_host_key_check": bool},
                required=("host",)),
    ChannelType("smtp", "engine.channels.smtp:SmtpChannel",
                {**_REMOTE, "to": (str, list), "sender": str, "starttls": bool, "ssl": bool, "cafile": str,
                 "verify": bool},
                required=("host", "to"), receives=False),
)}


def make_channel(spec: ChannelSpec, cfg: Config, log: logging.Logger) -> Channel:
    """A new, unopened channel object of ``spec``'s type; ImportError when its library is missing."""
    return CHANNEL_TYPES[spec.type].load()(spec, cfg, log)


__all__ = ["ChannelType", "CHANNEL_TYPES", "make_channel"]
