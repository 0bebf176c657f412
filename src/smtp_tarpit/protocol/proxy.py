"""Parsing of the HAProxy PROXY protocol header, versions 1 (text) and 2 (binary), sans-IO.

A load balancer in front of the MX sends this header first on each connection; it carries the real client's
address. This module owns recognising, validating and measuring that header, nothing else: which peers may
send one, timeouts and what to do with the result belong to the server. Spec:
https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt

Invariants:
- ``parse_proxy_header(buffer)`` is a pure function of ``buffer``: it returns ``None`` (need more bytes),
  ``(info, used)`` or raises ``ProxyHeaderError``, and never raises anything else, whatever the bytes.
- Chunking does not matter: the answers for growing prefixes of a byte stream are ``None`` up to some
  length, then either the same ``(info, used)`` or ``ProxyHeaderError`` for every longer prefix.
  ``used`` is exact; the bytes after it belong to SMTP.
- A stream that cannot be a header is refused as soon as the bytes seen prove it (an SMTP client talking
  directly, ``EHLO ...``, fails on its first byte), and no header is waited for beyond a bound: 107 bytes for
  version 1, 16 + ``MAX_V2_LENGTH`` for version 2.
- ``client`` is ``None`` whenever the real connection's peer should be used: v1 ``UNKNOWN``, v2 ``LOCAL``
  (the balancer's own health checks), v2 ``AF_UNSPEC`` and ``AF_UNIX``. An IPv4-mapped IPv6 source
  (``::ffff:a.b.c.d``) is reported as the IPv4 address, so that a client is judged the same way whichever
  family the balancer used to describe it.
- Error messages say what is wrong; they quote the input only as a short excerpt of printable ASCII.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

__all__ = ["MAX_V1_LENGTH", "MAX_V2_LENGTH", "ProxyHeaderError", "ProxyInfo", "parse_proxy_header"]

V1_PREFIX = b"PROXY "
MAX_V1_LENGTH = 107  # the spec's worst case, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16  # signature, version/command, family/protocol, 2-byte length
_UNIX_BLOCK = 216  # two 108-byte sun_path fields
MAX_V2_LENGTH = _UNIX_BLOCK + 1024  # the largest address block plus room for TLVs; the field allows 65535

_V2_LOCAL, _V2_PROXY = 0x0, 0x1
# family/protocol byte -> length of the address block it needs; all other values are refused.
_V2_FAMILIES = {0x00: 0, 0x11: 12, 0x21: 36, 0x31: _UNIX_BLOCK}
_V2_DGRAM = {0x12: "UDP over IPv4", 0x22: "UDP over IPv6", 0x32: "UNIX datagram"}

_IPV4_TEXT = re.compile(rb"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
_IPV6_TEXT = re.compile(rb"[0-9A-Fa-f:.]{2,45}")  # no scope ("%eth0"), no brackets
_PORT_TEXT = re.compile(rb"0|[1-9][0-9]{0,4}")  # no sign, no leading zero

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ProxyHeaderError(ValueError):
    """The bytes cannot be a valid PROXY header: the peer (balancer, or a client bypassing it) is at fault."""


@dataclass(frozen=True, slots=True)
class ProxyInfo:
    """What the header says about the real client; ``None`` means: use the connection's own peer."""

    client: IPAddress | None
    client_port: int | None
    version: int  # 1 or 2


def parse_proxy_header(buffer: bytes) -> tuple[ProxyInfo, int] | None:
    """Return (info, number of bytes the header used) once a complete header is at the start of buffer,
    None if more bytes are needed, or raise ProxyHeaderError if it cannot be a valid header."""
    if V2_SIGNATURE.startswith(buffer[: len(V2_SIGNATURE)]):
        return _parse_v2(buffer)
    if V1_PREFIX.startswith(buffer[: len(V1_PREFIX)]):
        return _parse_v1(buffer)
    raise ProxyHeaderError(f"not a PROXY protocol header: {_excerpt(buffer)}")


def _excerpt(data: bytes, limit: int = 24) -> str:
    """A short, printable rendering of untrusted bytes for an error message."""
    text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in data[:limit])
    return repr(text + ("..." if len(data) > limit else ""))


# --- version 1 ----------------------------------------------------------------------------------------------


def _parse_v1(buffer: bytes) -> tuple[ProxyInfo, int] | None:
    end = _v1_line_end(buffer)
    if end is None:
        return None
    return _parse_v1_line(bytes(buffer[len(V1_PREFIX) : end])), end + 2


def _v1_line_end(buffer: bytes) -> int | None:
    """Index of the CR of the line's CRLF, None if not seen yet; refuses bare CR/LF and over-long lines."""
    window = buffer[:MAX_V1_LENGTH]
    match = re.search(rb"[\r\n]", window)
    if match is None:
        if len(window) >= MAX_V1_LENGTH:
            raise ProxyHeaderError(f"PROXY v1 line has no CRLF within {MAX_V1_LENGTH} bytes")
        return None
    end = match.start()
    if window[end] == 0x0A:
        raise ProxyHeaderError("PROXY v1 line ends in LF without CR")
    if end + 2 > MAX_V1_LENGTH:
        raise ProxyHeaderError(f"PROXY v1 line is longer than {MAX_V1_LENGTH} bytes")
    if end + 1 >= len(buffer):
        return None
    if buffer[end + 1] != 0x0A:
        raise ProxyHeaderError("PROXY v1 line has a CR without LF")
    return end


def _parse_v1_line(rest: bytes) -> ProxyInfo:
    """Parse what follows "PROXY " up to (not including) the CRLF."""
    if rest == b"UNKNOWN" or rest.startswith(b"UNKNOWN "):
        return ProxyInfo(None, None, 1)  # the spec says to ignore the rest of an UNKNOWN line
    fields = rest.split(b" ")
    protocol = fields[0]
    if protocol not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError(f"PROXY v1 protocol must be TCP4, TCP6 or UNKNOWN, not {_excerpt(protocol)}")
    if len(fields) != 5:
        raise ProxyHeaderError(
            f"PROXY v1 {protocol.decode()} needs 4 fields separated by single spaces, got {len(fields) - 1}"
        )
    src, dst, src_port, dst_port = fields[1:]
    client = _v1_address(protocol, src, "source")
    _v1_address(protocol, dst, "destination")
    port = _v1_port(src_port, "source")
    _v1_port(dst_port, "destination")
    return ProxyInfo(_unmap(client), port, 1)


def _v1_address(protocol: bytes, text: bytes, which: str) -> IPAddress:
    try:
        if protocol == b"TCP4":
            if _IPV4_TEXT.fullmatch(text):
                return ipaddress.IPv4Address(text.decode("ascii"))
        elif _IPV6_TEXT.fullmatch(text):
            return ipaddress.IPv6Address(text.decode("ascii"))
    except ValueError:
        pass
    raise ProxyHeaderError(f"PROXY v1 {protocol.decode()} {which} address is invalid: {_excerpt(text)}")


def _v1_port(text: bytes, which: str) -> int:
    if _PORT_TEXT.fullmatch(text) and int(text) <= 0xFFFF:
        return int(text)
    raise ProxyHeaderError(f"PROXY v1 {which} port is invalid: {_excerpt(text)}")


# --- version 2 ----------------------------------------------------------------------------------------------


def _parse_v2(buffer: bytes) -> tuple[ProxyInfo, int] | None:
    """Check each fixed field as soon as its bytes are there, then wait for the whole address block."""
    if len(buffer) <= 12:
        return None
    command = _v2_command(buffer[12])
    if len(buffer) < V2_FIXED:
        if len(buffer) > 13 and command == _V2_PROXY:
            _v2_needed(buffer[13])
        return None
    length = int.from_bytes(buffer[14:16], "big")
    if length > MAX_V2_LENGTH:
        raise ProxyHeaderError(f"PROXY v2 header length {length} is over the limit of {MAX_V2_LENGTH}")
    family = buffer[13]
    if command == _V2_PROXY and length < (needed := _v2_needed(family)):
        raise ProxyHeaderError(
            f"PROXY v2 address block is {length} bytes, family 0x{family:02x} needs {needed}"
        )
    used = V2_FIXED + length
    if len(buffer) < used:
        return None
    if command == _V2_LOCAL:  # the spec: use the real endpoints and ignore the block, family included
        return ProxyInfo(None, None, 2), used
    return _v2_addresses(family, bytes(buffer[V2_FIXED:used])), used


def _v2_command(version_command: int) -> int:
    if version_command >> 4 != 2:
        raise ProxyHeaderError(f"PROXY v2 version must be 2, not {version_command >> 4}")
    command = version_command & 0x0F
    if command not in (_V2_LOCAL, _V2_PROXY):
        raise ProxyHeaderError(f"PROXY v2 command must be LOCAL (0) or PROXY (1), not {command}")
    return command


def _v2_needed(family: int) -> int:
    """The address block length a PROXY command's family/protocol byte needs; refuses what we don't take."""
    if family in _V2_DGRAM:
        raise ProxyHeaderError(f"PROXY v2 {_V2_DGRAM[family]} is not a stream; SMTP needs one")
    if family not in _V2_FAMILIES:
        raise ProxyHeaderError(f"PROXY v2 family/protocol 0x{family:02x} is not defined")
    return _V2_FAMILIES[family]


def _v2_addresses(family: int, block: bytes) -> ProxyInfo:
    """The client in a complete address block; anything after the addresses (TLVs) is skipped."""
    client: IPAddress
    if family == 0x11:
        client, port = ipaddress.IPv4Address(block[:4]), int.from_bytes(block[8:10], "big")
    elif family == 0x21:
        client, port = ipaddress.IPv6Address(block[:16]), int.from_bytes(block[32:34], "big")
    else:  # AF_UNSPEC or AF_UNIX: no IP client to report
        return ProxyInfo(None, None, 2)
    return ProxyInfo(_unmap(client), port, 2)


def _unmap(address: IPAddress) -> IPAddress:
    """Report an IPv4-mapped IPv6 address (::ffff:a.b.c.d) as the IPv4 address it carries."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
