"""The console's JSON API, for scripts: the same lists as the CLI's ``--json``, same shapes.

``GET /api/runs`` (``botsq runs --json``), ``/api/incoming`` and ``/api/outgoing`` (``botsq files
list --json --kind in|out``), ``/api/queue`` (``botsq queue --json``), ``/api/status``
(``botsq status --json``). Lists take the filters of the pages (:mod:`ops.web.params`) plus
``limit`` and ``offset``, and say the number of matching rows in ``X-Total-Count``. A bad
parameter is 400 with ``{"error": "one line"}``. Log in with the console's session or HTTP basic
auth. Secrets from the config never appear: every string is redacted on the way out.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from ops.web import params
from ops.web.context import console
from ops.web.queries import FilterError, count_runs, list_runs, page_files, queue_report, redact_data

bp = Blueprint("api", __name__, url_prefix="/api")
RUNS_LIMIT, FILES_LIMIT = 20, 100          # the CLI's defaults


def _json(data: Any, total: int | None = None) -> Any:
    resp = jsonify(redact_data(data))     # every string, nested ones too
    if total is not None:
        resp.headers["X-Total-Count"] = str(total)
    return resp


def _bad(exc: Exception) -> Any:
    return jsonify({"error": str(exc)}), 400


@bp.get("/runs")
def runs() -> Any:
    url = console().cfg.database_url
    try:
        flt = params.run_filter(request.args)
        limit, offset = params.limit_offset(request.args, RUNS_LIMIT)
    except FilterError as exc:
        return _bad(exc)
    return _json(list_runs(url, flt, limit, offset), count_runs(url, flt))


def _files(kind: str) -> Any:
    url = console().cfg.database_url
    try:
        flt = params.file_filter(request.args)
        limit, offset = params.limit_offset(request.args, FILES_LIMIT)
    except FilterError as exc:
        return _bad(exc)
    return _json(*page_files(url, kind, flt, limit, offset))


@bp.get("/incoming")
def incoming() -> Any:
    return _files("in")


@bp.get("/outgoing")
def outgoing() -> Any:
    return _files("out")


@bp.get("/queue")
def queue() -> Any:
    return _json(queue_report(console().cfg))


@bp.get("/status")
def status() -> Any:
    # the same report as `botsq status --json`; asked again at most every 2 s however often scripts poll
    return _json(console().health.get(max_age=2.0))
