"""Which commands and routes a run works on, and in which lane: Bots' rules and the lane rule, in one place."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.config import Config
from engine.config.lanes import DEFAULT_LANE
from engine.errors import UsageError

if TYPE_CHECKING:
    from engine.config import Route

# Bots' order: a run does them in this order, whatever order they were given in
ENGINE_COMMANDS = ("automaticretrycommunication", "resend", "rereceive", "new", "cleanup")
# commands that work on no route (the whole environment): they run in lane default
ROUTELESS_COMMANDS = ("cleanup",)


def normalise_commands(commands: Sequence[str]) -> list[str]:
    """Commands in Bots' order, duplicates dropped; none means ``new``; unknown is a UsageError."""
    wanted = []
    for c in commands or ():
        c = str(c).lstrip("-").lower()
        if c not in ENGINE_COMMANDS:
            raise UsageError(f"unknown engine command {c!r} (expected one of {', '.join(ENGINE_COMMANDS)})")
        wanted.append(c)
    if not wanted:
        wanted = ["new"]
    return [c for c in ENGINE_COMMANDS if c in wanted]


def check_routes_known(cfg: Config, routes: Sequence[str]) -> None:
    """UsageError naming the first route that is not in routes.toml. With ``[engine] kind = bots`` the
    routes are in Bots' database: Bots itself says when it does not know one (see engine.botsengine)."""
    if cfg.engine.is_bots:
        return
    unknown = [r for r in routes if r not in cfg.routes]
    if unknown:
        known = ", ".join(cfg.routes) or "none"
        raise UsageError(f"unknown route {unknown[0]!r} (routes in {cfg.configdir / 'routes.toml'}: {known})")


def select_routes(cfg: Config, commands: Sequence[str], routes: Sequence[str], lane: str | None = None) -> list[Route]:
    """The routes a run works on.

    Named routes must exist (UsageError naming the first unknown one); inactive ones are
    left out. No names: every active route, except that a run doing only ``new`` (and
    ``cleanup``) leaves out ``notindefaultrun`` routes, as Bots' default run does.
    ``lane``: a run in that lane - named routes must all be in it (UsageError naming the first
    that is not), and a default run keeps only the lane's routes.
    """
    cmds = normalise_commands(commands)
    check_routes_known(cfg, routes)
    if cfg.engine.is_bots:          # Bots' routes: botsq has none of them to select (all in lane default)
        return []
    if lane is not None:
        elsewhere = [r for r in routes if cfg.lane_of(r) != lane]
        if elsewhere:
            raise UsageError(f"route {elsewhere[0]!r} is in lane {cfg.lane_of(elsewhere[0])!r}, "
                             f"not in lane {lane!r}")
    if routes:
        return [cfg.routes[r] for r in dict.fromkeys(routes) if cfg.routes[r].active]
    only_new = set(cmds) <= {"new", "cleanup"}
    return [r for r in cfg.routes.values()
            if r.active and not (only_new and r.notindefaultrun) and (lane is None or r.lane == lane)]


@dataclass(frozen=True)
class LanePart:
    """One lane's share of a job or a run: its commands (Bots' order) and its named routes
    (``()``: the lane's default run)."""
    lane: str
    commands: tuple[str, ...]
    routes: tuple[str, ...]


def lane_plan(cfg: Config, commands: Sequence[str], routes: Sequence[str], lane: str | None = None) -> list[LanePart]:
    """How a job or a run is split by lane: the one rule (contract, "Lanes").

    * named routes are grouped by their lane, one part per lane;
    * a default run (no routes) becomes one default run per lane that has routes in it
      (``lane``: a default run of that lane only);
    * route-less commands (``cleanup``), and a run with no route to work on at all, go to lane
      ``default`` (joining its part, if it has one).

    Parts come in the config's lane order (``default`` first). UsageError for an unknown command
    or route. A config without lanes always gives one part: lane ``default``, the job as it is.
    """
    cmds = normalise_commands(commands)
    check_routes_known(cfg, routes)
    routed = tuple(c for c in cmds if c not in ROUTELESS_COMMANDS)
    routeless = tuple(c for c in cmds if c in ROUTELESS_COMMANDS)
    groups: dict[str, list[str]] = {}
    if routes:
        for r in dict.fromkeys(routes):
            groups.setdefault(cfg.lane_of(r), []).append(r)
    elif lane is not None:
        groups[lane] = []
    elif routed:
        for route in select_routes(cfg, routed, ()):
            groups.setdefault(route.lane, [])
    parts = {name: LanePart(name, routed, tuple(rs)) for name, rs in groups.items()} if routed else {}
    if routeless or not parts:
        mine = parts.get(DEFAULT_LANE)
        wanted = set(routeless) | set(mine.commands if mine else ())
        if not parts:                   # no route to work on in any lane: the run as it is, in lane default
            wanted |= set(routed)
        parts[DEFAULT_LANE] = LanePart(DEFAULT_LANE, tuple(c for c in cmds if c in wanted),
                                       tuple(groups.get(DEFAULT_LANE, ())))
    order = {name: i for i, name in enumerate(cfg.lanes)}
    return sorted(parts.values(), key=lambda p: (order.get(p.lane, len(order)), p.lane))
