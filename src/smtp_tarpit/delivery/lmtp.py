"""LMTP delivery (RFC 2033): forward each accepted message, in step with its session, to an LMTP server.

``[delivery] relay = "lmtp://host:port"`` or ``"lmtp:/path/to/socket"`` (a Unix socket), e.g. Dovecot's or
Cyrus's LMTP service. Like the SMTP relay (``relay.py``), the transaction (LHLO, MAIL, one RCPT per accepted
recipient, DATA) opens at the client's 354 (``begin``), the text goes downstream as it arrives, and nothing
is queued here; the difference is LMTP's answer after the data: one reply per accepted recipient, in RCPT
order.

Why a client of our own: aiosmtplib has no LMTP; the standard library's ``smtplib.LMTP`` is blocking (a
thread per delivery, and its timeouts are per socket operation, not per command); no maintained asyncio
LMTP client exists. The part of the protocol a delivery needs is small: this module speaks it over asyncio
streams, one command at a time (no pipelining), each command and its reply under one time limit.

Invariants:
- Never a silent loss: a 250 to the client only when every recipient got a 2xx after the data. When the
  final replies differ (some 250, some not) one SMTP answer cannot say both, and we never bounce: the client
  gets 451 4.3.0 and retries, so the recipients that already have the message may get it again (at least
  once, never lost). All final replies 5xx: a 5xx passed on, as for a refusal at RCPT.
- The message text goes out with CRLF line ends (a bare CR or LF becomes CRLF) and every line that starts
  with "." gets another ".", so no content can end the data early or start a second transaction.
- Bounded: at most ``connections`` connections at once; each is closed after its one transaction.
- Commands never carry CR or LF: addresses come from our parser, which admits no CR, LF or NUL.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass

from smtp_tarpit.delivery import DeliveryError, DownstreamRefusedError, Envelope, TargetUnavailableError
from smtp_tarpit.delivery.outgoing import Outgoing
from smtp_tarpit.delivery.relay import DownstreamDeliverer, RelayTarget, enhanced_code

MAX_REPLY_LINE = 4096  # octets; RFC 5321 allows 512, servers' help texts run longer
MAX_REPLY_LINES = 100  # lines in one multi-line reply
QUIT_WAIT = 5.0  # seconds at most for the QUIT reply (the outcome is known by then)
_LINE_END = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)
_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])(?:([ -])(.*))?", re.DOTALL)


class LmtpProtocolError(Exception):
    """The LMTP server's answer broke the protocol (a malformed, overlong or unexpected reply)."""


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    lines: tuple[str, ...]  # the text of each line, without code and separator

    @property
    def enhanced(self) -> str:
        return enhanced_code(self.lines[0], self.code)


def wire_text(message: bytes, *, final: bool = True) -> bytes:
    """Text as it goes after DATA: CRLF line ends, dot-stuffed, and (``final``) CRLF "." CRLF to end it."""
    text = _LEADING_DOT.sub(b"..", _LINE_END.sub(b"\r\n", message))
    if text and not text.endswith(b"\r\n"):
        text += b"\r\n"
    return text + b".\r\n" if final else text


class _Connection:
    """One LMTP connection: commands out, replies in, each exchange under ``timeout`` seconds."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float) -> None:
        self.reader, self.writer, self.timeout = reader, writer, timeout

    async def command(self, line: str) -> Reply:
        if "\r" in line or "\n" in line:
            raise LmtpProtocolError("a command with a line break")  # never reached: our parser forbids them
        async with asyncio.timeout(self.timeout):
            self.writer.write(line.encode() + b"\r\n")
            await self.writer.drain()
            return await self._read_reply()

    async def send_text(self, text: bytes) -> None:
        async with asyncio.timeout(self.timeout):
            self.writer.write(text)
            await self.writer.drain()

    async def reply(self) -> Reply:
        async with asyncio.timeout(self.timeout):
            return await self._read_reply()

    async def _read_reply(self) -> Reply:
        code: int | None = None
        lines: list[str] = []
        while len(lines) < MAX_REPLY_LINES:
            try:
                raw = await self.reader.readuntil(b"\n")
            except asyncio.LimitOverrunError:
                raise LmtpProtocolError("reply line too long") from None
            found = _REPLY_LINE.fullmatch(raw.rstrip(b"\r\n"))
            if found is None or (code is not None and int(found[1]) != code):
                raise LmtpProtocolError(f"malformed reply line {raw[:40]!r}")
            code = int(found[1])
            lines.append((found[3] or b"").decode("utf-8", "replace"))
            if found[2] != b"-":
                return Reply(code, tuple(lines))
        raise LmtpProtocolError(f"reply longer than {MAX_REPLY_LINES} lines")

    async def close(self, quit_first: bool) -> None:
        """Send QUIT (when the connection is still in step) and close; never raises, never hangs."""
        try:
            if quit_first:
                with contextlib.suppress(OSError, TimeoutError, EOFError, LmtpProtocolError):
                    async with asyncio.timeout(min(self.timeout, QUIT_WAIT)):
                        await self.command("QUIT")
            self.writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.writer.wait_closed()
        finally:
            self.writer.transport.abort()  # no-op once closed; drops what is unsent if closing hung


class LmtpDeliverer(DownstreamDeliverer):
    def __init__(
        self, target: RelayTarget, *, hostname: str, timeout: float = 60.0, connections: int = 100
    ) -> None:
        if target.scheme != "lmtp":
            raise ValueError(f"not an LMTP target: {target}")
        super().__init__(target, hostname=hostname, timeout=timeout, connections=connections)

    async def _relay(self, envelope: Envelope, head: bytes, out: Outgoing) -> None:
        async with self.slot():
            connection, extensions = await self._connect()
            # Left False on an abort too: closed without QUIT or the final dot, the downstream discards it.
            in_step = False
            try:
                await _transaction(connection, extensions, envelope, head, out)
                in_step = True
            except LmtpProtocolError as exc:
                raise DeliveryError(f"downstream {self.target} broke the protocol: {exc}") from exc
            except (OSError, TimeoutError, EOFError) as exc:
                raise TargetUnavailableError(
                    f"downstream {self.target} failed: {exc.__class__.__name__}"
                ) from exc
            except DeliveryError:
                in_step = True  # a refusal: the dialogue is still in step, QUIT politely
                raise
            finally:
                await connection.close(quit_first=in_step)

    async def _connect(self) -> tuple[_Connection, frozenset[str]]:
        """Connect, read the greeting, send LHLO; any failure marks the target down for DOWN_FOR seconds."""
        connection = None
        try:
            async with asyncio.timeout(self.timeout):
                if self.target.path:
                    streams = await asyncio.open_unix_connection(self.target.path, limit=MAX_REPLY_LINE)
                else:
                    streams = await asyncio.open_connection(
                        self.target.host, self.target.port, limit=MAX_REPLY_LINE
                    )
            connection = _Connection(*streams, self.timeout)
            greeting = await connection.reply()
            if greeting.code != 220:
                raise LmtpProtocolError(f"greeting {greeting.code}")
            hello = await connection.command(f"LHLO {self.hostname}")
            if hello.code != 250:
                raise LmtpProtocolError(f"LHLO answered {hello.code}")
            return connection, frozenset(line.split(" ", 1)[0].upper() for line in hello.lines[1:])
        except (OSError, TimeoutError, EOFError, LmtpProtocolError) as exc:
            self.mark_down()
            if connection is not None:
                await connection.close(quit_first=False)
            raise TargetUnavailableError(
                f"downstream {self.target} unavailable: {exc.__class__.__name__}"
            ) from exc
        except BaseException:  # cancelled: no await, just let go of the connection
            if connection is not None:
                connection.writer.transport.abort()
            raise


async def _transaction(
    connection: _Connection, extensions: frozenset[str], envelope: Envelope, head: bytes, out: Outgoing
) -> None:
    if not envelope.recipients:
        raise DeliveryError("no recipients")  # never reached: DATA needs one; and no 250 for nobody
    options = ["SMTPUTF8"] if envelope.smtputf8 and "SMTPUTF8" in extensions else []
    if "8BITMIME" in extensions and envelope.eight_bit:
        options.append("BODY=8BITMIME")
    _expect(await connection.command(" ".join([f"MAIL FROM:<{envelope.sender}>", *options])), "MAIL")
    refused = []
    for recipient in envelope.recipients:
        reply = await connection.command(f"RCPT TO:<{recipient}>")
        if reply.code // 100 != 2:
            refused.append(reply)
    if refused:
        await connection.command("RSET")
        if len(refused) == len(envelope.recipients) and all(r.code >= 500 for r in refused):
            raise DownstreamRefusedError(refused[0].code, refused[0].enhanced, "RCPT")
        # Some recipients taken, some not: one answer cannot say both, and we never bounce.
        raise DeliveryError(f"downstream refused {len(refused)} of {len(envelope.recipients)} recipients")
    _expect(await connection.command("DATA"), "DATA", wanted=354)
    await connection.send_text(wire_text(head, final=False))
    async for part in out.parts():
        await connection.send_text(wire_text(part, final=False))
    await connection.send_text(b".\r\n")
    finals = [await connection.reply() for _ in envelope.recipients]  # RFC 2033 4.2: one per recipient
    if all(r.code // 100 == 2 for r in finals):
        return
    if all(r.code >= 500 for r in finals):
        raise DownstreamRefusedError(finals[0].code, finals[0].enhanced, "end of data")
    taken = sum(r.code // 100 == 2 for r in finals)
    # The recipients that took it may see it again when the client retries: at least once, never lost.
    raise DeliveryError(f"downstream took the message for {taken} of {len(finals)} recipients")


def _expect(reply: Reply, where: str, wanted: int = 250) -> None:
    if reply.code == wanted or (wanted == 250 and reply.code // 100 == 2):
        return
    if reply.code >= 500:
        raise DownstreamRefusedError(reply.code, reply.enhanced, where)
    raise DeliveryError(f"downstream answered {reply.code} at {where}")
