"""``bots-dirmonitor``: watch the ``[dirmonitorN]`` folders and queue an engine job the moment
files are ready.

A file counts only when it is ready (the rule: :mod:`engine.readiness`):

* inotify (default): closed after writing (``IN_CLOSE_WRITE``), renamed into the folder, or
  moved in from elsewhere. watchdog 7 reports a move from outside the tree as a bare "created"
  with no open/close; a created file is therefore ready only when no "opened" followed it and no
  process holds it open for writing (checked in ``/proc/*/fd``; when ``/proc`` is not fully
  readable, its size and mtime must also stay unchanged for the debounce time);
* ``polling = True`` (network shares, no close events): when its size and mtime have been stable
  for the debounce time and no process holds it open for writing.

Ready files coalesce per route for ``debounce`` seconds (default 0.5) into one job, published
through ``tasks.submit.submit`` - the bots-job2queue path, so priority and dedup apply: a burst
of 10,000 files gives a handful of jobs. Files already waiting at start trigger a job. Every
``rescan`` seconds (and at once when inotify's queue overflowed, which watchdog only logs) the
folders are rescanned; a watched folder that is deleted and re-created is watched again; a job
that cannot be published (broker down) is kept and retried, never dropped.

Logs to ``botssys/logging/dirmonitor.log``; writes ``botssys/dirmonitor.heartbeat`` for
``botsq status``. SIGTERM stops cleanly.

Modules: :mod:`~ops.dirmonitor.watching` (folders under watchdog observers, their events),
:mod:`~ops.dirmonitor.arrivals` (when an arriving file is ready), :mod:`~ops.dirmonitor.triggering`
(ready files -> a route's job, published with retries), :mod:`~ops.dirmonitor.heartbeat`,
:mod:`~ops.dirmonitor.monitor` (the loop: ``initialize`` / ``loop(now)`` / ``shutdown``) and
:mod:`~ops.dirmonitor.cli` (``bots-dirmonitor``).
"""
