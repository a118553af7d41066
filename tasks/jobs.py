"""A job and its identity: the one place that decides what counts as "the same job", and how a
job is split by lane.

Identity (the dedup key): the task, then sorted commands and sorted routes (``bots.engine``) or
the command name and its arguments (``bots.command``), then the config dir, then the job's lane.

Lanes (contract, "Lanes"): a job queued by botsq is one lane's work, its lane in kwarg ``lane``
(:func:`split_job`: one job per lane, by :func:`engine.run.selection.lane_plan`). A message that
names no lane (``celery call``, Flower) is placed in the lane its routes are in (:func:`place`);
one over several lanes keeps no lane and goes to lane default, whose worker splits it.

:func:`job_from_argv` turns a Bots-style COMMAND line (what ``bots-job2queue`` takes, and what
beat schedules and the directory monitor are written in) into a :class:`Job`;
:meth:`Job.from_message` does the same for a message's kwargs (``celery call``, Flower, the
worker). Both refuse a bad job with :class:`JobError` (one line).
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from engine.cli.engine import parse_engine_args
from engine.config import Config, load_config, resolve_configdir
from engine.config.lanes import DEFAULT_LANE, LANE_CHARACTERS, is_lane_name
from engine.errors import ConfigError, UsageError
from engine.log import redact, redact_data
from engine.run import lane_plan, normalise_commands, select_routes

ENGINE_TASK = "bots.engine"
COMMAND_TASK = "bots.command"
TASKS = (ENGINE_TASK, COMMAND_TASK)
ENGINE_SCRIPTS = ("bots-engine", "bots-engine.py")
_KWARGS = {ENGINE_TASK: ("commands", "routes", "configdir", "lane"),
           COMMAND_TASK: ("name", "args", "configdir", "lane")}


class JobError(UsageError):
    """A job that cannot be queued or run; str() is one line."""


@dataclass(frozen=True)
class Job:
    task: str
    configdir: str                      # absolute path of the job's config dir
    commands: tuple[str, ...] = ()      # bots.engine: sorted, e.g. ("new",)
    routes: tuple[str, ...] = ()        # bots.engine: sorted, unique; () = the default run
    name: str = ""                      # bots.command: the [jobqueue.commands] name
    args: tuple[str, ...] = ()          # bots.command: extra arguments, in order
    lane: str | None = None             # the lane it is for (kwarg ``lane``); None: not said (see place)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def engine(cls, configdir: str | Path, commands: Any = (), routes: Any = (), lane: Any = None) -> Job:
        cmds = _str_list(commands, "commands")
        rts = _str_list(routes, "routes")
        try:
            norm = normalise_commands(cmds)
        except UsageError as exc:
            raise JobError(str(exc)) from None
        return cls(ENGINE_TASK, str(resolve_configdir(configdir)), tuple(sorted(norm)), tuple(sorted(set(rts))),
                   lane=_lane(lane, ENGINE_TASK))

    @classmethod
    def command(cls, configdir: str | Path, name: Any, args: Any = (), lane: Any = None) -> Job:
        if not isinstance(name, str) or not name:
            raise JobError(f"bots.command needs a command name (a string), got {name!r}")
        return cls(COMMAND_TASK, str(resolve_configdir(configdir)), name=name, args=tuple(_str_list(args, "args")),
                   lane=_lane(lane, COMMAND_TASK))

    @classmethod
    def from_message(cls, task: str, args: Any, kwargs: Any, default_configdir: str | Path) -> Job:
        """The job a message stands for; JobError names what is wrong with it."""
        if task not in TASKS:
            raise JobError(f"unknown task {task!r} (expected {' or '.join(TASKS)})")
        if args:
            raise JobError(f"{task} takes keyword arguments only ({', '.join(_KWARGS[task])}), got positional {args!r}")
        if not isinstance(kwargs, dict):
            raise JobError(f"{task}: kwargs must be an object, got {type(kwargs).__name__}")
        unknown = sorted(set(kwargs) - set(_KWARGS[task]))
        if unknown:
            raise JobError(f"{task}: unknown argument(s) {', '.join(map(repr, unknown))} "
                           f"(expected {', '.join(_KWARGS[task])})")
        configdir = kwargs.get("configdir") or default_configdir
        if not isinstance(configdir, (str, Path)):
            raise JobError(f"{task}: configdir must be a string, got {configdir!r}")
        if task == ENGINE_TASK:
            return cls.engine(configdir, kwargs.get("commands") or (), kwargs.get("routes") or (), kwargs.get("lane"))
        return cls.command(configdir, kwargs.get("name"), kwargs.get("args") or (), kwargs.get("lane"))

    # ------------------------------------------------------------------ identity and message
    @property
    def identity(self) -> list[Any]:
        """What makes two jobs the same (contract: task, sorted commands and routes or name and args,
        config dir; and the lane). A job without a lane - one over several lanes, before it is split -
        is not the same as any one lane's part of it."""
        lane = [self.lane] if self.lane is not None else []
        if self.task == ENGINE_TASK:
            return [self.task, sorted(self.commands), sorted(self.routes), self.configdir, *lane]
        return [self.task, self.name, list(self.args), self.configdir, *lane]

    @property
    def key(self) -> str:
        """The dedup key: a hash of the identity (fixed length for the registry's unique index)."""
        raw = json.dumps(self.identity, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:40]

    @property
    def kwargs(self) -> dict[str, Any]:
        """The message kwargs (readable in Flower); ``lane`` when the job has one."""
        if self.task == ENGINE_TASK:
            out: dict[str, Any] = {"commands": list(self.commands), "routes": list(self.routes),
                                   "configdir": self.configdir}
        else:
            out = {"name": self.name, "args": list(self.args), "configdir": self.configdir}
        if self.lane is not None:
            out["lane"] = self.lane
        return out

    def describe(self) -> str:
        """One readable line: ``bots-engine --new orders`` / ``archive_sweep --days 7``, secrets
        masked (``***``): it is what logs, records and botsq show of a job."""
        if self.task == ENGINE_TASK:
            words = ["bots-engine", *(f"--{c}" for c in self.commands), *self.routes]
        else:
            words = [self.name, *self.args]
        return redact(shlex.join(words))

    @property
    def shown_kwargs(self) -> dict[str, Any]:
        """:attr:`kwargs` as records and botsq show them: secrets masked (the message keeps them)."""
        return redact_data(self.kwargs)

    def __str__(self) -> str:
        lane = f" lane {self.lane}" if self.lane not in (None, DEFAULT_LANE) else ""
        return f"{self.describe()} [config {self.configdir}{lane}]"


def _lane(value: Any, task: str) -> str | None:
    if value is None:
        return None
    if not is_lane_name(value):
        raise JobError(f"{task}: lane must be a lane name ({LANE_CHARACTERS}), got {value!r}")
    return str(value)


def _str_list(value: Any, what: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise JobError(f"{what} must be a list of strings, got {value!r}")
    return list(value)


# --------------------------------------------------------------------------- lanes

def split_job(cfg: Config, job: Job) -> list[Job]:
    """The job as one job per lane, each naming its lane (``cfg``: the job's config):

    * ``bots.engine``: :func:`engine.run.selection.lane_plan` - routes grouped by lane, a default run
      one per lane with routes in it (a job naming its lane and no routes: that lane's default run),
      route-less commands in lane default;
    * ``bots.command``: its lane from ``[jobqueue.commands.lanes]`` (default ``default``).

    The lanes are the config's *now*: a job that waited while its route moved to another lane is
    split to the new lane. JobError for an unknown route or command."""
    if job.task == COMMAND_TASK:
        return [replace(job, lane=cfg.command_lane(job.name))]
    try:
        parts = lane_plan(cfg, job.commands, job.routes, job.lane)
    except UsageError as exc:
        raise JobError(str(exc)) from None
    return [Job.engine(job.configdir, part.commands, part.routes, part.lane) for part in parts]


def place(cfg: Config, job: Job) -> Job:
    """A message's job in its lane: as it is when it names one; else, when it is one lane's work,
    that lane's job; else (its work is in several lanes) as it is, without a lane - it goes to lane
    default, whose worker splits it. Used where a message was sent without a lane (``celery call``,
    Flower), by the router, the publish handler and the worker alike."""
    if job.lane is not None:
        return job
    try:
        parts = split_job(cfg, job)
    except JobError:
        return job                      # the worker rejects it and says why
    if len(parts) == 1 and replace(parts[0], lane=None) == job:
        return parts[0]
    return job


def message_lane(cfg: Config, job: Job) -> str:
    """The lane whose queue a message goes to (and whose part of it the worker runs itself): the lane
    it is placed in (:func:`place`) when that is a lane of the config, else lane default - a job over
    several lanes, or one naming a lane the config no longer has, is split by lane default's worker."""
    lane = place(cfg, job).lane
    return lane if lane is not None and lane in cfg.lanes else DEFAULT_LANE


# --------------------------------------------------------------------------- config of a job

def serves_configdir(worker: Config, configdir: str | Path) -> bool:
    """Does the worker of config ``worker`` run engine jobs of ``configdir``: its own, or one its
    ``[jobqueue] configdirs`` lists (the rule of :func:`check_trusted`; ``botsq status`` asks it too)."""
    path = Path(os.path.normpath(configdir))
    return path == worker.configdir or path in worker.jobqueue.configdirs


def check_trusted(worker: Config, job: Job) -> None:
    """JobError (one line naming the config dir) unless the environment of ``worker`` (the config
    of the worker that runs the job, or of the command that queues it) runs jobs of ``job``'s config
    dir - the one rule of which config dirs a queue serves:

    * its own config dir: always;
    * another one: only an engine job (``bots.engine``, Bots' ``bots-engine -Cconfigprod``), and
      only when ``[jobqueue] configdirs`` of the worker's bots.ini lists it - whoever can publish to
      the broker must not choose the bots.ini, database and routes a run uses;
    * a ``bots.command`` job: only the worker's own; its command line comes from the worker's
      ``[jobqueue.commands]`` (the allow-list is the worker operator's), never another bots.ini's.
    """
    if job.configdir == str(worker.configdir):
        return
    if job.task == COMMAND_TASK:
        raise JobError(f"config dir {job.configdir} refused: a bots.command job runs only in the worker's own "
                       f"config dir {worker.configdir}, with its [jobqueue.commands]")
    if not serves_configdir(worker, job.configdir):
        raise JobError(f"config dir {job.configdir} refused: it is not {worker.configdir} and not listed in "
                       f"[jobqueue] configdirs of {worker.ini_path} (another environment on this broker? give "
                       f"each environment its own vhost or Redis database)")


def job_config(job: Job, cfg: Config | None = None) -> Config:
    """The config a job runs with (its own config dir); ``cfg`` is reused when it is that one."""
    if cfg is not None and str(cfg.configdir) == job.configdir:
        return cfg
    return load_config(job.configdir)


def validate(job: Job, cfg: Config | None = None) -> Config:
    """Refuse (JobError) a job that cannot run: unknown route, unknown command, bad config dir."""
    try:
        jcfg = job_config(job, cfg)
    except ConfigError as exc:
        raise JobError(str(exc)) from None
    if job.task == ENGINE_TASK:
        try:
            select_routes(jcfg, job.commands, job.routes)
        except UsageError as exc:
            raise JobError(str(exc)) from None
    elif job.name not in jcfg.jobqueue.commands:
        listed = ", ".join(sorted(jcfg.jobqueue.commands)) or "none"
        raise JobError(f"command {job.name!r} is not in [jobqueue.commands] of {jcfg.ini_path} (listed: {listed})")
    return jcfg


# --------------------------------------------------------------------------- COMMAND lines

def _is_engine_script(word: str) -> bool:
    return os.path.basename(word) in ENGINE_SCRIPTS


def job_from_argv(cfg: Config, argv: list[str] | tuple[str, ...], from_config: bool = False) -> Job:
    """The job for a Bots-style COMMAND line, validated against its config; JobError if refused.

    * ``bots-engine [...]``, ``bots-engine.py [...]``, or an interpreter followed by a path ending
      in one of those (``python3 /usr/local/bin/bots-engine.py --new -Cconfigprod``): an engine job;
      its own ``-c``/``-C``/``--configdir`` selects the job's config dir (default: ``cfg``'s). A
      relative one is resolved as a path typed in a shell is, against the current directory
      (``bots-job2queue``); with ``from_config`` (a line written in bots.ini, ``[schedule.*] job``,
      or sent by the web console) against the environment folder, as ``[jobqueue] configdirs``
      are - so beat under systemd and ``botsq schedule`` in any shell read it alike.
    * a name in ``[jobqueue.commands]`` (arguments follow), or exactly the command line of one
      entry: a ``bots.command`` job.
    * anything else is refused.
    """
    argv = [str(a) for a in argv]
    if not argv or not argv[0]:
        raise JobError("no command given (expected bots-engine [OPTIONS] [ROUTE ...] or a [jobqueue.commands] name)")
    if _is_engine_script(argv[0]):
        return _engine_job(cfg, argv[1:], from_config)
    if len(argv) >= 2 and _is_engine_script(argv[1]) and not argv[0].startswith("-"):
        return _engine_job(cfg, argv[2:], from_config)
    commands = cfg.jobqueue.commands
    if argv[0] in commands:
        job = Job.command(cfg.configdir, argv[0], argv[1:])
    else:
        name = next((n for n, line in commands.items() if tuple(line) == tuple(argv)), None)
        if name is None:
            listed = ", ".join(sorted(commands)) or "none"
            raise JobError(f"command not allowed: {shlex.join(argv)} (not bots-engine and not a name or command "
                           f"line in [jobqueue.commands] of {cfg.ini_path}; listed: {listed})")
        job = Job.command(cfg.configdir, name, ())
    validate(job, cfg)
    return job


def _engine_job(cfg: Config, args: list[str], from_config: bool) -> Job:
    if any(a in ("-h", "--help") for a in args):
        raise JobError("bots-engine --help is not a job")
    try:
        parsed = parse_engine_args(args)
    except UsageError as exc:
        raise JobError(f"bots-engine: {exc}") from None
    configdir = cfg.configdir
    if parsed.configdir:
        where = cfg.resolve(parsed.configdir) if from_config else resolve_configdir(parsed.configdir)
        configdir = Path(os.path.normpath(where))
        if not configdir.is_dir():      # said as it is, before the refusal's "another environment?" hint
            relative = from_config and not Path(parsed.configdir).expanduser().is_absolute()
            raise JobError(f"config dir {configdir} does not exist"
                           + (f" (a relative one is read from the environment folder {cfg.envdir})" if relative else ""))
    job = Job.engine(configdir, parsed.commands, parsed.routes)
    check_trusted(cfg, job)             # refused here, with its reason, rather than by the worker
    validate(job, cfg)
    return job
