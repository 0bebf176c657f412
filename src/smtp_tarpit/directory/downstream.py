"""Recipient verification by the downstream MTA (``[recipients] verify = "downstream"``), cached.

As Postfix's address verification does: a recipient is valid if the downstream accepts it at RCPT. The
question is asked through a small shared pool of verification connections (MAIL FROM:<>, RCPT TO, RSET),
never through a client's own session, so a client never holds a downstream connection while it waits in
the tar pit. Answers are cached (positive and negative lifetimes, bounded size), so a harvester cannot
make us hammer the downstream; flagged harvesters never get this far (the session does not ask).

Invariants:
- At most ``connections`` verification connections exist; probes queue for one.
- ``True`` (accepted) and ``False`` (refused with 5xx) are cached; anything else (4xx, timeout, the
  downstream down) is ``None``: not cached, and the client gets a temporary failure, never a 5xx.
- Cache keys are the recipient addresses our parser produced (no CR, LF or NUL can reach the downstream).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import OrderedDict

import aiosmtplib

log = logging.getLogger("smtp_tarpit.verify")
ERRORS = (aiosmtplib.SMTPException, OSError, TimeoutError)


class RecipientVerifier:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        hostname: str,
        timeout: float = 10.0,
        connections: int = 2,
        positive_ttl: float = 86400.0,
        negative_ttl: float = 3600.0,
        cache_size: int = 100_000,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.tls_context = tls_context
        self.host, self.port, self.hostname, self.timeout = host, port, hostname, timeout
        self.connections = connections
        self.positive_ttl, self.negative_ttl, self.cache_size = positive_ttl, negative_ttl, cache_size
        self._cache: OrderedDict[str, tuple[bool, float]] = OrderedDict()
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots: asyncio.Semaphore | None = None
        self.probes = self.cache_hits = self.failures = 0

    def cached(self, address: str) -> bool | None:
        entry = self._cache.get(address.lower())
        if entry is None:
            return None
        valid, expires = entry
        if time.monotonic() >= expires:
            del self._cache[address.lower()]
            return None
        self.cache_hits += 1
        return valid

    async def verify(self, address: str) -> bool | None:
        """True: the downstream accepts it; False: it refuses it (5xx); None: no answer now."""
        known = self.cached(address)
        if known is not None:
            return known
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.connections)
        async with self._slots:
            answer = await self._probe(address)
        if answer is not None:
            self._remember(address.lower(), answer)
        return answer

    def _remember(self, key: str, valid: bool) -> None:
        ttl = self.positive_ttl if valid else self.negative_ttl
        self._cache[key] = (valid, time.monotonic() + ttl)
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    async def _probe(self, address: str) -> bool | None:
        self.probes += 1
        client = self._idle.pop() if self._idle else None
        try:
            if client is None or not client.is_connected:
                client = await self._connect()
            await client.mail("", encoding="utf-8")
            try:
                await client.rcpt(address, encoding="utf-8")
                answer: bool | None = True
            except aiosmtplib.SMTPRecipientRefused as exc:
                answer = False if exc.code >= 500 else None
            await client.rset()
        except ERRORS as exc:
            self.failures += 1
            log.info("verification of a recipient failed: %s", exc.__class__.__name__)
            if client is not None:
                client.close()
            return None
        self._idle.append(client)
        return answer

    async def _connect(self) -> aiosmtplib.SMTP:
        client = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            timeout=self.timeout,
            local_hostname=self.hostname,
            start_tls=self.tls_context is not None,
            tls_context=self.tls_context,
        )
        await client.connect()
        await client.ehlo()
        return client

    async def close(self) -> None:
        while self._idle:
            client = self._idle.pop()
            with contextlib.suppress(*ERRORS):
                await client.quit()
