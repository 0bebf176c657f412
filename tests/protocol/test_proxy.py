"""The PROXY protocol header parser (v1 text, v2 binary): bytes in, (ProxyInfo, length) or an error out."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtp_tarpit.protocol.proxy import (
    MAX_V1_LENGTH,
    MAX_V2_LENGTH,
    ProxyHeaderError,
    ProxyInfo,
    parse_proxy_header,
)

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
SMTP = b"EHLO client.example\r\n"
LOCAL, PROXY = 0x20, 0x21
TCP4, UDP4, TCP6, UDP6, UNIX_STREAM, UNIX_DGRAM, UNSPEC = 0x11, 0x12, 0x21, 0x22, 0x31, 0x32, 0x00


def v2(ver_cmd: int, family: int, block: bytes, length: int | None = None) -> bytes:
    size = len(block) if length is None else length
    return SIG + bytes([ver_cmd, family]) + struct.pack("!H", size) + block


def inet_block(src: str, dst: str, sport: int, dport: int) -> bytes:
    return ip_address(src).packed + ip_address(dst).packed + struct.pack("!HH", sport, dport)


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def parsed(buffer: bytes) -> tuple[ProxyInfo, int]:
    result = parse_proxy_header(buffer)
    assert result is not None
    return result


def outcome(buffer: bytes) -> object:
    """The parser's answer as a comparable value: None, the tuple, or the error type."""
    try:
        return parse_proxy_header(buffer)
    except ProxyHeaderError:
        return ProxyHeaderError


# --- valid headers -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "info"),
    [
        (b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n", ProxyInfo(IPv4Address("192.0.2.7"), 40000, 1)),
        (b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n", ProxyInfo(IPv4Address("0.0.0.0"), 0, 1)),
        (b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 25\r\n", ProxyInfo(IPv6Address("2001:db8::7"), 40000, 1)),
        (
            b"PROXY TCP6 2001:0DB8:0000:0000:0000:0000:0000:0007 ::1 1 2\r\n",
            ProxyInfo(IPv6Address("2001:db8::7"), 1, 1),
        ),
        (b"PROXY TCP6 ::ffff:192.0.2.7 ::1 5 6\r\n", ProxyInfo(IPv4Address("192.0.2.7"), 5, 1)),
        (b"PROXY UNKNOWN\r\n", ProxyInfo(None, None, 1)),
        (b"PROXY UNKNOWN ffff::1 ffff::2 65535 65535\r\n", ProxyInfo(None, None, 1)),
        (b"PROXY UNKNOWN \x00\xff anything at all\r\n", ProxyInfo(None, None, 1)),
    ],
)
def test_a_valid_v1_line_gives_the_client_and_its_exact_length(header: bytes, info: ProxyInfo) -> None:
    assert parse_proxy_header(header + SMTP) == (info, len(header))


def test_the_longest_v1_line_the_spec_allows_is_accepted() -> None:
    header = b"PROXY UNKNOWN " + b"x" * (MAX_V1_LENGTH - 16) + b"\r\n"
    assert len(header) == MAX_V1_LENGTH
    assert parse_proxy_header(header) == (ProxyInfo(None, None, 1), MAX_V1_LENGTH)


def test_v2_proxy_over_ipv4_gives_the_source_address_and_port() -> None:
    header = v2(PROXY, TCP4, inet_block("203.0.113.9", "192.0.2.1", 51234, 25))
    assert parse_proxy_header(header + SMTP) == (ProxyInfo(IPv4Address("203.0.113.9"), 51234, 2), 28)


def test_v2_proxy_over_ipv6_gives_the_source_address_and_port() -> None:
    header = v2(PROXY, TCP6, inet_block("2001:db8::9", "2001:db8::1", 65535, 25))
    assert parse_proxy_header(header + SMTP) == (ProxyInfo(IPv6Address("2001:db8::9"), 65535, 2), 52)


def test_v2_ipv4_mapped_source_is_reported_as_ipv4() -> None:
    header = v2(PROXY, TCP6, inet_block("::ffff:203.0.113.9", "::1", 7, 25))
    assert parsed(header)[0].client == IPv4Address("203.0.113.9")


@pytest.mark.parametrize(
    "header",
    [
        v2(LOCAL, UNSPEC, b""),
        v2(LOCAL, TCP4, inet_block("192.0.2.1", "192.0.2.2", 1, 2)),
        v2(LOCAL, UNSPEC, b"\x99" * 40),  # the block is skipped by its length, whatever it holds
        v2(LOCAL, 0xFF, b""),  # the spec: for LOCAL, the family is ignored
    ],
)
def test_v2_local_is_a_health_check_from_the_balancer_with_no_client(header: bytes) -> None:
    assert parse_proxy_header(header + SMTP) == (ProxyInfo(None, None, 2), len(header))


def test_v2_unspec_and_unix_families_carry_no_ip_client() -> None:
    for header in (v2(PROXY, UNSPEC, b""), v2(PROXY, UNSPEC, b"junk"), v2(PROXY, UNIX_STREAM, b"\0" * 216)):
        assert parse_proxy_header(header + SMTP) == (ProxyInfo(None, None, 2), len(header))


def test_v2_tlvs_after_the_addresses_are_skipped() -> None:
    tlvs = tlv(0x01, b"smtp") + tlv(0x04, b"") + tlv(0x20, b"\x01\0\0\0\0" + tlv(0x21, b"TLSv1.3"))
    header = v2(PROXY, TCP4, inet_block("192.0.2.7", "192.0.2.1", 40000, 25) + tlvs)
    assert parse_proxy_header(header + SMTP) == (ProxyInfo(IPv4Address("192.0.2.7"), 40000, 2), len(header))


def test_v2_header_at_the_length_limit_is_accepted() -> None:
    header = v2(PROXY, TCP4, inet_block("192.0.2.7", "192.0.2.1", 1, 2) + b"\0" * (MAX_V2_LENGTH - 12))
    assert parsed(header) == (ProxyInfo(IPv4Address("192.0.2.7"), 1, 2), 16 + MAX_V2_LENGTH)


def test_bytes_after_the_header_are_left_for_smtp() -> None:
    for header in (b"PROXY UNKNOWN\r\n", v2(PROXY, TCP4, inet_block("192.0.2.7", "192.0.2.1", 1, 2))):
        stream = header + SIG + b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n" + SMTP
        _, used = parsed(stream)
        assert stream[used:] == SIG + b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n" + SMTP


@pytest.mark.parametrize(
    "partial",
    [
        b"",
        b"P",
        b"PROXY",
        b"PROXY TCP4 192.0.2.7",
        b"PROXY UNKNOWN\r",
        SIG[:1],
        SIG[:5],
        SIG,
        SIG + b"\x21\x11",
    ],
)
def test_an_incomplete_header_asks_for_more_bytes(partial: bytes) -> None:
    assert parse_proxy_header(partial) is None


def test_an_incomplete_v2_address_block_asks_for_more_bytes() -> None:
    header = v2(PROXY, TCP6, inet_block("2001:db8::9", "2001:db8::1", 1, 25) + tlv(0x05, b"id"))
    for size in range(len(header)):
        assert parse_proxy_header(header[:size]) is None


# --- malformed headers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"EHLO x\r\n",
        b"E",
        b"HELO mx.example\r\n",
        b"proxy TCP4 192.0.2.7 192.0.2.1 1 2\r\n",
        b"PROXY\r\n",
        b"PROXY\tTCP4",
        b"\r\n\r\n\r\n",  # a client sending blank lines is not a v2 signature
        b"\r\n\r\n\x00\r\nQUIT\r",
        b"\x16\x03\x01\x02\x00",  # a TLS ClientHello
        b"\x00",
    ],
)
def test_anything_but_a_proxy_signature_is_refused_at_once(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(data)


def test_a_direct_smtp_client_is_refused_on_its_first_byte() -> None:
    with pytest.raises(ProxyHeaderError, match="not a PROXY protocol header"):
        parse_proxy_header(b"E")


@pytest.mark.parametrize(
    "line",
    [
        # protocol
        b"PROXY TCP5 192.0.2.7 192.0.2.1 1 2",
        b"PROXY tcp4 192.0.2.7 192.0.2.1 1 2",
        b"PROXY UDP4 192.0.2.7 192.0.2.1 1 2",
        b"PROXY UNKNOWNX",
        b"PROXY ",
        b"PROXY TCP4",
        # field count and spacing
        b"PROXY TCP4 192.0.2.7 192.0.2.1 1",
        b"PROXY TCP4 192.0.2.7 192.0.2.1 1 2 3",
        b"PROXY  TCP4 192.0.2.7 192.0.2.1 1 2",
        b"PROXY TCP4  192.0.2.7 192.0.2.1 1 2",
        b"PROXY TCP4 192.0.2.7 192.0.2.1  1 2",
        b"PROXY TCP4 192.0.2.7 192.0.2.1 1 2 ",
        b"PROXY TCP4 192.0.2.7\t192.0.2.1 1 2",
        # IPv4 addresses
        b"PROXY TCP4 192.0.2.256 192.0.2.1 1 2",
        b"PROXY TCP4 192.0.2 192.0.2.1 1 2",
        b"PROXY TCP4 192.0.2.7.1 192.0.2.1 1 2",
        b"PROXY TCP4 192.0.02.7 192.0.2.1 1 2",
        b"PROXY TCP4 0x7f.0.0.1 192.0.2.1 1 2",
        b"PROXY TCP4 3221225991 192.0.2.1 1 2",
        b"PROXY TCP4 192.0.2.7 192.0.2.1.0 1 2",
        b"PROXY TCP4 2001:db8::1 192.0.2.1 1 2",
        b"PROXY TCP4 192.0.2.7 ::1 1 2",
        b"PROXY TCP4 \xd9\xa1.0.0.1 192.0.2.1 1 2",  # an Arabic-Indic digit
        # IPv6 addresses
        b"PROXY TCP6 192.0.2.7 ::1 1 2",
        b"PROXY TCP6 ::1 192.0.2.1 1 2",
        b"PROXY TCP6 fe80::1%eth0 ::1 1 2",
        b"PROXY TCP6 [::1] ::1 1 2",
        b"PROXY TCP6 2001:db8:::1 ::1 1 2",
        b"PROXY TCP6 2001:db8::1::2 ::1 1 2",
        b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2",
        b"PROXY TCP6 12345::1 ::1 1 2",
        b"PROXY TCP6 g::1 ::1 1 2",
        # ports
        b"PROXY TCP4 192.0.2.7 192.0.2.1 65536 25",
        b"PROXY TCP4 192.0.2.7 192.0.2.1 25 65536",
        b"PROXY TCP4 192.0.2.7 192.0.2.1 -1 25",
        b"PROXY TCP4 192.0.2.7 192.0.2.1 +1 25",
        b"PROXY TCP4 192.0.2.7 192.0.2.1 025 25",
        b"PROXY TCP4 192.0.2.7 192.0.2.1 00 25",
        b"PROXY TCP4 192.0.2.7 192.0.2.1 1_000 25",
        b"PROXY TCP4 192.0.2.7 192.0.2.1 0x19 25",
        b"PROXY TCP4 192.0.2.7 192.0.2.1 999999 25",
        b"PROXY TCP4 192.0.2.7 192.0.2.1 25 ",
        b"PROXY TCP4 192.0.2.7 192.0.2.1 \xd9\xa1 25",
    ],
)
def test_a_malformed_v1_line_is_refused(line: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(line + b"\r\n" + SMTP)


def test_v1_line_ending_in_lf_without_cr_is_refused() -> None:
    with pytest.raises(ProxyHeaderError, match="LF without CR"):
        parse_proxy_header(b"PROXY UNKNOWN\n")


def test_v1_line_with_cr_not_followed_by_lf_is_refused() -> None:
    with pytest.raises(ProxyHeaderError, match="CR without LF"):
        parse_proxy_header(b"PROXY UNKNOWN\rEHLO")


def test_v1_line_without_crlf_in_107_bytes_is_refused() -> None:
    line = b"PROXY UNKNOWN " + b"x" * 200
    assert parse_proxy_header(line[: MAX_V1_LENGTH - 1]) is None
    with pytest.raises(ProxyHeaderError, match="no CRLF within 107"):
        parse_proxy_header(line[:MAX_V1_LENGTH])


def test_v1_line_of_108_bytes_is_refused_as_soon_as_its_cr_is_seen() -> None:
    line = b"PROXY UNKNOWN " + b"x" * (MAX_V1_LENGTH - 15) + b"\r\n"
    assert len(line) == MAX_V1_LENGTH + 1
    with pytest.raises(ProxyHeaderError, match="longer than 107"):
        parse_proxy_header(line[:MAX_V1_LENGTH])


def test_v2_wrong_signature_is_refused() -> None:
    header = v2(PROXY, TCP4, inet_block("192.0.2.7", "192.0.2.1", 1, 2))
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(header[:10] + b"X" + header[11:])


@pytest.mark.parametrize("ver_cmd", [0x11, 0x31, 0x01, 0xF1, 0x22, 0x2F])
def test_v2_wrong_version_or_command_is_refused_as_soon_as_that_byte_arrives(ver_cmd: int) -> None:
    with pytest.raises(ProxyHeaderError, match=r"version|command"):
        parse_proxy_header(SIG + bytes([ver_cmd]))


@pytest.mark.parametrize("family", [UDP4, UDP6, UNIX_DGRAM])
def test_v2_datagram_protocols_are_refused(family: int) -> None:
    with pytest.raises(ProxyHeaderError, match="not a stream"):
        parse_proxy_header(SIG + bytes([PROXY, family]))
    with pytest.raises(ProxyHeaderError, match="not a stream"):
        parse_proxy_header(v2(PROXY, family, b"\0" * 216))


@pytest.mark.parametrize("family", [0x01, 0x10, 0x13, 0x20, 0x30, 0x41, 0xFF])
def test_v2_undefined_family_or_protocol_is_refused(family: int) -> None:
    with pytest.raises(ProxyHeaderError, match="not defined"):
        parse_proxy_header(SIG + bytes([PROXY, family]))


@pytest.mark.parametrize(
    ("family", "size"), [(TCP4, 11), (TCP6, 35), (TCP6, 12), (UNIX_STREAM, 215), (TCP4, 0)]
)
def test_v2_address_block_shorter_than_its_family_is_refused_from_the_length_alone(
    family: int, size: int
) -> None:
    with pytest.raises(ProxyHeaderError, match="address block"):
        parse_proxy_header(v2(PROXY, family, b"", length=size))


def test_v2_length_over_the_limit_is_refused_without_waiting_for_it() -> None:
    for size in (MAX_V2_LENGTH + 1, 0xFFFF):
        with pytest.raises(ProxyHeaderError, match="over the limit"):
            parse_proxy_header(v2(PROXY, TCP4, b"", length=size))
        with pytest.raises(ProxyHeaderError, match="over the limit"):
            parse_proxy_header(v2(LOCAL, UNSPEC, b"", length=size))


def test_error_messages_quote_only_a_short_printable_excerpt() -> None:
    with pytest.raises(ProxyHeaderError) as caught:
        parse_proxy_header(b"\x1b[31mEVIL\x00" + b"A" * 500)
    message = str(caught.value)
    assert len(message) < 80 and "\x1b" not in message and "\x00" not in message and "A" * 30 not in message
    with pytest.raises(ProxyHeaderError) as caught:
        parse_proxy_header(b"PROXY TCP6 \x1b\x00:: ::1 1 2\r\n")
    assert "\x1b" not in str(caught.value) and "\x00" not in str(caught.value)


# --- properties ----------------------------------------------------------------------------------------------

ports = st.integers(0, 0xFFFF)
ipv4 = st.ip_addresses(v=4)
ipv6 = st.ip_addresses(v=6)
tlvs = st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=4).map(
    lambda items: b"".join(tlv(kind, value) for kind, value in items)
)


def expected_client(address: IPv4Address | IPv6Address) -> IPv4Address | IPv6Address:
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@st.composite
def v1_headers(draw: st.DrawFn) -> tuple[bytes, ProxyInfo]:
    kind = draw(st.sampled_from(["TCP4", "TCP6", "UNKNOWN"]))
    if kind == "UNKNOWN":
        tail = draw(
            st.binary(max_size=MAX_V1_LENGTH - 15).filter(lambda b: b"\r" not in b and b"\n" not in b)
        )
        return b"PROXY UNKNOWN" + (b" " + tail if tail else b"") + b"\r\n", ProxyInfo(None, None, 1)
    family = ipv4 if kind == "TCP4" else ipv6
    src, dst, sport, dport = draw(family), draw(family), draw(ports), draw(ports)
    line = f"PROXY {kind} {src} {dst} {sport} {dport}\r\n".encode()
    return line, ProxyInfo(expected_client(src), sport, 1)


@st.composite
def v2_headers(draw: st.DrawFn) -> tuple[bytes, ProxyInfo]:
    kind = draw(st.sampled_from(["TCP4", "TCP6", "LOCAL", "UNSPEC", "UNIX"]))
    extra = draw(tlvs)
    if kind in ("TCP4", "TCP6"):
        family = ipv4 if kind == "TCP4" else ipv6
        src, dst, sport, dport = draw(family), draw(family), draw(ports), draw(ports)
        block = src.packed + dst.packed + struct.pack("!HH", sport, dport)
        header = v2(PROXY, TCP4 if kind == "TCP4" else TCP6, block + extra)
        return header, ProxyInfo(expected_client(src), sport, 2)
    if kind == "LOCAL":
        return v2(LOCAL, draw(st.integers(0, 255)), extra), ProxyInfo(None, None, 2)
    if kind == "UNIX":
        return v2(PROXY, UNIX_STREAM, draw(st.binary(min_size=216, max_size=216)) + extra), ProxyInfo(
            None, None, 2
        )
    return v2(PROXY, UNSPEC, extra), ProxyInfo(None, None, 2)


valid_headers = v1_headers() | v2_headers()


def mutated(header: bytes, position: int, value: int) -> bytes:
    position %= len(header)
    return header[:position] + bytes([value]) + header[position + 1 :]


starts = st.sampled_from(
    [
        b"",
        SIG,
        SIG + b"\x21",
        SIG + b"\x21\x11",
        SIG + b"\x20",
        b"PROXY ",
        b"PROXY TCP4 ",
        b"PROXY TCP6 ",
        b"PROXY UNKNOWN",
    ]
)
any_input = (
    st.binary(max_size=300)
    | st.builds(bytes.__add__, starts, st.binary(max_size=200))
    | st.builds(
        lambda h, p, v, t: mutated(h[0], p, v) + t,
        valid_headers,
        st.integers(0),
        st.integers(0, 255),
        st.binary(max_size=20),
    )
)


@given(any_input)
def test_any_bytes_give_none_a_header_or_proxy_header_error_and_chunking_never_matters(data: bytes) -> None:
    outcomes = [outcome(data[:size]) for size in range(len(data) + 1)]  # raises if anything else escapes
    settled = [answer for answer in outcomes if answer is not None]
    assert outcomes[: len(outcomes) - len(settled)] == [None] * (len(outcomes) - len(settled))
    assert all(answer == settled[0] for answer in settled)
    for answer in settled:
        if answer is not ProxyHeaderError:
            assert isinstance(answer, tuple) and 0 < answer[1] <= len(data)


@given(valid_headers, st.binary(max_size=64))
def test_growing_prefixes_of_a_valid_header_give_none_then_the_same_answer(
    header_info: tuple[bytes, ProxyInfo], tail: bytes
) -> None:
    header, info = header_info
    stream = header + tail
    for size in range(len(header)):
        assert parse_proxy_header(stream[:size]) is None
    for size in range(len(header), len(stream) + 1):
        assert parse_proxy_header(stream[:size]) == (info, len(header))


@given(st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6)), ports, ports, tlvs, st.binary(max_size=32))
def test_v2_headers_from_random_addresses_and_ports_round_trip(
    addresses: tuple[IPv4Address, IPv4Address] | tuple[IPv6Address, IPv6Address],
    sport: int,
    dport: int,
    extra: bytes,
    tail: bytes,
) -> None:
    src, dst = addresses
    family = TCP4 if isinstance(src, IPv4Address) else TCP6
    header = v2(PROXY, family, src.packed + dst.packed + struct.pack("!HH", sport, dport) + extra)
    info, used = parsed(header + tail)
    assert used == len(header)
    assert (info.client, info.client_port, info.version) == (expected_client(src), sport, 2)
    assert info.client == src or (isinstance(src, IPv6Address) and src.ipv4_mapped == info.client)
