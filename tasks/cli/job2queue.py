"""``bots-job2queue [-c DIR] [-p 1..9] COMMAND [ARG ...]``: put a job on the queue, as in Bots.

COMMAND is ``bots-engine`` with any of its options and routes (also written ``bots-engine.py``
or ``python3 /path/bots-engine.py``; its own ``-c``/``-C`` selects the job's config dir), or a
name (or the exact command line) from ``[jobqueue.commands]``.

Output and exit codes, as Bots: ``OK, job is added to queue`` (0, also when an identical waiting
job's priority was raised - the note goes to stderr); ``Duplicate job, not added.`` (4); one line on
stderr and 1 when the queue is disabled, the broker cannot be reached or the command is refused.

A job over several lanes is queued as one job per lane (contract, "Lanes"): exit 0 when any was
added, 4 when all were duplicates; a line per lane after Bots' line says which was which.
"""
from __future__ import annotations

import argparse
import sys

from engine.cli.common import ArgumentParser, run_cli
from engine.config import add_config_argument, load_config
from engine.errors import ExitCode, UsageError
from tasks import priority as prio
from tasks.jobs import job_from_argv
from tasks.registry import RegistrationStatus
from tasks.submit import check_enabled, submit



def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="bots-job2queue",
        description="Put a job on the botsq job queue: an engine run (bots-engine ...) or a command "
                    "named in [jobqueue.commands].",
        epilog="Exit codes: 0 added, 4 duplicate (an identical job is waiting), 1 error. Examples: "
               "bots-job2queue -p1 bots-engine --new orders;  bots-job2queue -p3 archive_sweep",
    )
    add_config_argument(p)
    p.add_argument("-p", "--priority", default=str(prio.DEFAULT), metavar="1..9",
                   help=f"priority, {prio.HIGHEST} highest .. {prio.LOWEST} lowest (default {prio.DEFAULT})")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND [ARG ...]",
                   help="bots-engine [OPTIONS] [ROUTE ...], or a [jobqueue.commands] name and its arguments")
    return p


def _main() -> int:
    args = build_parser().parse_args()
    if not args.command:
        raise UsageError("no COMMAND given (e.g. bots-engine --new, or a [jobqueue.commands] name)")
    try:
        priority = prio.check(args.priority)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    cfg = load_config(args.configdir)
    check_enabled(cfg)
    job = job_from_argv(cfg, args.command)
    res = submit(cfg, job, priority)
    duplicate = res.status == RegistrationStatus.DUPLICATE
    # Bots' job queue answers a priority change of a waiting job with 0 and "OK": the job
    # will run at the priority asked for, which is what a caller checking the code wants to know.
    print("Duplicate job, not added." if duplicate else "OK, job is added to queue")
    if len(res.parts) > 1:
        for part in res.parts:
            print(part.describe())
    elif res.status == RegistrationStatus.RAISED:
        print(f"bots-job2queue: an identical job was waiting; its priority is raised to {res.priority}",
              file=sys.stderr)
    return ExitCode.DUPLICATE if duplicate else ExitCode.OK


def main() -> None:
    run_cli("bots-job2queue", _main)


if __name__ == "__main__":
    main()
