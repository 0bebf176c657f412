"""One DNS question asked of the servers, its outcome classified: the only code that calls dnspython.

Owns: the call to ``dns.asyncresolver.Resolver.resolve`` and the mapping of everything it can return or
raise onto three outcomes: ANSWER (records, with the smallest TTL along any CNAME chain), NEGATIVE
(NXDOMAIN, or the name exists without records of that type) and FAILURE (timeout, SERVFAIL/REFUSED from
every server, network error, malformed reply, anything else).

Invariants: ``ask`` never raises (cancellation still propagates) and returns within ``timeout`` seconds:
dnspython's own ``lifetime`` is also set, but it retries a silent server with backoff and measures time
by the wall clock, so an ``asyncio.timeout`` is the bound we rely on. Records come back as text: PTR
targets lower-cased without the trailing dot (the root name is dropped), A/AAAA as addresses.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass

import dns.asyncresolver
import dns.name
import dns.rdata
import dns.rdatatype
import dns.resolver
from dns.rdtypes.ANY.PTR import PTR
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.AAAA import AAAA

from smtp_tarpit.dnscheck.names import normalize_hostname


class Status(enum.Enum):
    """How a question ended."""

    ANSWER = "answer"
    NEGATIVE = "negative"
    FAILURE = "failure"


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one question: its status, its records as text and, for answers, their TTL."""

    status: Status
    records: tuple[str, ...] = ()
    ttl: float = 0.0


NEGATIVE = Outcome(Status.NEGATIVE)
FAILURE = Outcome(Status.FAILURE)


async def ask(
    resolver: dns.asyncresolver.Resolver,
    qname: dns.name.Name,
    rdtype: dns.rdatatype.RdataType,
    timeout: float,
) -> Outcome:
    """Ask ``qname``/``rdtype`` (class IN) of the resolver's servers, within ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            answer = await resolver.resolve(
                qname, rdtype, raise_on_no_answer=False, search=False, lifetime=timeout
            )
    except dns.resolver.NXDOMAIN:
        return NEGATIVE
    except Exception:  # timeouts, SERVFAIL, network and parse errors alike: fail open
        return FAILURE
    if answer.rrset is None:
        return NEGATIVE
    records = tuple(text for text in map(_record_text, answer.rrset) if text)
    if not records:
        return NEGATIVE
    return Outcome(Status.ANSWER, records, float(answer.chaining_result.minimum_ttl))


def _record_text(rdata: dns.rdata.Rdata) -> str:
    """The useful part of one record, or "" for a record we do not use."""
    if isinstance(rdata, PTR):
        if rdata.target == dns.name.root:
            return ""
        return normalize_hostname(rdata.target.to_text())
    if isinstance(rdata, A | AAAA):
        return str(rdata.address)
    return ""
