"""SFTP channel on paramiko: one SSH connection per run, host keys checked against known_hosts.

File names: SFTP version 3 (what OpenSSH speaks) sends them as bytes with no encoding; the channel
decodes them with its ``encoding`` (default UTF-8) and uses the bytes as listed to reach the file,
so one odd name never stops a listing. A partner that stops answering mid-file ends the transfer
within ``timeout`` (see :class:`_Watchdog`).
"""
from __future__ import annotations

import logging
import socket
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import paramiko
from paramiko.sftp import CMD_CLOSE, CMD_HANDLE, CMD_NAME, CMD_OPENDIR, CMD_READDIR

from engine.channels.base import FileGone, IncomingItem, Refused
from engine.channels.remote import RemoteChannel

BLOCKSIZE = 32 * 1024   # paramiko's SFTP packet size
_RSA_TYPES = ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]
# paramiko logs every failure with a traceback; the channel reports it as one CommunicationError.
PARAMIKO_LOG = "botsq.sftp.paramiko"
logging.getLogger(PARAMIKO_LOG).setLevel(logging.CRITICAL)


class _Watchdog:
    """Closes the SSH transport when a transfer makes no progress for ``timeout`` seconds.

    paramiko retries a socket send that times out for ever (``Packetizer.write_all``), so a partner
    that stops reading mid-file would hold the run for good; closing the transport makes that send
    fail at once (EOFError), and the channel reports it as timed out.
    """

    def __init__(self, timeout: float, on_stall) -> None:  # type: ignore[no-untyped-def]
        self.timeout, self.on_stall = timeout, on_stall
        self.busy = 0
        self.last = time.monotonic()
        self.fired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="sftp-watchdog", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(max(0.05, self.timeout / 4)):
            if self.busy and time.monotonic() - self.last > self.timeout and not self.fired:
                self.fired = True
                self.on_stall()

    def progress(self) -> None:
        self.last = time.monotonic()

    @contextmanager
    def watching(self) -> Iterator[None]:
        self.busy += 1
        self.progress()
        try:
            yield
        finally:
            self.busy -= 1

    def stop(self) -> None:
        self._stop.set()


class SftpChannel(RemoteChannel):
    type = "sftp"
    default_port = 22
    errors = (OSError, EOFError, paramiko.SSHException)

    transport: paramiko.Transport | None = None
    sftp: paramiko.SFTPClient | None = None
    watchdog: _Watchdog | None = None

    # ------------------------------------------------------------------ connecting
    def _known_keys(self) -> tuple[str, dict[str, paramiko.PKey] | None, Path]:
        """(name in known_hosts, the keys recorded for it or None, the file)."""
        path = self.local_path("known_hosts") or Path("~/.ssh/known_hosts").expanduser()
        lookup = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        keys = paramiko.HostKeys()
        if path.exists():
            try:
                keys.load(str(path))
            except (OSError, paramiko.SSHException, ValueError) as exc:
                raise self.error(f"cannot read known_hosts {str(path)!r}", exc) from None
        found = keys.lookup(lookup)
        return lookup, (dict(found) if found else None), path

    def _prefer(self, transport: paramiko.Transport, known: dict[str, paramiko.PKey]) -> None:
        """Offer the host key types known_hosts has first, so the server shows one we can check."""
        opts = transport.get_security_options()
        first: list[str] = []
        for kt in known:
            first += _RSA_TYPES if kt == "ssh-rsa" else [kt]
        first = [k for k in first if k in opts.key_types]
        if first:
            opts.key_types = first + [k for k in opts.key_types if k not in first]

    def _check_host_key(self, transport: paramiko.Transport, lookup: str,
                        known: dict[str, paramiko.PKey] | None, path: Path) -> None:
        key = transport.get_remote_server_key()
        if known is None:
            raise self.error(
                f"host key of {lookup} ({key.get_name()}) is not in {path}; add it "
                f"(ssh-keyscan -p {self.port} {self.host} >> {path}) or set insecure_no_host_key_check = true")
        if known.get(key.get_name()) != key:
            raise self.error(
                f"HOST KEY MISMATCH for {lookup}: the server shows {key.get_name()} "
                f"{key.fingerprint}, {path} has a different key; refusing to connect")

    def _private_key(self) -> paramiko.PKey:
        path = self.local_path("key_file")
        assert path is not None
        try:  # the password, when given, unlocks an encrypted key
            return paramiko.PKey.from_path(path, self.password.encode() or None)
        except (OSError, paramiko.SSHException, ValueError) as exc:
            raise self.error(f"cannot read key_file {str(path)!r}", exc) from None

    def _authenticate(self, transport: paramiko.Transport) -> None:
        user = self.user
        with self.step(f"login failed for user {user!r}"):
            if self.spec.get("key_file"):
                transport.auth_publickey(user, self._private_key())
                if not transport.is_authenticated() and self.password:  # key + password (two factor)
                    transport.auth_password(user, self.password)
            else:
                transport.auth_password(user, self.password)
            if not transport.is_authenticated():
                raise paramiko.AuthenticationException("authentication failed")

    def reason(self, exc: BaseException) -> str:
        if self.watchdog is not None and self.watchdog.fired:
            return f"timed out after {self.timeout:g} s without progress (the server stopped answering)"
        if isinstance(exc, paramiko.BadAuthenticationType):
            return f"the server does not accept this kind of login (allowed: {', '.join(exc.allowed_types)})"
        if isinstance(exc, paramiko.AuthenticationException):
            return "authentication failed (wrong user, password or key)"
        return super().reason(exc)

    def open(self) -> None:
        self.broken = False
        check = not self.spec.get("insecure_no_host_key_check", False)
        lookup, known, kh_path = self._known_keys() if check else ("", None, Path())
        with self.step("cannot connect"):
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        transport = paramiko.Transport(sock)
        transport.set_log_channel(PARAMIKO_LOG)
        try:
            # start_client's own limit (below) is the one that fires: one clear "timed out" error
            transport.banner_timeout = transport.handshake_timeout = self.timeout + 1
            transport.auth_timeout = transport.channel_timeout = self.timeout
            if known:
                self._prefer(transport, known)
            with self.step("SSH handshake failed"):
                transport.start_client(timeout=self.timeout)
                if not transport.initial_kex_done:   # start_client returns quietly at its timeout
                    raise TimeoutError()
            if check:
                self._check_host_key(transport, lookup, known, kh_path)
            self._authenticate(transport)
            with self.step("cannot start SFTP"):
                sftp = paramiko.SFTPClient.from_transport(transport)
                if sftp is None:
                    raise paramiko.SSHException("the server refused the sftp subsystem")
                sftp.get_channel().settimeout(self.timeout)
            if self.remote_path:
                with self.step(f"cannot change to remote folder {self.remote_path!r}"):
                    sftp.chdir(self.remote_path)
        except BaseException:
            transport.close()
            raise
        self.transport, self.sftp = transport, sftp
        self.watchdog = _Watchdog(self.timeout, transport.close)

    @contextmanager
    def step(self, action: str) -> Iterator[None]:
        """As RemoteChannel.step, with the watchdog on: no request of the channel waits for ever."""
        dog = self.watchdog
        if dog is None:
            with super().step(action):
                yield
            return
        with dog.watching(), super().step(action):
            yield

    def close(self) -> None:
        sftp, transport, dog = self.sftp, self.transport, self.watchdog
        self.sftp = self.transport = self.watchdog = None
        if dog is not None:
            dog.stop()
        for thing in (sftp, transport):
            try:
                if thing is not None:
                    thing.close()
            except Exception:
                pass

    def connected(self) -> bool:
        return self.sftp is not None

    def is_answer(self, exc: BaseException) -> bool:
        """An SFTP status (no such file, permission denied ...) from a live server."""
        return (isinstance(exc, OSError) and not isinstance(exc, (TimeoutError, ConnectionError))
                and self.transport is not None and self.transport.is_active())

    def _conn(self) -> paramiko.SFTPClient:
        self.ensure_open()
        assert self.sftp is not None
        return self.sftp

    # ------------------------------------------------------------------ names
    def _b(self, name: str | bytes) -> bytes:
        """A name as the server wants it: listed names as they came, ours in the channel's encoding."""
        if isinstance(name, bytes):
            return name
        try:
            return name.encode(self.encoding)
        except UnicodeEncodeError:
            raise self.error(f"the file name {name!r} cannot be written in the channel's encoding "
                             f"({self.encoding})", None, Refused) from None

    def _listdir(self, sftp: paramiko.SFTPClient) -> Iterator[tuple[bytes, paramiko.SFTPAttributes]]:
        """paramiko's listdir_attr, keeping each name's bytes: its own decodes them as UTF-8 and
        fails the whole listing on the first name that is not (SFTP v3 fixes no encoding)."""
        t, msg = sftp._request(CMD_OPENDIR, sftp._adjust_cwd("."))
        if t != CMD_HANDLE:
            raise paramiko.SFTPError("Expected handle")
        handle = msg.get_binary()
        try:
            while True:
                try:
                    t, msg = sftp._request(CMD_READDIR, handle)
                except EOFError:
                    break
                if t != CMD_NAME:
                    raise paramiko.SFTPError("Expected name response")
                for _ in range(msg.get_int()):
                    raw = msg.get_string()
                    msg.get_string()                       # the "ls -l" line: not used
                    attrs = paramiko.SFTPAttributes._from_msg(msg)
                    if raw not in (b".", b".."):
                        yield raw, attrs
        finally:
            sftp._request(CMD_CLOSE, handle)

    # ------------------------------------------------------------------ in-side
    def list_incoming(self) -> list[IncomingItem]:
        sftp = self._conn()
        with self.step("cannot list the remote folder"):
            entries = list(self._listdir(sftp))
        items: list[IncomingItem] = []
        odd: list[str] = []
        for raw, a in entries:
            name, undecodable = self.wire_name(raw)
            if a.st_mode is None or not stat.S_ISREG(a.st_mode) or not self.matches(name):
                continue
            if undecodable:
                odd.append(name)
            items.append(IncomingItem(name, a.st_size, raw, a.st_mtime))
        self.warn_undecodable(odd)
        return items

    def fetch(self, item: IncomingItem, dest: Path) -> None:
        sftp = self._conn()
        try:
            with self.step(f"cannot download {item.name!r}"), open(dest, "wb") as out:
                got = 0
                with sftp.open(self._b(item.ref), "rb") as remote:
                    if item.size and item.size > BLOCKSIZE:   # pipelined reads, not one round trip per block
                        remote.prefetch(item.size)           # (a thread of its own: not for one-block files)
                    while data := remote.read(BLOCKSIZE):
                        out.write(data)
                        got += len(data)
                        if self.watchdog is not None:
                            self.watchdog.progress()
        except Refused as exc:
            if isinstance(exc.__context__, FileNotFoundError):
                raise FileGone(f"{self.describe()}: {item.name!r} was listed but is gone") from None
            raise
        self.check_size(item, got)

    def delete(self, item: IncomingItem) -> None:
        sftp = self._conn()
        with self.step(f"cannot delete {item.name!r}"):
            sftp.remove(self._b(item.ref))

    # ------------------------------------------------------------------ out-side
    def put(self, data: BinaryIO, remote_name: str) -> int:
        sftp = self._conn()
        dog = self.watchdog
        sent = 0
        with sftp.open(self._b(remote_name), "wb") as remote:
            remote.set_pipelined(True)
            while buf := data.read(BLOCKSIZE):
                remote.write(buf)
                sent += len(buf)
                if dog is not None:
                    dog.progress()
        return sent

    def remote_size(self, remote_name: str) -> int | None:
        return self._conn().stat(self._b(remote_name)).st_size

    def listed_names(self) -> set[str]:
        return {raw.decode(self.encoding, "surrogateescape") for raw, _a in self._listdir(self._conn())}

    def exists(self, remote_name: str) -> bool:
        try:
            self._conn().stat(self._b(remote_name))
            return True
        except FileNotFoundError:
            return False

    def rename(self, old: str, new: str) -> str | None:
        """Plain SFTP rename: it fails when ``new`` exists (SFTP v3; OpenSSH links, then unlinks), so
        a file that appeared since send() looked is never replaced. Never ``posix-rename``, which
        replaces it."""
        sftp = self._conn()
        try:
            sftp.rename(self._b(old), self._b(new))
            return None
        except OSError as exc:
            self._raise_if_gone(exc)
            return str(exc) or "refused"

    def _raise_if_gone(self, exc: OSError) -> None:
        """A refusal is an answer from a live server; a timeout or lost connection is not."""
        if not self.is_answer(exc):
            raise exc

    def remove_quietly(self, remote_name: str) -> None:
        try:
            self._conn().remove(self._b(remote_name))
        except OSError as exc:
            self._raise_if_gone(exc)
