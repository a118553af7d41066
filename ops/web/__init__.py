"""``botsq web``: the web console an operations team opens every morning.

Bots' monitor rebuilt on botsq's records: a dashboard (health, each lane's lock and queue, the
last runs, files per hour and per day), runs, incoming and outgoing files with filters, a file's
history and content, marks for rereceive and resend, the queue, and the run menu that queues a
job through the same path as ``bots-job2queue``. JSON under ``/api/`` for scripts.

Modules, one concern each:

* :mod:`ops.web.app` - the Flask application: settings, security headers, error pages, filters
* :mod:`ops.web.auth` - login and logout, the login requirement, read-only users, CSRF errors
* :mod:`ops.web.users` - who may log in (``[webserver] users``), password checks, session key
* :mod:`ops.web.throttle` - failed logins slow down
* :mod:`ops.web.queries` - every call into the rest of botsq (records, queue, status, submit)
* :mod:`ops.web.params` - request parameters to filters, with one-line errors
* :mod:`ops.web.pages` - the HTML pages; :mod:`ops.web.api` - the JSON API
* :mod:`ops.web.charts` - files per hour / per day as SVG bar geometry
* :mod:`ops.web.preview` - a safe preview of a file's content
* :mod:`ops.web.command` - ``botsq web`` itself, served by waitress

``static/htmx-2.0.11.min.js`` is htmx 2.0.11 (0BSD licence), unchanged from the npm package
``htmx.org``: it reloads the dashboard's health and lane panels and the queue page in place.
"""
