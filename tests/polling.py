"""Waiting for something another process does, bounded: the one polling loop the tests share."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """True as soon as ``condition()`` is; False once ``timeout`` seconds have passed without it."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
