"""The console's HTML pages (Bots' monitor views) and its two actions.

Pages: ``/`` dashboard, ``/runs``, ``/runs/ID``, ``/incoming``, ``/incoming/ID``, ``/outgoing``,
``/outgoing/ID``, ``/queue``, ``/run`` (the run menu). Actions, each a POST with a CSRF token:
marking files (``/incoming/mark``, ``/outgoing/mark``: the ``botsq files rereceive|resend`` marks)
and queueing a job (``/run``: the ``bots-job2queue`` path, so a duplicate is reported as one).
Stable hooks for scripted checks: list rows ``tr[data-id]`` with ``input[name=ids]``; action
buttons ``button[name=action]`` valued ``rereceive``/``resend``; ``form#run-form`` with
``command``, ``routes``, ``priority``.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, send_file, url_for

from ops.web import charts, params
from ops.web.auth import actor
from ops.web.context import console
from ops.web.preview import preview
from ops.web.queries import (
    DEFAULT_LANE,
    ENGINE_COMMANDS,
    IN_STATUSES,
    OUT_STATUSES,
    RUN_STATUSES,
    FilterError,
    RegistrationStatus,
    UsageError,
    count_runs,
    file_detail,
    lanes,
    list_runs,
    mark_files,
    page_files,
    queue_report,
    route_lane,
    run_detail,
    run_totals,
    run_log,
    stored_path,
    submit_job,
    utc_offset_minutes,
    utcnow,
)

bp = Blueprint("pages", __name__)

KINDS = {"incoming": "in", "outgoing": "out"}
MARK = {"in": "rereceive", "out": "resend"}          # the one action of each list
LAST_RUNS = 8
HEALTH_FRESH = 10.0          # seconds a health report is shown as current
DEFAULT_PRIORITY = 5
RUN_TITLES = {"new": "New files", "rereceive": "Rereceive marked files", "resend": "Resend marked files",
              "automaticretrycommunication": "Retry failed communication", "cleanup": "Cleanup"}
RUN_HELP = {"new": "receive, translate and send what is new (bots-engine --new)",
            "rereceive": "process the incoming files marked for rereceive again, from the archive",
            "resend": "send the outgoing files marked for resend again",
            "automaticretrycommunication": "send again what failed to send since the last retry",
            "cleanup": "remove records and archived files older than maxdays"}


def _bad_request(exc: Exception) -> Any:
    abort(400, str(exc))


# --------------------------------------------------------------------------- dashboard

@bp.get("/")
def dashboard() -> Any:
    con = console()
    cfg = con.cfg
    now = datetime.now()
    buckets = con.activity.get(utcnow(), utc_offset_minutes())
    day, month = charts.hourly(buckets, now), charts.daily(buckets, now)
    totals = {"day": day.totals, "month": month.totals}
    if cfg.engine.is_bots:            # no file records of Bots' runs here: the counts of their summaries
        since = utcnow()
        totals = {"day": run_totals(cfg.database_url, since - timedelta(hours=24)),
                  "month": run_totals(cfg.database_url, since - timedelta(days=30))}
    report, age = con.health.cached()
    if report is not None and age > HEALTH_FRESH:
        report = None                 # too old to show as now: the panel loads a fresh one at once
    return render_template("dashboard.html", day=day, month=month, totals=totals, bots=cfg.engine.is_bots,
                           lanes=lanes(cfg), runs=list_runs(cfg.database_url, limit=LAST_RUNS), health=report,
                           health_age=age, queue_enabled=cfg.jobqueue.enabled)


@bp.get("/partials/health")
def health() -> Any:
    con = console()
    report = con.health.get(max_age=HEALTH_FRESH)
    return render_template("_health.html", health=report, health_age=con.health.cached()[1])


@bp.get("/partials/lanes")
def lanes_partial() -> Any:
    return render_template("_lanes.html", lanes=lanes(console().cfg), queue_enabled=console().cfg.jobqueue.enabled)


# --------------------------------------------------------------------------- runs

@bp.get("/runs")
def runs() -> Any:
    cfg = console().cfg
    try:
        flt = params.run_filter(request.args)
        total = count_runs(cfg.database_url, flt)
        pg = params.page(request.args, total)
    except FilterError as exc:
        return _bad_request(exc)
    rows = list_runs(cfg.database_url, flt, pg.size, pg.offset)
    return render_template("runs.html", rows=rows, page=pg, flt=flt, statuses=RUN_STATUSES,
                           routes=sorted(cfg.routes), args=request.args)


@bp.get("/runs/<int:run_id>")
def run(run_id: int) -> Any:
    cfg = console().cfg
    detail = run_detail(cfg.database_url, run_id)
    if detail is None:
        abort(404, f"There is no run {run_id}.")
    standard = {"id", "commands", "routes", "host", "pid", "started", "ended", "status", "returncode", "received",
                "processed", "sent", "file_errors", "comm_errors", "message", "incoming", "outgoing", "errors"}
    extra = {k: v for k, v in detail.items() if k not in standard and v not in (None, "")}
    return render_template("run.html", run=detail, extra=extra, log=_levels(run_log(cfg, detail)))


LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _levels(lines: list[str]) -> list[tuple[str, str]]:
    """(level, line) for colouring: the level follows the time stamp (engine.log's FORMAT); a line
    without a stamp (a traceback) has the level of the line it belongs to."""
    out, level = [], "INFO"
    for line in lines:
        if line[:4].isdigit() and len(line) > 24:
            word = line[24:].split(" ", 1)[0]
            level = word if word in LEVELS else "INFO"
        out.append((level, line))
    return out


# --------------------------------------------------------------------------- files

def _files(kind: str) -> Any:
    cfg = console().cfg
    try:
        flt = params.file_filter(request.args)
        number = params.page_number(request.args)
    except FilterError as exc:
        return _bad_request(exc)
    rows, total = page_files(cfg.database_url, kind, flt, params.PAGE_SIZE, (number - 1) * params.PAGE_SIZE)
    pg = params.Page(number, params.PAGE_SIZE, total)
    if number > pg.pages:                     # beyond the end (the list shrank): show the last page
        pg = params.Page(pg.pages, params.PAGE_SIZE, total)
        rows, total = page_files(cfg.database_url, kind, flt, pg.size, pg.offset)
    channels = sorted({p.fromchannel if kind == "in" else (p.tochannel or "")
                       for r in cfg.routes.values() for p in r.parts} - {""})
    return render_template("files.html", kind=kind, rows=rows, page=pg, flt=flt, action=MARK[kind],
                           statuses=IN_STATUSES if kind == "in" else OUT_STATUSES, routes=sorted(cfg.routes),
                           channels=channels, args=request.args, filter_args=params.keep(request.args, "page"),
                           page_args=_multi(params.keep(request.args, "page")))


@bp.get("/incoming")
def incoming() -> Any:
    return _files("in")


@bp.get("/outgoing")
def outgoing() -> Any:
    return _files("out")


def _mark(kind: str) -> Any:
    con = console()
    action = request.form.get("action", "")
    unmark = action == f"un{MARK[kind]}"
    if action != MARK[kind] and not unmark:
        abort(400, f"{'incoming' if kind == 'in' else 'outgoing'} files can be marked for {MARK[kind]} only "
                   f"(got action {action[:40]!r})")
    every = request.form.get("scope") == "matching"
    try:
        flt = params.file_filter(request.form)
        ids = [] if every else params.ids(request.form)
    except FilterError as exc:
        return _bad_request(exc)
    back = url_for(f"pages.{'incoming' if kind == 'in' else 'outgoing'}", **_multi(params.keep(request.form, "action",
                                                                                               "ids", "scope")))
    if not ids and not every:
        flash({"text": "Tick one or more files first (or choose all files matching the filter).",
               "category": "warning"})
        return redirect(back, 303)
    res = mark_files(con.cfg.database_url, MARK[kind], ids, flt, every=every, unmark=unmark)
    what = "incoming" if kind == "in" else "outgoing"
    con.log.info("%s %s %d %s file(s) for %s%s", actor(), "unmarked" if unmark else "marked",
                 len(res.ids), what, MARK[kind], " (all matching the filter)" if every else "")
    text = (f"{len(res.ids)} {what} file{'s' if len(res.ids) != 1 else ''} "
            f"{'unmarked' if unmark else 'marked'} for {MARK[kind]}.")
    if res.not_found:
        text += f" Not found{' or never archived' if kind == 'in' else ''}: {', '.join(map(str, res.not_found[:20]))}."
    message: dict[str, Any] = {"text": text, "category": "success" if res.ids else "warning"}
    if res.ids and not unmark:
        message["run"] = {"command": MARK[kind], "routes": list(flt.routes)}
    flash(message)
    return redirect(back, 303)


def _multi(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in pairs:
        out.setdefault(k, []).append(v)
    return out


@bp.post("/incoming/mark")
def mark_incoming() -> Any:
    return _mark("in")


@bp.post("/outgoing/mark")
def mark_outgoing() -> Any:
    return _mark("out")


def _file(kind: str, file_id: int) -> Any:
    con = console()
    rec = file_detail(con.cfg.database_url, kind, file_id)
    if rec is None:
        abort(404, f"There is no {'incoming' if kind == 'in' else 'outgoing'} file {file_id}.")
    path = stored_path(con.cfg.directories.botssys, rec)
    return render_template("file.html", kind=kind, f=rec, preview=preview(path), action=MARK[kind],
                           downloadable=path is not None)


@bp.get("/incoming/<int:file_id>")
def incoming_file(file_id: int) -> Any:
    return _file("in", file_id)


@bp.get("/outgoing/<int:file_id>")
def outgoing_file(file_id: int) -> Any:
    return _file("out", file_id)


def _download(kind: str, file_id: int) -> Any:
    con = console()
    rec = file_detail(con.cfg.database_url, kind, file_id)
    path = stored_path(con.cfg.directories.botssys, rec) if rec else None
    if rec is None or path is None:
        abort(404, "No stored content for this file.")
    con.log.info("%s downloaded %s file %d (%s)", actor(), kind, file_id, rec["filename"])
    # always an attachment of an opaque type: a stored HTML file never renders in the console's origin
    return send_file(path, mimetype="application/octet-stream", as_attachment=True,
                     download_name=rec["filename"] or f"{kind}-{file_id}", max_age=0)


@bp.get("/incoming/<int:file_id>/download")
def incoming_download(file_id: int) -> Any:
    return _download("in", file_id)


@bp.get("/outgoing/<int:file_id>/download")
def outgoing_download(file_id: int) -> Any:
    return _download("out", file_id)


# --------------------------------------------------------------------------- queue

@bp.get("/queue")
def queue() -> Any:
    cfg = console().cfg
    report = queue_report(cfg) if cfg.jobqueue.enabled else None
    by_lane = lanes(cfg, report["waiting"], report["running"]) if report else lanes(cfg, [], [])
    return render_template("queue.html", report=report, lanes=by_lane, queue_enabled=cfg.jobqueue.enabled)


@bp.get("/partials/queue")
def queue_partial() -> Any:
    cfg = console().cfg
    report = queue_report(cfg) if cfg.jobqueue.enabled else None
    by_lane = lanes(cfg, report["waiting"], report["running"]) if report else lanes(cfg, [], [])
    return render_template("_queue.html", report=report, lanes=by_lane, queue_enabled=cfg.jobqueue.enabled)


# --------------------------------------------------------------------------- run menu

def _run_menu(code: int = 200, error: str | None = None, chosen: dict[str, Any] | None = None) -> Any:
    cfg = console().cfg
    routes = [{"name": name, "lane": route_lane(r), "active": r.active, "notindefaultrun": r.notindefaultrun,
               "parts": len(r.parts)}
              for name, r in sorted(cfg.routes.items(), key=lambda nr: (not nr[1].active, nr[0].lower()))]
    chosen = chosen or {"command": request.args.get("command") or "new",
                        "routes": request.args.getlist("routes"), "priority": DEFAULT_PRIORITY}
    commands = [c for c in RUN_TITLES if c in ENGINE_COMMANDS]
    return render_template("runmenu.html", commands=commands, titles=RUN_TITLES, help=RUN_HELP, bots=cfg.engine.is_bots,
                           jobs=sorted(cfg.jobqueue.commands.items()), routes=routes, chosen=chosen, error=error,
                           queue_enabled=cfg.jobqueue.enabled, lanes=lanes(cfg), default_lane=DEFAULT_LANE), code


@bp.get("/run")
def run_menu() -> Any:
    return _run_menu()


@bp.post("/run")
def run_submit() -> Any:
    con = console()
    cfg = con.cfg
    command = request.form.get("command", "")
    # ticked names, or (a Bots site: its routes are Bots') names typed in one field, spaces between
    routes = list(dict.fromkeys(r for v in request.form.getlist("routes") for r in v.replace(",", " ").split()))
    chosen = {"command": command, "routes": routes, "priority": request.form.get("priority", "")}
    try:
        priority = params.integer(request.form, "priority", DEFAULT_PRIORITY, low=1, high=9) or DEFAULT_PRIORITY
    except FilterError:
        return _run_menu(400, f"Priority must be 1 (highest) to 9, not {chosen['priority'][:20]!r}.", chosen)
    chosen["priority"] = priority
    if command in ENGINE_COMMANDS:
        option = next((r for r in routes if r.startswith("-")), None)
        if option is not None:        # typed into the routes field: it would reach bots-engine as an option
            return _run_menu(400, f"{option[:60]!r} is not a route name: choose the run option above.", chosen)
        argv = ["bots-engine", f"--{command}", *routes]
    elif command in cfg.jobqueue.commands:
        if routes:
            return _run_menu(400, f"{command} is a [jobqueue.commands] job: it takes no routes.", chosen)
        argv = [command]
    else:
        return _run_menu(400, f"Unknown command {command[:60]!r}: choose a run option or a job of "
                              f"[jobqueue.commands].", chosen)
    try:
        res = submit_job(cfg, argv, priority)
    except UsageError as exc:
        con.log.warning("run menu: %s by %s refused: %s", " ".join(argv), actor(), exc)
        return _run_menu(400, str(exc), chosen)
    con.log.info("run menu: %s at priority %d by %s: %s", res.job, priority, actor(), res.status)
    if res.status == RegistrationStatus.DUPLICATE:
        flash({"text": f"Duplicate job, not added: {res.job} is already waiting (priority {res.priority}).",
               "category": "warning"})
    elif res.status == RegistrationStatus.RAISED:
        flash({"text": f"{res.job} was already waiting; its priority is raised to {res.priority}.",
               "category": "success"})
    else:
        flash({"text": f"OK, job is added to queue: {res.job} (priority {res.priority}).", "category": "success"})
    return redirect(url_for("pages.run_menu"), 303)
