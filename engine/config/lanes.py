"""Lanes: the one place that says what a lane name may be, which lane a route or a command is in,
and which lanes a config has (the contract's "Lanes").

A lane is a group of routes with an engine of its own: one engine run at a time per lane (its own
engine lock, :mod:`engine.lock`), different lanes at the same time (each its own queue,
:mod:`tasks.broker`). A route names its lane in routes.toml (``lane = "slow_partners"``); without
one it is in lane ``default``. ``[jobqueue.commands.lanes] NAME = lane`` puts a
``[jobqueue.commands]`` job in a lane; without it the command runs in lane ``default``.

A lane name becomes part of a queue name (``engine.<lane>``) and of a lease name, so it is 1 to
:data:`MAX_LANE_LENGTH` characters from ``A-Z a-z 0-9 _ -`` (no dot, space or other character).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from engine.errors import ConfigError

DEFAULT_LANE = "default"
MAX_LANE_LENGTH = 64
LANE_CHARACTERS = "letters A-Z a-z, digits 0-9, '_' and '-'"
_LANE = re.compile(r"[A-Za-z0-9_-]{1,%d}" % MAX_LANE_LENGTH)


def is_lane_name(value: object) -> bool:
    """``value`` is a string that may name a lane."""
    return isinstance(value, str) and _LANE.fullmatch(value) is not None


def check_lane_name(value: object, where: str) -> str:
    """``value`` as a lane name, or ConfigError ``<where>: ...`` saying what a lane name may hold."""
    if not is_lane_name(value):
        raise ConfigError(f"{where}: {value!r} is not a lane name (1 to {MAX_LANE_LENGTH} characters: "
                          f"{LANE_CHARACTERS})")
    return str(value)


def config_lanes(route_lanes: Iterable[str], command_lanes: Mapping[str, str]) -> tuple[str, ...]:
    """The lanes of a config: ``default`` first (commands and route-less work run there), then every
    other lane a route or a command names, in the order they first appear."""
    return tuple(dict.fromkeys([DEFAULT_LANE, *route_lanes, *command_lanes.values()]))


__all__ = ["DEFAULT_LANE", "MAX_LANE_LENGTH", "LANE_CHARACTERS", "is_lane_name", "check_lane_name", "config_lanes"]
