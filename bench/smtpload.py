"""A small SMTP load generator for the benchmarks: an asyncio.Protocol client, no SMTP library.

Not a benchmark itself. ``Load`` says what to send (count, message, recipients, source addresses) and keeps
the tallies; ``drive(load, clients, timeout)`` runs ``clients`` workers that send the messages one
connection per message (or, with ``reuse``, one connection per worker), in lock step (no pipelining):
220, ``EHLO``, ``MAIL FROM:<sender@bench.test> SIZE=n``, ``RCPT TO``, ``DATA``, the message and the final
dot, ``QUIT``. Only a 250 after the final dot counts.

Why no library: against a discarding sink, aiosmtplib's ``send()`` took about twice the client CPU per
message (1.2 ms against 0.6 ms), and the client shares the 2 cores with the server it measures.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


class DialogueError(Exception):
    """The server answered something the dialogue did not expect."""


def make_message(size: int) -> bytes:
    """A message of exactly ``size`` octets on the wire before the final dot: headers, then 76-octet lines."""
    head = (
        b"From: Bench Sender <sender@bench.test>\r\n"
        b"To: <rcpt@example.test>\r\n"
        b"Subject: maildir_rate benchmark message\r\n"
        b"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
        b"Message-ID: <maildir-rate@bench.test>\r\n"
        b"\r\n"
    )
    line = b"x" * 74 + b"\r\n"
    body = b""
    while len(head) + len(body) + len(line) <= size:
        body += line
    rest = size - len(head) - len(body)
    if rest >= 3:
        body += b"y" * (rest - 2) + b"\r\n"
    message = head + body
    return message + b"\r\n" * ((size - len(message)) // 2)


class Client(asyncio.Protocol):
    """One SMTP client connection: send a command, await the complete reply's code."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.waiter: asyncio.Future[int] | None = None
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._deliver()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionResetError("server closed the connection")
        self.transport = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(self.lost)

    def _deliver(self) -> None:
        if self.waiter is None or self.waiter.done():
            return
        start = 0
        while True:
            end = self.buffer.find(b"\r\n", start)
            if end < 0:
                return
            line = self.buffer[start:end]
            start = end + 2
            if len(line) < 3:
                self.waiter.set_exception(DialogueError(f"bad reply line {line!r}"))
                return
            if len(line) == 3 or line[3:4] == b" ":
                self.buffer = self.buffer[start:]
                self.waiter.set_result(int(line[:3]))
                return

    async def reply(self, timeout: float) -> int:
        """The code of the next complete reply, waiting at most ``timeout`` seconds."""
        if self.lost is not None and not self.buffer:
            raise self.lost
        self.waiter = asyncio.get_running_loop().create_future()
        self._deliver()
        if self.lost is not None and not self.waiter.done():
            self.waiter.set_exception(self.lost)
        return await asyncio.wait_for(self.waiter, timeout)

    async def command(self, data: bytes, expected: int, timeout: float) -> int:
        """Send ``data`` (nothing if empty: the greeting) and check the reply's code."""
        if self.transport is None:
            raise ConnectionResetError("not connected")
        if data:
            self.transport.write(data)
        code = await self.reply(timeout)
        if code != expected:
            raise DialogueError(f"{data[:12]!r}: expected {expected}, got {code}")
        return code


@dataclass
class Load:
    """One timed load: what to send, where, from where, and the tallies."""

    host: str
    port: int
    count: int
    message: bytes
    recipients: list[bytes]
    step_timeout: float
    reuse: bool
    sources: list[str] = field(default_factory=list)  # client addresses to bind, round robin ([]: any)
    taken: int = 0
    ok: int = 0  # a 250 after the final dot
    refused: int = 0  # any other reply after the final dot
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # MAIL sent to 250 after the dot, seconds
    # connect() to the 250 after the dot, seconds: the whole message, connection included (not with reuse)
    session_latencies: list[float] = field(default_factory=list)

    def take(self) -> int | None:
        """The index of the next message to send, or None when all were taken."""
        if self.taken >= self.count:
            return None
        self.taken += 1
        return self.taken - 1


async def connect(load: Load, index: int = 0) -> Client:
    """Open one connection (from the index's source address, if any) and get through 220 and EHLO."""
    loop = asyncio.get_running_loop()
    local = (load.sources[index % len(load.sources)], 0) if load.sources else None
    _, client = await asyncio.wait_for(
        loop.create_connection(Client, load.host, load.port, local_addr=local), load.step_timeout
    )
    await client.command(b"", 220, load.step_timeout)
    await client.command(b"EHLO client.bench.test\r\n", 250, load.step_timeout)
    return client


async def send_one(client: Client, load: Load, index: int) -> bool:
    """One transaction on an open connection; True if it got its 250 after the final dot."""
    started = time.perf_counter()
    rcpt = load.recipients[index % len(load.recipients)]
    await client.command(
        b"MAIL FROM:<sender@bench.test> SIZE=%d\r\n" % len(load.message), 250, load.step_timeout
    )
    await client.command(b"RCPT TO:<%s>\r\n" % rcpt, 250, load.step_timeout)
    await client.command(b"DATA\r\n", 354, load.step_timeout)
    assert client.transport is not None
    client.transport.write(load.message + b".\r\n")
    code = await client.reply(load.step_timeout)
    if code == 250:
        load.ok += 1
        load.latencies.append(time.perf_counter() - started)
        return True
    load.refused += 1
    return False


async def quit_and_close(client: Client, timeout: float) -> None:
    """QUIT politely (errors ignored), then close."""
    try:
        if client.transport is not None:
            await client.command(b"QUIT\r\n", 221, timeout)
    except (OSError, DialogueError, TimeoutError):
        pass
    finally:
        if client.transport is not None:
            client.transport.close()


async def worker(load: Load) -> None:
    """Take messages until none are left; one connection each (or one for all, with ``reuse``)."""
    client: Client | None = None
    try:
        while (index := load.take()) is not None:
            started = time.perf_counter()
            try:
                if client is None:
                    client = await connect(load, index)
                accepted = await send_one(client, load, index)
            except (OSError, DialogueError, TimeoutError) as exc:
                load.errors.append(f"message {index}: {exc.__class__.__name__}: {exc}")
                if client is not None and client.transport is not None:
                    client.transport.abort()
                client = None
                continue
            if not load.reuse:
                if accepted:
                    load.session_latencies.append(time.perf_counter() - started)
                await quit_and_close(client, load.step_timeout)
                client = None
    finally:
        if client is not None:
            await quit_and_close(client, load.step_timeout)


async def drive(load: Load, clients: int, timeout: float) -> tuple[float, bool]:
    """Run ``clients`` workers until ``load.count`` messages were tried or ``timeout`` passed.
    Returns (elapsed seconds, timed out?)."""
    started = time.perf_counter()
    tasks = [asyncio.ensure_future(worker(load)) for _ in range(clients)]
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=10)
    elapsed = time.perf_counter() - started
    for task in done:
        if task.exception() is not None:
            load.errors.append(f"worker failed: {task.exception()!r}")
    return elapsed, bool(pending)
