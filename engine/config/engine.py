"""``[engine]``: which engine a ``bots.engine`` job runs - botsq's built-in one, or a Bots
installation's own ``bots-engine`` (contract, "A Bots installation's engine").

```ini
[engine]
kind = bots                                  ; builtin (default) | bots
command = /opt/bots/venv/bin/bots-engine     ; or an interpreter and a script: python2 /opt/bots/bots-engine.py
configdir = /opt/bots/config                 ; Bots' config dir, passed as -c; default: this config dir
grace = 30                                   ; seconds between SIGTERM and SIGKILL at [jobqueue] hardtimelimit
```

Reading the section only checks its form; whether ``command`` can be started and ``configdir``
exists is :func:`engine_problem`'s to say (at the start of a worker and of ``bots-engine``, and in
``botsq status``), so that ``bots-job2queue`` still queues while an engine is being installed.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from engine.config.ini import IniSection
from engine.config.sections import Resolve
from engine.errors import ConfigError


class EngineKind(StrEnum):
    """``[engine] kind``."""
    BUILTIN = "builtin"        # botsq's own engine (routes.toml)
    BOTS = "bots"              # a Bots installation's bots-engine, run as a child process


@dataclass(frozen=True)
class EngineSettings:
    """``[engine]``. ``command`` is an argument list (split like a shell would, never run by one);
    ``configdir`` None means "the botsq config dir of the job"."""
    kind: EngineKind = EngineKind.BUILTIN
    command: tuple[str, ...] = ()
    configdir: Path | None = None
    grace: float = 30.0                   # seconds from SIGTERM to SIGKILL when the hard time limit ends a child
    where: str = "[engine]"               # how errors name the section: "<bots.ini path>: [engine]"

    @property
    def is_bots(self) -> bool:
        return self.kind == EngineKind.BOTS


def read_engine(s: IniSection, resolve: Resolve) -> EngineSettings:
    """``[engine]`` of bots.ini; ConfigError naming the key (``command`` is required with ``kind = bots``)."""
    d = EngineSettings()
    kind = EngineKind(s.choice("kind", tuple(EngineKind), d.kind))
    command = tuple(s.argv("command"))
    if command and os.sep in command[0] and not os.path.isabs(command[0]):
        # a relative program path is the config's, like every path in it: against the environment folder
        command = (str(resolve(command[0])), *command[1:])
    if kind == EngineKind.BOTS and not command:
        raise ConfigError(f"{s.where('command')}: required with kind = bots (the Bots engine to run, e.g. "
                          f"/opt/bots/venv/bin/bots-engine)")
    raw_dir = s.get("configdir", str, "")
    grace = s.get("grace", float, d.grace)
    if grace < 0:
        raise ConfigError(f"{s.where('grace')}: must be 0 or more seconds")
    return EngineSettings(kind=kind, command=command, configdir=resolve(raw_dir) if raw_dir else None,
                          grace=grace, where=f"{s.path}: [{s.name}]")


def engine_problem(engine: EngineSettings, configdir: Path) -> str | None:
    """Why a Bots engine cannot be started, as one line naming the key; None when it can (or the
    engine is the built-in one). ``configdir``: the botsq config dir (the default of ``configdir``).

    The command's program must be found (a path, or a name on PATH) and be executable; the Bots
    config dir must exist."""
    if not engine.is_bots:
        return None
    program = engine.command[0]
    if os.sep in program:
        if not os.path.exists(program):
            return f"{engine.where} command: {program}: not found"
        if os.path.isdir(program) or not os.access(program, os.X_OK):
            return f"{engine.where} command: {program}: not executable"
    elif shutil.which(program) is None:
        return f"{engine.where} command: {program}: not found on PATH"
    bots_dir = engine.configdir or configdir
    if not bots_dir.is_dir():
        return f"{engine.where} configdir: {bots_dir}: no such directory"
    return None


__all__ = ["EngineKind", "EngineSettings", "read_engine", "engine_problem"]
