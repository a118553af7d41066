"""Environments whose engine is the Bots stand-in (tests/bots_standin.py) - ``[engine] kind = bots``."""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

STANDIN = Path(__file__).with_name("bots_standin.py")
STANDIN_COMMAND = f"{shlex.quote(sys.executable)} {shlex.quote(str(STANDIN))}"

# a Bots site's own bots.ini keys beside botsq's: accepted, left to Bots
BOTS_OWN_KEYS = """
[settings]
port = 28081
log_console = True
maxruntime = 60
lock_heartbeat = 0.5
lock_grace = 4

[webserver]
port = 8080
settings = settings

[charsets]
custom = botsq-test

[acceptance]
runacceptancetest = False
"""


def engine_section(command: str = STANDIN_COMMAND, extra: str = "") -> str:
    return f"\n[engine]\nkind = bots\ncommand = {command}\n{extra}\n"


def standin_events(configdir: Path) -> list[dict[str, Any]]:
    """What the stand-in recorded (start / end / locked), in order."""
    p = configdir / "standin.jsonl"
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def standin_started(configdir: Path) -> list[dict[str, Any]]:
    return [e for e in standin_events(configdir) if e["event"] == "start"]
