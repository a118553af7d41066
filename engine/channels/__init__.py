"""Channels: how files come in from and go out to partners.

* :mod:`engine.channels.types` - the channel-type table (implementation, keys) and ``make_channel``;
* :mod:`engine.channels.base` - the interface (``Channel``, ``IncomingItem``, ``CommunicationError``
  and its per-file kinds ``Refused`` / ``FileGone``, ``safe_name``);
* one module per protocol: ``file``, ``ftp`` (ftp and ftps), ``sftp``, ``smtp``; ``remote`` holds what
  the remote ones share.

This package's own module imports nothing, so :mod:`engine.config` can read the type table
without loading a channel.
"""
