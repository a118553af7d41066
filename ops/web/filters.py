"""Jinja filters: times in the server's local time, durations, sizes, counts."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from flask import Flask


def _parse(value: str | datetime | None) -> datetime | None:
    """An ISO time (as the records' as_dict() write them, UTC) as an aware datetime."""
    if value is None or value == "":
        return None
    dt = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def when(value: str | datetime | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    dt = _parse(value)
    return dt.astimezone().strftime(fmt) if dt else ""


def ago(value: str | datetime | None) -> str:
    dt = _parse(value)
    if dt is None:
        return ""
    return span((datetime.now(timezone.utc) - dt).total_seconds()) + " ago"


def span(seconds: float | None) -> str:
    """2 s, 4 min, 3 h 05 min, 2 d."""
    if seconds is None:
        return ""
    s = max(int(seconds), 0)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h {(s % 3600) // 60:02d} min"
    return f"{s // 86400} d"


def duration(started: str | None, ended: str | None) -> str:
    a, b = _parse(started), _parse(ended)
    if a is None or b is None:
        return ""
    secs = (b - a).total_seconds()
    return f"{secs:.1f} s" if secs < 60 else span(secs)


def filesize(n: int | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return ""


def number(n: Any) -> str:
    return f"{n:,}" if isinstance(n, int) else str(n)


def register(app: Flask) -> None:
    app.add_template_filter(when)
    app.add_template_filter(ago)
    app.add_template_filter(span)
    app.add_template_filter(duration)
    app.add_template_filter(filesize)
    app.add_template_filter(number)
