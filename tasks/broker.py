"""Talking to the broker: the lanes' queues, connecting within a time limit, their depth, purging them.

Lane ``default`` uses queue ``engine``, lane ``X`` queue ``engine.X`` (:func:`queue_name`, the
contract's "Lanes"); every one is declared alike (:func:`engine_queue`: a direct exchange of the
same name, ``x-max-priority`` on RabbitMQ).

A broker that does not answer, or answers and refuses (wrong user, password or vhost), is a
:class:`QueueError` with one line saying which - never a traceback, never a wait without end.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kombu import Exchange, Queue

from engine.config.lanes import DEFAULT_LANE
from engine.errors import UsageError
from engine.log import mask_url
from tasks.priority import RABBITMQ_MAX_PRIORITY, BrokerKind, broker_kind

QUEUE = "engine"                    # lane default's queue; the prefix of every other lane's
# wrong user or password, unknown vhost (py-amqp), failed AUTH (redis-py): waiting longer will not help
_REFUSALS = ("AccessRefused", "NotAllowed", "AuthenticationError", "AuthenticationWrongNumberOfArgsError")


class QueueError(UsageError):
    """The job cannot be queued (queue disabled, broker unreachable, job refused); one line."""


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def queue_name(lane: str = DEFAULT_LANE) -> str:
    """The queue of a lane: ``engine`` for lane default, ``engine.<lane>`` for the others."""
    return QUEUE if lane == DEFAULT_LANE else f"{QUEUE}.{lane}"


def engine_queue(lane: str = DEFAULT_LANE) -> Queue:
    """A lane's queue, declared with RabbitMQ priorities (``x-max-priority``). Every process declares it
    with the same arguments (RabbitMQ refuses a second declaration with others: PRECONDITION_FAILED)."""
    name = queue_name(lane)
    return Queue(name, Exchange(name, type="direct"), routing_key=name,
                 queue_arguments={"x-max-priority": RABBITMQ_MAX_PRIORITY})


def connect(app: Any, timeout: float) -> Any:
    """A (pooled) broker connection, established within ``timeout`` seconds, or QueueError.

    Release it when done; long-lived callers (beat, the directory monitor) reuse it that way.
    """
    url = mask_url(app.conf.broker_url)
    try:
        conn = app.pool.acquire(block=True, timeout=timeout)
    except Exception as exc:  # noqa: BLE001
        raise QueueError(f"broker {url}: no connection free: {_reason(exc)}") from None
    try:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
        return conn
    except Exception as exc:  # noqa: BLE001 - every transport has its own errors
        conn.release()
        if type(exc).__name__ in _REFUSALS:
            raise QueueError(f"broker {url} refused the connection: {_reason(exc)}") from None
        raise QueueError(f"broker {url} cannot be reached within {timeout:g} s: {_reason(exc)}") from None


def _on_channel(app: Any, connection: Any, action: Any) -> Any:
    """``action(channel)`` on a fresh channel of ``connection`` (or of a new connection)."""
    def run(conn: Any) -> Any:
        chan = conn.channel()
        try:
            return action(chan, conn)
        finally:
            try:
                chan.close()
            except Exception:  # noqa: BLE001 - closing must not hide the answer
                pass

    if connection is not None:
        return run(connection)
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=app.conf.broker_connection_timeout)
        return run(conn)


def node_in_use(app: Any, nodename: str, timeout: float) -> bool:
    """Does a running worker already have node name ``nodename`` (``botsq@host``, ``%h`` expanded)?

    RabbitMQ: that worker holds the node's exclusive control queue ``<nodename>.celery.pidbox``; a
    passive declare of it answers at once (RESOURCE_LOCKED while it is held, NOT_FOUND when not).
    A second worker of that name would otherwise retry its declare for ever (RestartFreqExceeded).
    Other brokers: a ping to that name within ``timeout`` seconds."""
    if broker_kind(app.conf.broker_url or "") != BrokerKind.RABBITMQ:
        # an own connection, closed after: the app's pooled one would be inherited by the worker
        # this process becomes, and its pool processes then never report UP after a restart (Redis)
        with app.connection_for_write() as conn:
            return bool(app.control.ping(destination=[nodename], timeout=timeout, limit=1, connection=conn))

    def held(chan: Any, conn: Any) -> bool:
        try:
            chan.queue_declare(f"{nodename}.celery.pidbox", passive=True)
        except conn.channel_errors as exc:
            return getattr(exc, "reply_code", getattr(exc, "code", None)) == 405    # RESOURCE_LOCKED
        return False            # declared and not exclusive: left over from a worker gone, nobody holds it

    return bool(_on_channel(app, None, held))


def queue_depth(app: Any, connection: Any = None, queue: str = QUEUE) -> int:
    """Messages waiting (not yet delivered) in ``queue``; 0 when it does not exist yet."""
    def depth(chan: Any, conn: Any) -> int:
        try:
            _name, count, _consumers = chan.queue_declare(queue, passive=True)
            return int(count)
        except conn.channel_errors:
            return 0

    return int(_on_channel(app, connection, depth))


def purge(app: Any, timeout: float, queues: Iterable[str] = (QUEUE,)) -> int:
    """Remove every waiting message of ``queues``; their number. QueueError when the broker cannot be
    reached."""
    def purge_queue(queue: str) -> Any:
        def purge_it(chan: Any, conn: Any) -> int:
            try:
                return int(chan.queue_purge(queue) or 0)
            except conn.channel_errors:
                return 0            # no queue yet: nothing to purge
        return purge_it

    conn = connect(app, timeout)
    try:
        return sum(int(_on_channel(app, conn, purge_queue(q))) for q in queues)
    finally:
        conn.release()
