"""A tiny authoritative DNS server for the tests: UDP on loopback, a random free port, in the test's loop.

It serves dnspython zones (``dns.zone.from_text``) and records every question it receives, so tests can
count queries. Modes: "answer" (authoritative answers, NXDOMAIN with the SOA, REFUSED outside its zones),
"silent" (records the question, never replies) and "servfail". ``delay`` holds each reply back that long.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Literal, cast

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone

Mode = Literal["answer", "silent", "servfail"]

ZONES: Mapping[str, str] = {
    "example.test.": """
@      3600 IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 300
@      3600 IN NS  ns
mx1     300 IN A    192.0.2.10
liar    300 IN A    192.0.2.99
Good    300 IN A    192.0.2.12
short    60 IN A    192.0.2.13
mx6     300 IN AAAA 2001:db8::25
mx6     300 IN A    192.0.2.25
n6      300 IN A    192.0.2.14
""",
    "2.0.192.in-addr.arpa.": """
@      3600 IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 300
@      3600 IN NS  ns.example.test.
10      300 IN PTR mx1.example.test.
11      300 IN PTR liar.example.test.
12      300 IN PTR bogus.example.test.
12      300 IN PTR Good.Example.Test.
13       60 IN PTR short.example.test.
14      300 IN PTR n1.example.test.
14      300 IN PTR n2.example.test.
14      300 IN PTR n3.example.test.
14      300 IN PTR n4.example.test.
14      300 IN PTR n5.example.test.
14      300 IN PTR n6.example.test.
""",
    "8.b.d.0.1.0.0.2.ip6.arpa.": """
@      3600 IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 300
@      3600 IN NS  ns.example.test.
5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0 300 IN PTR mx6.example.test.
""",
    "bl.test.": """
@      3600 IN SOA ns.bl.test. hostmaster.bl.test. 1 3600 600 86400 300
@      3600 IN NS  ns.bl.test.
10.2.0.192  300 IN A   127.0.0.2
10.2.0.192  300 IN TXT "listed for tests"
20.2.0.192  300 IN A   127.255.255.254
30.2.0.192  300 IN A   192.0.2.1
40.2.0.192  300 IN TXT "a TXT record but no A record"
5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2 300 IN A 127.0.0.4
""",
}


def load_zones(texts: Mapping[str, str] = ZONES) -> list[dns.zone.Zone]:
    """The zones, parsed by dnspython."""
    # Absolute names throughout, so that rdata names (SOA, PTR targets) go on the wire as they are.
    return [dns.zone.from_text(text, origin=origin, relativize=False) for origin, text in texts.items()]


class AuthoritativeServer(asyncio.DatagramProtocol):
    """Answers DNS questions over UDP from its zones; see the module docstring for the modes."""

    def __init__(self, zones: list[dns.zone.Zone], mode: Mode = "answer", delay: float = 0.0) -> None:
        self.zones = zones
        self.mode = mode
        self.delay = delay
        self.questions: list[tuple[str, str]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Python 3.11's selector transport does not subclass DatagramTransport, though it is one.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        query = dns.message.from_wire(data)
        question = query.question[0]
        self.questions.append((question.name.to_text().lower(), dns.rdatatype.to_text(question.rdtype)))
        if self.mode == "silent" or self.transport is None:
            return
        # dnspython shuffles the records of each RRset on the wire by default (round robin); the tests
        # want zone-file order.
        wire = self.respond(query).to_wire(want_shuffle=False)
        if self.delay:
            asyncio.get_running_loop().call_later(self.delay, self.transport.sendto, wire, addr)
        else:
            self.transport.sendto(wire, addr)

    def count(self, name: str, rdtype: str) -> int:
        """How many times the question (name with trailing dot, any case) was asked."""
        return self.questions.count((name.lower(), rdtype))

    def respond(self, query: dns.message.Message) -> dns.message.Message:
        """The authoritative reply to ``query``."""
        response = dns.message.make_response(query)
        question = query.question[0]
        zone = self._zone_for(question.name)
        if self.mode == "servfail" or zone is None:
            response.set_rcode(dns.rcode.SERVFAIL if self.mode == "servfail" else dns.rcode.REFUSED)
            return response
        response.flags |= dns.flags.AA
        node = zone.get_node(question.name)
        rdataset = None if node is None else node.get_rdataset(dns.rdataclass.IN, question.rdtype)
        if rdataset is not None:
            response.answer.append(dns.rrset.from_rdata_list(question.name, rdataset.ttl, list(rdataset)))
            return response
        if node is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        assert zone.origin is not None
        soa = zone.get_rdataset(zone.origin, dns.rdatatype.SOA)
        assert soa is not None
        response.authority.append(dns.rrset.from_rdata_list(zone.origin, soa.ttl, list(soa)))
        return response

    def _zone_for(self, name: dns.name.Name) -> dns.zone.Zone | None:
        inside = [zone for zone in self.zones if zone.origin is not None and name.is_subdomain(zone.origin)]
        return max(inside, key=lambda zone: len(zone.origin or ()), default=None)


@contextlib.asynccontextmanager
async def serving(
    mode: Mode = "answer", delay: float = 0.0, host: str = "127.0.0.1"
) -> AsyncIterator[tuple[AuthoritativeServer, str]]:
    """Run a server on ``host`` at a free port; yield it and its "ip:port" / "[ip]:port" spec."""
    server = AuthoritativeServer(load_zones(), mode, delay)
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: server, local_addr=(host, 0)
    )
    port = transport.get_extra_info("sockname")[1]
    spec = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        yield server, spec
    finally:
        transport.close()
