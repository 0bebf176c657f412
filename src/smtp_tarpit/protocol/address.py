"""Parsing of RFC 5321 paths (``<local@domain>``) and ESMTP parameters from MAIL and RCPT arguments.

Invariants:
- An ``Address`` holds an unquoted local part and a lower-cased domain; ``key`` is the case-folded form the
  directory looks up. Source routes (``<@a,@b:user@c>``) are dropped, as RFC 5321 section 3.3 tells servers
  to do, so the address judged for relaying is the final mailbox.
- ``relay_trick`` is true when the local part could route mail elsewhere (percent hack, bang path, an ``@``
  hidden in a quoted local part): such an address is never treated as local.
- Nothing here raises anything but ``AddressError``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ATEXT = r"A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\U0010ffff"
_DOT_ATOM = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*")
_LABEL = r"[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\-\u0080-\U0010ffff]*[A-Za-z0-9\u0080-\U0010ffff])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_ADDRESS_LITERAL = re.compile(r"\[(?:[0-9.]+|IPv6:[0-9A-Fa-f:.]+)\]")
_QUOTED_CONTENT = re.compile(r"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*")
_PARAM_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*")
_PARAM_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+")

MAX_LOCAL_PART = 64  # RFC 5321 4.5.3.1.1
MAX_DOMAIN = 255  # RFC 5321 4.5.3.1.2
MAX_PATH = 256  # RFC 5321 4.5.3.1.3


class AddressError(ValueError):
    """The path or its parameters do not parse."""


@dataclass(frozen=True, slots=True)
class Address:
    local: str
    domain: str  # lower case; "" only for the bare <postmaster> of RFC 5321 4.5.1

    @property
    def key(self) -> str:
        return f"{self.local.casefold()}@{self.domain}" if self.domain else self.local.casefold()

    @property
    def relay_trick(self) -> bool:
        return any(c in self.local for c in "%!@")

    @property
    def is_ascii(self) -> bool:
        return self.local.isascii() and self.domain.isascii()

    def __str__(self) -> str:
        local = self.local if _DOT_ATOM.fullmatch(self.local) else _quote(self.local)
        return f"{local}@{self.domain}" if self.domain else local


def _quote(local: str) -> str:
    return '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_path(argument: str, *, allow_null: bool) -> tuple[Address | None, dict[str, str | None]]:
    """Parse ``<path> [params]`` as found after ``FROM:`` or ``TO:``; None means the null path ``<>``."""
    argument = argument.lstrip(" ")
    if argument.startswith("<"):
        end = _closing_bracket(argument)
        inner, rest = argument[1:end], argument[end + 1 :]
        if rest and not rest.startswith(" "):
            raise AddressError("text after the closing bracket")
    else:
        # Postfix accepts a bare address without brackets; so do we (many scripts send it).
        inner, _, rest = argument.partition(" ")
    params = parse_params(rest)
    if inner == "":
        if not allow_null:
            raise AddressError("null path")
        return None, params
    if len(inner) > MAX_PATH:
        raise AddressError("path too long")
    return parse_mailbox(_strip_source_route(inner)), params


def _closing_bracket(argument: str) -> int:
    quoted = escaped = False
    for i, char in enumerate(argument):
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ">" and not quoted:
            return i
    raise AddressError("no closing bracket")


def _strip_source_route(inner: str) -> str:
    if not inner.startswith("@"):
        return inner
    route, colon, mailbox = inner.partition(":")
    for hop in route.split(","):
        if not hop.startswith("@") or not _DOMAIN.fullmatch(hop[1:]):
            raise AddressError("bad source route")
    if not colon:
        raise AddressError("source route without mailbox")
    return mailbox


def parse_mailbox(text: str) -> Address:
    """Parse ``local@domain`` (or the bare ``postmaster``) into an Address."""
    if text.casefold() == "postmaster":
        return Address("postmaster", "")
    local, domain = _split_at(text)
    if not domain or len(domain) > MAX_DOMAIN:
        raise AddressError("bad domain")
    if not (_DOMAIN.fullmatch(domain) or _ADDRESS_LITERAL.fullmatch(domain)):
        raise AddressError("bad domain")
    return Address(local, domain.rstrip(".").lower())


def _split_at(text: str) -> tuple[str, str]:
    if text.startswith('"'):
        end = _closing_quote(text)
        content = text[1:end]
        if not _QUOTED_CONTENT.fullmatch(content) or text[end + 1 : end + 2] != "@":
            raise AddressError("bad quoted local part")
        local = re.sub(r"\\(.)", r"\1", content)
        domain = text[end + 2 :]
    else:
        local, at, domain = text.rpartition("@")
        if not at or not _DOT_ATOM.fullmatch(local):
            raise AddressError("bad local part")
    if not local or len(local.encode("utf-8")) > MAX_LOCAL_PART:
        raise AddressError("bad local part length")
    return local, domain


def _closing_quote(text: str) -> int:
    escaped = False
    for i in range(1, len(text)):
        char = text[i]
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            return i
    raise AddressError("unterminated quoted string")


def parse_params(text: str) -> dict[str, str | None]:
    """Parse ESMTP parameters ``KEY[=VALUE]`` separated by spaces; keys are upper-cased, no duplicates."""
    params: dict[str, str | None] = {}
    for token in text.split(" "):
        if not token:
            continue
        key, eq, value = token.partition("=")
        if not _PARAM_KEY.fullmatch(key) or (eq and not _PARAM_VALUE.fullmatch(value)):
            raise AddressError("bad parameter")
        key = key.upper()
        if key in params:
            raise AddressError("duplicate parameter")
        params[key] = value if eq else None
    return params
