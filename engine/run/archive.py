"""The archive on disk: received files under ``botssys/data/YYYYMMDD/``, flushed per batch.

A received file is written straight under its archive name ``<run>-<n>`` and checksummed, and
the whole batch is flushed to disk with one ``syncfs`` before it is recorded and any of its
sources is removed - one flush per batch, not per file, is what keeps the engine near the plain
copy's speed (BENCHMARKS.md). There is no temporary name: an archived file counts only once its
record is committed, so a file cut short by a crash is one no record names (like the batch's
complete files fetched before the crash), and its source is still at the partner for the next
run. Such leftovers go with their day folder after ``maxdays``; ``.tmp-`` files of older
versions are removed by cleanup.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
from pathlib import Path

_libc: ctypes.CDLL | None = None


def syncfs(path: Path) -> None:
    """Flush the file system holding ``path`` once (a batch's worth of files); ``os.sync()`` where
    the C library has no ``syncfs``."""
    global _libc
    try:
        if _libc is None:
            # the symbols of this process, libc's among them (ctypes.util.find_library would run ldconfig)
            _libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(path, os.O_RDONLY)
        try:
            if _libc.syncfs(fd) != 0:
                os.sync()
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        os.sync()


def digest(path: Path | str) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of a file."""
    with open(path, "rb") as f:
        h = hashlib.file_digest(f, "sha256")
        return f.tell(), h.hexdigest()


def unlink_quietly(p: Path | str) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass
