"""``bots-jobqueueserver [-c DIR]``: the engine worker - a Celery worker with the right options.

It is ``celery -A tasks worker -Q engine -c 1 -P prefork -E --without-mingle --without-gossip``
for the config dir: one job at a time, highest priority first, task events on for Flower. It
refuses to start (exit 1, one line) when ``[jobqueue] enabled`` is false or the broker cannot
be reached within ``[jobqueue] connect_timeout`` seconds.
"""
from __future__ import annotations

import argparse
import os

from engine.cli.common import ArgumentParser, run_cli
from engine.config import ENV_CONFIG, add_config_argument, load_config
from engine.errors import ExitCode
from engine.log import register_secrets
from tasks.broker import QUEUE, connect
from tasks.celeryapp import app_for
from tasks.submit import check_enabled



def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="bots-jobqueueserver",
                description="Run the botsq engine worker: consumes queue 'engine', one job at a time, by priority "
                            "(a Celery worker: -Q engine -c 1 -P prefork -E).")
    add_config_argument(p)
    p.add_argument("-l", "--loglevel", default="INFO", help="worker log level (default INFO)")
    p.add_argument("-n", "--hostname", default=None,
                   help="node name (default botsq@HOST); give each worker on one host its own")
    return p


def worker_argv(loglevel: str = "INFO", hostname: str | None = None) -> list[str]:
    """The ``celery worker`` arguments of the engine worker."""
    argv = ["worker", "-Q", QUEUE, "-c", "1", "-P", "prefork", "-E", "--without-mingle", "--without-gossip",
            "-l", loglevel]
    argv += ["-n", hostname or "botsq@%h"]
    return argv


def _main() -> int:
    args = build_parser().parse_args()
    cfg = load_config(args.configdir)
    register_secrets(cfg.secrets())
    check_enabled(cfg)
    app = app_for(cfg)
    connect(app, cfg.jobqueue.connect_timeout).release()
    os.environ[ENV_CONFIG] = str(cfg.configdir)        # pool processes and anything they start
    app.worker_main(worker_argv(args.loglevel, args.hostname))
    return ExitCode.OK


def main() -> None:
    run_cli("bots-jobqueueserver", _main)


if __name__ == "__main__":
    main()
