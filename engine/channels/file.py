"""The ``file`` channel: a local folder.

In: regular files directly in ``path`` (never in its sub-folders) matching ``filemask`` (names
starting with a dot are skipped, as Bots' glob does; folders, FIFOs and other special files are
never opened; a symbolic link is skipped with a warning, never followed, since it could hand a
partner any file this host can read). :func:`takes` and :func:`holds` are that rule, shared with the directory monitor
(``ops/dirmonitor``), so the monitor queues a job only for a file the channel will read.
Out: the file is written under a temporary dot-name in the target folder and then linked under
its name, so a reader never sees half a file; a file already of that name is never overwritten
(the output takes the next free name, :func:`engine.channels.base.unique_names`). A missing or unwritable out folder is a communication error
(the engine keeps the file for retry); the folder is never created behind the user's back.
"""
from __future__ import annotations

import errno
import fnmatch
import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from engine.channels.base import (MAX_NAME_TRIES, Channel, CommunicationError, FileGone, IncomingItem, Refused,
                                  shown_name, unique_names)

_CHUNK = 1024 * 1024
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK}   # link() not possible here


def takes(name: str, mask: str) -> bool:
    """Does a file channel with filemask ``mask`` receive a file named ``name`` lying in its folder?
    Not a dot-name (writers' temporary names, botsq's own included), and matching ``mask``
    (shell pattern, case-sensitive; "" is ``*``)."""
    return not name.startswith(".") and fnmatch.fnmatchcase(name, mask or "*")


def holds(folder: str, path: str, mask: str) -> bool:
    """Is ``path`` a file the channel of ``folder`` (a real path) and ``mask`` reads: directly in
    that folder - the channel never reads sub-folders - :func:`takes` it, and not a symbolic link
    (the channel never follows one)."""
    parent, name = os.path.split(path)
    return parent == folder and takes(name, mask) and not os.path.islink(path)


def copy_file(src: str | os.PathLike[str], dst: str) -> None:
    """Copy the regular file ``src`` to ``dst`` (created or truncated, mode 0o666 less the umask), in the
    kernel (``sendfile``; a read/write loop where the file system has none). Raises OSError.

    What ``shutil.copyfile`` does without its checks for the same file and for FIFOs (four ``stat``
    calls a file): ``src`` is content botsq stored itself and ``dst`` a fresh temporary name, so the
    checks find nothing; per file that is most of the system calls of a small file's copy."""
    fd = os.open(src, os.O_RDONLY)
    try:
        out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            size = os.fstat(fd).st_size
            done = 0
            try:
                while done < size:
                    n = os.sendfile(out, fd, done, size - done)
                    if n == 0:          # shorter than it was a moment ago: never a silently short copy
                        raise OSError(errno.EIO, "file shrank while being copied")
                    done += n
            except OSError as exc:
                if done or exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                while chunk := os.read(fd, _CHUNK):     # no sendfile between these file systems
                    _write_all(out, chunk)
        finally:
            os.close(out)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    """All of ``data`` to ``fd`` (os.write may write less than it was given)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


class FileChannel(Channel):
    type = "file"
    local = True

    _folder: Path | None = None

    @property
    def folder(self) -> Path:
        if self._folder is None:
            self._folder = self.cfg.resolve(self.spec.get("path"))
        return self._folder

    def describe(self) -> str:
        return f"channel {self.name!r} (file {self.folder})"

    # ------------------------------------------------------------------ in
    def list_incoming(self) -> "_Listing":
        """The waiting files, sorted by name: a compact sized listing, items made as they are used."""
        folder = self.folder
        mask = self.spec.get("filemask") or "*"
        names: list[tuple[str, int, float]] = []
        try:
            with os.scandir(folder) as it:
                for entry in it:
                    if not takes(entry.name, mask):
                        continue
                    try:
                        if entry.is_symlink():   # never followed: a link could hand out any file of this host
                            self.log.warning("%s: skipping %r: a symbolic link (only regular files are taken)",
                                             self.describe(), shown_name(entry.name))
                            continue
                        st = entry.stat(follow_symlinks=False)
                    except OSError as exc:
                        self.log.warning("%s: skipping %r: %s", self.describe(), shown_name(entry.name),
                                         _reason(exc))
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        continue
                    if not stat.S_ISREG(st.st_mode):
                        self.log.warning("%s: skipping %r: not a regular file", self.describe(),
                                         shown_name(entry.name))
                        continue
                    names.append((entry.name, st.st_size, st.st_mtime))
        except FileNotFoundError:
            raise CommunicationError(f"{self.describe()}: folder does not exist") from None
        except OSError as exc:
            raise CommunicationError(f"{self.describe()}: cannot list folder: {_reason(exc)}") from None
        odd = [shown_name(n) for n, _s, _m in names if not n.isascii() and shown_name(n) != n]
        if odd:   # still received: under the shown name, read and removed under its own bytes
            self.log.warning("%s: %d file name(s) are not valid UTF-8; received under names with U+FFFD for the "
                             "odd bytes: %s", self.describe(), len(odd), ", ".join(repr(n) for n in sorted(odd)[:10]))
        names.sort()
        return _Listing(str(folder), names)

    def fetch(self, item: IncomingItem, dest: Path) -> tuple[int, str]:
        """Copy to ``dest``; returns (size, sha256 hex) computed on the way, sparing the engine a re-read."""
        try:
            # O_NONBLOCK: a FIFO swapped in after listing must never hang the run; O_NOFOLLOW: nor a
            # symbolic link swapped in make it read another file (ELOOP: refused, that file only)
            fd = os.open(item.ref, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0))
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise OSError(0, "not a regular file")
                out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    h = hashlib.sha256()
                    size = 0
                    while chunk := os.read(fd, _CHUNK):
                        h.update(chunk)
                        size += len(chunk)
                        _write_all(out, chunk)
                finally:
                    os.close(out)
            finally:
                os.close(fd)
        except FileNotFoundError:
            raise FileGone(f"{self.describe()}: {item.name!r} was listed but is gone") from None
        except OSError as exc:      # this file only (permissions, a FIFO swapped in): the others go on
            raise Refused(f"{self.describe()}: cannot read {item.name!r}: {_reason(exc)}") from None
        return size, h.hexdigest()

    def delete(self, item: IncomingItem) -> None:
        try:
            os.remove(item.ref)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise CommunicationError(f"{self.describe()}: cannot remove {item.name!r}: {_reason(exc)}") from None

    # ------------------------------------------------------------------ out
    def send(self, src: Path, filename: str) -> str:
        """Write ``src`` to a temporary dot-name, then link it under the first free name of
        :func:`unique_names`: link() fails on an existing name, so a file already in the folder
        (an earlier output of this run or of another) is never overwritten, even by a race."""
        folder = self.folder
        tmp = os.path.join(folder, f".{filename[:180]}.{os.getpid()}.tmp")
        try:
            try:
                copy_file(src, tmp)
                return self._link_unique(tmp, filename)
            finally:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
        except OSError as exc:
            if not folder.is_dir():
                raise CommunicationError(f"{self.describe()}: output folder does not exist or is not a folder") \
                    from None
            raise CommunicationError(f"{self.describe()}: cannot write {filename!r}: {_reason(exc)}") from None

    def _link_unique(self, tmp: str, filename: str) -> str:
        for name in unique_names(filename):
            target = os.path.join(self.folder, name)
            try:
                os.link(tmp, target)
                return name
            except FileExistsError:
                continue
            except OSError as exc:
                if exc.errno not in _NO_LINKS:
                    raise
            # a file system without hard links (some network shares): look, then rename (a writer
            # racing for the same name in that instant could still be overwritten)
            if not os.path.lexists(target):
                os.rename(tmp, target)
                return name
        raise Refused(f"{self.describe()}: cannot write {filename!r}: it and {MAX_NAME_TRIES - 1} numbered "
                      f"names are all taken in the folder")


class _Listing:
    """A folder listing that keeps only (name, size, mtime) per file: 100,000 waiting files stay small."""

    def __init__(self, folder: str, names: list[tuple[str, int, float]]) -> None:
        self.folder, self.names = folder, names

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[IncomingItem]:
        folder = self.folder
        for raw, size, mtime in self.names:
            # name: valid text (U+FFFD for bytes that are not UTF-8) for records, logs and out-names;
            # ref: the real name's path, so the file is read and removed under its own bytes
            yield IncomingItem(name=shown_name(raw), size=size, ref=os.path.join(folder, raw), mtime=mtime)

    def without(self, names: set[str]) -> "_Listing":
        """The same listing less the files ``names`` (shown names, held back by readiness), still compact."""
        return _Listing(self.folder, [n for n in self.names if shown_name(n[0]) not in names])
