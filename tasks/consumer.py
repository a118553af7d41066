"""The worker's consumer: Celery's, plus a line in ``jobqueue.log`` for every message it refuses
(not JSON, a pickled body, an unknown task, no task header). Celery already drops such a
message and keeps serving; this makes the reason visible where the queue's operators look, and
removes the message's registry entry (:func:`tasks.registration.forget_dropped`).

Also the tasks' request class (:class:`Request`): no ack on a channel the broker has closed.
"""
from __future__ import annotations

import warnings
from typing import Any

from celery.exceptions import CPendingDeprecationWarning
from celery.worker.consumer import Consumer as _CeleryConsumer
from celery.worker.request import Request as _CeleryRequest

from engine.errors import one_line
from tasks.context import worker_config, worker_log
from tasks.registration import forget_dropped


def _describe(message: Any) -> str:
    headers = getattr(message, "headers", None) or {}
    return (f"message {headers.get('id', '?')} (task {headers.get('task', '?')}, "
            f"content type {getattr(message, 'content_type', '?')})")


class Consumer(_CeleryConsumer):
    def on_connection_error_after_connected(self, exc: Exception) -> None:
        # Celery warns on every reconnect that worker_cancel_long_running_tasks_on_connection_loss will
        # default to True in 6.0 (ten lines). botsq sets it to False on purpose: the running job carries
        # on and its redelivered copy is skipped (see tasks.celeryapp).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=CPendingDeprecationWarning)
            super().on_connection_error_after_connected(exc)

    def _log(self, reason: str, message: Any, exc: Any) -> None:
        try:
            detail = one_line(exc) if exc is not None and str(exc).strip() else ""
            worker_log(self.app).error("rejected %s: %s%s", _describe(message), reason,
                                       f": {detail}" if detail else "")
        except Exception:  # noqa: BLE001 - logging must not stop the consumer
            pass
        task_id = (getattr(message, "headers", None) or {}).get("id")
        if task_id:         # a publisher registered it (celery call --serializer pickle): the entry goes too
            try:
                forget_dropped(worker_config(self.app), str(task_id))
            except Exception:  # noqa: BLE001 - the entry then ages out
                pass

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        self._log("cannot decode the body", message, exc)
        super().on_decode_error(message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._log("invalid message", message, exc)
        super().on_invalid_task(body, message, exc)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._log("unknown task", message, exc)
        super().on_unknown_task(body, message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._log("not a task message", message, None)
        super().on_unknown_message(body, message)


def _channel_gone(message: Any) -> bool:
    """The channel a message came on is closed (py-amqp drops its connection then): an ack on it
    can only fail. RabbitMQ closes it when a delivery outlives ``consumer_timeout``, and requeues
    the message itself."""
    chan = getattr(message, "channel", None)
    return chan is not None and (getattr(chan, "connection", True) is None or getattr(chan, "is_open", True) is False)


class Request(_CeleryRequest):
    """Celery's request, but a job whose channel the broker has closed meanwhile is not acked
    (kombu would log ``CRITICAL Couldn't ack ... connection already closed`` with a traceback);
    ``jobqueue.log`` says instead what happened and why it is harmless."""

    def acknowledge(self) -> None:
        if not self.acknowledged and _channel_gone(self.message):
            self.acknowledged = True
            try:
                worker_log(self.app).warning(
                    "job %s ended, but its message cannot be acknowledged: the broker closed the channel it came "
                    "on (RabbitMQ's consumer_timeout is shorter than this job, or the connection was lost); the "
                    "broker delivers it again and that copy is skipped, since this job already ran. Set "
                    "consumer_timeout above the longest run (ops/rabbitmq.conf)", self.id)
            except Exception:  # noqa: BLE001 - logging must not stop the consumer
                pass
            return
        super().acknowledge()
