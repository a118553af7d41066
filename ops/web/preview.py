"""A safe preview of a file's content: text (EDI segments one per line) or a hex dump.

The preview is plain text; the template escapes it (Jinja autoescape), so a file holding HTML or
script shows as text. At most ``limit`` bytes are read; binary content (NUL bytes, or not text
in UTF-8 or Latin-1's printable range) becomes a hex dump of its first bytes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

LIMIT = 64 * 1024           # bytes read for a preview
HEX_LIMIT = 4 * 1024        # bytes shown of binary content


@dataclass(frozen=True)
class Preview:
    text: str
    kind: str               # text | edifact | x12 | binary | missing
    encoding: str = ""
    truncated: bool = False
    size: int = 0

    @property
    def label(self) -> str:
        return {"edifact": "EDIFACT, one segment per line", "x12": "X12, one segment per line",
                "text": "text", "binary": "binary, hex dump", "missing": "not stored"}[self.kind]


def _decode(raw: bytes) -> tuple[str, str] | None:
    try:
        return raw.decode("utf-8"), "UTF-8"
    except UnicodeDecodeError as exc:
        if exc.start >= len(raw) - 3:          # cut inside a character at the preview's end
            return raw[:exc.start].decode("utf-8"), "UTF-8"
    text = raw.decode("latin-1")
    controls = sum(1 for c in text if ord(c) < 32 and c not in "\r\n\t\f\x1c\x1d\x1e\x1f") + text.count("\x7f")
    return (text, "Latin-1") if controls <= len(text) // 100 else None


def _split(text: str, terminator: str, release: str | None) -> str:
    if "\n" in text.strip("\r\n"):
        return text                            # already one segment a line
    if release:
        parts = re.split(rf"(?<!{re.escape(release)}){re.escape(terminator)}", text)
    else:
        parts = text.split(terminator)
    return "\n".join(p.strip("\r\n") + terminator for p in parts if p.strip("\r\n"))


def segments(text: str) -> tuple[str, str]:
    """(text with one EDI segment per line, kind) for EDIFACT and X12; (text, "text") otherwise."""
    head = text.lstrip()
    if head.startswith("UNA") and len(head) >= 9:
        return _split(head, head[8], head[6] if head[6] != " " else None), "edifact"
    if head.startswith("UNB"):
        return _split(head, "'", "?"), "edifact"
    if head.startswith("ISA") and len(head) > 105:
        return _split(head, head[105], None), "x12"
    return text, "text"


def hexdump(raw: bytes) -> str:
    lines = []
    for off in range(0, len(raw), 16):
        chunk = raw[off:off + 16]
        hexes = " ".join(f"{b:02x}" for b in chunk)
        shown = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{off:08x}  {hexes:<47}  {shown}")
    return "\n".join(lines)


def preview(path: Path | None, limit: int = LIMIT) -> Preview:
    """The preview of the file at ``path`` (None: no stored content)."""
    if path is None:
        return Preview("", "missing")
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            raw = fh.read(limit)
    except OSError:
        return Preview("", "missing")
    decoded = None if b"\x00" in raw else _decode(raw)
    if decoded is None:
        return Preview(hexdump(raw[:HEX_LIMIT]), "binary", "", size > HEX_LIMIT, size)
    text, encoding = decoded
    shown, kind = segments(text)
    return Preview(shown, kind, encoding, size > limit, size)
