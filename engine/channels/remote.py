"""What the remote channel types (ftp, ftps, sftp, smtp) share.

Connection settings from the channel spec, error messages that name channel and host
and never carry a password, filemask matching, and the send pattern: write under a
temporary name, then rename, so partners never pick up half a file.
"""
from __future__ import annotations

import fnmatch
import re
import secrets
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from engine.channels.base import Channel, CommunicationError, IncomingItem, safe_name
from engine.log import redact

# Our own temporary upload names: never offered as incoming files (see temp_name).
_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{8}\.part$", re.S)


def is_temp_name(name: str) -> bool:
    return bool(_TEMP_NAME.match(name))


def one_line(text: str) -> str:
    return " ".join(str(text).split())


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
        self.broken = False        # a transfer failed: the connection is not trusted any more
        self.dead: CommunicationError | None = None   # reconnecting failed: the channel is done for this run
        self.use_rename = True     # cleared when the server refuses to rename

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

    def error(self, action: str, exc: BaseException | None = None) -> CommunicationError:
        """One-line CommunicationError naming channel and host; no password in it."""
        text = f"{self.describe()}: {action}"
        if exc is not None:
            text += f": {self.reason(exc)}"
        return CommunicationError(self.scrub(text))

    def is_answer(self, exc: BaseException) -> bool:
        """True when ``exc`` is the server's refusal, after which the connection is still in step."""
        return False

    @contextmanager
    def step(self, action: str) -> Iterator[None]:
        """Turn the protocol's errors inside the block into a CommunicationError (no chained secrets)."""
        try:
            yield
        except CommunicationError:
            self.broken = True
            raise
        except self.errors as exc:
            if not self.is_answer(exc):
                self.broken = True
            raise self.error(action, exc) from None

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
        try:
            self.open()
        except CommunicationError as exc:
            self.dead = exc
            raise

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

    # ------------------------------------------------------------------ sending
    def send(self, src: Path, filename: str) -> None:
        """Upload ``src`` as ``filename`` inside the remote folder, via a temporary name."""
        name = safe_name(filename)  # a template-made name never leaves the remote folder
        if self.use_rename:
            tmp = self.temp_name(name)
            try:
                with self.step(f"cannot send {name!r}"):
                    self.put(src, tmp)
            except CommunicationError:
                if not self.broken:   # refused (disk full, ...): do not leave a piece behind
                    try:
                        self.remove_quietly(tmp)
                    except Exception:  # noqa: BLE001 - the upload's error is the one to report
                        pass
                raise
            with self.step(f"cannot rename {tmp!r} to {name!r}"):
                refusal = self.rename(tmp, name)
            if refusal is None:
                return
            self.log.warning("%s", self.scrub(
                f"{self.describe()}: the server refuses to rename uploads ({refusal}); "
                "sending under final names from now on"))
            self.use_rename = False
            with self.step(f"cannot remove {tmp!r}"):
                self.remove_quietly(tmp)
        with self.step(f"cannot send {name!r}"):
            self.put(src, name)

    def put(self, src: Path, remote_name: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def rename(self, old: str, new: str) -> str | None:  # pragma: no cover - abstract
        """Rename at the server; None when done, else the server's reason for refusing."""
        raise NotImplementedError

    def remove_quietly(self, remote_name: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError
