"""Talking to the broker: queue ``engine``, connecting within a time limit, its depth, purging it.

A broker that does not answer, or answers and refuses (wrong user, password or vhost), is a
:class:`QueueError` with one line saying which - never a traceback, never a wait without end.
"""
from __future__ import annotations

from typing import Any

from kombu import Exchange, Queue

from engine.errors import UsageError
from engine.log import mask_url
from tasks.priority import RABBITMQ_MAX_PRIORITY

QUEUE = "engine"
# wrong user or password, unknown vhost (py-amqp), failed AUTH (redis-py): waiting longer will not help
_REFUSALS = ("AccessRefused", "NotAllowed", "AuthenticationError", "AuthenticationWrongNumberOfArgsError")


class QueueError(UsageError):
    """The job cannot be queued (queue disabled, broker unreachable, job refused); one line."""


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def engine_queue() -> Queue:
    """Queue ``engine``, declared with RabbitMQ priorities (``x-max-priority``)."""
    return Queue(QUEUE, Exchange(QUEUE, type="direct"), routing_key=QUEUE,
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


def queue_depth(app: Any, connection: Any = None) -> int:
    """Messages waiting (not yet delivered) in queue ``engine``; 0 when it does not exist yet."""
    def depth(chan: Any, conn: Any) -> int:
        try:
            _name, count, _consumers = chan.queue_declare(QUEUE, passive=True)
            return int(count)
        except conn.channel_errors:
            return 0

    return int(_on_channel(app, connection, depth))


def purge(app: Any, timeout: float) -> int:
    """Remove every waiting message of queue ``engine``; their number. QueueError when the broker
    cannot be reached."""
    def purge_queue(chan: Any, conn: Any) -> int:
        try:
            return int(chan.queue_purge(QUEUE) or 0)
        except conn.channel_errors:
            return 0            # no queue yet: nothing to purge

    conn = connect(app, timeout)
    try:
        return int(_on_channel(app, conn, purge_queue))
    finally:
        conn.release()
