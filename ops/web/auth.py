"""Login, logout and the rules every request passes (registered by :func:`ops.web.app.create_app`).

* :func:`require_login`: every page needs a session login; ``/api/`` also takes HTTP basic auth
  (scripts: ``curl -u ops:PASSWORD``). Without a login a page redirects to ``/login`` and the API
  answers 401. A read-only user (``[webserver] readonly``) is refused (403) on every POST but
  logout, so no action exists for them whatever they send.
* Failed logins (form or basic auth) count against the user name and the client address
  (:class:`ops.web.throttle.LoginThrottle`); a throttled attempt is answered 429 with
  ``Retry-After`` before its password is even looked at.
* A login starts a fresh session (no session fixation) and returns only to a local path.
"""
from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, abort, g, jsonify, redirect, render_template, request, session, url_for

from engine.config.webserver import WebUser
from ops.web.context import console

bp = Blueprint("auth", __name__)
PUBLIC = {"auth.login", "static"}
LOGOUT = "auth.logout"
BASIC_REALM = 'Basic realm="botsq", charset="UTF-8"'


class Throttled(Exception):
    """Too many failed logins for this user name or client address; ``wait`` seconds to go."""

    def __init__(self, wait: float) -> None:
        self.seconds = max(math.ceil(wait), 1)
        super().__init__(f"Too many failed logins: try again in {self.seconds} seconds.")


def current_user() -> WebUser | None:
    if "user" in g:
        return g.user
    name = session.get("user")
    return console().users.get(name) if isinstance(name, str) else None


def actor() -> str:
    """Who acts, for the audit lines of web.log: ``'NAME' from ADDRESS`` (the logged-in user, as
    the login line names them; an address alone would not tell two users behind one proxy apart)."""
    user = current_user()
    who = repr(user.name) if user is not None else "nobody logged in"
    return f"{who} from {request.remote_addr or '?'}"


def _keys(name: str) -> list[str]:
    return [f"user:{name}", f"addr:{request.remote_addr or '?'}"]


def check_password(name: str, password: str, how: str) -> WebUser | None:
    """The user, or None after counting the failure; :class:`Throttled` while the name or address waits."""
    con = console()
    wait = con.throttle.wait(_keys(name))
    if wait > 0:
        con.log.warning("login %s for %r from %s refused: too many failed logins", how, name, request.remote_addr)
        raise Throttled(wait)
    user = con.users.verify(name, password)
    if user is None:
        con.throttle.failed(_keys(name))
        con.log.warning("login %s for %r from %s failed", how, name, request.remote_addr)
        return None
    con.throttle.succeeded(_keys(name))
    return user


def _api_login() -> Any:
    """The basic-auth user of an API request, or the 401/429 answer."""
    auth = request.authorization
    user = None
    if auth is not None and auth.type == "basic" and auth.username is not None:
        try:
            user = check_password(auth.username, auth.password or "", "by basic auth")
        except Throttled as exc:
            return jsonify({"error": str(exc)}), 429, {"Retry-After": str(exc.seconds)}
    if user is None:
        return (jsonify({"error": "log in first: a console session, or HTTP basic auth (user:password)"}), 401,
                {"WWW-Authenticate": BASIC_REALM})
    return user


def require_login() -> Any:
    if request.endpoint in PUBLIC:
        return None
    user = current_user()
    if user is None and request.path.startswith("/api/"):
        found = _api_login()
        if not isinstance(found, WebUser):
            return found
        user = found
    if user is None:
        if request.method == "GET":
            return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
        abort(401, "Log in first.")
    g.user = user
    if request.method == "POST" and user.readonly and request.endpoint != LOGOUT:
        console().log.warning("read-only user %r refused: POST %s", user.name, request.path)
        abort(403, f"{user.name} may look but not act (read-only in [webserver] readonly).")
    return None


def _local(target: str | None) -> str:
    """``target`` when it is a path on this console, else the dashboard (no open redirect)."""
    parts = urlsplit(target or "")
    if not target or parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") \
            or "\\" in target:
        return url_for("pages.dashboard")
    return target


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    con = console()
    nxt = request.values.get("next", "")

    def page(error: str | None, code: int, name: str = "") -> Any:
        return render_template("login.html", next=nxt, error=error, generated=con.users.generated,
                               username=name), code

    if request.method == "GET":
        return redirect(_local(nxt)) if current_user() is not None else page(None, 200)
    name = (request.form.get("username") or "").strip()
    try:
        user = check_password(name, request.form.get("password") or "", "by form")
    except Throttled as exc:
        body, code = page(str(exc), 429, name)
        return body, code, {"Retry-After": str(exc.seconds)}
    if user is None:
        return page("Wrong user name or password.", 401, name)
    session.clear()
    session["user"] = user.name
    session.permanent = True
    con.log.info("login by %r from %s%s", user.name, request.remote_addr, " (read-only)" if user.readonly else "")
    return redirect(_local(nxt), 303)


@bp.post("/logout")
def logout() -> Any:
    user = current_user()
    session.clear()
    if user is not None:
        console().log.info("logout by %r", user.name)
    return redirect(url_for("auth.login"), 303)
