"""``bots-dirmonitor [-c DIR]``: run the directory monitor in the foreground until SIGTERM or Ctrl-C.

It refuses to start (exit 1, one line) when the queue is disabled, no ``[dirmonitorN]`` section
exists, a watched folder is missing, a section names a route that cannot run, or another monitor of
the same config is alive (its heartbeat, by the lease rule: :mod:`ops.dirmonitor.heartbeat`).
"""
from __future__ import annotations

import argparse
import os
import signal
from types import FrameType

from engine.cli.common import ArgumentParser, run_cli
from engine.config import Config, add_config_argument, load_config
from engine.errors import UsageError, one_line
from engine.log import component_logger
from ops.dirmonitor.agreement import check
from ops.dirmonitor.heartbeat import heartbeat_age, read_heartbeat
from ops.dirmonitor.monitor import Monitor
from ops.dirmonitor.triggering import JobSender
from tasks.broker import connect
from tasks.celeryapp import app_for


def check_config(cfg: Config) -> None:
    """Refuse to start (one line) when the monitor could do nothing useful."""
    if not cfg.jobqueue.enabled:
        raise UsageError(f"{cfg.ini_path}: [jobqueue] enabled: the queue is disabled; "
                         "the directory monitor only queues jobs")
    if not cfg.dirmonitors:
        raise UsageError(f"{cfg.ini_path}: no [dirmonitorN] section (path, filemask, route): nothing to watch")
    for mon in cfg.dirmonitors:
        if not mon.path.is_dir():
            what = "is not a folder" if mon.path.exists() else "does not exist"
            raise UsageError(f"{cfg.ini_path}: [{mon.name}] path: {mon.path} {what}")
    check(cfg)      # the monitor and the file channel agree (recursive = True refused)
    age, limit = heartbeat_age(cfg)
    if age is not None and age <= limit:    # two would watch the same folders and fight over the heartbeat
        hb = read_heartbeat(cfg) or {}
        raise UsageError(f"another bots-dirmonitor runs for this config (pid {hb.get('pid')} on {hb.get('host')}, "
                         f"heartbeat {age:.0f} s ago): stop it first")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="bots-dirmonitor",
        description="Watch the [dirmonitorN] folders of bots.ini and queue an engine job "
                    "(bots-engine --new ROUTE) as soon as files are ready.")
    add_config_argument(p)
    return p


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = load_config(args.configdir)
    check_config(cfg)
    log = component_logger("dirmonitor", cfg)
    sender = JobSender(cfg)
    for route in {m.route for m in cfg.dirmonitors}:
        try:
            sender.job(route)                       # refuse now, not at the first file
        except UsageError as exc:
            raise UsageError(f"route {route!r}: {exc}") from None
    mon = Monitor(cfg, log, submit=sender)
    try:                                            # connect now: the first file need not wait for it
        connect(app_for(cfg), cfg.jobqueue.connect_timeout).release()
    except Exception as exc:  # noqa: BLE001 - not fatal: jobs are retried until the broker answers
        log.warning("broker not reachable yet (%s); jobs are kept and retried until it is", one_line(exc))

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        mon.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("bots-dirmonitor starting (pid %d, config %s)", os.getpid(), cfg.configdir)
    mon.run()
    return 0


def main() -> None:
    run_cli("bots-dirmonitor", _main)


if __name__ == "__main__":  # pragma: no cover
    main()
