"""``botsq flower``: Flower for the engine queue, with authentication required off this host.

Its settings are ``[flower]`` of bots.ini and the BOTSQ_FLOWER_* variables (read by
:func:`engine.config.flower.load_flower_settings`, which refuses to listen off this host without
basic auth). They reach Flower through the settings module ``ops/flowerconfig.py`` (Flower's
``--conf``), never on the command line, so the password does not show in ``ps``;
``celery -A tasks flower --conf=.../ops/flowerconfig.py`` applies the same rules.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from engine.config import ENV_CONFIG, Config, add_config_argument, load_config
from engine.config.flower import ENV_ADDRESS, ENV_PORT, FlowerSettings, load_flower_settings
from engine.errors import ConfigError

SETTINGS_MODULE = Path(__file__).with_name("flowerconfig.py")
# Flower reads this at each request: set, it opens the API of a Flower without authentication.
UNAUTHENTICATED_API = "FLOWER_UNAUTHENTICATED_API"


def settings_from_environment() -> dict[str, object]:
    """For ``ops/flowerconfig.py``: the options for the environment in BOTSQ_CONFIG.

    A problem ends Flower's start-up with one line on stderr and exit 1. It runs inside Flower's
    process, so it also drops FLOWER_UNAUTHENTICATED_API there: the API always needs a login.
    """
    os.environ.pop(UNAUTHENTICATED_API, None)
    try:
        settings = load_flower_settings(load_config())
        check_can_listen(settings)      # tornado's bind error would be a traceback, after Flower's start-up lines
        return settings.options()
    except ConfigError as exc:
        print(f"botsq flower: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def check_can_listen(settings: FlowerSettings) -> None:
    """ConfigError (one line, as ``botsq web`` gives) when Flower's address and port cannot be bound
    now (in use, not an address of this host, a privileged port). Bound the way tornado binds
    (SO_REUSEADDR), so a port in TIME_WAIT is no false alarm."""
    try:
        infos = socket.getaddrinfo(settings.address or None, settings.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        family, kind, proto, _name, addr = infos[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {settings.address}:{settings.port}: {exc.strerror or exc}") from None


def flower_command(cfg: Config, address: str | None = None, port: int | None = None,
                   ) -> tuple[list[str], dict[str, str], FlowerSettings]:
    """argv and extra environment that start Flower for ``cfg`` (settings checked first)."""
    settings = load_flower_settings(cfg, address, port)
    argv = [sys.executable, "-m", "celery", "-A", "tasks", "flower", f"--conf={SETTINGS_MODULE}"]
    env = {ENV_CONFIG: str(cfg.configdir)}
    if address is not None:
        env[ENV_ADDRESS] = address
    if port is not None:
        env[ENV_PORT] = str(port)
    return argv, env, settings


def describe(settings: FlowerSettings) -> str:
    auth = f"basic auth for {', '.join(a.split(':', 1)[0] for a in settings.basic_auth)}" \
        if settings.basic_auth else "no authentication (this host only)"
    ro = ", read-only" if settings.read_only else ""
    return f"Flower on {settings.url} ({auth}{ro}); Prometheus metrics at {settings.url}metrics"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--address", default=None, help="listen address (default [flower] address or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="listen port (default [flower] port or 5555)")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.configdir)
    argv, extra, settings = flower_command(cfg, args.address, args.port)
    check_can_listen(settings)
    print(f"botsq flower: {describe(settings)}", file=sys.stderr, flush=True)
    # Replace this process: a service manager's signals then reach Flower directly.
    os.execvpe(argv[0], argv, {**os.environ, **extra})
    return 1  # pragma: no cover
