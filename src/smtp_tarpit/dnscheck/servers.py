"""Which DNS servers the checker asks, and the dnspython resolver that asks them.

Owns: parsing server specs ("ip", "ip:port", "[ipv6]:port", or a bare IPv6 address) and building a
``dns.asyncresolver.Resolver`` set up for this package: the given servers with their own ports, short
per-query timeouts, no search list and no dnspython cache (``DnsChecker`` keeps its own).

Invariants: a spec is an IP literal, never a host name (no lookup happens here); ports are 1..65535; a bad
spec is a ValueError that names it. ``servers=None`` reads /etc/resolv.conf once, synchronously, at
construction (build the checker before serving); if that file is missing or lists no server, the resolver
has no servers and every lookup fails (fail-open), with one warning logged.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.nameserver
import dns.resolver

DNS_PORT = 53
MAX_PORT = 65535

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServerAddress:
    """One DNS server: an IP address (text, normalised) and a UDP/TCP port."""

    host: str
    port: int = DNS_PORT


def parse_server(spec: str) -> ServerAddress:
    """Parse "ip", "ip:port", "[ipv6]:port", "[ipv6]" or a bare IPv6 address into a ServerAddress."""
    text = spec.strip()
    host, port_text = _split_host_port(text)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"DNS server {spec!r}: not an IP address (host names are not accepted)") from None
    port = DNS_PORT
    if port_text is not None:
        if not port_text.isdigit() or not 1 <= int(port_text) <= MAX_PORT:
            raise ValueError(f"DNS server {spec!r}: port must be 1..{MAX_PORT}")
        port = int(port_text)
    return ServerAddress(str(address), port)


def _split_host_port(text: str) -> tuple[str, str | None]:
    """Split "[v6]:port" or "v4:port" into (host, port); anything else is all host."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"DNS server {text!r}: expected [ipv6] or [ipv6]:port")
        return host, rest[1:] if rest else None
    if text.count(":") == 1:
        host, _, port_text = text.partition(":")
        return host, port_text
    return text, None


def make_resolver(servers: Sequence[ServerAddress] | None, timeout: float) -> dns.asyncresolver.Resolver:
    """A resolver asking ``servers`` (None: those of /etc/resolv.conf), each query bounded by ``timeout``."""
    if servers is None:
        resolver = _system_resolver()
    else:
        resolver = dns.asyncresolver.Resolver(configure=False)
        # Plain strings would all share ``resolver.port``; Nameserver objects carry a port each.
        resolver.nameservers = [dns.nameserver.Do53Nameserver(s.host, s.port) for s in servers]
    resolver.timeout = timeout
    resolver.lifetime = timeout
    resolver.cache = None
    resolver.search = []
    resolver.use_search_by_default = False
    return resolver


def _system_resolver() -> dns.asyncresolver.Resolver:
    try:
        return dns.asyncresolver.Resolver(configure=True)
    except dns.resolver.NoResolverConfiguration as exc:
        log.warning("dnscheck: no usable /etc/resolv.conf (%s); every DNS check will fail open", exc)
        return dns.asyncresolver.Resolver(configure=False)
