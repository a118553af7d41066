"""The router of botsq's tasks (Celery's ``task_routes``): ``bots.engine`` and ``bots.command`` go to
their lane's queue however they are sent (``celery call``, Flower, beat, a plain ``send_task``).

The lane is :func:`tasks.jobs.message_lane`: the ``lane`` kwarg, else the lane of the job's routes
(all in one lane) or of its command, else lane default (queue ``engine``), whose worker splits a job
over several lanes. An explicit ``queue`` option still wins (Celery merges the route under it).
"""
from __future__ import annotations

import logging
from typing import Any

from kombu import Queue

from engine.config.lanes import DEFAULT_LANE
from tasks.broker import engine_queue
from tasks.context import config_for
from tasks.jobs import TASKS, Job, message_lane

_log = logging.getLogger("botsq.jobqueue")


class LaneRouter:
    """A ``task_routes`` entry for the config dir an app was made for."""

    def __init__(self, configdir: str) -> None:
        self.configdir = configdir

    def __repr__(self) -> str:                  # celery report / inspect conf show the setting
        return f"LaneRouter({self.configdir!r})"

    def __call__(self, name: str, args: Any, kwargs: Any, options: Any, task: Any = None,
                 **_: Any) -> dict[str, Queue] | None:
        if name not in TASKS:
            return None
        return {"queue": engine_queue(self.lane(name, args, kwargs))}

    def lane(self, name: str, args: Any, kwargs: Any) -> str:
        """The message's lane; lane default for a message that names no job botsq can place (its worker
        rejects it and says why) or when the config cannot be read."""
        try:
            job = Job.from_message(name, args, kwargs or {}, self.configdir)
            return message_lane(config_for(job.configdir), job)
        except Exception as exc:  # noqa: BLE001 - routing never fails a publish: lane default's worker decides
            _log.debug("routing %s to lane default: %s", name, exc)
            return DEFAULT_LANE
