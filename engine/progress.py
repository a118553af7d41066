"""A plain progress bar for ``bots-engine`` on a terminal (stdlib only).

Shown only when stdout is a terminal and the run has lasted ``delay`` seconds, so short runs
and runs under cron or Celery print nothing extra.
"""
from __future__ import annotations

import logging
import shutil
import sys
import time
from typing import TextIO


class ProgressBar:
    def __init__(self, stream: TextIO | None = None, delay: float = 2.0, force: bool = False) -> None:
        self.stream = stream or sys.stdout
        self.enabled = force or (hasattr(self.stream, "isatty") and self.stream.isatty())
        self.delay = delay
        self.t0 = time.monotonic()
        self.shown = False

    def __call__(self, info: dict) -> None:
        if not self.enabled or time.monotonic() - self.t0 < self.delay:
            return
        self.stream.write("\r" + self.render(info))
        self.stream.flush()
        self.shown = True

    def render(self, info: dict) -> str:
        width = shutil.get_terminal_size((80, 20)).columns
        done, total = info.get("files_done") or 0, info.get("files_total")
        label = " ".join(str(x) for x in (info.get("phase"), info.get("route"),
                                           f"part {info['part']}" if info.get("part") else None) if x)
        if total:
            frac = min(1.0, done / total)
            barw = max(10, min(40, width - len(label) - 25))
            fill = int(frac * barw)
            text = f"{label} [{'#' * fill}{'.' * (barw - fill)}] {done}/{total}"
        else:
            text = f"{label} {done} files" if done else label
        return text[: width - 1].ljust(width - 1)

    def finish(self) -> None:
        if self.shown:
            self.stream.write("\r" + " " * (shutil.get_terminal_size((80, 20)).columns - 1) + "\r")
            self.stream.flush()
            self.shown = False

    def clear_for_logs(self, logger: logging.Logger) -> None:
        """Clear the bar before each of ``logger``'s lines, so a log line on the same terminal starts on
        a clean line instead of behind the bar (the next progress update draws the bar again)."""
        if not self.enabled:
            return
        bar = self

        class _Clear(logging.Filter):
            def filter(self, record: logging.LogRecord) -> bool:
                bar.finish()
                return True

        logger.addFilter(_Clear())
