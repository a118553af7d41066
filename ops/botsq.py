"""``botsq``: one command for everything new. Each subcommand lives in its own module,
imported only when used, so ``botsq files`` never loads Celery.

A subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from engine.cli.common import ArgumentParser, run_cli

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "init": ("engine.cli.init", "write a working environment (--demo adds sample routes and files)"),
    "demo": ("ops.demo", "run the demo: the engine, and the whole queue stack when a broker answers"),
    "files": ("engine.cli.files", "list incoming/outgoing files; mark them for rereceive or resend"),
    "runs": ("engine.cli.runs", "list engine runs"),
    "queue": ("tasks.cli.queue", "show waiting jobs; 'queue clear' purges queue and registry"),
    "status": ("ops.status", "health: broker, workers, lock, waiting jobs, last runs, monitor"),
    "schedule": ("ops.schedule", "print the schedule with next run times"),
    "stack": ("ops.stack", "run worker, beat, monitor and Flower in the foreground"),
    "flower": ("ops.flower", "start Flower with authentication"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="botsq", description="botsq: the Bots EDI engine's run orchestration on Celery")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    argv = sys.argv[1:]
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        # Only the chosen subcommand's module is imported (keeps `botsq files` fast).
        if name == wanted:
            mod = importlib.import_module(module)
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    return parser


def _main() -> int:
    parser = build_parser()
    args = parser.parse_args()
    if not getattr(args, "_run", None):
        parser.print_help()
        return 1
    return int(args._run(args) or 0)


def main() -> None:
    run_cli("botsq", _main)


if __name__ == "__main__":
    main()
