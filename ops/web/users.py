"""Who may log in to the console, and the key that signs their sessions.

Users come from ``[webserver] users`` (or ``BOTSQ_WEB_USERS``), read by
:func:`engine.config.webserver.load_webserver_settings`. A password is plain text, compared in
constant time, or a Werkzeug hash (``scrypt:...``/``pbkdf2:...``, made by
``botsq web --hash-password``) so bots.ini need not hold the password itself.

With no users configured the console listens on the loopback interface only (the contract) and
still asks for a login: user ``admin`` with a random password kept in
``botssys/web/admin-password`` (mode 0600, made on first start, printed nowhere but the demo),
so another account on the same machine cannot walk in.

The session key (``botssys/web/secret_key``, mode 0600) is made once and kept, so logins survive
a restart; deleting it logs everyone out.
"""
from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from werkzeug.security import check_password_hash, generate_password_hash

from engine.config.webserver import WebServerSettings, WebUser

ADMIN = "admin"
WEB_DIR = "web"                      # under botssys
ADMIN_PASSWORD_FILE = "admin-password"
SECRET_KEY_FILE = "secret_key"


def private_file(path: Path, make: bytes) -> bytes:
    """The content of ``path``, created with ``make`` (owner-only, never overwritten) when missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    with os.fdopen(fd, "wb") as fh:
        fh.write(make)
    return make


def admin_password_file(botssys: Path) -> Path:
    return botssys / WEB_DIR / ADMIN_PASSWORD_FILE


def admin_password(botssys: Path) -> str:
    """The generated password of user ``admin`` (made on first use)."""
    return private_file(admin_password_file(botssys), secrets.token_urlsafe(18).encode()).decode().strip()


def secret_key(botssys: Path) -> bytes:
    return private_file(botssys / WEB_DIR / SECRET_KEY_FILE, secrets.token_hex(32).encode()).strip()


def hash_password(password: str) -> str:
    """A hash for ``[webserver] users`` (``name:<hash>``)."""
    return generate_password_hash(password)


class Users:
    """The console's logins: the configured users, or the generated ``admin``."""

    def __init__(self, settings: WebServerSettings, botssys: Path) -> None:
        if settings.users:
            self.generated: Path | None = None
            users = settings.users
        else:
            users = (WebUser(ADMIN, admin_password(botssys)),)
            self.generated = admin_password_file(botssys)
        self._users = {u.name: u for u in users}
        # compared against when the name is unknown, so a wrong name costs what a wrong password does
        self._dummy = secrets.token_bytes(24)

    def get(self, name: str) -> WebUser | None:
        return self._users.get(name)

    def names(self) -> list[str]:
        return list(self._users)

    def plain_passwords(self) -> list[str]:
        """Clear-text passwords, for redaction (they must never show on a page or in a log)."""
        return [u.password for u in self._users.values() if not u.hashed]

    def verify(self, name: str, password: str) -> WebUser | None:
        """The user when ``password`` is theirs, else None (constant-time for plain passwords)."""
        user = self._users.get(name)
        given = password.encode("utf-8", errors="surrogateescape")
        if user is None:
            hmac.compare_digest(self._dummy, given)
            return None
        if user.hashed:
            ok = check_password_hash(user.password, password)
        else:
            ok = hmac.compare_digest(user.password.encode("utf-8"), given)
        return user if ok else None
