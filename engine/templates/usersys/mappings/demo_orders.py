"""Demo mapping: a (simplified) EDIFACT ORDERS file to one CSV file per order.

A mapping is ``def function(content: bytes, meta: dict) -> bytes | Iterable[tuple[bytes, dict]]``.
Return bytes for one output file, or (bytes, meta) pairs for several; meta may set
``filename``. An exception here is a file error for this file only; the run goes on.
"""
from __future__ import annotations


def _segments(text: str):
    for raw in text.replace("\r", "").replace("\n", "").split("'"):
        raw = raw.strip()
        if raw:
            tag, *elements = raw.split("+")
            yield tag, elements


def to_csv(content: bytes, meta: dict):
    text = content.decode("utf-8")
    order, lines, outputs = None, [], []
    for tag, el in _segments(text):
        if tag == "UNH":
            order, lines = None, []
        elif tag == "BGM":
            order = el[1] if len(el) > 1 else "?"
        elif tag == "LIN":
            item = el[2].split(":")[0] if len(el) > 2 else ""
            lines.append([item, ""])
        elif tag == "QTY" and lines:
            lines[-1][1] = el[0].split(":")[1]
        elif tag == "UNT":
            if order is None:
                raise ValueError("order without BGM segment")
            csv = "order;item;quantity\n" + "".join(f"{order};{i};{q}\n" for i, q in lines)
            outputs.append((csv.encode(), {}))
    if not outputs:
        raise ValueError("no ORDERS message (UNH ... UNT) in the file")
    return outputs
