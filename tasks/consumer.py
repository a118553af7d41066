"""The worker's consumer: Celery's, plus a line in ``jobqueue.log`` for every message it refuses
(not JSON, a pickled body, an unknown task, no task header). Celery already drops such a
message and keeps serving; this makes the reason visible where the queue's operators look.
"""
from __future__ import annotations

from typing import Any

from celery.worker.consumer import Consumer as _CeleryConsumer


def _describe(message: Any) -> str:
    headers = getattr(message, "headers", None) or {}
    return (f"message {headers.get('id', '?')} (task {headers.get('task', '?')}, "
            f"content type {getattr(message, 'content_type', '?')})")


class Consumer(_CeleryConsumer):
    def _log(self, reason: str, message: Any, exc: Any) -> None:
        try:
            from tasks.signals import _worker_log

            detail = str(exc).strip().splitlines()[0] if exc is not None and str(exc).strip() else ""
            _worker_log(self.app).error("rejected %s: %s%s", _describe(message), reason,
                                        f": {detail}" if detail else "")
        except Exception:  # noqa: BLE001 - logging must not stop the consumer
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
