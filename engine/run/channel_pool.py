"""The channels a run has open: one object per channel for the whole run (connections reused).

Whatever a channel raises is a communication error of that channel: :func:`communication_error`
makes it one line naming the channel, with the detail in the debug log. A channel that cannot
be opened stays failed for the rest of the run (every file of it gets the same error at once).
A ConfigError is the environment's fault, not the partner's: it passes through.
"""
from __future__ import annotations

import logging

from engine.channels.base import Channel, CommunicationError
from engine.channels.types import make_channel
from engine.config import Config
from engine.errors import ConfigError, one_line


def communication_error(exc: BaseException, channel: str, what: str, log: logging.Logger) -> CommunicationError:
    """Any failure inside a channel as a CommunicationError: ``channel 'x': <what>: <Type>: <first line>``."""
    if isinstance(exc, CommunicationError):
        return exc
    log.debug("channel %s: %s", channel, what, exc_info=exc)
    return CommunicationError(f"channel {channel!r}: {what}: {one_line(exc, with_type=True)}")


class ChannelPool:
    def __init__(self, cfg: Config, log: logging.Logger) -> None:
        self.cfg, self.log = cfg, log
        self._open: dict[str, Channel | CommunicationError] = {}

    def get(self, name: str) -> Channel:
        """The run's one open channel object for ``name``; raises CommunicationError."""
        ch = self._open.get(name)
        if ch is None:
            spec = self.cfg.channels[name]
            try:
                obj = make_channel(spec, self.cfg, self.log)
                obj.open()
                ch = obj
            except ImportError as exc:
                ch = CommunicationError(f"channel {name!r}: {spec.type} channels are not available: {exc}")
            except ConfigError:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever a channel raises is a communication error
                ch = communication_error(exc, name, "opening failed", self.log)
            self._open[name] = ch
        if isinstance(ch, CommunicationError):
            raise ch
        return ch

    def close(self) -> None:
        for ch in self._open.values():
            if isinstance(ch, Channel):
                try:
                    ch.close()
                except Exception:  # noqa: BLE001 - closing must not hide the run's outcome
                    self.log.debug("closing %s failed", ch.name, exc_info=True)
        self._open.clear()
