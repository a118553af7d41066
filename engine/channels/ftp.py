"""FTP and FTPS (explicit TLS) channels on ftplib: one connection per run, reused for every file."""
from __future__ import annotations

import ftplib
import ssl
from pathlib import Path

from engine.channels.base import IncomingItem
from engine.channels.remote import RemoteChannel

BLOCKSIZE = 64 * 1024

# Transfers call transfercmd themselves instead of ftplib's storbinary/retrbinary: those send
# "TYPE I" before every file, one round trip per file; the channel sends it only when a listing
# (which switches to TYPE A) came in between (see bench/channels.py).


def _end_tls(conn) -> None:  # type: ignore[no-untyped-def]
    """Close a protected data connection's TLS layer cleanly, as ftplib does."""
    if isinstance(conn, ssl.SSLSocket):
        conn.unwrap()


class _ReusingFTP_TLS(ftplib.FTP_TLS):
    """FTP_TLS whose data connections resume the control connection's TLS session.

    Many servers (vsftpd ``require_ssl_reuse``, FileZilla Server, proftpd) refuse a data
    connection that does not; ftplib does not do it by itself.
    """

    def ntransfercmd(self, cmd, rest=None):  # type: ignore[no-untyped-def,override]
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host, session=self.sock.session)
        return conn, size


class FtpChannel(RemoteChannel):
    type = "ftp"
    default_port = 21
    errors = (OSError, EOFError, ftplib.Error, ValueError)  # ValueError: ftplib refuses CR/LF in names

    ftp: ftplib.FTP | None = None
    binary = False    # the connection is in TYPE I

    def _client(self) -> ftplib.FTP:
        return ftplib.FTP(timeout=self.timeout, encoding="utf-8")

    def _secure(self, ftp: ftplib.FTP) -> None:
        """FTPS: AUTH TLS before the login."""

    def _after_login(self, ftp: ftplib.FTP) -> None:
        """FTPS: protect the data connections."""

    def open(self) -> None:
        ftp = self._client()
        self.broken = False
        try:
            with self.step("cannot connect"):
                ftp.connect(self.host, self.port, timeout=self.timeout)
            with self.step("TLS negotiation failed"):
                self._secure(ftp)
            with self.step(f"login failed for user {self.user or 'anonymous'!r}"):
                ftp.login(self.user, self.password)
                self._after_login(ftp)
            ftp.set_pasv(bool(self.spec.get("passive", True)))
            if self.remote_path:
                with self.step(f"cannot change to remote folder {self.remote_path!r}"):
                    ftp.cwd(self.remote_path)
        except BaseException:
            ftp.close()
            raise
        self.ftp = ftp
        self.binary = False

    def _transfer_conn(self) -> ftplib.FTP:
        """The connection, in binary mode, for a file transfer."""
        ftp = self._conn()
        if not self.binary:
            ftp.voidcmd("TYPE I")
            self.binary = True
        return ftp

    def close(self) -> None:
        ftp, self.ftp = self.ftp, None
        if ftp is None:
            return
        try:
            if not self.broken:
                ftp.quit()
        except Exception:
            pass
        finally:
            ftp.close()

    def connected(self) -> bool:
        return self.ftp is not None

    def is_answer(self, exc: BaseException) -> bool:
        # 5xx replies and names ftplib refuses to send; a 4xx may be "421 closing the connection"
        return isinstance(exc, (ftplib.error_perm, ValueError))

    def _conn(self) -> ftplib.FTP:
        self.ensure_open()
        assert self.ftp is not None
        return self.ftp

    # ------------------------------------------------------------------ in-side
    def list_incoming(self) -> list[IncomingItem]:
        ftp = self._conn()
        items: list[IncomingItem] = []
        self.binary = False    # listings switch the connection to TYPE A
        with self.step("cannot list the remote folder"):
            try:
                entries = list(ftp.mlsd(facts=["type", "size"]))
            except ftplib.error_perm:  # no MLSD (500/502): plain names, sizes unknown
                entries = [(n, {}) for n in ftp.nlst()]
        for name, facts in entries:
            if facts.get("type", "file").lower() != "file" or not self.matches(name):
                continue
            size = facts.get("size")
            items.append(IncomingItem(name, int(size) if size and size.isdigit() else None, name))
        return items

    def fetch(self, item: IncomingItem, dest: Path) -> None:
        with self.step(f"cannot download {item.name!r}"), open(dest, "wb") as out:
            ftp = self._transfer_conn()
            got = 0
            with ftp.transfercmd(f"RETR {item.ref}") as conn:
                while data := conn.recv(BLOCKSIZE):
                    out.write(data)
                    got += len(data)
                _end_tls(conn)
            ftp.voidresp()
        self.check_size(item, got)

    def delete(self, item: IncomingItem) -> None:
        ftp = self._conn()
        with self.step(f"cannot delete {item.name!r}"):
            ftp.delete(item.ref)

    # ------------------------------------------------------------------ out-side
    def put(self, src: Path, remote_name: str) -> None:
        ftp = self._transfer_conn()
        with open(src, "rb") as f, ftp.transfercmd(f"STOR {remote_name}") as conn:
            while buf := f.read(BLOCKSIZE):
                conn.sendall(buf)
            _end_tls(conn)
        ftp.voidresp()

    def rename(self, old: str, new: str) -> str | None:
        try:
            self._conn().rename(old, new)
        except ftplib.error_perm as exc:  # 5xx: refused (no permission, not implemented)
            return str(exc)
        return None

    def remove_quietly(self, remote_name: str) -> None:
        try:
            self._conn().delete(remote_name)
        except ftplib.error_perm:
            pass


class FtpsChannel(FtpChannel):
    """FTP with explicit TLS (AUTH TLS) on control and data connections."""

    type = "ftps"

    def _client(self) -> ftplib.FTP:
        return _ReusingFTP_TLS(context=self.tls_context(), timeout=self.timeout, encoding="utf-8")

    def _secure(self, ftp: ftplib.FTP) -> None:
        assert isinstance(ftp, ftplib.FTP_TLS)
        ftp.auth()

    def _after_login(self, ftp: ftplib.FTP) -> None:
        assert isinstance(ftp, ftplib.FTP_TLS)
        ftp.prot_p()
