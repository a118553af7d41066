"""Request parameters to filters and pages, with one-line errors (HTTP 400).

The same parameters serve the HTML lists and ``/api/``: ``route`` and ``channel`` (repeatable),
``status``, ``name``, ``run``, ``since``/``until`` (``YYYY-MM-DD`` or ``YYYY-MM-DDTHH:MM``, the
server's local time, as ``botsq files --since``), ``marked`` (``1``), ``page``/``limit``/``offset``.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ops.web.queries import FileFilter, FilterError, RunFilter, parse_when

MAX_LIMIT = 1000          # rows one request may ask for
PAGE_SIZE = 50            # rows of an HTML list page


class MultiArgs(Protocol):
    """A request's query or form (werkzeug's MultiDict)."""

    def get(self, key: str, default: Any = None) -> Any: ...
    def getlist(self, key: str) -> list[str]: ...


def _text(args: MultiArgs, key: str, max_len: int = 200) -> str:
    value = (args.get(key) or "").strip()
    if len(value) > max_len:
        raise FilterError(f"{key}: at most {max_len} characters")
    return value


def _names(args: MultiArgs, key: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v.strip() for v in args.getlist(key) if v and v.strip()))


def integer(args: MultiArgs, key: str, default: int | None = None, low: int = 0,
            high: int | None = None) -> int | None:
    raw = (args.get(key) or "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise FilterError(f"{key}: expected a whole number, got {raw[:40]!r}") from None
    if value < low or (high is not None and value > high):
        raise FilterError(f"{key}: expected {low}..{high if high is not None else ''}, got {value}")
    return value


def ids(args: MultiArgs, key: str = "ids") -> list[int]:
    """The ticked file ids of a form."""
    out = []
    for raw in args.getlist(key):
        try:
            out.append(int(raw))
        except ValueError:
            raise FilterError(f"{key}: expected file numbers, got {raw[:40]!r}") from None
    return out


def file_filter(args: MultiArgs) -> FileFilter:
    since, until = _text(args, "since", 40), _text(args, "until", 40)
    return FileFilter(
        routes=_names(args, "route"), channels=_names(args, "channel"), status=_text(args, "status", 40),
        name=_text(args, "name"), run=integer(args, "run", low=1),
        since=parse_when(since) if since else None, until=parse_when(until, end=True) if until else None,
        marked=args.get("marked") in ("1", "true", "on"),
    )


def run_filter(args: MultiArgs) -> RunFilter:
    since, until = _text(args, "since", 40), _text(args, "until", 40)
    return RunFilter(status=_text(args, "status", 40), route=_text(args, "route"), run_id=integer(args, "id", low=1),
                     since=parse_when(since) if since else None,
                     until=parse_when(until, end=True) if until else None)


@dataclass(frozen=True)
class Page:
    """Rows ``offset`` .. ``offset + limit`` of ``total``; ``number`` counts from 1."""
    number: int
    size: int
    total: int

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.size

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.size))

    @property
    def first_row(self) -> int:
        return min(self.offset + 1, self.total)

    @property
    def last_row(self) -> int:
        return min(self.offset + self.size, self.total)


def page(args: MultiArgs, total: int, size: int = PAGE_SIZE) -> Page:
    """The page asked for (``page``, from 1), the last one when it asks beyond the end."""
    number = integer(args, "page", 1, low=1) or 1
    last = max(1, -(-total // size))
    return Page(min(number, last), size, total)


def page_number(args: MultiArgs) -> int:
    return integer(args, "page", 1, low=1) or 1


def limit_offset(args: MultiArgs, default_limit: int) -> tuple[int, int]:
    """``limit`` (1..MAX_LIMIT) and ``offset`` of an API list."""
    return (integer(args, "limit", default_limit, low=1, high=MAX_LIMIT) or default_limit,
            integer(args, "offset", 0, low=0) or 0)


def keep(args: MultiArgs, *drop: str) -> list[tuple[str, str]]:
    """The filter parameters of a request minus ``drop``, for links that change one of them."""
    items: Mapping[str, list[str]] = {k: args.getlist(k) for k in dict.fromkeys(args.keys())}  # type: ignore[attr-defined]
    return [(k, v) for k, vs in items.items() if k not in drop and k != "csrf_token" for v in vs if v != ""]
