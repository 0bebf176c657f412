"""Baseline servers for the benchmarks: the least an asyncio SMTP listener can do.

Two modes, both a bare ``asyncio.Protocol`` (no task per connection, no SMTP library):

- ``--mode hold``: write a 220 greeting and hold the connection, reading and discarding whatever the
  client sends. The floor for "memory per held connection" in pure Python asyncio.
- ``--mode sink``: answer every command of a plain SMTP dialogue correctly (EHLO/HELO, MAIL, RCPT, DATA,
  RSET, NOOP, QUIT; PIPELINING works) and discard the message after the final dot without touching the
  disk. The ceiling for "messages per second" that the same load generator can reach.

Like smtp-tarpit it logs ``listening on HOST port N`` on stderr (so ``--listen 127.0.0.1:0`` works), and on
SIGTERM/SIGINT it logs ``stopped: C connections, M messages`` and exits 0.

Run: ``.venv/bin/python bench/baseline_server.py --mode sink --listen 127.0.0.1:0``
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import sys

GREETING = b"220 %s ESMTP baseline\r\n"
EHLO_LINES = b"250-%s\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 10485760\r\n250 ENHANCEDSTATUSCODES\r\n"
MAX_LINE = 4096  # a command line longer than this without CRLF is an error: close
END_OF_DATA = b"\r\n.\r\n"


class Stats:
    connections = 0
    messages = 0


class Hold(asyncio.Protocol):
    """Greet, then hold: the connection stays open until the client closes it."""

    __slots__ = ("_greeting", "transport")

    def __init__(self, greeting: bytes) -> None:
        self.transport: asyncio.BaseTransport | None = None
        self._greeting = greeting

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        Stats.connections += 1
        self.transport = transport
        transport.write(self._greeting)

    def data_received(self, data: bytes) -> None:
        pass  # discard

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class Sink(asyncio.Protocol):
    """A minimal, correct SMTP receiver that throws every message away."""

    def __init__(self, hostname: bytes) -> None:
        self.hostname = hostname
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.in_data = False
        self.sender = False
        self.recipients = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        Stats.connections += 1
        self.transport = transport
        transport.write(GREETING % self.hostname)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        out: list[bytes] = []
        while self.transport is not None:
            if self.in_data:
                end = self.buffer.find(END_OF_DATA)
                if end < 0:
                    # Keep only what could be the start of the terminator.
                    self.buffer = self.buffer[-4:] if len(self.buffer) > 4 else self.buffer
                    break
                self.buffer = self.buffer[end + len(END_OF_DATA) :]
                self.in_data = False
                self.sender, self.recipients = False, 0
                Stats.messages += 1
                out.append(b"250 2.0.0 Ok: discarded\r\n")
                continue
            end = self.buffer.find(b"\r\n")
            if end < 0:
                if len(self.buffer) > MAX_LINE:
                    out.append(b"500 5.5.2 Line too long\r\n")
                    self._close(out)
                break
            line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
            reply = self._command(line)
            out.append(reply)
            if reply.startswith(b"221"):
                self._close(out)
                return
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def _close(self, out: list[bytes]) -> None:
        if self.transport is not None:
            self.transport.write(b"".join(out))
            self.transport.close()
            self.transport = None
        out.clear()

    def _command(self, line: bytes) -> bytes:
        verb = line[:4].upper()
        if verb == b"EHLO":
            self.sender, self.recipients = False, 0
            return EHLO_LINES % self.hostname
        if verb == b"HELO":
            self.sender, self.recipients = False, 0
            return b"250 %s\r\n" % self.hostname
        if verb == b"MAIL" and line[4:10].upper() == b" FROM:":
            if self.sender:
                return b"503 5.5.1 Error: nested MAIL command\r\n"
            self.sender = True
            return b"250 2.1.0 Ok\r\n"
        if verb == b"RCPT" and line[4:8].upper() == b" TO:":
            if not self.sender:
                return b"503 5.5.1 Error: need MAIL command\r\n"
            self.recipients += 1
            return b"250 2.1.5 Ok\r\n"
        if verb == b"DATA" and len(line) == 4:
            if not self.recipients:
                return b"503 5.5.1 Error: need RCPT command\r\n"
            self.in_data = True
            # The terminator's leading CRLF is the one that ended the DATA line: put it back.
            self.buffer = b"\r\n" + self.buffer
            return b"354 End data with <CR><LF>.<CR><LF>\r\n"
        if verb == b"RSET":
            self.sender, self.recipients = False, 0
            return b"250 2.0.0 Ok\r\n"
        if verb == b"NOOP":
            return b"250 2.0.0 Ok\r\n"
        if verb == b"QUIT":
            return b"221 2.0.0 Bye\r\n"
        return b"502 5.5.2 Error: command not recognized\r\n"


async def serve(host: str, port: int, mode: str, hostname: str) -> None:
    loop = asyncio.get_running_loop()
    name = hostname.encode("ascii")
    if mode == "hold":
        greeting = GREETING % name
        server = await loop.create_server(
            lambda: Hold(greeting), host, port, reuse_address=True, backlog=4096
        )
    else:
        server = await loop.create_server(lambda: Sink(name), host, port, reuse_address=True, backlog=4096)
    for sock in server.sockets:
        address = sock.getsockname()
        print(f"baseline ({mode}): listening on {address[0]} port {address[1]}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    server.close()
    print(
        f"baseline ({mode}): stopped: {Stats.connections} connections, {Stats.messages} messages",
        file=sys.stderr,
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: pick a free one)")
    parser.add_argument("--mode", choices=("hold", "sink"), default="hold")
    parser.add_argument("--hostname", default="baseline.example.test")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(serve(host, int(port), args.mode, args.hostname))
    return 0


if __name__ == "__main__":
    sys.exit(main())
