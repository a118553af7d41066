"""Bots priorities (1 highest .. 9 lowest, default 5) and the broker's own scale: the one mapping.

* RabbitMQ: queue ``engine`` is declared with ``x-max-priority = 10``; a higher number is served
  first and a message without priority counts as 0 (the lowest). Bots ``p`` -> ``10 - p``.
* Redis (kombu): ``priority_steps = 0..9``, a lower number is served first and a message
  without priority gets 0 (the highest). Bots ``p`` -> ``p``.
* ``memory://`` (unit tests only) follows the Redis scale.

Everything that sends a job passes a *Bots* priority (or none). The publish handler
(:func:`tasks.signals.before_publish`) maps it to the broker's scale exactly once per message and
carries the Bots priority in the message header PRIORITY_HEADER, where the worker reads it; only a
message without that header (sent by a plain kombu producer, or queued before the header existed)
is mapped back with :func:`from_broker`.
"""
from __future__ import annotations

from enum import StrEnum

from engine.config.sections import BROKER_SCHEMES

HIGHEST, LOWEST, DEFAULT = 1, 9, 5
RABBITMQ_MAX_PRIORITY = 10          # x-max-priority of queue "engine"
REDIS_PRIORITY_STEPS = list(range(10))
PRIORITY_HEADER = "bots_priority"   # message header: the job's Bots priority 1..9


class BrokerKind(StrEnum):
    RABBITMQ = "rabbitmq"
    REDIS = "redis"
    MEMORY = "memory"


# the supported schemes are the config's (a bad broker URL is refused when the config is read)
_SCHEMES = {scheme: BrokerKind(kind) for scheme, kind in BROKER_SCHEMES.items()}


def broker_kind(url: str) -> BrokerKind:
    """The kind of a broker URL; ValueError for anything else."""
    scheme = (url or "").split("://", 1)[0].lower()
    try:
        return _SCHEMES[scheme]
    except KeyError:
        raise ValueError(f"unsupported broker {scheme or url!r}: use amqp:// (RabbitMQ) or redis://") from None


def check(priority: object) -> int:
    """A Bots priority as an int, or ValueError naming the allowed range."""
    try:
        p = int(priority)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ValueError(f"priority must be a whole number from {HIGHEST} (highest) to {LOWEST}, "
                         f"got {priority!r}") from None
    if isinstance(priority, bool) or not HIGHEST <= p <= LOWEST or str(p) != str(priority).strip():
        raise ValueError(f"priority must be a whole number from {HIGHEST} (highest) to {LOWEST}, got {priority!r}")
    return p


def to_broker(priority: int, kind: BrokerKind) -> int:
    """The broker's priority for a Bots priority 1..9."""
    p = check(priority)
    return RABBITMQ_MAX_PRIORITY - p if kind == BrokerKind.RABBITMQ else p


def from_broker(value: int | None, kind: BrokerKind) -> int:
    """The Bots priority a broker priority stands for (None: a message sent without one) - only for
    a message that does not carry PRIORITY_HEADER."""
    if value is None:
        return LOWEST if kind == BrokerKind.RABBITMQ else HIGHEST
    p = RABBITMQ_MAX_PRIORITY - int(value) if kind == BrokerKind.RABBITMQ else int(value)
    return min(max(p, HIGHEST), LOWEST)


def clamp(value: object) -> int:
    """A priority from an outside sender (Flower, beat): Bots scale, out-of-range values clamped."""
    try:
        p = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return DEFAULT
    return min(max(p, HIGHEST), LOWEST)
