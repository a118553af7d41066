"""Helpers for the engine tests: a real SMTP server (aiosmtpd) and an ini with [email] pointing at it."""
from __future__ import annotations

import email
import email.policy
import logging
import time
from collections.abc import Iterator

import pytest
from aiosmtpd.controller import Controller

from conftest import free_port

logging.getLogger("mail.log").setLevel(logging.WARNING)


class _Collect:
    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.envelopes: list = []

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        self.envelopes.append(envelope)
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 OK"


class Smtp:
    def __init__(self) -> None:
        self.handler = _Collect()
        self.port = free_port()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    @property
    def messages(self) -> list:
        return self.handler.messages

    def wait(self, n: int = 1, timeout: float = 5.0) -> list:
        end = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < end:
            time.sleep(0.02)
        return self.messages

    def ini(self, managers: str = "ops@example.com, edi@example.com") -> str:
        return (f"\n[email]\nhost = 127.0.0.1\nport = {self.port}\nsender = bots@example.com\n"
                f"managers = {managers}\nsubject_prefix = [botsq-test]\ntimeout = 5\n")


@pytest.fixture
def smtp() -> Iterator[Smtp]:
    server = Smtp()
    server.controller.start()
    try:
        yield server
    finally:
        server.controller.stop()
