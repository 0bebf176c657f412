"""Relay delivery: forward each accepted message, in step with the client's session, to one downstream MTA.

``[delivery] relay = "smtp://host:port"`` (or ``smtp+starttls://``; the ``lmtp`` forms are parsed here too and
delivered by ``delivery.lmtp``). The downstream transaction (XFORWARD when offered, MAIL, one RCPT per
accepted recipient, DATA) is opened when the client's DATA is answered 354 (``begin``), the text goes
downstream as it arrives, and the client's 250 is sent only after the downstream's 250 to the final dot.
Nothing is queued here: at any moment a message is either acknowledged downstream or not acknowledged to
the client. Connections are kept open between messages (a small pool, each reused for a few seconds), so
a message costs no connection set-up, EHLO or QUIT.

The client side is aiosmtplib (maintained, asyncio-native, typed), not a hand-written client. It re-encodes
the text on the way out (CRLF line ends, dot-stuffing redone), so a bare CR or LF, or a lone "." line, can
never end the message early downstream; our core has already normalised the text too.

Invariants:
- Never a silent loss: any downstream failure, timeout or partial refusal raises DeliveryError (451);
  a downstream 5xx for every recipient or for the message raises DownstreamRefusedError (passed on as a 5xx).
- Bounded: at most ``connections`` downstream connections at once; sessions wait for a slot, never open more.
- A session held in the tar pit holds no downstream connection: one is taken only from the client's 354
  to the end of its message.
- A connection goes back to the pool only after a transaction that ended cleanly (250, or refused
  recipients and RSET); on any doubt it is closed.
- Envelope addresses reaching the downstream come from our parser, which admits no CR, LF or NUL.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import re
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiosmtplib

from smtp_tarpit.delivery import DeliveryError, DownstreamRefusedError, Envelope, TargetUnavailableError
from smtp_tarpit.delivery.outgoing import AbortedError, Outgoing

DOWN_FOR = 10.0  # seconds new sessions are refused (421 4.4.1) after the downstream failed to answer
POOL_SECONDS = 5.0  # how long an idle downstream connection is kept for the next message
_PERIOD = re.compile(rb"(?m)^\.")
SCHEMES = ("smtp", "smtp+starttls", "lmtp")
MAX_SOCKET_PATH = 107  # octets: sun_path is 108 bytes on Linux, with the terminating NUL
_FORMS = "smtp://host:port, smtp+starttls://host:port, lmtp://host:port or lmtp:/path/to/socket"


@dataclass(frozen=True, slots=True)
class RelayTarget:
    scheme: str
    host: str = ""
    port: int = 0
    path: str = ""  # a Unix socket (lmtp only); then host and port are unset

    def __str__(self) -> str:
        if self.path:
            return f"{self.scheme}:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_relay(url: str) -> RelayTarget:
    """Parse ``smtp://host:port``, ``smtp+starttls://host:port``, ``lmtp://host:port`` or
    ``lmtp:/path/to/socket``; raise ValueError saying what is wrong."""
    if any(ord(c) < 32 or ord(c) == 127 for c in url) or url != url.strip():
        # urlsplit would drop tabs, line breaks and surrounding spaces without a word
        raise ValueError(f"control character or surrounding space in {url!r}")
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(f"expected {_FORMS}, got {url!r}")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise ValueError(f"unexpected '?' or '#' in {url!r}: expected {_FORMS}")
    if parts.scheme == "lmtp" and not url.partition(":")[2].startswith("//"):
        return _socket_target(url, parts.path)
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"bad port in {url!r}: expected a number from 1 to 65535") from None
    if not parts.hostname or port is None or parts.path not in ("", "/") or "@" in parts.netloc:
        raise ValueError(f"expected {parts.scheme}://host:port, got {url!r}")
    if port == 0:
        raise ValueError(f"bad port in {url!r}: expected a number from 1 to 65535")
    return RelayTarget(parts.scheme, parts.hostname, port)


def _socket_target(url: str, path: str) -> RelayTarget:
    if not path.startswith("/") or path.endswith("/"):
        raise ValueError(f"expected lmtp:/path/to/socket (an absolute path) or lmtp://host:port, got {url!r}")
    if len(path.encode()) > MAX_SOCKET_PATH:
        raise ValueError(
            f"socket path in {url!r} is longer than {MAX_SOCKET_PATH} bytes, the limit of a Unix socket path"
        )
    return RelayTarget("lmtp", path=path)


def enhanced_code(message: str, code: int) -> str:
    """The RFC 3463 code at the start of a downstream reply's text, or the class default (e.g. 5.0.0)."""
    first = message.split(" ", 1)[0]
    parts = first.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts) and first[0] == str(code)[0]:
        return first
    return f"{str(code)[0]}.0.0"


class DownstreamDeliverer(abc.ABC):
    """What the SMTP and LMTP deliverers share: the target, the connection bound, the "down" state."""

    final = False

    def __init__(self, target: RelayTarget, *, hostname: str, timeout: float, connections: int) -> None:
        self.target = target
        self.hostname = hostname
        self.timeout = timeout
        self.connections = connections
        self._slots: asyncio.Semaphore | None = None
        self._down_until = 0.0

    def check(self) -> None:
        """Nothing to check without a round trip (the downstream may start after us); see ``available``."""
        return None

    async def close(self) -> None:
        return None

    @property
    def available(self) -> bool:
        """False for a short while after the downstream failed to answer: new sessions get 421 4.4.1."""
        return time.monotonic() >= self._down_until

    def mark_down(self) -> None:
        self._down_until = time.monotonic() + DOWN_FOR

    early = True  # the downstream transaction opens at the client's 354

    async def deliver(self, envelope: Envelope, message: bytes) -> None:
        if not message.isascii():
            envelope = dataclasses.replace(envelope, eight_bit=True)
        await self.begin(envelope, b"").finish(message)

    def begin(self, envelope: Envelope, head: bytes) -> Outgoing:
        return Outgoing(lambda out: self._relay(envelope, head, out))

    @abc.abstractmethod
    async def _relay(self, envelope: Envelope, head: bytes, out: Outgoing) -> None:
        """One transaction downstream: open it, send ``head`` and the parts of ``out``, end it."""

    def slot(self) -> asyncio.Semaphore:
        """The bound on downstream connections (made lazily: it belongs to the running loop)."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.connections)
        return self._slots


class RelayDeliverer(DownstreamDeliverer):
    def __init__(
        self,
        target: RelayTarget,
        *,
        hostname: str,
        timeout: float = 60.0,
        connections: int = 100,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(target, hostname=hostname, timeout=timeout, connections=connections)
        self.tls_context = tls_context
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []  # pooled connections, with when they were left

    async def _relay(self, envelope: Envelope, head: bytes, out: Outgoing) -> None:
        async with self.slot():
            client, reused = await self._connection()
            clean = False
            try:
                try:
                    await self._open(client, envelope)
                except aiosmtplib.SMTPServerDisconnected:
                    if not reused:
                        raise
                    # The pooled connection had timed out downstream: nothing was sent yet, start afresh.
                    client.close()
                    client, _ = await self._connection(fresh=True)
                    await self._open(client, envelope)
                clean = await self._send(client, head, out)
            except aiosmtplib.SMTPResponseException as exc:
                clean = exc.code != 421  # answered in due form: the connection is fine for the next one
                raise _failure(exc.code, exc.message, "reply") from exc
            except DeliveryError:
                clean = True  # recipients refused, and RSET answered
                raise
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                raise TargetUnavailableError(
                    f"downstream {self.target} failed: {exc.__class__.__name__}"
                ) from exc
            finally:
                self._release(client, clean)

    async def _connection(self, fresh: bool = False) -> tuple[aiosmtplib.SMTP, bool]:
        """A pooled connection still young enough, or a new one (marking the downstream down if it fails)."""
        now = time.monotonic()
        while self._idle and not fresh:
            client, since = self._idle.pop()
            if now - since < POOL_SECONDS and client.is_connected:
                return client, True
            client.close()
        client = aiosmtplib.SMTP(
            hostname=self.target.host,
            port=self.target.port,
            timeout=self.timeout,
            local_hostname=self.hostname,
            start_tls=self.target.scheme == "smtp+starttls",
            tls_context=self.tls_context,
        )
        try:
            await client.connect()
            if client.last_ehlo_response is None:  # connect() greets only when it upgrades to TLS
                await client.ehlo()
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            client.close()
            self.mark_down()
            reason = f"downstream {self.target} unavailable: {exc.__class__.__name__}"
            raise TargetUnavailableError(reason) from exc
        return client, False

    async def close(self) -> None:
        """At shutdown: say QUIT on every pooled connection."""
        idle, self._idle = self._idle, []
        await asyncio.gather(*(quietly_quit(client) for client, _ in idle))

    def _release(self, client: aiosmtplib.SMTP, clean: bool) -> None:
        if clean and client.is_connected and len(self._idle) < self.connections:
            self._idle.append((client, time.monotonic()))
        else:
            client.close()

    async def _open(self, client: aiosmtplib.SMTP, envelope: Envelope) -> None:
        """XFORWARD, MAIL, every RCPT, DATA: the downstream is then waiting for the text."""
        if client.supports_extension("xforward") and envelope.client:
            await _xforward(client, envelope)
        options = ["SMTPUTF8"] if envelope.smtputf8 and client.supports_extension("smtputf8") else []
        if client.supports_extension("8bitmime") and envelope.eight_bit:
            options.append("BODY=8BITMIME")
        await client.mail(envelope.sender, options=options, encoding="utf-8")
        refused = []
        for recipient in envelope.recipients:
            try:
                await client.rcpt(recipient, encoding="utf-8")
            except aiosmtplib.SMTPRecipientRefused as exc:
                refused.append(exc)
        if refused:
            await client.rset()
            if len(refused) == len(envelope.recipients) and all(r.code >= 500 for r in refused):
                first = refused[0]
                raise DownstreamRefusedError(first.code, enhanced_code(first.message, first.code), "RCPT")
            # Some recipients taken, some not: one answer cannot say both, and we never bounce.
            raise DeliveryError(f"downstream refused {len(refused)} of {len(envelope.recipients)} recipients")
        response = await client.execute_command(b"DATA")
        if response.code != 354:
            raise aiosmtplib.SMTPDataError(response.code, response.message)

    async def _send(self, client: aiosmtplib.SMTP, head: bytes, out: Outgoing) -> bool:
        """The text as it arrives, then the final dot; True once the downstream answered 250."""
        protocol = client.protocol
        assert protocol is not None
        # Re-encoded by us whatever came in: CRLF lines, dot-stuffing redone (our core has already
        # turned every bare CR or LF into CRLF), so no "." line can end the message early downstream.
        try:
            protocol.write(_stuff(head))
            async for part in out.parts():
                protocol.write(_stuff(part))
                # aiosmtplib has no public way to wait for its write buffer; its protocol is asyncio's
                # flow-control mixin, whose _drain_helper is what StreamWriter.drain() awaits.
                async with asyncio.timeout(self.timeout):
                    await protocol._drain_helper()
        except AbortedError:
            return False  # closing without the final dot: the downstream discards the transaction
        protocol.write(b".\r\n")
        response = await protocol.read_response(timeout=self.timeout)
        if response.code != 250:
            raise aiosmtplib.SMTPDataError(response.code, response.message)
        return True


def _stuff(text: bytes) -> bytes:
    return _PERIOD.sub(b"..", text) if text.startswith(b".") or b"\n." in text else text


def _failure(code: int, message: str, where: str) -> DeliveryError:
    if code >= 500:
        return DownstreamRefusedError(code, enhanced_code(message, code), where)
    return DeliveryError(f"downstream answered {code} at {where}")


async def _xforward(client: aiosmtplib.SMTP, envelope: Envelope) -> None:
    # Postfix's XFORWARD: the downstream logs and checks the real client, not us. Values are ours or
    # sanitised (no spaces or control characters), as the protocol requires.
    fields = [
        f"ADDR={envelope.client}",
        f"HELO={envelope.helo or '[UNAVAILABLE]'}",
        f"PROTO={envelope.protocol}",
    ]
    response = await client.execute_command(b"XFORWARD", *(f.encode() for f in fields))
    if response.code != 250:
        raise DeliveryError(f"downstream refused XFORWARD: {response.code}")


async def quietly_quit(client: aiosmtplib.SMTP) -> None:
    try:
        if client.is_connected:
            await client.quit()
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        client.close()
