"""Which commands and routes a run works on: Bots' rules, in one place."""
from __future__ import annotations

from collections.abc import Sequence

from engine.config import Config, Route
from engine.errors import UsageError

# Bots' order: a run does them in this order, whatever order they were given in
ENGINE_COMMANDS = ("automaticretrycommunication", "resend", "rereceive", "new", "cleanup")


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


def select_routes(cfg: Config, commands: Sequence[str], routes: Sequence[str]) -> list[Route]:
    """The routes a run works on.

    Named routes must exist (UsageError naming the first unknown one); inactive ones are
    left out. No names: every active route, except that a run doing only ``new`` (and
    ``cleanup``) leaves out ``notindefaultrun`` routes, as Bots' default run does.
    """
    cmds = normalise_commands(commands)
    unknown = [r for r in routes if r not in cfg.routes]
    if unknown:
        known = ", ".join(cfg.routes) or "none"
        raise UsageError(f"unknown route {unknown[0]!r} (routes in {cfg.configdir / 'routes.toml'}: {known})")
    if routes:
        return [cfg.routes[r] for r in dict.fromkeys(routes) if cfg.routes[r].active]
    only_new = set(cmds) <= {"new", "cleanup"}
    return [r for r in cfg.routes.values() if r.active and not (only_new and r.notindefaultrun)]
