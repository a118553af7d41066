"""Translation of one incoming file: ``passthrough``, ``none`` or a user mapping.

A mapping is ``def function(content: bytes, meta: dict) -> bytes | Iterable[tuple[bytes, dict]]``
in ``usersys/mappings/<module>.py`` (``translate = "module.function"``; dotted modules are
sub-folders). Mappings are loaded from file once per run, under a module name private to the
environment, so a worker serving several environments never mixes them and edits are seen
by the next run. An exception in a mapping is a file error for that file only.

Output meta keys the engine understands: ``filename`` (deliver under exactly this name).
"""
from __future__ import annotations

import hashlib
import importlib.util
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from engine.config import Config
from engine.errors import one_line

Output = tuple[bytes | None, dict]     # None content: the input file unchanged (passthrough)


class TranslateError(Exception):
    """A file error: str() is the one-line reason shown in reports and `botsq files list`."""


class Translator:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.mapdir = cfg.directories.usersys / "mappings"
        self._funcs: dict[str, Callable[..., Any] | TranslateError] = {}
        self._prefix = "botsq_mappings_" + hashlib.sha1(str(self.mapdir).encode()).hexdigest()[:10]

    def _load_module(self, modname: str) -> ModuleType:
        path = self.mapdir.joinpath(*modname.split(".")).with_suffix(".py")
        if not path.is_file():
            raise TranslateError(f"mapping module {modname!r} not found (expected {path})")
        fullname = f"{self._prefix}.{modname}"
        spec = importlib.util.spec_from_file_location(fullname, path)
        if spec is None or spec.loader is None:
            raise TranslateError(f"mapping module {modname!r} cannot be loaded from {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[fullname] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - a broken mapping is a file error
            sys.modules.pop(fullname, None)
            raise TranslateError(f"mapping module {modname!r} failed to load: {one_line(exc, with_type=True)}") from None
        return module

    def function(self, name: str) -> Callable[..., Any]:
        got = self._funcs.get(name)
        if got is None:
            modname, _, funcname = name.rpartition(".")
            try:
                module = self._load_module(modname)
                func = getattr(module, funcname, None)
                if not callable(func):
                    raise TranslateError(f"mapping {name!r}: module {modname!r} has no function {funcname!r}")
                got = func
            except TranslateError as exc:
                got = exc
            self._funcs[name] = got
        if isinstance(got, TranslateError):
            raise got
        return got

    def translate(self, how: str, src: Path, meta: dict) -> list[Output]:
        """The outputs for one incoming file; raises TranslateError for a file error."""
        if how == "passthrough":
            return [(None, {})]
        if how == "none":
            return []
        func = self.function(how)
        try:
            content = src.read_bytes()
        except OSError as exc:
            raise TranslateError(f"cannot read archived file: {exc.strerror or exc}") from None
        try:
            result = func(content, dict(meta))
            return _normalise(how, result)
        except TranslateError:
            raise
        except Exception as exc:  # noqa: BLE001 - that file errors, the others go on
            raise TranslateError(f"mapping {how} raised {one_line(exc, with_type=True)}{_where(exc)}") from None


def _normalise(how: str, result: Any) -> list[Output]:
    if result is None:
        raise TranslateError(f"mapping {how} returned nothing (None); return b'' or [] for no output")
    if isinstance(result, (bytes, bytearray, memoryview)):
        data = bytes(result)
        return [(data, {})] if data else []
    if isinstance(result, str):
        raise TranslateError(f"mapping {how} returned str, expected bytes")
    outs: list[Output] = []
    try:
        items = iter(result)
    except TypeError:
        raise TranslateError(f"mapping {how} returned {type(result).__name__}, expected bytes or (bytes, dict) pairs") from None
    for item in items:
        if isinstance(item, (bytes, bytearray, memoryview)):
            outs.append((bytes(item), {}))
            continue
        if (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], (bytes, bytearray, memoryview))
                and isinstance(item[1], dict)):
            outs.append((bytes(item[0]), dict(item[1])))
            continue
        raise TranslateError(f"mapping {how} produced {type(item).__name__}, expected (bytes, dict)")
    return outs


def _where(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    if not tb:
        return ""
    last = tb[-1]
    return f" (at {Path(last.filename).name}:{last.lineno})"
