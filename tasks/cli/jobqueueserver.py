"""``bots-jobqueueserver [-c DIR] [--lane X ...]``: the engine worker - Celery workers with the right options.

One lane (a config without lanes, or one ``--lane``) is one Celery worker: ``celery -A tasks worker
-Q <the lane's queue> -c 1 -P prefork -E --without-mingle --without-gossip`` for the config dir - one
job at a time, highest priority first, task events on for Flower.

Several lanes (no ``--lane`` in a config with lanes: all of them) are one Celery worker per lane,
children of this process (:class:`ops.procs.Supervisor`), each this command with one ``--lane`` and
node name ``<name>-<lane>@<host>``: a lane never runs two jobs at once and a job never waits behind
another lane's. SIGTERM (or Ctrl-C) is Celery's warm shutdown of all: each finishes its running job
(waiting up to maxruntime before it is killed). When one of them exits on its own, the others are
stopped and the server exits 1, so the service manager restarts the whole (``Restart=on-failure``)
rather than run on with a lane unserved.

It refuses to start (exit 1, one line) when ``[jobqueue] enabled`` is false, a ``--lane`` is not a
lane of the config (naming those it has) or the broker cannot be reached within ``[jobqueue]
connect_timeout`` seconds.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

from celery.utils.nodenames import host_format

from engine.cli.common import ArgumentParser, run_cli
from engine.botsengine import check_bots_engine
from engine.config import ENV_CONFIG, Config, add_config_argument, load_config
from engine.config.lanes import DEFAULT_LANE
from engine.errors import ExitCode, UsageError
from engine.log import register_secrets
from ops.procs import Stopped, Supervisor, venv_command
from tasks.broker import connect, node_in_use, queue_name
from tasks.celeryapp import app_for
from tasks.submit import check_enabled

DEFAULT_NODE = "botsq@%h"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="bots-jobqueueserver",
                       description="Run the botsq engine worker: consumes the queue of each lane (lane default: "
                                   "'engine'), one job per lane at a time, by priority (a Celery worker per lane: "
                                   "-Q engine[.LANE] -c 1 -P prefork -E).")
    add_config_argument(p)
    p.add_argument("--lane", dest="lanes", action="append", metavar="LANE", default=None,
                   help="serve this lane (repeatable; default: every lane of the config)")
    p.add_argument("-l", "--loglevel", default="INFO", help="worker log level (default INFO)")
    p.add_argument("-n", "--hostname", default=None,
                   help="node name (default botsq@HOST; lane X: botsq-X@HOST); give each worker on one host its own")
    return p


def node_name(base: str | None, lane: str) -> str:
    """A lane's worker node name: ``base`` (default ``botsq@%h``) for lane default, with ``-<lane>``
    added to its name part for the others (``botsq-slow@%h``)."""
    base = base or DEFAULT_NODE
    if lane == DEFAULT_LANE:
        return base
    name, at, host = base.partition("@")
    return f"{name}-{lane}{at}{host}"


def worker_argv(loglevel: str = "INFO", hostname: str | None = None, lane: str = DEFAULT_LANE) -> list[str]:
    """The ``celery worker`` arguments of one lane's engine worker."""
    argv = ["worker", "-Q", queue_name(lane), "-c", "1", "-P", "prefork", "-E", "--without-mingle",
            "--without-gossip", "-l", loglevel]
    argv += ["-n", hostname or node_name(None, lane)]
    return argv


def chosen_lanes(cfg: Config, wanted: Sequence[str] | None) -> list[str]:
    """The lanes to serve: ``wanted`` (in the config's order, once each), or every lane of the config;
    UsageError naming the config's lanes for one it does not have."""
    if not wanted:
        return list(cfg.lanes)
    unknown = [lane for lane in wanted if lane not in cfg.lanes]
    if unknown:
        raise UsageError(f"unknown lane {unknown[0]!r} (lanes of {cfg.configdir}: {', '.join(cfg.lanes)})")
    return [lane for lane in cfg.lanes if lane in wanted]


def serve_lanes(cfg: Config, lanes: Sequence[str], loglevel: str, hostname: str | None) -> int:
    """One worker per lane, supervised (see the module doc); the exit code."""
    sup = Supervisor(label="bots-jobqueueserver")
    names = [f"lane-{lane}" for lane in lanes]
    sup.width = max(len(n) for n in [*names, sup.label])
    try:
        with sup.running(grace=cfg.settings.maxruntime * 60.0):
            for lane, name in zip(lanes, names):
                sup.start(name, [venv_command("bots-jobqueueserver"), "-c", str(cfg.configdir), "--lane", lane,
                                 "-l", loglevel, "-n", node_name(hostname, lane)], cwd=cfg.envdir)
            sup.say(f"serving lanes {', '.join(lanes)} of {cfg.configdir}, one worker each")
            gone = sup.wait()
            assert gone is not None
            sup.say(f"the worker of {gone.name} exited with code {gone.proc.returncode}: stopping the others")
            return ExitCode.SYSTEM
    except (KeyboardInterrupt, Stopped):
        return ExitCode.OK


def check_node_names(app: Any, names: Sequence[str], timeout: float) -> None:
    """UsageError (one line) when a running worker already has one of these node names: a second
    worker on a host needs a name of its own (``-n``); with it, it is a hot standby (README)."""
    for name in names:
        full = host_format(name)
        if node_in_use(app, full, min(timeout, 1.0)):
            raise UsageError(f"node name {full} is in use by a running worker (another bots-jobqueueserver on this "
                             f"host?); give this one its own with -n/--hostname, e.g. -n standby@%h")


def _main() -> int:
    args = build_parser().parse_args()
    cfg = load_config(args.configdir)
    register_secrets(cfg.secrets())
    check_enabled(cfg)
    check_bots_engine(cfg)          # [engine] kind = bots: its command and configdir, before any worker starts
    lanes = chosen_lanes(cfg, args.lanes)
    app = app_for(cfg)
    connect(app, cfg.jobqueue.connect_timeout).release()
    check_node_names(app, [node_name(args.hostname, lane) for lane in lanes], cfg.jobqueue.connect_timeout)
    os.environ[ENV_CONFIG] = str(cfg.configdir)        # pool processes and anything they start
    if len(lanes) > 1:
        return serve_lanes(cfg, lanes, args.loglevel, args.hostname)
    app.worker_main(worker_argv(args.loglevel, args.hostname, lanes[0]))
    return ExitCode.OK


def main() -> None:
    run_cli("bots-jobqueueserver", _main)


if __name__ == "__main__":
    main()
