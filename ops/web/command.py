"""``botsq web -c DIR [--address A] [--port P]``: serve the web console (waitress, a production WSGI server).

Settings: ``[webserver]`` of bots.ini (:func:`engine.config.webserver.load_webserver_settings`):
``address`` (default 127.0.0.1), ``port`` (8080, as Bots' webserver), ``users``, ``readonly``.
Without users it listens on the loopback interface only (anything else: exit 1, one line) and logs
in ``admin`` with the generated password in ``botssys/web/admin-password``.

``botsq web --hash-password`` reads a password (prompted, or one line on stdin) and prints the hash
to put in ``[webserver] users`` as ``name:<hash>``. SIGTERM or Ctrl-C stops the server (exit 0).
"""
from __future__ import annotations

import argparse
import getpass
import signal
import sys
from types import FrameType

from waitress import create_server

from engine.config import add_config_argument, load_config
from engine.config.webserver import WebServerSettings, load_webserver_settings
from engine.errors import ConfigError
from ops.web.app import create_app, prepare
from ops.web.users import Users, hash_password

THREADS = 6              # waitress worker threads: a few operators, the API, the self-refreshing panels


class _Stop(Exception):
    pass


def _stop(_signum: int, _frame: FrameType | None) -> None:
    raise _Stop


def url_of(settings: WebServerSettings) -> str:
    host = f"[{settings.address}]" if ":" in settings.address else (settings.address or "0.0.0.0")
    return f"http://{host}:{settings.port}/"


def describe(settings: WebServerSettings, users: Users) -> str:
    """One line: where the console is and who logs in (never a password)."""
    if users.generated is not None:
        who = f"user admin, password in {users.generated}"
    else:
        who = "users " + ", ".join(f"{n} (read-only)" if users.get(n).readonly else n  # type: ignore[union-attr]
                                   for n in users.names())
    return f"console on {url_of(settings)} ({who})"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--address", default=None, help="listen address (default [webserver] address or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="listen port (default [webserver] port or 8080)")
    parser.add_argument("--hash-password", action="store_true",
                        help="print a password hash for [webserver] users (reads the password) and exit")


def run(args: argparse.Namespace) -> int:
    if args.hash_password:
        if sys.stdin.isatty():
            password = getpass.getpass("password: ")
            if getpass.getpass("again: ") != password:
                raise ConfigError("the two passwords differ")
        else:
            password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise ConfigError("an empty password cannot be hashed")
        print(hash_password(password))
        return 0
    cfg = load_config(args.configdir)
    settings = load_webserver_settings(cfg, args.address, args.port)
    app = create_app(cfg, settings)
    log = app.extensions["botsq"].log
    try:
        server = create_server(app, host=settings.address, port=settings.port, threads=THREADS, ident="botsq",
                               clear_untrusted_proxy_headers=True)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {settings.address}:{settings.port}: {exc.strerror or exc}") from None
    prepare(app)
    log.info("%s", describe(settings, app.extensions["botsq"].users))
    signal.signal(signal.SIGTERM, _stop)
    try:
        server.run()
    except (_Stop, KeyboardInterrupt):
        pass
    finally:
        server.close()
    log.info("console stopped")
    return 0
