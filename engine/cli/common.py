"""Shared command-line behaviour: bad input gives one clear line and the right exit code."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from engine.errors import ConfigError, DatabaseError, ExitCode, UsageError
from engine.log import redact


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but bad arguments are a UsageError: one line and exit 1 (argparse's own 2
    would read as "ran, with errors" in Bots' exit codes)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def run_cli(prog: str, main: Callable[[], int]) -> None:
    """Run ``main`` and exit with its code; known errors become one line on stderr and exit 1."""
    try:
        code = main()
    except (ConfigError, DatabaseError, UsageError) as exc:
        print(f"{prog}: error: {redact(str(exc))}", file=sys.stderr)
        code = ExitCode.SYSTEM
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        code = ExitCode.INTERRUPTED
    sys.exit(code)
