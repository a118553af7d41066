"""SFTP channel on paramiko: one SSH connection per run, host keys checked against known_hosts."""
from __future__ import annotations

import logging
import shutil
import socket
import stat
from pathlib import Path

import paramiko

from engine.channels.base import IncomingItem
from engine.channels.remote import RemoteChannel

BLOCKSIZE = 32 * 1024   # paramiko's SFTP packet size
_RSA_TYPES = ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]
# paramiko logs every failure with a traceback; the channel reports it as one CommunicationError.
PARAMIKO_LOG = "botsq.sftp.paramiko"
logging.getLogger(PARAMIKO_LOG).setLevel(logging.CRITICAL)


class SftpChannel(RemoteChannel):
    type = "sftp"
    default_port = 22
    errors = (OSError, EOFError, paramiko.SSHException)

    transport: paramiko.Transport | None = None
    sftp: paramiko.SFTPClient | None = None

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

    def close(self) -> None:
        sftp, transport = self.sftp, self.transport
        self.sftp = self.transport = None
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

    # ------------------------------------------------------------------ in-side
    def list_incoming(self) -> list[IncomingItem]:
        sftp = self._conn()
        with self.step("cannot list the remote folder"):
            entries = sftp.listdir_attr(".")
        return [IncomingItem(a.filename, a.st_size, a.filename) for a in entries
                if a.st_mode is not None and stat.S_ISREG(a.st_mode) and self.matches(a.filename)]

    def fetch(self, item: IncomingItem, dest: Path) -> None:
        sftp = self._conn()
        with self.step(f"cannot download {item.name!r}"), open(dest, "wb") as out:
            got = 0
            with sftp.open(item.ref, "rb") as remote:
                if item.size and item.size > BLOCKSIZE:   # pipelined reads, not one round trip per block
                    remote.prefetch(item.size)           # (a thread of its own: not for one-block files)
                while data := remote.read(BLOCKSIZE):
                    out.write(data)
                    got += len(data)
        self.check_size(item, got)

    def delete(self, item: IncomingItem) -> None:
        sftp = self._conn()
        with self.step(f"cannot delete {item.name!r}"):
            sftp.remove(item.ref)

    # ------------------------------------------------------------------ out-side
    def put(self, src: Path, remote_name: str) -> None:
        sftp = self._conn()
        with open(src, "rb") as f, sftp.open(remote_name, "wb") as remote:
            remote.set_pipelined(True)
            shutil.copyfileobj(f, remote, BLOCKSIZE)

    def rename(self, old: str, new: str) -> str | None:
        sftp = self._conn()
        try:
            sftp.posix_rename(old, new)   # atomic, replaces an existing file (OpenSSH extension)
            return None
        except OSError as exc:
            self._raise_if_gone(exc)
        try:  # plain SFTP rename: refused when the target exists
            sftp.rename(old, new)
            return None
        except OSError as exc:
            self._raise_if_gone(exc)
        try:
            sftp.remove(new)
            sftp.rename(old, new)
        except OSError as exc:
            self._raise_if_gone(exc)
            return str(exc) or "refused"
        return None

    def _raise_if_gone(self, exc: OSError) -> None:
        """A refusal is an answer from a live server; a timeout or lost connection is not."""
        if not self.is_answer(exc):
            raise exc

    def remove_quietly(self, remote_name: str) -> None:
        try:
            self._conn().remove(remote_name)
        except OSError as exc:
            self._raise_if_gone(exc)
