"""Reading routes.toml: channels and routes, strictly (an unknown key is an error naming it).

Channel keys, their types and value checks come from the one channel-type table,
:data:`engine.channels.types.CHANNEL_TYPES` (and its ``VALUE_CHECKS``).
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.channels.types import CHANNEL_TYPES, VALUE_CHECKS, KeyType
from engine.config.ini import expand_env
from engine.config.lanes import DEFAULT_LANE, check_lane_name
from engine.errors import ConfigError

ROUTE_KEYS: dict[str, KeyType] = {"active": bool, "notindefaultrun": bool, "parts": list, "description": str,
                                  "lane": str}
PART_KEYS: dict[str, KeyType] = {"fromchannel": str, "tochannel": str, "translate": str}
_TYPE_NAMES = {str: "a string", int: "a whole number", float: "a number", bool: "true or false", list: "a list"}
_MAPPING = re.compile(r"[A-Za-z_][\w.]*\.[A-Za-z_]\w*")


@dataclass(frozen=True)
class ChannelSpec:
    """One ``[channels.NAME]`` table: its type and its other keys, typed and ``${VAR}``-expanded."""
    name: str
    type: str
    options: dict[str, Any]

    def get(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)


@dataclass(frozen=True)
class RoutePart:
    fromchannel: str
    tochannel: str | None
    translate: str = "passthrough"       # "passthrough" | "none" | "module.function"


@dataclass(frozen=True)
class Route:
    name: str
    active: bool
    notindefaultrun: bool
    parts: tuple[RoutePart, ...]         # in Bots' seq order
    lane: str = DEFAULT_LANE             # its lane (engine.config.lanes): its engine lock and queue


def _check_type(value: Any, typ: KeyType, where: str) -> Any:
    types = typ if isinstance(typ, tuple) else (typ,)
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    ok = False if isinstance(value, bool) and bool not in types else isinstance(value, types)
    if not ok:
        want = " or ".join(_TYPE_NAMES[t] for t in types)
        raise ConfigError(f"{where}: expected {want}, got {value!r}")
    if isinstance(value, str):
        return expand_env(value, where)
    if isinstance(value, list):
        return [expand_env(v, where) if isinstance(v, str) else v for v in value]
    return value


def _channel(path: Path, name: str, body: Any) -> ChannelSpec:
    where = f"{path}: channels.{name}"
    if not isinstance(body, dict):
        raise ConfigError(f"{where}: expected a table")
    raw_type = body.get("type")
    ctype = CHANNEL_TYPES.get(raw_type) if isinstance(raw_type, str) else None
    if ctype is None:
        raise ConfigError(f"{where}.type: unknown channel type {raw_type!r} "
                          f"(expected one of {', '.join(CHANNEL_TYPES)})")
    opts: dict[str, Any] = {}
    for key, value in body.items():
        if key == "type":
            continue
        if key not in ctype.keys:
            raise ConfigError(f"{where}.{key}: unknown key for a {ctype.name} channel")
        opts[key] = _check_type(value, ctype.keys[key], f"{where}.{key}")
        test, expected = VALUE_CHECKS.get(key, (None, ""))
        if test is not None and not test(opts[key]):
            raise ConfigError(f"{where}.{key}: expected {expected}, got {value!r}")
    for key in ctype.required:
        if key not in opts:
            raise ConfigError(f"{where}.{key}: required for a {ctype.name} channel")
    return ChannelSpec(name, ctype.name, opts)


def _known_keys(where: str, body: Any, keys: dict[str, KeyType], what: str) -> dict[str, Any]:
    """``body``, checked to be a table whose keys are all known and of their type."""
    if not isinstance(body, dict):
        raise ConfigError(f"{where}: expected a table")
    for key, value in body.items():
        if key not in keys:
            raise ConfigError(f"{where}.{key}: unknown key for {what}")
        _check_type(value, keys[key], f"{where}.{key}")
    return body


def _part(pw: str, raw: Any, channels: dict[str, ChannelSpec]) -> RoutePart:
    part = _known_keys(pw, raw, PART_KEYS, "a route part")
    frm = part.get("fromchannel")
    if not frm:
        raise ConfigError(f"{pw}.fromchannel: required")
    for key in ("fromchannel", "tochannel"):
        ch = part.get(key)
        if ch is not None and ch not in channels:
            raise ConfigError(f"{pw}.{key}: no channel named {ch!r} in [channels]")
    if not CHANNEL_TYPES[channels[frm].type].receives:
        raise ConfigError(f"{pw}.fromchannel: an {channels[frm].type} channel can only send")
    if part.get("tochannel") == frm:    # each run would receive its own output again, for ever
        raise ConfigError(f"{pw}.tochannel: {frm!r} is the part's own fromchannel: every run would receive its "
                          f"output again; send to another channel")
    translate = part.get("translate", "passthrough")
    if translate not in ("passthrough", "none") and not _MAPPING.fullmatch(translate):
        raise ConfigError(f"{pw}.translate: expected \"passthrough\", \"none\" or \"module.function\", "
                          f"got {translate!r}")
    return RoutePart(frm, part.get("tochannel"), translate)


def _route(path: Path, name: str, raw: Any, channels: dict[str, ChannelSpec]) -> Route:
    where = f"{path}: routes.{name}"
    body = _known_keys(where, raw, ROUTE_KEYS, "a route")
    raw_parts = body.get("parts") or []
    if not raw_parts:
        raise ConfigError(f"{where}.parts: a route needs at least one part")
    parts = tuple(_part(f"{where}.parts[{i}]", part, channels) for i, part in enumerate(raw_parts, 1))
    lane = DEFAULT_LANE
    if "lane" in body:
        lane = check_lane_name(_check_type(body["lane"], str, f"{where}.lane"), f"{where}.lane")
    return Route(name, bool(body.get("active", True)), bool(body.get("notindefaultrun", False)), parts, lane)


def load_routes(path: Path) -> tuple[dict[str, ChannelSpec], dict[str, Route]]:
    """The channels and routes of routes.toml at ``path`` (none when it does not exist);
    ConfigError (one line, naming file and key) on any problem."""
    if not path.exists():
        return {}, {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: syntax error: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    for key in data:
        if key not in ("channels", "routes"):
            raise ConfigError(f"{path}: unknown key {key!r} (expected [channels.NAME] or [routes.NAME])")
    channels = {name: _channel(path, name, body) for name, body in (data.get("channels") or {}).items()}
    routes = {name: _route(path, name, body, channels) for name, body in (data.get("routes") or {}).items()}
    _one_lane_per_in_channel(path, routes)
    return channels, routes


def _one_lane_per_in_channel(path: Path, routes: dict[str, Route]) -> None:
    """An in-channel is read by routes of one lane only: two lanes run at the same time, and two runs
    taking files from one folder or partner at once would process a file twice."""
    reader: dict[str, Route] = {}
    for route in routes.values():
        for part in route.parts:
            first = reader.setdefault(part.fromchannel, route)
            if first.lane != route.lane:
                raise ConfigError(f"{path}: routes.{route.name}.lane: channel {part.fromchannel!r} is read by route "
                                  f"{first.name} (lane {first.lane!r}) and route {route.name} (lane {route.lane!r}); "
                                  f"an in-channel belongs to one lane")
