"""Channel types by name; ``open_channel`` builds the right one for a ChannelSpec."""
from __future__ import annotations

import importlib
import logging

from engine.channels.base import Channel, CommunicationError, FileGone, IncomingItem, Refused, safe_name
from engine.config import ChannelSpec, Config

# type -> "module:Class"; imported lazily so a site without SFTP never loads paramiko.
CHANNEL_TYPES = {
    "file": "engine.channels.file:FileChannel",
    "ftp": "engine.channels.ftp:FtpChannel",
    "ftps": "engine.channels.ftp:FtpsChannel",
    "sftp": "engine.channels.sftp:SftpChannel",
    "smtp": "engine.channels.smtp:SmtpChannel",
}


def make_channel(spec: ChannelSpec, cfg: Config, log: logging.Logger) -> Channel:
    module, cls = CHANNEL_TYPES[spec.type].split(":")
    return getattr(importlib.import_module(module), cls)(spec, cfg, log)


__all__ = ["Channel", "CommunicationError", "FileGone", "IncomingItem", "Refused", "safe_name", "make_channel",
           "CHANNEL_TYPES"]
