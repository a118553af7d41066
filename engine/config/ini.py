"""Reading bots.ini: sections, typed values and ``${VAR}`` expansion, with errors naming file,
section and key (``/srv/botsq/config/bots.ini: [settings] maxruntime: expected a whole number``).

bots.ini allows extra keys in every section (Bots' own keys stay for Bots); the readers in
:mod:`engine.config.sections` take what botsq uses.
"""
from __future__ import annotations

import ast
import configparser
import math
import os
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, one_line
from engine.log import register_secrets

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _from_environment(name: str) -> str:
    """``$name``, made a secret: a value that comes through ``${VAR}`` is one wherever it is used
    (a password, a token in a ``[jobqueue.commands]`` line ...), so every output that redacts
    (:func:`engine.log.redact`: logs, reports, job records, botsq output, Flower) masks it. The
    one place where that happens. A ``${VAR:-default}``'s default is written in the file itself and is not."""
    value = os.environ[name]
    register_secrets([value])
    return value


def register_env_secrets(value: str) -> None:
    """Make the values of the ``${VAR}`` in a raw config value secrets, whether or not the key is
    read now (sections read on demand, such as ``[schedule.*]``, are covered from the start)."""
    for m in _VAR.finditer(value):
        if m.group(1) in os.environ:
            _from_environment(m.group(1))


def expand_env(value: str, where: str) -> str:
    """Expand ``${VAR}`` (or ``${VAR:-default}``) from the environment; ConfigError naming
    ``where`` when VAR is not set and has no default. Each value taken from the environment
    becomes a secret (:func:`_from_environment`)."""

    def repl(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in os.environ:
            return _from_environment(name)
        if default is not None:
            return default
        raise ConfigError(f"{where}: environment variable {name} is not set")

    return _VAR.sub(repl, value)


# --------------------------------------------------------------------------- typed values

def _to_bool(raw: str, where: str) -> bool:
    v = raw.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{where}: expected True or False, got {raw!r}")


def _to_int(raw: str, where: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise ConfigError(f"{where}: expected a whole number, got {raw!r}") from None


def _to_float(raw: str, where: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        value = math.nan
    if math.isnan(value):           # float() takes "nan", which passes no range check: not a number
        raise ConfigError(f"{where}: expected a number, got {raw!r}")
    return value


def _to_list(raw: str, where: str) -> list[str]:
    return [p.strip() for p in raw.split(",") if p.strip()]


def guess_type(raw: str) -> bool | int | float | str:
    """An untyped value (kombu transport options): true/false, a number, else the text."""
    low = raw.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(raw)
        except ValueError:
            pass
    return raw.strip()


_CONVERT: dict[type, Callable[[str, str], Any]] = {
    bool: _to_bool, int: _to_int, float: _to_float, str: lambda r, w: r.strip(), list: _to_list}


class IniSection:
    """Typed read access to one bots.ini section, with errors naming file, section and key."""

    def __init__(self, path: Path, name: str, data: dict[str, str]) -> None:
        self.path, self.name, self.data = path, name, data

    def where(self, key: str) -> str:
        """How an error names ``key``: ``<path>: [<section>] <key>``."""
        return f"{self.path}: [{self.name}] {key}"

    def get(self, key: str, typ: type, default: Any) -> Any:
        """The value of ``key`` as ``typ`` (bool, int, float, str or list), ``default`` when absent."""
        if key not in self.data:
            return default
        where = self.where(key)
        return _CONVERT[typ](expand_env(self.data[key], where), where)

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(key, str, default).lower()
        if value not in choices:
            raise ConfigError(f"{self.where(key)}: expected one of {', '.join(choices)}, got {value!r}")
        return value

    def priority(self, key: str = "priority", default: int = 5) -> int:
        """A Bots job priority: 1 (highest) to 9."""
        value = self.get(key, int, default)
        if not 1 <= value <= 9:
            raise ConfigError(f"{self.where(key)}: expected 1 (highest) to 9, got {value}")
        return value

    def argv(self, key: str) -> list[str]:
        """A command line split the way a shell would (no shell runs it); [] when empty."""
        line = self.get(key, str, "")
        try:
            return shlex.split(line)
        except ValueError as exc:
            raise ConfigError(f"{self.where(key)}: cannot split command line: {exc}") from None

    def keys(self) -> list[str]:
        return list(self.data)


def syntax_error(exc: configparser.Error) -> str:
    """configparser's error as one line that names the line: ``line 3: '[settings'`` (its own first
    line of a parsing error names only the file)."""
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return f"line {exc.lineno}: expected a [section] header, got {exc.line.strip()!r}"
    if isinstance(exc, configparser.ParsingError) and exc.errors:
        lineno, line = exc.errors[0]
        try:                            # configparser keeps repr(line)
            text = str(ast.literal_eval(line)).strip()
        except (ValueError, SyntaxError):
            text = str(line).strip()
        more = f" (and {len(exc.errors) - 1} more)" if len(exc.errors) > 1 else ""
        return f"line {lineno}: cannot parse {text!r}{more}"
    return one_line(exc)


def read_ini(path: Path) -> dict[str, IniSection]:
    """Every section of bots.ini at ``path`` (none when the file does not exist)."""
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"), strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    if path.exists():
        try:
            parser.read_string(path.read_text(encoding="utf-8"), source=str(path))
        except configparser.Error as exc:
            raise ConfigError(f"{path}: syntax error: {syntax_error(exc)}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read: {exc}") from None
    sections = {name: IniSection(path, name, dict(parser[name])) for name in parser.sections()}
    for section in sections.values():
        for raw in section.data.values():
            register_env_secrets(raw)
    return sections
