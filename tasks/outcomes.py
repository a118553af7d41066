"""How a job ends other than by running: outcomes as exceptions, raised by the step that decides
(after dramatiq's ``SkipMessage``) and turned into Celery's terms in one place,
:func:`tasks.runner.run_job`.

The step that raises has already logged why; the outcome carries only what Celery needs.
"""
from __future__ import annotations


class JobOutcome(Exception):
    """Base: the job ends here; ``reason`` is one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SkipMessage(JobOutcome):
    """Drop this message unrun and acknowledge it: superseded, a duplicate, or it already ran."""


class GiveUp(JobOutcome):
    """Do not run it again: its worker was lost too many times. Acknowledged, reported."""


class RejectMessage(JobOutcome):
    """The message names no job botsq can run (bad kwargs, unknown route or command): rejected,
    not requeued; the worker carries on."""


class RetryLater(JobOutcome):
    """Run the same message again after ``countdown`` seconds (the database or the config cannot
    be read right now), at most ``max_retries`` times; then ``cause`` is the job's failure."""

    def __init__(self, reason: str, cause: BaseException, countdown: float, max_retries: int) -> None:
        super().__init__(reason)
        self.cause, self.countdown, self.max_retries = cause, countdown, max_retries
