"""engine/log.py: a component's log lines of a time span (a run's page shows them)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from engine.log import lines_between


def test_log_lines_between_finds_a_runs_lines_by_bisection(tmp_path: Path) -> None:
    base = datetime(2025, 3, 1, 12, 0, 0)            # naive UTC

    def stamp(minutes: int) -> str:
        local = (base + timedelta(minutes=minutes)).replace(tzinfo=timezone.utc).astimezone()
        return local.strftime("%Y-%m-%d %H:%M:%S") + ",000"

    lines = []
    for m in range(0, 3000):
        lines.append(f"{stamp(m)} INFO    botsq.engine: line {m}")
        if m == 1501:
            lines += ["Traceback (most recent call last):", "  boom"]
    log = tmp_path / "engine.log"
    log.write_text("\n".join(lines) + "\n")
    got = lines_between(log, base + timedelta(minutes=1500), base + timedelta(minutes=1503))
    assert [g.split(": ", 1)[-1] if "botsq" in g else g for g in got] == [
        "line 1500", "line 1501", "Traceback (most recent call last):", "  boom", "line 1502", "line 1503"]
    assert lines_between(log, base + timedelta(minutes=2990), None, limit=3)[-1].endswith("line 2992")
    assert lines_between(log, base - timedelta(days=1), base)[0].endswith("line 0")
    assert lines_between(log, base + timedelta(days=9), None) == []
    assert lines_between(tmp_path / "missing.log", base, None) == []
