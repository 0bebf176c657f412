"""Behind a load balancer: the PROXY header's client address is the one the tar pit judges."""

from __future__ import annotations

import ipaddress
import socket
import struct

from tests.e2e.helpers import RunningServer

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def _v2(client: str, port: int) -> bytes:
    addresses = ipaddress.ip_address(client).packed + ipaddress.ip_address("127.0.0.1").packed
    block = addresses + struct.pack("!HH", port, 25)
    return V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(block)) + block


def _dialogue(server: RunningServer, header: bytes, commands: bytes) -> list[bytes]:
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(header)
        reader = sock.makefile("rb")
        lines = [reader.readline()]
        sock.sendall(commands)
        while line := reader.readline():
            lines.append(line)
        reader.close()
        return lines


def test_the_real_client_behind_the_balancer_is_judged(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(
        server={"proxy_protocol_from": ["127.0.0.0/8"]}, harvest={"threshold": 2, "delay": 0}
    )
    probe = (
        b"HELO bot.test\r\nMAIL FROM:<s@r.test>\r\nRCPT TO:<a@example.test>\r\nRCPT TO:<b@example.test>\r\n"
    )
    lines = _dialogue(server, b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n", probe + b"QUIT\r\n")
    assert lines[0].startswith(b"220 ") and [line[:3] for line in lines[3:5]] == [b"550", b"450"]
    server.wait_for_log(r"harvest flag client=192\.0\.2\.7 key=ip:192\.0\.2\.7")
    # Another client behind the same balancer (v2 header, other /24) is not the harvester.
    ok = b"HELO mx.test\r\nMAIL FROM:<s@r.test>\r\nRCPT TO:<alice@example.test>\r\nQUIT\r\n"
    lines = _dialogue(server, _v2("198.51.100.9", 40001), ok)
    assert lines[3].startswith(b"250 2.1.5")
    server.wait_for_log(r"session end client=198\.51\.100\.9 ")


def test_a_connection_from_the_balancer_without_a_header_is_closed(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(server={"proxy_protocol_from": ["127.0.0.0/8"]})
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(b"EHLO sneaky.test\r\n")
        assert sock.recv(1024) == b""  # no SMTP reply: the connection is just closed
    server.wait_for_log("no valid PROXY header from 127.0.0.1")


def test_a_header_from_anyone_else_is_just_an_unknown_command(server: RunningServer) -> None:
    lines = _dialogue(server, b"", b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\nQUIT\r\n")
    assert lines[1].startswith(b"500 5.5.1")
