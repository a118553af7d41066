"""``botsq stack -c DIR``: worker, beat, monitor and Flower in the foreground, for development.

Each runs as a child process with its output prefixed and coloured (``worker |``, ``beat |`` ...);
Ctrl-C or SIGTERM stops them all (the worker's warm shutdown lets a running job finish). When
one of them exits on its own, the others are stopped too and the exit code is 1.
"""
from __future__ import annotations

import argparse
import sys

from engine.config import ENV_CONFIG, Config, add_config_argument, load_config
from engine.errors import ConfigError
from engine.log import register_secrets
from ops.flower import flower_command
from ops.procs import Stopped, Supervisor, venv_command
from ops.status import broker_problem

# Seconds the worker gets to finish its job on Ctrl-C before it is killed.
STOP_GRACE = 60.0


def service_commands(cfg: Config, flower: bool = True) -> list[tuple[str, list[str], dict[str, str]]]:
    """(name, argv, extra environment) for each long-running process of the environment."""
    cdir = str(cfg.configdir)
    env = {ENV_CONFIG: cdir}
    out: list[tuple[str, list[str], dict[str, str]]] = [
        ("worker", [venv_command("bots-jobqueueserver"), "-c", cdir], env),
        # beat keeps its state (last runs, lock) in the tracking database: no schedule file
        ("beat", [sys.executable, "-m", "celery", "-A", "tasks", "beat", "--loglevel", "INFO"], env),
    ]
    if cfg.dirmonitors:
        out.append(("monitor", [venv_command("bots-dirmonitor"), "-c", cdir], env))
    if flower:
        argv, extra, _settings = flower_command(cfg)
        out.append(("flower", argv, extra))
    return out


def check_queue(cfg: Config, timeout: float = 3.0) -> None:
    """ConfigError (one line) unless the queue is enabled and its broker answers."""
    if not cfg.jobqueue.enabled:
        raise ConfigError(f"{cfg.ini_path}: [jobqueue] enabled is False: the stack needs the job queue")
    problem = broker_problem(cfg, timeout)
    if problem:
        raise ConfigError(problem)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--no-flower", action="store_true", help="do not start Flower")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.configdir)
    register_secrets(cfg.secrets())
    check_queue(cfg)
    commands = service_commands(cfg, flower=not args.no_flower)
    sup = Supervisor()
    names = [name for name, _argv, _env in commands]
    sup.width = max(len(n) for n in [*names, "botsq"])
    if not cfg.dirmonitors:
        sup.say("no [dirmonitorN] section in bots.ini: the directory monitor is not started")
    code = 0
    try:
        with sup.running(grace=STOP_GRACE):
            for name, argv, env in commands:
                sup.start(name, argv, env=env, cwd=cfg.envdir)
            sup.say(f"started {', '.join(names)} for {cfg.configdir}; Ctrl-C stops all")
            gone = sup.wait()
            sup.say(f"{gone.name} exited with code {gone.proc.returncode}: stopping the others")
            code = 1
    except (KeyboardInterrupt, Stopped):
        pass
    sup.say("all stopped")
    return code
