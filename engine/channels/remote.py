"""What the remote channel types (ftp, ftps, sftp, smtp) share.

Connection settings from the channel spec, error messages that name channel and host
and never carry a password, filemask matching, file names in the channel's ``encoding``, and
the send pattern: write under a temporary name, check the size the server got, then rename (to a
free name: a file at the partner is never overwritten), so partners never pick up half a file and
a delivery counts only when the partner took it whole.
"""
from __future__ import annotations

import fnmatch
import re
import secrets
import socket
import ssl
from pathlib import Path
from typing import BinaryIO

from engine.channels.base import (MAX_NAME_TRIES, Channel, CommunicationError, IncomingItem, Refused, safe_name,
                                  unique_names)
from engine.log import redact

# Our own temporary upload names: never offered as incoming files (see temp_name).
_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{8}\.part$", re.S)


def is_temp_name(name: str) -> bool:
    return bool(_TEMP_NAME.match(name))


def one_line(text: str) -> str:
    """``text`` on one line; bytes a server sent that decode to nothing (lone surrogates) become "?"."""
    return " ".join(str(text).encode("utf-8", "replace").decode("utf-8").split())


class RemoteChannel(Channel):
    """Base of the remote channel types. Subclasses set ``default_port`` and ``errors``."""

    default_port = 0
    # exception types meaning "talking to the partner failed"; turned into CommunicationError
    errors: tuple[type[BaseException], ...] = (OSError, EOFError)

    def __init__(self, spec, cfg, log) -> None:  # type: ignore[no-untyped-def]
        super().__init__(spec, cfg, log)
        self.host: str = spec.get("host")
        self.port: int = int(spec.get("port") or self.default_port)
        self.user: str = spec.get("user") or ""
        self.password: str = spec.get("password") or ""
        self.remote_path: str = spec.get("path") or ""
        self.filemask: str = spec.get("filemask") or "*"
        self.timeout: float = float(spec.get("timeout") or 10.0)
        self.encoding: str = spec.get("encoding") or "utf-8"   # of file names (ftp, sftp: the protocol has none)
        self.broken = False        # a transfer failed: the connection is not trusted any more
        self.dead: CommunicationError | None = None   # reconnecting failed: the channel is done for this run
        self.leftovers: list[str] = []   # temporary uploads a broken connection left; removed on reconnect
        self._present: set[str] | None = None   # names in the remote folder (see present()); per connection

    # ------------------------------------------------------------------ errors
    def describe(self) -> str:
        return f"channel {self.name!r} ({self.type} {self.host}:{self.port})"

    def scrub(self, text: str) -> str:
        """``text`` on one line, with the channel's password (and the config's secrets) masked."""
        text = one_line(text)
        pw = self.password
        if pw:
            if len(pw) >= 3:
                text = text.replace(pw, "***")
            else:  # a very short password: only where it stands as a word of its own
                text = re.sub(rf"(?<!\w){re.escape(pw)}(?!\w)", "***", text)
        return redact(text)

    def reason(self, exc: BaseException) -> str:
        """A short human reason for a low-level exception."""
        if isinstance(exc, (socket.timeout, TimeoutError)):
            return f"timed out after {self.timeout:g} s"
        if isinstance(exc, ConnectionRefusedError):
            return "connection refused"
        if isinstance(exc, socket.gaierror):
            return f"host not found ({exc.strerror or exc})"
        if isinstance(exc, EOFError) or (isinstance(exc, OSError) and not str(exc)):
            return "connection closed by the server"
        if isinstance(exc, OSError) and exc.strerror and not exc.filename:
            return exc.strerror
        return str(exc) or type(exc).__name__

    def error(self, action: str, exc: BaseException | None = None,
              kind: type[CommunicationError] = CommunicationError) -> CommunicationError:
        """One-line CommunicationError (or ``kind``) naming channel and host; no password in it."""
        text = f"{self.describe()}: {action}"
        if exc is not None:
            text += f": {self.reason(exc)}"
        return kind(self.scrub(text))

    def is_answer(self, exc: BaseException) -> bool:
        """True when ``exc`` is the server's refusal, after which the connection is still in step."""
        return False

    def step(self, action: str) -> "_Step":
        """Turn the protocol's errors inside the block into a CommunicationError (no chained secrets)."""
        return _Step(self, action)

    # ------------------------------------------------------------------ connection
    def connected(self) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def ensure_open(self) -> None:
        """Before each transfer. After a broken transfer, reconnect once; when that fails too, every
        later call of this run fails at once with the same error (no timeout per file)."""
        if self.dead is not None:
            raise CommunicationError(str(self.dead))
        if self.connected() and not self.broken:
            return
        if self.connected():
            self.log.info("%s", self.scrub(f"{self.describe()}: reconnecting after a failed transfer"))
        self.close()
        self._present = None        # listed again on the new connection
        try:
            self.open()
        except CommunicationError as exc:
            self.dead = exc
            raise
        self.remove_leftovers()

    def remove_leftovers(self) -> None:
        """Remove the temporary uploads that broken transfers left, now that a connection works again
        (best effort: what cannot be removed stays under its hidden ``.NAME.XXXXXXXX.part`` name)."""
        left, self.leftovers = self.leftovers, []
        for tmp in left:
            try:
                self.remove_quietly(tmp)
            except Exception:  # noqa: BLE001 - best effort; the transfer's own error is the one reported
                self.log.debug("%s", self.scrub(f"{self.describe()}: could not remove {tmp!r}"), exc_info=True)

    # ------------------------------------------------------------------ names
    def matches(self, name: str) -> bool:
        """A remote name offered as incoming: fits the filemask, and is not a temporary upload."""
        return fnmatch.fnmatchcase(name, self.filemask) and not is_temp_name(name)

    @staticmethod
    def temp_name(name: str) -> str:
        """Where a file is written before its rename: hidden, and skipped by our own listings."""
        return f".{name}.{secrets.token_hex(4)}.part"

    def local_path(self, key: str) -> Path | None:
        """A file named in the channel config (cafile, known_hosts, key_file), resolved."""
        value = self.spec.get(key)
        return self.cfg.resolve(value) if value else None

    def tls_context(self) -> ssl.SSLContext:
        """Certificate checking per ``cafile`` (default: the system's CAs) and ``verify``."""
        cafile = self.local_path("cafile")
        try:
            ctx = ssl.create_default_context(cafile=str(cafile) if cafile else None)
        except (OSError, ssl.SSLError) as exc:
            raise self.error(f"cannot load cafile {str(cafile)!r}", exc) from None
        if not self.spec.get("verify", True):
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def check_size(self, item: IncomingItem, got: int) -> None:
        """A download must bring the size the listing showed: otherwise the transfer was cut, or the
        partner is still writing the file; either way it stays at the partner for the next run."""
        if item.size is not None and got != item.size:
            raise self.error(f"cannot download {item.name!r}: got {got} bytes, the listing said {item.size}")

    # ------------------------------------------------------------------ names on the wire
    def wire_name(self, raw: str | bytes) -> tuple[str, bool]:
        """(the name to show and record, whether some of its bytes are not valid in ``encoding``).

        ``raw`` is a name as listed: decoded with surrogateescape (ftp) or bytes (sftp); odd bytes show
        as U+FFFD, and the file is still reached under ``raw``, its own bytes.
        """
        data = raw if isinstance(raw, bytes) else raw.encode(self.encoding, "surrogateescape")
        try:
            return data.decode(self.encoding), False
        except UnicodeDecodeError:
            return data.decode(self.encoding, "replace"), True

    def warn_undecodable(self, names: list[str]) -> None:
        if names:
            self.log.warning("%s", self.scrub(
                f"{self.describe()}: {len(names)} file name(s) are not valid {self.encoding} (set the channel's "
                f"encoding, e.g. encoding = \"cp1252\"); received under names with U+FFFD for the odd bytes: "
                + ", ".join(repr(n) for n in names[:10])))

    # ------------------------------------------------------------------ sending
    def send(self, src: Path, filename: str) -> str:
        """Upload ``src`` as ``filename`` inside the remote folder: to a temporary name, check that the
        server holds every byte, rename - to the next free name of :func:`unique_names` when a file of
        that name is already there (never overwritten); returns the name the partner got. Anything
        short of that raises CommunicationError (the engine keeps the file for retry): a refused
        rename is a failed delivery, never a fallback to writing the final name directly, which a
        partner could pick up half-written."""
        name = safe_name(filename)  # a template-made name never leaves the remote folder
        tmp = self.temp_name(name)
        with open(src, "rb") as data:  # a missing stored file fails here, before the partner is asked anything
            with self.step(f"cannot send {name!r}"):
                self.ensure_open()         # no connection: nothing was begun, nothing to clean up
            try:
                with self.step(f"cannot send {name!r}"):
                    sent = self.put(data, tmp)
                with self.step(f"cannot send {name!r}: cannot check its size on the server"):
                    got = self.remote_size(tmp)
                if got is not None and got != sent:
                    raise self.error(f"cannot send {name!r}: the server holds {got} of the {sent} bytes sent", None,
                                     Refused)
                return self._rename_unique(tmp, name)
            except CommunicationError:
                if self.broken:            # cannot clean up now: at the next connection of this run
                    self.leftovers.append(tmp)
                else:                      # refused: leave no piece behind
                    try:
                        self.remove_quietly(tmp)
                    except Exception:  # noqa: BLE001 - the upload's error is the one to report
                        self.leftovers.append(tmp)
                raise

    def _rename_unique(self, tmp: str, name: str) -> str:
        """Rename the upload to the first of :func:`unique_names` that no file at the partner holds,
        by the names :meth:`present` knows (no round trip per file), and again when a rename is
        refused (a file that appeared since the listing: SFTP's rename refuses an existing name, so
        it is skipped too); the name it got."""
        present = self.present()
        for final in unique_names(name):
            if final in present:
                continue
            with self.step(f"cannot rename {tmp!r} to {final!r}"):
                refusal = self.rename(tmp, final)
            if refusal is None:
                present.add(final)
                return final
            with self.step(f"cannot send {name!r}: cannot check whether {final!r} is on the server"):
                taken = self.exists(final)
            if not taken:
                target = "it" if final == name else repr(final)
                raise self.error(f"cannot send {name!r}: the server refuses to rename {tmp!r} to {target} "
                                 f"({refusal})", None, Refused)
            present.add(final)
        raise self.error(f"cannot send {name!r}: it and {MAX_NAME_TRIES - 1} numbered names are all taken on the "
                         f"server", None, Refused)

    def present(self) -> set[str]:
        """The names in the remote folder: listed at the first send of a connection, then kept up
        to date with what this channel renamed there (one listing per connection, not a look per file)."""
        if self._present is None:
            with self.step("cannot list the remote folder"):
                self._present = self.listed_names()
        return self._present

    def listed_names(self) -> set[str]:  # pragma: no cover - abstract
        """Every name in the remote folder (files, folders, links), as send() names them."""
        raise NotImplementedError

    def exists(self, remote_name: str) -> bool:  # pragma: no cover - abstract
        """Does the remote folder hold something named ``remote_name`` (asked when a rename is refused)?"""
        raise NotImplementedError

    def put(self, data: BinaryIO, remote_name: str) -> int:  # pragma: no cover - abstract
        """Upload the rest of the open file ``data`` as ``remote_name``; the number of bytes sent (what
        the server's size must be)."""
        raise NotImplementedError

    def remote_size(self, remote_name: str) -> int | None:  # pragma: no cover - abstract
        """The size the server has for a file just uploaded; None when the server cannot tell."""
        raise NotImplementedError

    def rename(self, old: str, new: str) -> str | None:  # pragma: no cover - abstract
        """Rename at the server, never replacing a file where the protocol allows that (SFTP); None
        when done, else the server's reason for refusing."""
        raise NotImplementedError

    def remove_quietly(self, remote_name: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class _Step:
    """The context manager of :meth:`RemoteChannel.step`: a send passes through four of them per
    file, so it is a class (a ``contextlib.contextmanager`` generator costs about twice as much)."""

    __slots__ = ("channel", "action")

    def __init__(self, channel: RemoteChannel, action: str) -> None:
        self.channel, self.action = channel, action

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if exc is None or isinstance(exc, Refused):
            return False
        ch = self.channel
        if isinstance(exc, CommunicationError):
            ch.broken = True
            return False
        if isinstance(exc, ch.errors):
            if ch.is_answer(exc):       # the partner said no to this request; the session goes on
                raise ch.error(self.action, exc, Refused) from None
            ch.broken = True
            raise ch.error(self.action, exc) from None
        return False
