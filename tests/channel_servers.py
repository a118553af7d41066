"""Real servers for the channel tests, all on 127.0.0.1 in threads of the test process.

- :class:`FtpServer`: pyftpdlib, plain or explicit TLS (certificate from :func:`make_certs`);
- :class:`SftpServer`: a small file-backed SFTP server on paramiko's server classes;
- :class:`SmtpServer`: aiosmtpd's Controller, optionally with AUTH and STARTTLS or implicit TLS;
- :class:`BlackHole`: accepts TCP connections and never says a word (timeouts).

Every server can be stopped and started again on the same port ("server down" tests).
Servers that lie (``lies``: a name shown in every listing -> the path, from the server's
root, of the file served for it) play the hostile partner of the path traversal tests.
Partners that fall short: ``truncate_uploads`` (the server keeps one byte less than it was
sent, and says nothing), ``stall_after`` (SFTP: the server stops reading its socket after that
many bytes, as a partner that hangs mid-file), ``encoding`` (FTP: names sent in a Windows code
page), ``refuse_read`` (names whose download is refused), ``gone_on_read`` (names removed the
moment their download begins, as when another client took them since the listing); the SFTP
server passes names as the bytes they are on its disk. ``FtpServer.commands`` counts the commands it
received, by name (the round trips of a transfer).
"""
from __future__ import annotations

import datetime
import logging
import os
import posixpath
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import paramiko
import pytest

from conftest import free_port

HOST = "127.0.0.1"

for _name in ("pyftpdlib", "mail.log", "paramiko"):
    logging.getLogger(_name).setLevel(logging.WARNING)


# --------------------------------------------------------------------------- certificates

@dataclass(frozen=True)
class Certs:
    cafile: Path      # the test CA, to trust
    certfile: Path    # server certificate for 127.0.0.1 / localhost, signed by the CA
    keyfile: Path
    combined: Path    # certificate + key in one file (pyftpdlib's certfile)


def make_certs(folder: Path) -> Certs:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "botsq test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    certs = Certs(folder / "ca.pem", folder / "server.pem", folder / "server.key", folder / "server-combined.pem")
    certs.cafile.write_bytes(ca.public_bytes(pem))
    certs.certfile.write_bytes(cert.public_bytes(pem))
    certs.keyfile.write_bytes(key_pem)
    certs.combined.write_bytes(cert.public_bytes(pem) + key_pem)
    return certs


# --------------------------------------------------------------------------- base

class _Threaded:
    """start()/stop()/restart() on a fixed port, serving in a daemon thread."""

    port: int = 0

    def start(self) -> "_Threaded":
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self):  # type: ignore[no-untyped-def]
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- FTP / FTPS

class FtpServer(_Threaded):
    """pyftpdlib on 127.0.0.1; ``root`` is the user's home. ``certs`` makes it explicit-TLS."""

    def __init__(self, root: Path, user: str = "alice", password: str = "s3cret-pw", *,
                 certs: Certs | None = None, perm: str = "elradfmwMT", lies: dict[str, str] | None = None,
                 mlsd: bool = True, die_after_sent: int = 0, encoding: str = "utf8", truncate_uploads: bool = False,
                 refuse_read: set[str] | None = None, gone_on_read: set[str] | None = None, port: int = 0) -> None:
        self.refuse_read, self.gone_on_read = refuse_read or set(), gone_on_read or set()
        self.root, self.user, self.password, self.certs, self.perm = root, user, password, certs, perm
        self.lies = lies or {}
        self.mlsd = mlsd
        self.encoding = encoding
        self.truncate_uploads = truncate_uploads
        self.die_after_sent = die_after_sent   # > 0: the server goes down after serving that many files
        self.files_sent = 0
        self.connections = 0      # control connections accepted since start
        self.commands: Counter[str] = Counter()   # commands received since start, by name (round trips)
        self.port = port or free_port()
        self._server = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def _handler(self):  # type: ignore[no-untyped-def]
        from pyftpdlib.authorizers import DummyAuthorizer
        from pyftpdlib.filesystems import AbstractedFS
        from pyftpdlib.handlers import FTPHandler, TLS_FTPHandler

        lies, owner = self.lies, self

        class LyingFS(AbstractedFS):
            """Adds the ``lies`` names to MLSD listings and serves their real files for them."""

            def ftp2fs(self, ftppath):  # type: ignore[no-untyped-def]
                return super().ftp2fs(lies.get(ftppath, ftppath))

            def format_mlsx(self, basedir, listing, perms, facts, ignore_err=True):  # type: ignore[no-untyped-def]
                yield from super().format_mlsx(basedir, listing, perms, facts, ignore_err)
                for fake, real in lies.items():
                    size = os.stat(os.path.join(self.root, real.lstrip("/"))).st_size
                    yield f"type=file;size={size}; {fake}\r\n".encode("utf-8", "surrogateescape")

        authorizer = DummyAuthorizer()
        self.root.mkdir(parents=True, exist_ok=True)
        authorizer.add_user(self.user, self.password, str(self.root), perm=self.perm)
        base = TLS_FTPHandler if self.certs else FTPHandler

        def on_connect(handler) -> None:  # type: ignore[no-untyped-def]
            owner.connections += 1

        def on_file_sent(handler, file) -> None:  # type: ignore[no-untyped-def]
            owner.files_sent += 1
            if owner.die_after_sent and owner.files_sent >= owner.die_after_sent:
                owner._stop.set()      # the serving loop ends and drops every connection

        def on_file_received(handler, file) -> None:  # type: ignore[no-untyped-def]
            if owner.truncate_uploads:
                os.truncate(file, max(os.path.getsize(file) - 1, 0))

        proto_cmds = dict(base.proto_cmds)
        if not self.mlsd:
            proto_cmds.pop("MLSD")
        attrs = {"authorizer": authorizer, "abstracted_fs": LyingFS, "banner": "botsq test ftpd",
                 "passive_ports": None, "permit_foreign_addresses": False, "timeout": 60,
                 "on_connect": on_connect, "on_file_sent": on_file_sent, "on_file_received": on_file_received,
                 "proto_cmds": proto_cmds, "auth_failed_timeout": 0.2, "encoding": self.encoding}
        if self.certs:
            attrs.update(certfile=str(self.certs.combined), tls_control_required=True, tls_data_required=True)

        def ftp_RETR(handler, file):  # type: ignore[no-untyped-def]
            name = os.path.basename(file)
            if name in owner.refuse_read:
                return handler.respond("550 Permission denied.")
            if name in owner.gone_on_read and os.path.exists(file):
                os.remove(file)
            return base.ftp_RETR(handler, file)

        def pre_process_command(handler, line, cmd, arg):  # type: ignore[no-untyped-def]
            owner.commands[cmd] += 1
            return base.pre_process_command(handler, line, cmd, arg)

        attrs["ftp_RETR"] = ftp_RETR
        attrs["pre_process_command"] = pre_process_command
        return type("Handler", (base,), attrs)

    def start(self) -> "FtpServer":
        from pyftpdlib.ioloop import IOLoop
        from pyftpdlib.servers import FTPServer

        self._stop.clear()
        # an IOLoop of its own: pyftpdlib's shared one would let one server's stop close another's sockets
        self._server = FTPServer((HOST, self.port), self._handler(), ioloop=IOLoop())
        self._server.max_cons = 256
        self._thread = threading.Thread(target=self._serve, name=f"ftpd:{self.port}", daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        server = self._server
        assert server is not None
        while not self._stop.is_set():
            server.ioloop.loop(timeout=0.05, blocking=False)
        server.close_all()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._thread = self._server = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


# --------------------------------------------------------------------------- SFTP

class _SshServer(paramiko.ServerInterface):
    def __init__(self, owner: "SftpServer") -> None:
        self.owner = owner

    def get_allowed_auths(self, username: str) -> str:
        return "password,publickey"

    def check_auth_password(self, username: str, password: str) -> int:
        o = self.owner
        ok = username == o.user and o.password is not None and password == o.password
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        ok = username == self.owner.user and any(key == k for k in self.owner.client_keys)
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED


def _attrs(path: str, name: str) -> paramiko.SFTPAttributes:
    a = paramiko.SFTPAttributes.from_stat(os.stat(path))
    a.filename = name
    return a


class _Handle(paramiko.SFTPHandle):
    truncate = False     # on close, keep one byte less than was written (a server losing data quietly)

    def stat(self):  # type: ignore[no-untyped-def]
        try:
            return paramiko.SFTPAttributes.from_stat(os.fstat(self.readfile.fileno()))
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno)

    def close(self) -> None:
        if self.truncate and getattr(self, "writefile", None) is not None:
            self.writefile.flush()
            self.writefile.truncate(max(self.writefile.tell() - 1, 0))
        super().close()


class _BytesNamesServer(paramiko.SFTPServer):
    """paramiko's SFTP server decodes every path as UTF-8 and fails on other bytes; this one hands
    the interface the bytes as surrogate-escaped text, which the os functions map back to the
    same bytes on disk (SFTP v3 has no encoding: a server passes its disk's bytes)."""

    def _process(self, t, request_number, msg):  # type: ignore[no-untyped-def]
        msg.get_text = lambda: msg.get_string().decode("utf-8", "surrogateescape")
        return super()._process(t, request_number, msg)


class _StallingSocket:
    """A server-side socket that stops reading after ``limit`` bytes (the partner hangs mid-file):
    the client's data piles up in the kernel's buffers and its sends stop moving. With
    ``send_limit`` it stops sending after that many bytes instead (a download hangs mid-file):
    paramiko retries a timed-out send until the transport is closed."""

    def __init__(self, sock: socket.socket, limit: int, stop: threading.Event, send_limit: int = 0) -> None:
        self._sock, self._left, self._stop = sock, limit, stop
        self._send_left = send_limit or -1

    def recv(self, n: int) -> bytes:
        if self._left == 0:
            self._stop.wait(0.1)
            raise socket.timeout()
        data = self._sock.recv(min(n, self._left) if self._left > 0 else n)
        if self._left > 0:
            self._left = max(0, self._left - len(data))
        return data

    def send(self, data: bytes) -> int:
        if self._send_left == 0:
            self._stop.wait(0.1)
            raise socket.timeout()
        n = self._sock.send(data[:self._send_left] if self._send_left > 0 else data)
        if self._send_left > 0:
            self._send_left -= n
        return n

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._sock, name)


class _Sftp(paramiko.SFTPServerInterface):
    """Files under ``owner.root``, which is ``/`` and the login folder for the client."""

    def __init__(self, server: _SshServer, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(server, *args, **kwargs)
        self.owner = server.owner

    def _real(self, path: str) -> str:
        for fake, real in self.owner.lies.items():
            if path == fake or path.endswith("/" + fake):   # the client asks for a lie: serve its file
                path = real
                break
        clean = posixpath.normpath("/" + path).lstrip("/")
        return os.path.join(self.owner.root, clean)

    def canonicalize(self, path: str) -> str:
        return posixpath.normpath("/" + path)

    def _err(self, exc: OSError) -> int:
        return paramiko.SFTPServer.convert_errno(exc.errno)

    def list_folder(self, path: str):  # type: ignore[no-untyped-def]
        real = self._real(path)
        try:
            out = [_attrs(os.path.join(real, n), os.fsencode(n)) for n in os.listdir(real)]   # the disk's bytes
            for fake, target in self.owner.lies.items():
                out.append(_attrs(self._real(target), fake))
            return out
        except OSError as exc:
            return self._err(exc)

    def stat(self, path: str):  # type: ignore[no-untyped-def]
        try:
            return paramiko.SFTPAttributes.from_stat(os.stat(self._real(path)))
        except OSError as exc:
            return self._err(exc)

    lstat = stat

    def open(self, path: str, flags: int, attr):  # type: ignore[no-untyped-def]
        real = self._real(path)
        name = os.path.basename(real)
        if name in self.owner.refuse_read:
            return paramiko.SFTP_PERMISSION_DENIED
        if name in self.owner.gone_on_read and os.path.exists(real):
            os.remove(real)
        try:
            fd = os.open(real, flags | getattr(os, "O_BINARY", 0), 0o644)
            if flags & os.O_WRONLY:
                mode = "ab" if flags & os.O_APPEND else "wb"
            elif flags & os.O_RDWR:
                mode = "a+b" if flags & os.O_APPEND else "r+b"
            else:
                mode = "rb"
            f = os.fdopen(fd, mode)
        except OSError as exc:
            return self._err(exc)
        h = _Handle(flags)
        h.truncate = self.owner.truncate_uploads
        h.filename = real
        h.readfile = h.writefile = f
        return h

    def remove(self, path: str) -> int:
        try:
            os.remove(self._real(path))
        except OSError as exc:
            return self._err(exc)
        return paramiko.SFTP_OK

    def rename(self, oldpath: str, newpath: str) -> int:
        if not self.owner.allow_rename:
            return paramiko.SFTP_PERMISSION_DENIED
        new = self._real(newpath)
        if os.path.exists(new):   # SFTPv3: plain rename never replaces
            return paramiko.SFTP_FAILURE
        try:
            os.rename(self._real(oldpath), new)
        except OSError as exc:
            return self._err(exc)
        return paramiko.SFTP_OK

    def posix_rename(self, oldpath: str, newpath: str) -> int:
        if not self.owner.allow_rename:
            return paramiko.SFTP_PERMISSION_DENIED
        if not self.owner.posix_rename:
            return paramiko.SFTP_OP_UNSUPPORTED
        try:
            os.replace(self._real(oldpath), self._real(newpath))
        except OSError as exc:
            return self._err(exc)
        return paramiko.SFTP_OK

    def mkdir(self, path: str, attr) -> int:  # type: ignore[no-untyped-def]
        try:
            os.mkdir(self._real(path))
        except OSError as exc:
            return self._err(exc)
        return paramiko.SFTP_OK

    def chattr(self, path: str, attr) -> int:  # type: ignore[no-untyped-def]
        return paramiko.SFTP_OK



def _listening_socket(port: int, backlog: int) -> socket.socket:
    """A socket listening on HOST:port whose accept() wakes every 0.1 s to see a stop request."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, port))
    sock.listen(backlog)
    sock.settimeout(0.1)
    return sock

class SftpServer(_Threaded):
    """An SSH server offering only the sftp subsystem, files under ``root``.

    ``host_key`` is the server's key (``known_hosts_line()`` for the client's file);
    ``client_keys`` are public keys accepted for ``user``; ``password=None`` refuses passwords.
    """

    _host_key_cache: paramiko.PKey | None = None

    def __init__(self, root: Path, user: str = "alice", password: str | None = "s3cret-pw", *,
                 host_key: paramiko.PKey | None = None, client_keys: list[paramiko.PKey] | None = None,
                 lies: dict[str, str] | None = None, stall_after: int = 0, truncate_uploads: bool = False,
                 port: int = 0, stall_sending_after: int = 0) -> None:
        self.root, self.user, self.password = root, user, password
        self.stall_after = stall_after          # > 0: stop reading each connection after that many bytes
        self.stall_sending_after = stall_sending_after   # > 0: stop sending after that many bytes
        self.truncate_uploads = truncate_uploads
        self.refuse_read: set[str] = set()
        self.gone_on_read: set[str] = set()
        if host_key is None:
            if SftpServer._host_key_cache is None:
                SftpServer._host_key_cache = paramiko.ECDSAKey.generate()
            host_key = SftpServer._host_key_cache
        self.host_key = host_key
        self.client_keys = client_keys or []
        self.lies = lies or {}
        self.allow_rename = True
        self.posix_rename = True
        self.port = port or free_port()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._transports: list[paramiko.Transport] = []
        self._stop = threading.Event()

    def known_hosts_line(self, key: paramiko.PKey | None = None) -> str:
        key = key or self.host_key
        return f"[{HOST}]:{self.port} {key.get_name()} {key.get_base64()}\n"

    def start(self) -> "SftpServer":
        self.root.mkdir(parents=True, exist_ok=True)
        self._stop.clear()
        self._sock = _listening_socket(self.port, 64)
        self._thread = threading.Thread(target=self._accept, name=f"sftpd:{self.port}", daemon=True)
        self._thread.start()
        return self

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (socket.timeout, OSError):
                continue
            conn.settimeout(None)
            if self.stall_after or self.stall_sending_after:
                # a window far larger than the socket buffers: the client is held by TCP, not by SSH
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
                sock = _StallingSocket(conn, self.stall_after or -1, self._stop, self.stall_sending_after)
                t = paramiko.Transport(sock, default_window_size=1 << 30)  # type: ignore[arg-type]
            else:
                t = paramiko.Transport(conn)
            t.add_server_key(self.host_key)
            t.set_subsystem_handler("sftp", _BytesNamesServer, _Sftp)
            self._transports.append(t)
            try:
                t.start_server(server=_SshServer(self))
            except (paramiko.SSHException, EOFError, OSError):
                t.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._sock is not None:
            self._sock.close()
        for t in self._transports:
            t.close()
        self._transports.clear()
        self._thread = self._sock = None


# --------------------------------------------------------------------------- SMTP

@dataclass
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes

    def message(self):  # type: ignore[no-untyped-def]
        import email
        from email import policy
        return email.message_from_bytes(self.content, policy=policy.default)


@dataclass
class _Handler:
    mails: list[Mail] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)     # recipients answered with 550

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
        if address in self.refuse:
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        self.mails.append(Mail(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content
                               or envelope.content))
        return "250 OK"


class SmtpServer(_Threaded):
    """aiosmtpd; ``user``/``password`` require AUTH (over STARTTLS when ``certs``); ``certs`` with
    ``mode`` 'starttls' or 'ssl' (implicit TLS)."""

    def __init__(self, user: str | None = None, password: str | None = None, *, certs: Certs | None = None,
                 mode: str = "plain", port: int = 0) -> None:
        self.user, self.password, self.certs, self.mode = user, password, certs, mode
        self.port = port or free_port()
        self.handler = _Handler()
        self._controller = None

    @property
    def mails(self) -> list[Mail]:
        return self.handler.mails

    def _auth(self, server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
        from aiosmtpd.smtp import AuthResult, LoginPassword

        ok = (isinstance(auth_data, LoginPassword) and auth_data.login.decode() == self.user
              and auth_data.password.decode() == self.password)
        return AuthResult(success=ok, handled=False)

    def start(self) -> "SmtpServer":
        import ssl

        from aiosmtpd.controller import Controller

        kw: dict = {"server_hostname": "localhost", "ready_timeout": 10}
        if self.user:
            kw.update(authenticator=self._auth, auth_required=True, auth_require_tls=self.certs is not None)
        if self.certs:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(self.certs.certfile, self.certs.keyfile)
            if self.mode == "ssl":
                kw["ssl_context"] = ctx
            else:
                kw.update(tls_context=ctx, require_starttls=True)
        self._controller = Controller(self.handler, hostname=HOST, port=self.port, **kw)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
        self._controller = None


# --------------------------------------------------------------------------- silence

class BlackHole(_Threaded):
    """Accepts connections and never answers: every client read times out."""

    def __init__(self, port: int = 0) -> None:
        self.port = port or free_port()
        self._sock: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "BlackHole":
        self._sock = _listening_socket(self.port, 16)
        self._stop.clear()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()
        return self

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
                self._conns.append(conn)
            except (socket.timeout, OSError):
                continue

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for c in [*self._conns, self._sock]:
            if c is not None:
                c.close()
        self._conns.clear()


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.02) -> bool:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until true or ``timeout`` seconds passed."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


__all__ = ["HOST", "Certs", "make_certs", "FtpServer", "SftpServer", "SmtpServer", "BlackHole", "Mail",
           "free_port", "wait_until"]


# --------------------------------------------------------------------------- channels under test

_envs = iter(range(1, 1_000_000))


def make_channel(folder: Path, ctype: str, log: logging.Logger | None = None, **opts):  # type: ignore[no-untyped-def]
    """A channel object of type ``ctype`` built from a real routes.toml (so the keys are validated)."""
    import json

    from engine.channels.types import make_channel as build
    from engine.config import load_config

    env = folder / f"chanenv{next(_envs)}"
    (env / "config").mkdir(parents=True)
    (env / "config" / "bots.ini").write_text("", encoding="utf-8")       # every config dir has one
    lines = ["[channels.partner]", f"type = {json.dumps(ctype)}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in opts.items()]
    (env / "config" / "routes.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = load_config(env / "config")
    return build(cfg.channels["partner"], cfg, log or logging.getLogger("test.channels"))


def fetch_refused_gone_ok(ch, folder: Path, refusal: str) -> None:  # type: ignore[no-untyped-def]
    """Fetch a listing's 'gone.edi' (FileGone), 'locked.edi' (Refused, matching ``refusal``) and 'ok.edi'
    over one open channel: the first two are those files' problems, and the connection stays usable."""
    from engine.channels.base import FileGone, Refused

    items = {i.name: i for i in ch.list_incoming()}
    with pytest.raises(FileGone, match=r"'gone.edi' was listed but is gone$"):
        ch.fetch(items["gone.edi"], folder / "g")
    with pytest.raises(Refused, match=refusal):
        ch.fetch(items["locked.edi"], folder / "l")
    ch.fetch(items["ok.edi"], folder / "o")
    assert not ch.broken
    assert (folder / "o").read_bytes() == b"ok.edi"


def assert_secret_free(exc: BaseException, *secrets: str) -> None:
    """Neither the exception nor anything chained to it (even a suppressed context) holds a secret."""
    import traceback

    text = ""
    seen: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in seen:
        seen.append(e)
        text += "".join(traceback.format_exception_only(e)) + repr(e.args)
        e = e.__cause__ or e.__context__
    for s in secrets:
        assert s not in text, f"secret {s!r} leaked: {text}"
