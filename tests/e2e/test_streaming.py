"""A long message goes on its way while it arrives: to the Maildir's tmp file, or to the downstream MTA,
whose transaction opens at the client's 354. A message the client abandons leaves nothing behind."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import time
from collections.abc import Callable
from typing import BinaryIO

from tests.e2e import downstream
from tests.e2e.downstream import PostfixInstance
from tests.e2e.helpers import RunningServer

make_postfix = downstream.make_postfix
postfix = downstream.postfix

LINE = b"x" * 70 + b"\r\n"
HALF = LINE * 8000  # ~570 KB: many parts of 64 KiB


def _until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def _open_data(server: RunningServer) -> tuple[socket.socket, BinaryIO]:
    sock = socket.create_connection((server.host, server.port), timeout=30)
    reader = sock.makefile("rb")
    assert reader.readline().startswith(b"220")
    sock.sendall(b"HELO c.test\r\nMAIL FROM:<s@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    assert [reader.readline()[:3] for _ in range(4)] == [b"250", b"250", b"250", b"354"]
    return sock, reader


def _tmp_sizes(server: RunningServer) -> list[int]:
    tmp = server.maildir / "example.test" / "alice" / "tmp"
    sizes = []
    for path in tmp.iterdir() if tmp.is_dir() else ():
        with contextlib.suppress(FileNotFoundError):  # the server may remove it meanwhile
            sizes.append(path.stat().st_size)
    return sizes


def test_a_long_message_is_written_to_disk_while_it_arrives(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server()
    sock, reader = _open_data(server)
    with sock, reader:
        sock.sendall(b"Subject: long\r\n\r\n..dot\r\n" + HALF)
        # Half the text is on disk (LF line ends) before the client has sent the rest.
        assert _until(lambda: sum(_tmp_sizes(server)) >= len(HALF) * 0.8)
        assert server.messages() == []
        sock.sendall(HALF + b".\r\n")
        assert reader.readline().startswith(b"250 2.0.0 Ok: queued as ")
    [stored] = server.messages()
    body = stored.split(b"\n\n", 1)[1]
    assert body == (b".dot\n" + HALF + HALF).replace(b"\r\n", b"\n")
    assert _tmp_sizes(server) == []


def test_a_message_abandoned_halfway_leaves_nothing(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server()
    sock, reader = _open_data(server)
    with sock, reader:
        sock.sendall(b"Subject: never ends\r\n\r\n" + HALF)
        assert _until(lambda: sum(_tmp_sizes(server)) > 0)
    assert _until(lambda: _tmp_sizes(server) == [])  # the client hung up: the tmp file went
    assert server.messages() == []
    server.wait_for_log(r"session end .*outcome=disconnect")


def test_a_message_refused_halfway_leaves_nothing(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(limits={"text_line": 1000})
    sock, reader = _open_data(server)
    with sock, reader:
        sock.sendall(
            b"Subject: too long a line later\r\n\r\n" + HALF + b"y" * 2000 + b"\r\n" + HALF + b".\r\n"
        )
        assert reader.readline().startswith(b"554 5.6.0")
        sock.sendall(b"QUIT\r\n")
        assert reader.readline().startswith(b"221")
    assert _until(lambda: _tmp_sizes(server) == [])
    assert server.messages() == []


def _postfix_front(make_server, target: PostfixInstance) -> RunningServer:  # type: ignore[no-untyped-def]
    return make_server(delivery={"relay": f"smtp://127.0.0.1:{target.port}", "relay_timeout": "10s"})


def test_the_downstream_transaction_opens_at_354_and_the_text_streams(
    make_server, postfix: PostfixInstance
) -> None:  # type: ignore[no-untyped-def]
    front = _postfix_front(make_server, postfix)
    sock, reader = _open_data(front)
    with sock, reader:
        # Postfix logs its queue id with the client at the first accepted RCPT: the downstream transaction
        # is open while our client has not sent a byte of text yet.
        postfix.wait_for_log(r"[0-9A-F]{6,}: client=localhost\[127\.0\.0\.1\]")
        text = b"Subject: streamed\r\n\r\n..leading dot\r\n" + HALF + HALF  # dot-stuffed by the client
        sock.sendall(text + b".\r\n")
        assert reader.readline().startswith(b"250 2.0.0 Ok: queued as ")
    [stored] = postfix.wait_for_messages("alice@example.test", 1)
    body = stored.split(b"\n\n", 1)[1]
    expected = b".leading dot\n" + (HALF + HALF).replace(b"\r\n", b"\n")
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(expected).hexdigest()


def test_a_client_gone_mid_message_delivers_nothing_downstream(make_server, postfix: PostfixInstance) -> None:  # type: ignore[no-untyped-def]
    front = _postfix_front(make_server, postfix)
    sock, reader = _open_data(front)
    with sock, reader:
        sock.sendall(b"Subject: never ends\r\n\r\n" + HALF)
        postfix.wait_for_log(r"client=localhost\[127\.0\.0\.1\]")
        time.sleep(0.3)
    postfix.wait_for_log(r"lost connection after DATA")
    time.sleep(0.5)
    assert postfix.messages("alice@example.test") == []
    # The next client is served normally (and may reuse a pooled connection).
    sock, reader = _open_data(front)
    with sock, reader:
        sock.sendall(b"Subject: fine\r\n\r\nok\r\n.\r\n")
        assert reader.readline().startswith(b"250 ")
    assert len(postfix.wait_for_messages("alice@example.test", 1)) == 1
