"""Asynchronous DNS checks for the tar pit's allowlists and blocklists.

Owns: forward-confirmed reverse DNS (to exempt clients by host name suffix), DNSWL/DNSBL lookups, and
their cache. Built on dnspython's asyncio resolver. Invariants: every check fails open (a lookup failure
never blocks mail and never raises) and is bounded by a short timeout; see ``checker`` for the details.
"""

from smtp_tarpit.dnscheck.checker import CALL_GRACE, FAILURE_TTL, MAX_PTR_NAMES, DnsChecker
from smtp_tarpit.dnscheck.names import matches_suffix
from smtp_tarpit.dnscheck.servers import ServerAddress, parse_server

__all__ = [
    "CALL_GRACE",
    "FAILURE_TTL",
    "MAX_PTR_NAMES",
    "DnsChecker",
    "ServerAddress",
    "matches_suffix",
    "parse_server",
]
