"""What every view of the console shares, kept on the Flask app (``app.extensions["botsq"]``)."""
from __future__ import annotations

from dataclasses import dataclass
from logging import Logger

from flask import current_app

from engine.config import Config
from engine.config.webserver import WebServerSettings
from ops.web.queries import ActivityCache, HealthCache
from ops.web.throttle import LoginThrottle
from ops.web.users import Users


@dataclass
class Console:
    """The environment, who may log in, the login throttle, the health and chart caches, the ``web`` logger."""
    cfg: Config
    settings: WebServerSettings
    users: Users
    throttle: LoginThrottle
    health: HealthCache
    activity: ActivityCache
    log: Logger


def console() -> Console:
    """The console of the app handling the current request."""
    return current_app.extensions["botsq"]
