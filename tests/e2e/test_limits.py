"""Per-session and server-wide limits on the wire: junk commands, slow commands, slow data, free disk,
overload mode."""

from __future__ import annotations

import os
import select
import smtplib
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest

from tests.e2e.helpers import RunningServer
from tests.polling import wait_until


def _connect(server: RunningServer) -> tuple[socket.socket, BinaryIO]:
    sock = socket.create_connection((server.host, server.port), timeout=10)
    reader = sock.makefile("rb")
    assert reader.readline().startswith(b"220 ")
    return sock, reader


def test_junk_commands_beyond_the_limit_close_the_session(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(limits={"junk_commands": 3})
    sock, reader = _connect(server)
    with sock, reader:
        sock.sendall(b"EHLO c.test\r\n" + b"NOOP\r\n" * 4)
        lines = reader.readlines()
    assert [line[:3] for line in lines if line[3:4] == b" "] == [b"250"] * 4 + [b"421"]
    assert lines[-1] == b"421 4.7.0 Too many commands without mail, closing connection\r\n"
    with smtplib.SMTP(server.host, server.port, timeout=10) as smtp:  # the server is fine
        assert smtp.sendmail("s@remote.test", ["alice@example.test"], b"Subject: x\r\n\r\nhi\r\n") == {}


def test_a_command_sent_a_byte_at_a_time_is_cut_at_the_command_timeout(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(limits={"command_timeout": "1s"})
    sock, reader = _connect(server)
    started = time.monotonic()
    with sock, reader:
        for byte in b"EHLO slowloris.test":  # never silent for more than 0.2 s, never finished
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.2)
        line = reader.readline()
    assert line == b"421 4.4.2 Command not completed in time, closing connection\r\n"
    assert 0.9 <= time.monotonic() - started < 4.5
    server.wait_for_log(r"session end .*outcome=too-slow")


def test_message_data_below_the_minimum_rate_is_cut(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(limits={"command_timeout": "1s", "min_data_rate": 1000})
    sock, reader = _connect(server)
    with sock, reader:
        sock.sendall(b"HELO c.test\r\nMAIL FROM:<s@r.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        assert [reader.readline()[:3] for _ in range(4)] == [b"250", b"250", b"250", b"354"]
        started = time.monotonic()
        closed = b""
        for _ in range(40):  # 10 octets every 0.1 s: 100 octets/s, a tenth of the minimum
            try:
                sock.sendall(b"x" * 8 + b"\r\n")
            except OSError:
                break
            if select.select([sock], [], [], 0.1)[0]:
                closed = sock.recv(200)  # the 354 line was read whole: nothing else is buffered
                break
    assert closed == b"421 4.4.2 Message data too slow, closing connection\r\n"
    assert 0.9 <= time.monotonic() - started < 3.5
    assert server.messages() == []  # nothing half-received was delivered


def test_mail_gets_452_while_the_maildir_disk_is_below_min_free_space(tmp_path: Path, make_server) -> None:  # type: ignore[no-untyped-def]
    stat = os.statvfs(tmp_path)
    free = stat.f_bavail * stat.f_frsize
    if free > 1000 * 2**30:
        pytest.skip("more than 1000 GiB free here: cannot ask for more than there is")
    server = make_server(limits={"min_free_space": free + 2**30})
    server.wait_for_log(r"MiB free, below \[limits\] min_free_space")
    with smtplib.SMTP(server.host, server.port, timeout=10) as smtp:
        smtp.ehlo("c.test")
        assert smtp.mail("s@remote.test") == (
            452,
            b"4.3.1 Insufficient system storage, please try again later",
        )


def test_overload_mode_on_shortens_timeouts_and_closes_at_the_first_error(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(limits={"overload": "on", "overload_idle_timeout": "1s"})
    with smtplib.SMTP(server.host, server.port, timeout=10) as smtp:
        smtp.ehlo("c.test")
        smtp.mail("s@remote.test")
        assert smtp.rcpt("nobody@example.test")[0] == 421  # overload_hard_error_limit = 1
    sock, reader = _connect(server)
    with sock, reader:
        started = time.monotonic()
        assert reader.readline().startswith(b"421 4.4.2 Idle timeout")
        assert time.monotonic() - started < 3.0


def test_connections_per_network_counts_the_whole_prefix(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(limits={"connections_per_network": 2})
    opened = []
    try:
        for source in ("127.0.1.2", "127.0.1.3"):  # two hosts of one /24
            sock = socket.create_connection(
                (server.host, server.port), timeout=10, source_address=(source, 0)
            )
            opened.append(sock)
            assert sock.recv(200).startswith(b"220 ")
        third = socket.create_connection(
            (server.host, server.port), timeout=10, source_address=("127.0.1.4", 0)
        )
        with third:
            assert third.recv(200) == b"421 4.7.0 Too many connections, please try again later\r\n"
        other = socket.create_connection(
            (server.host, server.port), timeout=10, source_address=("127.0.2.5", 0)
        )
        with other:  # another network is not counted with them
            assert other.recv(200).startswith(b"220 ")
    finally:
        for sock in opened:
            sock.close()
    server.wait_for_log(r"refused client=127\.0\.1\.4 reason=connections_per_network")


def test_hundreds_of_hostile_sessions_do_not_lock_their_address_out_under_the_seed_tar_pit(
    make_server,
) -> None:  # type: ignore[no-untyped-def]
    server = make_server(tarpit={"delay": 0.01})  # the seed: a delay before every 5xx, nothing remembered
    hostile = (
        b"EHLO bot.test\r\nMAIL FROM:<x@bot.test>\r\nRCPT TO:<nobody@example.test>\r\n"
        b"RCPT TO:<victim@elsewhere.test>\r\nBOGUS\r\nVRFY root\r\nQUIT\r\n"
    )
    for _ in range(200):
        with socket.create_connection((server.host, server.port), timeout=10) as sock:
            sock.sendall(hostile)
            while sock.recv(4096):
                pass
    with smtplib.SMTP(server.host, server.port, timeout=10) as smtp:
        assert smtp.sendmail("s@remote.test", ["alice@example.test"], b"Subject: clean\r\n\r\nhi\r\n") == {}
    assert len(server.messages()) == 1


def test_overload_mode_engages_above_90_percent_and_ends_below_80(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(limits={"max_connections": 10, "connections_per_client": 10})
    opened = []
    try:
        for _ in range(9):
            sock = socket.create_connection((server.host, server.port), timeout=10)
            assert sock.recv(200).startswith(b"220 ")
            opened.append(sock)
        server.wait_for_log(r"overload: 9 of 10 connections: new sessions get idle timeout 10s")
        for sock in opened[:2]:
            sock.close()
        server.wait_for_log(r"overload over: 7 of 10 connections")
    finally:
        for sock in opened:
            sock.close()


def _in_data(server: RunningServer) -> tuple[socket.socket, BinaryIO]:
    """A session that has had its 354 and sent part of its message text."""
    sock, reader = _connect(server)
    sock.sendall(b"HELO c.test\r\nMAIL FROM:<s@r.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    assert [reader.readline()[:3] for _ in range(4)] == [b"250", b"250", b"250", b"354"]
    sock.sendall(b"Subject: slow\r\n\r\n" + b"x" * 200 + b"\r\n")
    return sock, reader


def _send(server: RunningServer) -> None:
    with smtplib.SMTP(server.host, server.port, timeout=10) as smtp:
        smtp.sendmail("s@remote.test", ["alice@example.test"], b"Subject: x\r\n\r\nhi\r\n")


def _sent(server: RunningServer) -> Callable[[], bool]:
    """A condition for wait_until: one message sent, or refused at DATA for want of room (False)."""

    def attempt() -> bool:
        try:
            _send(server)
        except smtplib.SMTPDataError:
            return False
        return True

    return attempt


def test_data_waits_for_room_when_message_memory_is_taken(make_server) -> None:  # type: ignore[no-untyped-def]
    # 1 MiB holds two messages in progress (each counted at a socket read, a part and a backlog).
    server = make_server(limits={"message_memory": "1MiB"})
    first, first_reader = _in_data(server)
    second, second_reader = _in_data(server)
    with pytest.raises(smtplib.SMTPDataError) as refused:
        _send(server)
    assert refused.value.smtp_code == 451
    assert refused.value.smtp_error == b"4.3.2 Too many messages in progress, please try again later"
    server.wait_for_log(r"message_memory taken by 2 messages in progress")
    with first, first_reader:  # a message that ends gives its room back
        first.sendall(b"\r\n.\r\nQUIT\r\n")
        assert first_reader.readline().startswith(b"250 2.0.0 Ok: queued as ")
    _send(server)
    server.wait_for_log(r"message memory free again")
    third, third_reader = _in_data(server)
    with pytest.raises(smtplib.SMTPDataError):
        _send(server)
    second.close()  # a client gone in the middle of its message gives its room back too
    second_reader.close()
    assert wait_until(_sent(server), timeout=10), "the room of a session gone in DATA never came back"
    third.close()
    third_reader.close()
    assert len(server.messages()) == 3  # the first message and the two sent when there was room
