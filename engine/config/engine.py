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
import re
import shutil
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from engine.config.ini import IniSection
from engine.config.sections import Resolve, not_negative
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
    grace = not_negative(s, "grace", float, d.grace, "seconds")
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
        found = program
    else:
        found = shutil.which(program) or ""
        if not found:
            return f"{engine.where} command: {program}: not found on PATH"
    if _is_botsq_engine(found):
        return (f"{engine.where} command: {program} is botsq's own bots-engine ({found}), not the Bots "
                f"installation's: name that one by its path (e.g. /opt/bots/venv/bin/bots-engine)")
    script = _interpreter_script(engine.command)
    if script is not None:
        path = script if os.path.isabs(script) else os.path.join(configdir.parent, script)
        if not os.path.isfile(path):
            return f"{engine.where} command: {script}: not found (the script {program} is to run)"
    bots_dir = engine.configdir or configdir
    if not bots_dir.is_dir():
        return f"{engine.where} configdir: {bots_dir}: no such directory"
    return None


# an interpreter running Bots' script: "python2 /opt/bots/bots-engine.py" (Bots 3.x), "python3.11 ..."
_INTERPRETER = re.compile(r"(python|pypy)[0-9.]*")
# the line pip writes into every console script of botsq's bots-engine
_BOTSQ_ENTRY = b"from engine.cli.engine import main"


def _interpreter_script(command: tuple[str, ...]) -> str | None:
    """The script of an ``interpreter script ...`` command (its first argument that is not an
    option), or None: no interpreter, or one started with ``-m``/``-c`` (no script file)."""
    if not _INTERPRETER.fullmatch(os.path.basename(command[0])):
        return None
    args = iter(command[1:])
    for arg in args:
        if arg.startswith(("-m", "-c")):
            return None
        if arg in ("-X", "-W"):             # options whose value is the next argument
            next(args, None)
        elif not arg.startswith("-"):
            return arg
    return None


def _is_botsq_engine(path: str) -> bool:
    """Is this program botsq's own ``bots-engine`` (a bare ``bots-engine`` found first on PATH in
    botsq's virtual environment: it would run itself, find its own lock and report Bots locked)?"""
    try:
        with open(path, "rb") as fh:
            return _BOTSQ_ENTRY in fh.read(4096)
    except OSError:
        return False


def bots_console_problem(engine: EngineSettings, configdir: Path) -> str | None:
    """Why botsq cannot read a Bots run's outcome from its console lines, as one line, or None.

    botsq reads Bots' summary ("N files received/processed in run.", logged at INFO) and an unknown
    route (logged CRITICAL, Bots exit 0) from the child's console; Bots prints them only with its
    ``[settings] log_console`` on (Bots' default) at ``log_console_level`` INFO or lower (bots/botsinit.py).
    Read from Bots' bots.ini in its config dir; nothing is said when that file cannot be read."""
    if not engine.is_bots:
        return None
    ini_path, settings = _bots_settings(engine, configdir)
    if settings is None:
        return None
    try:
        on = settings.getboolean("log_console", fallback=True)
        level = settings.get("log_console_level", fallback="INFO").strip().upper()
    except ValueError:
        return None
    if not on:
        return (f"{ini_path}: [settings] log_console = False: botsq sees no Bots summary and no unknown-route "
                f"line, so a route Bots does not know is recorded as ok; set it True")
    if level not in ("DEBUG", "INFO"):
        return (f"{ini_path}: [settings] log_console_level = {level}: Bots' summary (logged at INFO) does not "
                f"reach botsq, so runs are recorded without file counts; set INFO")
    return None


BOTS_DEFAULT_PORT = 28081     # Bots' [settings] port default (bots/botslib.py check_if_other_engine_is_running)


def _bots_settings(engine: EngineSettings, configdir: Path) -> tuple[Path, Any | None]:
    """Bots' own bots.ini (in Bots' config dir) and its ``[settings]``, read once as Bots reads them
    (configparser; typed getters with a fallback): empty when the file or the section is missing
    (every question gets Bots' default), None when the file cannot be parsed."""
    import configparser                 # only for a Bots installation's engine
    ini_path = (engine.configdir or configdir) / "bots.ini"
    parser = configparser.RawConfigParser(strict=False)
    try:
        parser.read(ini_path, encoding="utf-8")
    except (configparser.Error, OSError, UnicodeDecodeError):
        return ini_path, None
    if not parser.has_section("settings"):
        parser.add_section("settings")
    return ini_path, parser["settings"]


def bots_port(engine: EngineSettings, configdir: Path) -> int | None:
    """The port a running Bots engine binds on 127.0.0.1 (Bots' ``[settings] port``, default 28081),
    read from Bots' bots.ini; None when it cannot be read or is not a port."""
    settings = _bots_settings(engine, configdir)[1]
    try:
        port = settings.getint("port", fallback=BOTS_DEFAULT_PORT) if settings is not None else None
    except ValueError:
        return None
    if port is None:
        return None
    return port if 0 < port < 65536 else None


__all__ = ["EngineKind", "EngineSettings", "read_engine", "engine_problem", "bots_console_problem", "bots_port",
           "BOTS_DEFAULT_PORT"]
