"""Shared helpers for the DNS checker tests: a fake clock and a way to run one scenario."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class FakeClock:
    """A monotonic clock that moves only when a test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def run(scenario: Coroutine[Any, Any, T]) -> T:
    """Run one async scenario in a fresh event loop (no pytest-asyncio here)."""
    return asyncio.run(scenario)


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)
