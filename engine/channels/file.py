"""The ``file`` channel: a local folder.

In: regular files in ``path`` matching ``filemask`` (names starting with a dot are skipped,
as Bots' glob does; folders, FIFOs and other special files are never opened).
Out: the file is written under a temporary dot-name in the target folder and renamed, so a
reader never sees half a file. A missing or unwritable out folder is a communication error
(the engine keeps the file for retry); the folder is never created behind the user's back.
"""
from __future__ import annotations

import fnmatch
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from engine.channels.base import Channel, CommunicationError, IncomingItem


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


class FileChannel(Channel):
    type = "file"

    @property
    def folder(self) -> Path:
        return self.cfg.resolve(self.spec.get("path"))

    def describe(self) -> str:
        return f"channel {self.name!r} (file {self.folder})"

    # ------------------------------------------------------------------ in
    def list_incoming(self) -> Iterator[IncomingItem]:
        folder = self.folder
        mask = self.spec.get("filemask") or "*"
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            raise CommunicationError(f"{self.describe()}: folder does not exist") from None
        except OSError as exc:
            raise CommunicationError(f"{self.describe()}: cannot list folder: {_reason(exc)}") from None
        names = []
        for entry in entries:
            if entry.name.startswith(".") or not fnmatch.fnmatchcase(entry.name, mask):
                continue
            try:
                st = entry.stat()
            except OSError as exc:
                self.log.warning("%s: skipping %r: %s", self.describe(), entry.name, _reason(exc))
                continue
            if stat.S_ISDIR(st.st_mode):
                continue
            if not stat.S_ISREG(st.st_mode):
                self.log.warning("%s: skipping %r: not a regular file", self.describe(), entry.name)
                continue
            names.append((entry.name, st.st_size))
        names.sort()
        for name, size in names:
            yield IncomingItem(name=name, size=size, ref=str(folder / name))

    def fetch(self, item: IncomingItem, dest: Path) -> None:
        try:
            # O_NONBLOCK: a FIFO swapped in after listing must never hang the run.
            fd = os.open(item.ref, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            with os.fdopen(fd, "rb") as src:
                if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
                    raise OSError(0, "not a regular file")
                with open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, 1024 * 1024)
        except OSError as exc:
            raise CommunicationError(f"{self.describe()}: cannot read {item.name!r}: {_reason(exc)}") from None

    def delete(self, item: IncomingItem) -> None:
        try:
            os.remove(item.ref)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise CommunicationError(f"{self.describe()}: cannot remove {item.name!r}: {_reason(exc)}") from None

    # ------------------------------------------------------------------ out
    def send(self, src: Path, filename: str) -> None:
        folder = self.folder
        if not folder.is_dir():
            raise CommunicationError(f"{self.describe()}: output folder does not exist or is not a folder")
        target = folder / filename
        tmp = folder / f".{filename[:180]}.{os.getpid()}.tmp"
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, target)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise CommunicationError(f"{self.describe()}: cannot write {filename!r}: {_reason(exc)}") from None
