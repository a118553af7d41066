"""Is a local file complete? The rule, in one place.

A file is ready when nobody holds it open for writing (:func:`open_for_writing`, read from
``/proc``) and - where writes are not announced by a close (polling, network shares, a file
moved in while ``/proc`` is not fully readable) - its :func:`signature` (inode, size, mtime) has
stayed the same for the settle time. The directory monitor applies it to files arriving in a
watched folder; it lives in the engine so that the file channel can apply it to a route's
in-folder as well.
"""
from __future__ import annotations

import os
import stat

Signature = tuple[int, int, int]        # inode, size, mtime_ns


def signature(path: str) -> Signature | None:
    """(inode, size, mtime in ns) of a regular file; None when it is gone or not a regular file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def open_for_writing(paths: set[str]) -> tuple[set[str], bool]:
    """(the paths some process holds open for writing, whether every process could be inspected).

    Linux only: each process's ``/proc/PID/fd`` links and ``fdinfo`` flags; a process whose fds
    this user may not read makes the answer incomplete (then the signature rule must decide)."""
    found: set[str] = set()
    complete = True
    if not paths:
        return found, True
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return found, False
    for pid in pids:
        fddir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fddir)
        except PermissionError:
            complete = False
            continue
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fddir}/{fd}")
            except OSError:
                continue
            if target not in paths:
                continue
            try:
                with open(f"/proc/{pid}/fdinfo/{fd}", encoding="ascii") as fh:
                    flags = next((int(line.split()[1], 8) for line in fh if line.startswith("flags:")), 0)
            except (OSError, ValueError):
                flags = os.O_WRONLY
            if flags & 3 in (os.O_WRONLY, os.O_RDWR):
                found.add(target)
    return found, complete
