"""Pure name and address rules of the DNS checks: no I/O, no resolver.

Owns: host name suffix matching for exemptions, the query names of reverse (PTR) and DNSBL/DNSWL
lookups, and what a DNSBL answer means.

Invariants:
- ``matches_suffix`` is case-insensitive and ignores one trailing dot on either side. A suffix with a
  leading dot (".google.com") matches strict subdomains only; one without ("google.com") matches the name
  itself and its subdomains. Matching is label-aligned: "evilgoogle.com" never matches either form. An empty
  suffix (or ".") matches nothing.
- An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is checked as the IPv4 address it carries.
- DNSBL query names: IPv4 octets reversed, IPv6 as 32 reversed nibbles, then the zone.
- A DNSBL answer lists the client when it holds an A record in 127.0.0.0/8 outside 127.255.255.0/24.
  127.255.255.0/24 is where lists put *error codes* about the querier, not the client (Spamhaus:
  127.255.255.252 typing error in the zone name, .254 query via a public/open resolver, .255 too many
  queries), so such answers count as "not listed". Anything outside 127/8 is not a listing either.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

import dns.name
import dns.reversename

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

LISTING_NETWORK = ipaddress.IPv4Network("127.0.0.0/8")
ERROR_CODE_NETWORK = ipaddress.IPv4Network("127.255.255.0/24")


def normalize_hostname(name: str) -> str:
    """Lower-case, without the trailing dot."""
    return name.lower().removesuffix(".")


def matches_suffix(hostname: str | None, suffixes: Sequence[str]) -> bool:
    """Whether ``hostname`` ends with one of ``suffixes`` on a label boundary (see module invariants)."""
    if not hostname:
        return False
    name = normalize_hostname(hostname)
    return any(_matches_one(name, suffix) for suffix in suffixes)


def _matches_one(name: str, suffix: str) -> bool:
    wanted = normalize_hostname(suffix)
    if wanted.startswith("."):
        return len(wanted) > 1 and len(name) > len(wanted) and name.endswith(wanted)
    return bool(wanted) and (name == wanted or name.endswith("." + wanted))


def canonical_address(address: IPAddress) -> IPAddress:
    """The address to check: an IPv4-mapped IPv6 address becomes its IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def reverse_name(address: IPAddress) -> dns.name.Name:
    """The PTR query name: 4.3.2.1.in-addr.arpa. or the nibbles under ip6.arpa."""
    return dns.reversename.from_address(str(address))


def listing_name(address: IPAddress, zone: str) -> dns.name.Name:
    """The DNSBL/DNSWL query name of ``address`` in ``zone`` (ValueError if the zone is empty)."""
    zone_text = zone.strip().strip(".")
    if not zone_text:
        raise ValueError("DNS list zone is empty")
    origin = dns.name.from_text(zone_text)
    return dns.reversename.from_address(str(address), v4_origin=origin, v6_origin=origin)


def is_listing(record: str) -> bool:
    """Whether one A record of a DNSBL answer says "listed" (127/8, but not an error code)."""
    code = _ipv4(record)
    return code is not None and code in LISTING_NETWORK and code not in ERROR_CODE_NETWORK


def is_error_code(record: str) -> bool:
    """Whether one A record of a DNSBL answer is an error code about the querier (127.255.255.0/24)."""
    code = _ipv4(record)
    return code is not None and code in ERROR_CODE_NETWORK


def contains_address(records: Iterable[str], address: IPAddress) -> bool:
    """Whether the forward records (A or AAAA, as text) include ``address``."""
    return any(_address(record) == address for record in records)


def _ipv4(text: str) -> ipaddress.IPv4Address | None:
    found = _address(text)
    return found if isinstance(found, ipaddress.IPv4Address) else None


def _address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
