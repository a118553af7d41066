"""The console's Flask application: :func:`create_app` wires settings, security and the views.

Secure by default:

* every page and API call needs a login (:mod:`ops.web.auth`); sessions live in a signed,
  HttpOnly, SameSite=Lax cookie (``Secure`` with ``[webserver] secure_cookie``) that expires
  after ``session_hours``;
* every POST carries a CSRF token (Flask-WTF's ``CSRFProtect``); read-only users may not POST
  anything but their logout;
* templates autoescape, and every value they print passes :func:`engine.log.redact`, so neither
  markup from a file name or content nor a secret from the config reaches a page;
* a Content-Security-Policy allows only the console's own scripts and styles; pages are not
  cached and cannot be framed.

Every answer says how long it took here in a ``Server-Timing`` header.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from flask import Flask, current_app, g, jsonify, render_template, request
from flask_wtf.csrf import CSRFError, CSRFProtect
from markupsafe import Markup
from werkzeug.exceptions import HTTPException

from engine.config import Config
from engine.config.webserver import WebServerSettings
from ops.web import api, auth, filters, pages
from ops.web.context import Console, console
from ops.web.queries import (
    ActivityCache,
    HealthCache,
    component_logger,
    lanes,
    redact,
    register_secrets,
    utc_offset_minutes,
    utcnow,
)
from ops.web.throttle import LoginThrottle
from ops.web.users import Users, secret_key

HERE = Path(__file__).parent
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")
MAX_REQUEST_BYTES = 1024 * 1024       # forms only: a larger request body is refused (413)


def _finalize(value: Any) -> Any:
    """Jinja's last step for every printed value: no configured secret ever reaches a page."""
    if isinstance(value, Markup):
        return Markup(redact(str(value)))
    if isinstance(value, str):
        return redact(value)
    return value


def _start_clock() -> None:
    g.started = time.perf_counter()


def _headers(response: Any) -> Any:
    """Security headers on every answer, and ``Server-Timing`` (the time spent here, in ms: shown by
    the browser's developer tools, and what bench/web.py measures)."""
    h = response.headers
    if "started" in g:
        h["Server-Timing"] = f"app;dur={(time.perf_counter() - g.started) * 1000:.1f}"
    h.setdefault("Content-Security-Policy", CSP)
    h["X-Content-Type-Options"] = "nosniff"
    h["X-Frame-Options"] = "DENY"
    h["Referrer-Policy"] = "same-origin"
    if request.endpoint != "static":
        h["Cache-Control"] = "no-store"
    return response


def _wants_json() -> bool:
    return request.path.startswith("/api/")


def _error(exc: HTTPException) -> Any:
    code = exc.code or 500
    message = exc.description if isinstance(exc.description, str) else str(exc)
    if _wants_json():
        resp = jsonify({"error": message})
    else:
        resp = current_app.make_response((render_template("error.html", code=code, name=exc.name,
                                                          message=message), code))
    resp.status_code = code
    for key in ("Retry-After", "WWW-Authenticate"):
        if exc.response is not None and key in exc.response.headers:
            resp.headers[key] = exc.response.headers[key]
    return resp


def create_app(cfg: Config, settings: WebServerSettings, clock: Callable[[], float] = time.monotonic) -> Flask:
    """The console for ``cfg``; ``clock`` (seconds) drives the login throttle and the health cache."""
    app = Flask("ops.web", root_path=str(HERE), template_folder="templates", static_folder="static")
    app.jinja_options = {**app.jinja_options, "finalize": _finalize}
    botssys = cfg.directories.botssys
    users = Users(settings, botssys)
    register_secrets(cfg.secrets() + users.plain_passwords())
    app.config.update(
        SECRET_KEY=secret_key(botssys),
        SESSION_COOKIE_NAME="botsq_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.secure_cookie,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=settings.session_hours),
        WTF_CSRF_TIME_LIMIT=None,            # the token lives as long as the session
        WTF_CSRF_SSL_STRICT=settings.secure_cookie,
        MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES,
        JSON_SORT_KEYS=False,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.before_request(_start_clock)        # first, so the CSRF check and the login count too
    app.extensions["botsq"] = Console(cfg, settings, users, LoginThrottle(clock), HealthCache(cfg, clock=clock),
                                      ActivityCache(cfg.database_url, ttl=settings.chart_cache, clock=clock),
                                      component_logger("web", cfg))
    CSRFProtect(app)
    filters.register(app)
    app.register_blueprint(auth.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
    app.before_request(auth.require_login)
    app.after_request(_headers)
    app.register_error_handler(HTTPException, _error)

    @app.errorhandler(CSRFError)
    def csrf_failed(exc: CSRFError) -> Any:
        console().log.warning("refused a POST to %s from %s: %s", request.path, request.remote_addr, exc.description)
        return render_template("error.html", code=400, name="Form expired",
                               message="This form is not from this console session (CSRF check failed). "
                                       "Reload the page and try again."), 400

    @app.context_processor
    def common() -> dict[str, Any]:
        return {"now": datetime.now(), "tz": time.strftime("%Z"), "user": auth.current_user(),
                "configdir": str(cfg.configdir)}

    return app


def prepare(app: Flask) -> None:
    """Work done before serving, so no early request waits for it: compile every template (Jinja
    compiles on first use, ~150 ms for the dashboard's), open the database and the queue registry
    once, and count the charts' month in the background. A database that does not answer yet is
    only logged: the pages say so when they are asked for."""
    con: Console = app.extensions["botsq"]
    for name in app.jinja_env.list_templates(filter_func=lambda n: n.endswith(".html")):
        app.jinja_env.get_template(name)
    try:
        lanes(con.cfg)
    except Exception as exc:  # noqa: BLE001 - start anyway; every page reports the problem itself
        con.log.warning("database not ready at start: %s", redact(" ".join(str(exc).split())))
        return
    con.activity.warm(utcnow(), utc_offset_minutes())
