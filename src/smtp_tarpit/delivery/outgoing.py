"""A message on its way to its destination while the client is still sending it.

The session hands over the text in parts, in order (``write``), then its last lines (``finish``, which
returns once the destination has the whole message durably, or raises ``DeliveryError``), or gives up
(``abort``: the message was refused or the client went away, and nothing may be delivered). A deliverer
supplies one coroutine that reads ``parts()`` to the end and delivers; it runs as one task per message.

Invariants:
- Parts reach the deliverer in the order written, each once; after ``abort`` the deliverer sees
  ``AbortedError`` instead of the end, and must leave nothing delivered.
- ``backlog`` is the octets written and not yet taken by the deliverer: the session stops reading from
  its client above a bound, so a slow destination bounds the memory a fast client can fill.
- Once the deliverer has failed, later parts are dropped at once (nothing is queued for no one).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

Run = Callable[["Outgoing"], Coroutine[Any, Any, None]]

_END, _ABORT = b"", None
_running: set[asyncio.Task[None]] = set()  # strong references: an aborted task finishes on its own


class AbortedError(Exception):
    """Raised inside the deliverer's coroutine when the message is given up."""


class Outgoing:
    __slots__ = ("_drained", "_queue", "_task", "backlog")

    def __init__(self, run: Run) -> None:
        self.backlog = 0
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._drained = asyncio.Event()
        self._drained.set()
        self._task = asyncio.get_running_loop().create_task(run(self))
        _running.add(self._task)
        self._task.add_done_callback(self._done)

    def write(self, text: bytes) -> None:
        if self._task.done() or not text:
            return
        self.backlog += len(text)
        self._drained.clear()
        self._queue.put_nowait(text)

    async def finish(self, text: bytes) -> None:
        """The last lines; returns when the message is delivered, raises what the delivery raised."""
        self.write(text)
        self._queue.put_nowait(_END)
        await self._task

    def abort(self) -> None:
        if not self._task.done():
            self._queue.put_nowait(_ABORT)

    async def drained(self) -> None:
        """Wait until the deliverer has taken everything written (or has stopped)."""
        await self._drained.wait()

    async def parts(self) -> AsyncIterator[bytes]:
        """For the deliverer: every part in order, up to the end; raises ``AbortedError`` if given up."""
        while True:
            text = await self._queue.get()
            if text is _ABORT:
                raise AbortedError
            if text == _END:
                return
            self.backlog -= len(text)
            if not self.backlog:
                self._drained.set()
            yield text

    def _done(self, task: asyncio.Task[None]) -> None:
        _running.discard(task)
        self.backlog = 0
        self._drained.set()
        if not task.cancelled() and isinstance(task.exception(), AbortedError):
            return  # given up on purpose: nobody awaits it
        # Otherwise ``finish`` awaits the task and sees its exception; if the session is gone and never
        # will, reading it here keeps asyncio from logging "exception was never retrieved".
        if not task.cancelled():
            task.exception()


async def buffered(deliver: Callable[[bytes], Awaitable[None]], out: Outgoing) -> None:
    """For a deliverer that needs the whole message at once: gather the parts, then deliver."""
    text = bytearray()
    async for part in out.parts():
        text += part
    await deliver(bytes(text))


def begin_buffered(deliver: Callable[[bytes], Awaitable[None]]) -> Outgoing:
    return Outgoing(lambda out: buffered(deliver, out))
