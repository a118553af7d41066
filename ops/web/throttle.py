"""Failed logins slow down: after a few failures a user name or a client address must wait.

Each failure counts against two keys, the user name tried and the client address; once a key has
``free`` failures (each within ``window`` seconds of the one before), the next attempt waits
``base * 2**(n - free)`` seconds (at most ``ceiling``) after its ``n``-th failure before it is even
checked. A success clears both keys (each account keeps its own count against guessing). The
clock is passed in, so tests step time instead of sleeping. State is in memory: one console
process (its waitress threads share it), bounded in size.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass
class _Failures:
    count: int
    last: float          # clock value of the latest failure


class LoginThrottle:
    """``wait(keys)`` says how many seconds to refuse; ``failed(keys)``/``succeeded(keys)`` count."""

    MAX_KEYS = 10_000    # beyond this the oldest entries are dropped (an attacker cycling keys gains nothing)

    def __init__(self, clock: Callable[[], float], free: int = 5, base: float = 2.0, ceiling: float = 300.0,
                 window: float = 900.0) -> None:
        self.clock, self.free, self.base, self.ceiling, self.window = clock, free, base, ceiling, window
        self._failures: dict[str, _Failures] = {}
        self._lock = threading.Lock()

    def _delay(self, f: _Failures) -> float:
        if f.count < self.free:
            return 0.0
        return min(self.base * 2 ** (f.count - self.free), self.ceiling)

    def wait(self, keys: Iterable[str]) -> float:
        """Seconds before any of ``keys`` may try again (0: go ahead)."""
        now = self.clock()
        longest = 0.0
        with self._lock:
            for key in keys:
                f = self._failures.get(key)
                if f is None:
                    continue
                if now - f.last > self.window:
                    del self._failures[key]
                    continue
                longest = max(longest, f.last + self._delay(f) - now)
        return max(longest, 0.0)

    def failed(self, keys: Iterable[str]) -> None:
        now = self.clock()
        with self._lock:
            for key in keys:
                f = self._failures.get(key)
                if f is None or now - f.last > self.window:
                    f = self._failures[key] = _Failures(0, now)
                f.count += 1
                f.last = now
            if len(self._failures) > self.MAX_KEYS:
                for key in sorted(self._failures, key=lambda k: self._failures[k].last)[:len(self._failures) // 10]:
                    del self._failures[key]

    def succeeded(self, keys: Iterable[str]) -> None:
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)
