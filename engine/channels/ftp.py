"""FTP and FTPS (explicit TLS) channels on ftplib: one connection per run, reused for every file.

Listings: ``MLSD`` (RFC 3659: type, size, time per entry); a server without it is listed with
``LIST``, whose Unix and MS-DOS formats ftputil's parsers read, so folders are skipped there too.
File names travel in the channel's ``encoding`` (RFC 959 fixes none); a name with bytes that are
not valid in it still works (surrogateescape on the wire) and shows U+FFFD where they stand.
"""
from __future__ import annotations

import ftplib
import ssl
import stat
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from engine.channels.base import CommunicationError, FileGone, IncomingItem
from engine.channels.remote import RemoteChannel

with warnings.catch_warnings():     # ftputil 5 warns on import about a default of its own file API, unused here
    warnings.simplefilter("ignore", DeprecationWarning)
    import ftputil.error
    import ftputil.stat

BLOCKSIZE = 64 * 1024
_NOT_IMPLEMENTED = ("500", "501", "502", "504")   # command unknown / not implemented for this argument

# Transfers call transfercmd themselves instead of ftplib's storbinary/retrbinary: those send
# "TYPE I" before every file, one round trip per file; the channel sends it only when a listing
# (which switches to TYPE A) came in between (see bench/channels.py).


def _end_tls(conn) -> None:  # type: ignore[no-untyped-def]
    """Close a protected data connection's TLS layer cleanly, as ftplib does."""
    if isinstance(conn, ssl.SSLSocket):
        conn.unwrap()


class _NamesFTP(ftplib.FTP):
    """ftplib.FTP whose control connection carries any bytes in file names: lines are read and
    written in ``encoding`` with surrogateescape, so a name the encoding cannot decode is sent
    back to the server exactly as it came (ftplib alone raises UnicodeDecodeError: a whole
    listing, or the session, lost over one odd name)."""

    def connect(self, *args, **kwargs):  # type: ignore[no-untyped-def,override]
        welcome = super().connect(*args, **kwargs)
        self._lenient()
        return welcome

    def _lenient(self) -> None:
        self.file = self.sock.makefile("r", encoding=self.encoding, errors="surrogateescape")

    def putline(self, line: str) -> None:
        if "\r" in line or "\n" in line:
            raise ValueError("an illegal newline character should not be contained")
        sys.audit("ftplib.sendcmd", self, line)
        self.sock.sendall((line + "\r\n").encode(self.encoding, "surrogateescape"))


class _ReusingFTP_TLS(_NamesFTP, ftplib.FTP_TLS):
    """FTP_TLS whose data connections resume the control connection's TLS session.

    Many servers (vsftpd ``require_ssl_reuse``, FileZilla Server, proftpd) refuse a data
    connection that does not; ftplib does not do it by itself.
    """

    def auth(self):  # type: ignore[no-untyped-def,override]
        resp = super().auth()
        self._lenient()            # ftplib made a strict reader for the TLS socket
        return resp

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
    mlsd = True       # cleared when the server does not know MLSD: LIST is parsed instead
    size_cmd = True   # cleared when the server does not know SIZE: uploads are checked by the 226 reply only

    def _client(self) -> ftplib.FTP:
        return _NamesFTP(timeout=self.timeout, encoding=self.encoding)

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
    def _lines(self, cmd: str) -> Iterator[str]:
        """The lines of a listing command's data connection, each decoded on its own."""
        ftp = self._transfer_conn()      # TYPE I: no switch back and forth around every listing
        chunks = []
        with ftp.transfercmd(cmd) as conn:
            while data := conn.recv(BLOCKSIZE):
                chunks.append(data)
            _end_tls(conn)
        ftp.voidresp()
        for line in b"".join(chunks).split(b"\n"):
            line = line.rstrip(b"\r")
            if line:
                yield line.decode(self.encoding, "surrogateescape")

    def _entries(self) -> Iterator[tuple[str, str, int | None, str | float | None]]:
        """(name, kind 'file' | 'dir' | 'other', size, time) per entry of the remote folder."""
        if self.mlsd:
            try:
                lines = list(self._lines("MLSD"))
            except ftplib.error_perm as exc:
                if str(exc)[:3] not in _NOT_IMPLEMENTED:
                    raise
                self.mlsd = False
            else:
                for line in lines:
                    facts_text, _, name = line.partition(" ")
                    facts = {k.lower(): v for k, _, v in (f.partition("=") for f in facts_text.split(";") if f)}
                    kind = facts.get("type", "file").lower()
                    size = facts.get("size", "")
                    yield (name, "file" if kind == "file" else "dir" if kind.endswith("dir") else "other",
                           int(size) if size.isdigit() else None, facts.get("modify"))
                return
        parsers = (ftputil.stat.UnixParser(), ftputil.stat.MSParser())
        for line in self._lines("LIST"):
            if parsers[0].ignores_line(line):       # "total 12"
                continue
            for parser in parsers:
                try:
                    st = parser.parse_line(line)
                    break
                except ftputil.error.ParserError:
                    continue
            else:
                self.log.warning("%s", self.scrub(f"{self.describe()}: a LIST line botsq cannot read is skipped: "
                                                  f"{line!r}"))
                continue
            kind = "dir" if stat.S_ISDIR(st.st_mode) else "other" if stat.S_ISLNK(st.st_mode) else "file"
            yield st._st_name, kind, st.st_size, st.st_mtime

    def list_incoming(self) -> list[IncomingItem]:
        """The files (never folders, links or our own ``*.part`` uploads) matching the filemask."""
        self._conn()
        items: list[IncomingItem] = []
        odd: list[str] = []
        with self.step("cannot list the remote folder"):
            entries = list(self._entries())
        for raw, kind, size, mtime in entries:
            if kind != "file" or not self.matches(raw):
                continue
            name, undecodable = self.wire_name(raw)
            if undecodable:
                odd.append(name)
            items.append(IncomingItem(name, size, raw, mtime))
        self.warn_undecodable(odd)
        return items

    def fetch(self, item: IncomingItem, dest: Path) -> None:
        try:
            with self.step(f"cannot download {item.name!r}"), open(dest, "wb") as out:
                ftp = self._transfer_conn()
                got = 0
                with ftp.transfercmd(f"RETR {item.ref}") as conn:
                    while data := conn.recv(BLOCKSIZE):
                        out.write(data)
                        got += len(data)
                    _end_tls(conn)
                ftp.voidresp()
        except CommunicationError as exc:
            # A 5xx to RETR says "not found" and "not allowed" alike: a fresh listing tells them apart
            # (only when a download was refused, so no cost otherwise).
            if not self.broken and not self._still_listed(item):
                raise FileGone(f"{self.describe()}: {item.name!r} was listed but is gone") from None
            raise exc from None
        self.check_size(item, got)

    def _still_listed(self, item: IncomingItem) -> bool:
        try:
            with self.step("cannot list the remote folder"):
                return any(raw == item.ref for raw, _kind, _size, _mtime in self._entries())
        except CommunicationError:
            return True

    def delete(self, item: IncomingItem) -> None:
        ftp = self._conn()
        with self.step(f"cannot delete {item.name!r}"):
            ftp.delete(item.ref)

    # ------------------------------------------------------------------ out-side
    def put(self, data: BinaryIO, remote_name: str) -> int:
        ftp = self._transfer_conn()
        sent = 0
        with ftp.transfercmd(f"STOR {remote_name}") as conn:
            while buf := data.read(BLOCKSIZE):
                conn.sendall(buf)
                sent += len(buf)
            _end_tls(conn)
        ftp.voidresp()           # 226: the server says it has the file; SIZE checks what it has
        return sent

    def remote_size(self, remote_name: str) -> int | None:
        if not self.size_cmd:
            return None
        try:
            size = self._transfer_conn().size(remote_name)
        except ftplib.error_perm as exc:
            if str(exc)[:3] in _NOT_IMPLEMENTED:
                self.size_cmd = False
                return None
            raise
        return size

    def listed_names(self) -> set[str]:
        return {raw for raw, _kind, _size, _mtime in self._entries()}

    def exists(self, remote_name: str) -> bool:
        return remote_name in self.listed_names()

    def rename(self, old: str, new: str) -> str | None:
        # RNTO replaces an existing file on most servers: send() skips the names present() lists (a
        # file the partner puts there after that listing, under the same name, is not seen)
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
