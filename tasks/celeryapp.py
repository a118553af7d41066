"""The Celery app of botsq and all its settings: the one place, and the only module that wires
signal handlers (:mod:`tasks.signals`) and tasks (:mod:`tasks.runner`) into an app.

``app_for(cfg)`` builds (once per config dir and broker) an app whose settings come from
``[jobqueue]`` of that config; ``celery -A tasks ...`` gets the app for ``$BOTSQ_CONFIG``
(``./config`` by default) through :mod:`tasks`.

Why each setting (see README, "The job queue"):

* one queue per lane (``engine`` for lane default, ``engine.<lane>``), each declared with
  ``x-max-priority = 10`` (RabbitMQ; ``task_queue_max_priority`` too, so a worker started with
  ``-Q engine.X`` for a lane this app does not know declares it alike); Redis gets 10 priority
  steps, so Bots' nine priorities stay distinct on both. ``bots.engine`` and ``bots.command``
  are routed to their lane's queue even when sent by name (``celery call``, Flower, beat):
  :class:`tasks.routing.LaneRouter`.
* ``task_acks_late`` + ``worker_prefetch_multiplier = 1``: the worker holds only the message it
  runs, so a high-priority job that arrives meanwhile is the next one taken.
* ``task_reject_on_worker_lost``: a job whose pool process died (OOM, SIGKILL) goes back to the
  queue instead of being acknowledged as failed; the start records in the registry bound the
  attempts (``[jobqueue] max_retries``) and keep a redelivered job from running twice.
* ``broker_channel_error_retry``: a channel closed by RabbitMQ's consumer timeout is a
  reconnect, not a dead worker; the running job carries on (its redelivered copy is dropped
  when it finishes).
* JSON only: a pickled message is refused.
* No result backend: results and progress go to Flower as events (``-E``); outcomes are in
  ``jobqueue.log`` and the engine's run records.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.app.amqp import AMQP
from kombu.utils.objects import cached_property
from celery.signals import before_task_publish, task_failure, task_revoked, worker_init, worker_process_init, worker_ready

from engine.botsengine import LOCKED_WAIT_LONGEST
from engine.config import Config, load_config
from engine.errors import ExitCode, one_line
from engine.log import mask_url, redact
from tasks import priority as prio
from tasks import signals
from tasks.broker import QUEUE, engine_queue
from tasks.routing import LaneRouter
from tasks.runner import register_tasks

_apps: dict[tuple[str, str], Celery] = {}


def transport_options(cfg: Config) -> dict[str, Any]:
    """kombu's transport options for the config's broker, ``[jobqueue.transport_options]`` last."""
    kind = prio.broker_kind(cfg.jobqueue.broker)
    opts: dict[str, Any] = {}
    if kind == prio.BrokerKind.REDIS:
        opts.update(priority_steps=prio.REDIS_PRIORITY_STEPS, sep=":", queue_order_strategy="priority",
                    visibility_timeout=cfg.jobqueue.visibility_timeout)
    elif kind == prio.BrokerKind.RABBITMQ:
        opts["confirm_publish"] = True        # "added to queue" means the broker has it
    opts.update(cfg.jobqueue.transport_options)
    return opts


def settings(cfg: Config) -> dict[str, Any]:
    hard = cfg.jobqueue.hardtimelimit * 60 or None
    if hard and cfg.engine.is_bots:
        # botsq ends the Bots child itself at the limit, and records it (engine.botsengine); before that a
        # job that finds Bots locked tries again for up to maxruntime, plus one last wait
        # (tasks.executors.run_bots_job). Celery's limit is only the net under both: it must not end a
        # job that is waiting for Bots, nor come before botsq's own SIGTERM/SIGKILL of the child.
        hard += cfg.settings.maxruntime * 60 + LOCKED_WAIT_LONGEST + cfg.engine.grace + 30
    return {
        "broker_url": cfg.jobqueue.broker,
        "broker_transport_options": transport_options(cfg),
        "broker_connection_timeout": cfg.jobqueue.connect_timeout,
        "broker_connection_retry_on_startup": True,
        "broker_channel_error_retry": True,
        "result_backend": None,
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "task_queues": [engine_queue(lane) for lane in cfg.lanes],
        "task_queue_max_priority": prio.RABBITMQ_MAX_PRIORITY,
        "task_default_queue": QUEUE,
        "task_default_exchange": QUEUE,
        "task_default_routing_key": QUEUE,
        "task_routes": (LaneRouter(str(cfg.configdir)),),
        "task_create_missing_queues": True,
        "task_acks_late": True,
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": 1,                # a bare `celery -A tasks worker` too: more pool processes would
                                                # only hold messages out of priority order, waiting for the lock
        "task_reject_on_worker_lost": True,
        "task_retry_on_worker_lost": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_time_limit": hard,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_disable_rate_limits": True,
        "worker_redirect_stdouts": False,        # botsq loggers write to stderr in their own format
        "timezone": "UTC",
        "enable_utc": True,
        "worker_consumer": "tasks.consumer:Consumer",
        "beat_scheduler": "ops.scheduler:BotsScheduler",
        "botsq_configdir": str(cfg.configdir),
    }


class BotsqAMQP(AMQP):
    """Celery's message builder and sender, with two additions. Every publish passes here
    (bots-job2queue, beat, the monitor, ``celery call``, Flower).

    * The task's ``argsrepr``/``kwargsrepr`` (what events, and so Flower and ``celery events``, show
      of a task's arguments) redacted: a ``${VAR}`` value in a job's arguments never leaves the
      publisher in readable form but inside the body the worker needs.
    * How each publish ended goes to :func:`tasks.signals.publish_settled` (Celery signals only a
      publish that worked, ``after_task_publish``): a registration made for it is confirmed, or
      taken back when the message did not reach the broker. Under Celery's ``celery call`` a failed
      publish then ends the command in one line, exit 1, instead of kombu's traceback.
    """

    @cached_property
    def send_task_message(self) -> Callable[..., Any]:
        send = self._create_task_sender()
        broker_url = self.app.conf.broker_url or ""

        def send_task_message(producer: Any, name: str, message: Any, **kwargs: Any) -> Any:
            task_id = str(message.headers.get("id"))
            try:
                sent = send(producer, name, message, **kwargs)
            except BaseException as exc:
                signals.publish_settled(task_id, broker_url, exc)
                _celery_call_failed(name, broker_url, exc)
                raise
            signals.publish_settled(task_id, broker_url)
            return sent

        return send_task_message

    def as_task_v2(self, *args: Any, **kwargs: Any) -> Any:
        message = super().as_task_v2(*args, **kwargs)
        for key in ("argsrepr", "kwargsrepr"):
            if isinstance(message.headers.get(key), str):
                message.headers[key] = redact(message.headers[key])
        if message.sent_event:
            for key in ("args", "kwargs"):
                if isinstance(message.sent_event.get(key), str):
                    message.sent_event[key] = redact(message.sent_event[key])
        return message


def _celery_call_failed(name: str, broker_url: str, exc: BaseException) -> None:
    """Under Celery's own ``celery call`` command, a failed publish ends the command: one line on
    stderr, exit 1 (click's ``Exit``, which Celery's CLI turns into the exit code). Anywhere else
    (Flower, botsq's own commands) it returns and the caller handles the error.

    Celery's CLI (click) is looked up among the loaded modules rather than imported: only that CLI
    loads ``celery.bin.call``, and the other publishers are spared its import."""
    cli, click = sys.modules.get("celery.bin.call"), sys.modules.get("click")
    if cli is None or click is None or not isinstance(exc, Exception):
        return
    ctx = click.get_current_context(silent=True)
    if ctx is None or ctx.command is not getattr(cli, "call", None):
        return
    reason = redact(one_line(exc)) if str(exc).strip() else type(exc).__name__
    print(f"celery call: error: cannot publish {name} to broker {mask_url(broker_url)}: {reason}; nothing was "
          f"queued", file=sys.stderr, flush=True)
    raise click.exceptions.Exit(ExitCode.SYSTEM) from None


def _connect_signals() -> None:
    """The queue's signal handlers (:mod:`tasks.signals`); dispatch_uid keeps each connected once."""
    before_task_publish.connect(signals.before_publish, dispatch_uid="botsq-before-task-publish")
    worker_process_init.connect(signals.fresh_connections, dispatch_uid="botsq-worker-process-init")
    worker_init.connect(signals.check_engine, dispatch_uid="botsq-worker-init")
    worker_init.connect(signals.quiet_rejects, dispatch_uid="botsq-worker-init-rejects")
    worker_process_init.connect(signals.quiet_rejects, dispatch_uid="botsq-worker-process-init-rejects")
    worker_ready.connect(signals.on_worker_ready, dispatch_uid="botsq-worker-ready")
    task_revoked.connect(signals.on_revoked, dispatch_uid="botsq-task-revoked")
    task_failure.connect(signals.on_failure, dispatch_uid="botsq-task-failure")


def make_app(cfg: Config) -> Celery:
    """A new app for ``cfg``, its signals connected and both tasks registered (use :func:`app_for`)."""
    _connect_signals()
    app = Celery("botsq", set_as_current=False, amqp=BotsqAMQP)
    app.conf.update(settings(cfg))
    register_tasks(app)
    return app


def app_for(cfg: Config) -> Celery:
    """The app for a config (cached per config dir and broker); it becomes the current app."""
    key = (str(cfg.configdir), cfg.jobqueue.broker)
    app = _apps.get(key)
    if app is None:
        app = _apps[key] = make_app(cfg)
    app.set_current()
    return app


def app_from_env() -> Celery:
    """The app for ``$BOTSQ_CONFIG`` (default ``./config``): what ``celery -A tasks`` uses.

    It is also made the process-wide default: Flower publishes from executor threads, where
    ``current_app`` (thread-local) would otherwise be Celery's empty default app and the publish
    handler could neither map the priority nor register the job for dedup.
    """
    app = app_for(load_config(None))
    app.set_default()
    return app


def close_connections() -> None:
    """Close every pooled broker connection of this process's apps (after the broker restarted)."""
    for app in _apps.values():
        app.pool.force_close_all()
