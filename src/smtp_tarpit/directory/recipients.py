"""Is this recipient ours, and into which mailbox does it go? Local domains plus a recipients file.

The file, one entry a line, ``#`` starts a comment:
    alice@example.test                      a mailbox
    sales@example.test alice@example.test   an alias: delivered into alice's mailbox
    @example.org alice@example.test         a catch-all: any other address of example.org into alice's

Invariants:
- Lookups are case-insensitive (domain and local part), as every MTA's maps are in practice.
- A target is always a mailbox of a local domain: we never send mail out, so no entry can forward elsewhere.
- ``postmaster@<each local domain>`` and the bare ``<postmaster>`` are always accepted (RFC 5321 4.5.1): into
  the file's own entry for that address if there is one, else into the mailbox ``postmaster@<first domain>``.
- Addresses with a percent hack, bang path or hidden ``@`` are never local (they could route elsewhere).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from pathlib import Path

from smtp_tarpit.protocol.address import Address, AddressError, parse_mailbox

_COMMENT = re.compile(r"(?:^|\s)#.*")


class Verdict(enum.Enum):
    ACCEPT = "accept"
    UNKNOWN = "unknown"  # a local domain, but no such recipient: 550 5.1.1
    NOT_LOCAL = "not-local"  # not ours: relay denied, 554 5.7.1


@dataclass(frozen=True, slots=True)
class Lookup:
    verdict: Verdict
    mailbox: str = ""  # the target mailbox address ("local@domain", lower case) when accepted


class DirectoryError(ValueError):
    """The recipients file is malformed; the message names the line."""


@dataclass(frozen=True, slots=True)
class Directory:
    domains: frozenset[str]
    mailboxes: dict[str, str]  # address key -> target mailbox
    catch_all: dict[str, str]  # domain -> target mailbox
    postmaster: str  # mailbox for postmaster@ any local domain without an entry of its own

    def resolve(self, address: Address) -> Lookup:
        if address.relay_trick:
            return Lookup(Verdict.NOT_LOCAL)
        if not address.domain:  # the bare <postmaster>
            return Lookup(Verdict.ACCEPT, self.postmaster) if self.postmaster else Lookup(Verdict.NOT_LOCAL)
        domain = _ascii_domain(address.domain)
        if domain not in self.domains:
            return Lookup(Verdict.NOT_LOCAL)
        key = f"{address.local.casefold()}@{domain}"
        target = self.mailboxes.get(key) or self.catch_all.get(domain)
        if target is None and address.local.casefold() == "postmaster":
            target = self.postmaster
        return Lookup(Verdict.ACCEPT, target) if target else Lookup(Verdict.UNKNOWN)


def _ascii_domain(domain: str) -> str:
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


def empty(domains: list[str]) -> Directory:
    return build(domains, [])


def load(domains: list[str], path: Path) -> Directory:
    """Read the recipients file; raises OSError if unreadable, DirectoryError if malformed."""
    text = path.read_text(encoding="utf-8")
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        # "#" starts a comment at the start of a line or after white space ("a#b@x" stays an address).
        line = _COMMENT.sub("", raw).strip()
        if line:
            entries.append((f"{path}:{number}", line.split()))
    return build(domains, entries)


def build(domains: list[str], entries: list[tuple[str, list[str]]]) -> Directory:
    local = frozenset(_ascii_domain(d.lower()) for d in domains)
    mailboxes: dict[str, str] = {}
    catch_all: dict[str, str] = {}
    aliases: dict[str, tuple[str, str]] = {}
    for where, words in entries:
        if len(words) > 2:
            raise DirectoryError(f"{where}: expected 'address' or 'address target', got {len(words)} words")
        source = words[0]
        target = _mailbox(where, words[-1], local)
        if source.startswith("@"):
            domain = source[1:].lower()
            if domain not in local:
                raise DirectoryError(f"{where}: {source}: not one of [recipients] domains")
            catch_all[domain] = target
        elif len(words) == 1:
            mailboxes[target] = target
        else:
            aliases[_mailbox(where, source, local)] = (where, target)
    for address, (where, target) in aliases.items():
        mailboxes[address] = _follow(address, target, aliases, where)
        mailboxes.setdefault(mailboxes[address], mailboxes[address])
    postmaster = ""
    if domains:
        first = f"postmaster@{_ascii_domain(domains[0].lower())}"
        postmaster = mailboxes.get(first) or catch_all.get(first.partition("@")[2]) or first
    return Directory(local, mailboxes, catch_all, postmaster)


def _mailbox(where: str, text: str, local: frozenset[str]) -> str:
    try:
        address = parse_mailbox(text)
    except AddressError:
        raise DirectoryError(f"{where}: {text}: not a valid address") from None
    if not address.domain or _ascii_domain(address.domain) not in local:
        raise DirectoryError(f"{where}: {text}: not in one of [recipients] domains")
    if address.relay_trick:
        raise DirectoryError(f"{where}: {text}: '%', '!' and '@' are not allowed in a local part")
    return f"{address.local.casefold()}@{_ascii_domain(address.domain)}"


def _follow(address: str, target: str, aliases: dict[str, tuple[str, str]], where: str) -> str:
    seen = {address}
    while target in aliases:
        if target in seen:
            raise DirectoryError(f"{where}: alias loop through {target}")
        seen.add(target)
        target = aliases[target][1]
    return target
