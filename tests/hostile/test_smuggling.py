"""SMTP smuggling, every known fake end of data, in the core (bytes in, bytes out) and against a real server
writing a Maildir: never a second message, never an early end, and the session goes on cleanly after.

The attack: a message whose text holds a fake end of data, then the commands of a second message (to bob,
from our own domain) and its real end. A server that took the fake end for a real one would deliver two
messages; we must deliver one, to alice, holding all of it (``bare_newline = "normalize"``: every bare CR
or LF becomes a line break), or refuse it whole (``"reject"``: 554 5.5.2).
"""

from __future__ import annotations

import pytest

from smtp_tarpit.protocol import Features, Limits, SmtpConnection, replies
from tests.hostile.conftest import ServerPool
from tests.hostile.transcript import HOST, SessionModel, delivered_since, drain, maildir_files
from tests.hostile.wire import Client, check_replies

# The fake end, and what it becomes in the stored message under "normalize" (CRLF lines). Where the fake
# end starts with a real CRLF, the "." begins a line of its own that has more on it: RFC 5321 4.5.2 takes
# it for a stuffed dot and removes it; anywhere else the dot stays, on a line of its own.
VECTORS: dict[str, tuple[bytes, bytes]] = {
    "LF.LF": (b"\n.\n", b"\r\n.\r\n"),
    "CR.CR": (b"\r.\r", b"\r\n.\r\n"),
    "CR.LF": (b"\r.\n", b"\r\n.\r\n"),
    "LF.CR": (b"\n.\r", b"\r\n.\r\n"),
    "LF.CRLF": (b"\n.\r\n", b"\r\n.\r\n"),
    "CRLF.LF": (b"\r\n.\n", b"\r\n\r\n"),
    "CR.CRLF": (b"\r.\r\n", b"\r\n.\r\n"),
    "CRLF.CR": (b"\r\n.\r", b"\r\n\r\n"),
    "CRLF-NUL.CRLF": (b"\r\n\x00.\r\n", b"\r\n\x00.\r\n"),
    "CRLF.CR-CRLF": (b"\r\n.\r\r\n", b"\r\n\r\n\r\n"),
    "CR-CRLF.CR-CRLF": (b"\r\r\n.\r\r\n", b"\r\n\r\n\r\n\r\n"),
}
HEAD = b"Subject: smuggling\r\n\r\nfirst"
SMUGGLED = (
    b"MAIL FROM:<admin@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
    b"From: admin@example.test\r\nSubject: smuggled\r\n\r\nowned\r\n"
)
TRANSACTION = b"MAIL FROM:<sender@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
START = b"250 2.1.0 Sender ok\r\n250 2.1.5 Recipient ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
CLEAN = TRANSACTION.replace(b"alice", b"bob") + b"Subject: clean\r\n\r\nclean\r\n.\r\n"


# The NUL vector holds no bare CR or LF: "reject" refuses it with its own reply.
def refusal(vector: str) -> bytes:
    return (replies.NUL_IN_TEXT if b"\x00" in VECTORS[vector][0] else replies.BARE_NEWLINE).wire


def attack(vector: bytes) -> bytes:
    return HEAD + vector + SMUGGLED + b".\r\n"


def stored(vector: str) -> bytes:
    """The message as the client meant it, under "normalize", with CRLF line ends."""
    return HEAD + VECTORS[vector][1] + SMUGGLED


def _reject_cases() -> list[object]:
    return [pytest.param(name, id=name) for name in VECTORS]


# --- the core ------------------------------------------------------------------------------------------------


def _core(reject: bool) -> tuple[SmtpConnection, SessionModel]:
    conn = SmtpConnection(Limits(reject_bare_newline=reject), Features())
    conn.send(replies.greeting(HOST))
    model = SessionModel()
    conn.receive_data(b"HELO client.example\r\n")
    assert drain(conn, model) == replies.helo(HOST).wire
    return conn, model


def _core_attack(conn: SmtpConnection, model: SessionModel, data: bytes, split: int | None) -> bytes:
    out = bytearray()
    for part in (data, b"") if split is None else (data[:split], data[split:]):
        conn.receive_data(part)
        out += drain(conn, model)
    check_replies(bytes(out))
    return bytes(out)


@pytest.mark.parametrize("vector", VECTORS)
@pytest.mark.parametrize("split", [None, "inside", "bytewise"])
def test_core_normalize_makes_one_whole_message(vector: str, split: str | None) -> None:
    conn, model = _core(reject=False)
    data = TRANSACTION + attack(VECTORS[vector][0])
    if split == "bytewise":
        out = b"".join(_core_attack(conn, model, data[i : i + 1], None) for i in range(len(data)))
    else:
        inside = len(TRANSACTION + HEAD) + 2 if split == "inside" else None
        out = _core_attack(conn, model, data, inside)
    assert out == START + replies.queued("C0DE0001").wire
    assert model.delivered == [("alice@example.test", stored(vector))]
    conn.receive_data(CLEAN)
    assert drain(conn, model) == START + replies.queued("C0DE0001").wire
    assert [mailbox for mailbox, _ in model.delivered] == ["alice@example.test", "bob@example.test"]


@pytest.mark.parametrize("vector", _reject_cases())
def test_core_reject_refuses_the_whole_message(vector: str) -> None:
    conn, model = _core(reject=True)
    out = _core_attack(conn, model, TRANSACTION + attack(VECTORS[vector][0]), None)
    assert out == START + refusal(vector)
    assert model.delivered == []
    conn.receive_data(CLEAN)
    assert drain(conn, model) == START + replies.queued("C0DE0001").wire
    assert model.delivered == [("bob@example.test", b"Subject: clean\r\n\r\nclean\r\n")]


@pytest.mark.parametrize("vector", VECTORS)
def test_core_never_ends_data_early_however_the_bytes_arrive(vector: str) -> None:
    # Every prefix of the attack, fed on its own: no event may come out before the real end is complete.
    text = attack(VECTORS[vector][0])
    for cut in range(len(HEAD), len(text)):
        conn, model = _core(reject=False)
        conn.receive_data(TRANSACTION)
        assert drain(conn, model) == START
        conn.receive_data(text[:cut])
        assert drain(conn, model) == b"", f"data ended after {text[:cut]!r}"
        conn.receive_data(text[cut:])
        assert drain(conn, model) == replies.queued("C0DE0001").wire
        assert model.delivered == [("alice@example.test", stored(vector))]


# --- a real server with a Maildir ------------------------------------------------------------------------------


def _send_attack(client: Client, vector: bytes) -> bytes:
    assert client.reply().startswith(b"220 ")
    assert client.command(b"HELO client.example") == f"250 {HOST}\r\n".encode()
    client.send(TRANSACTION)
    assert client.lines(3) == START
    client.send(attack(vector))
    return client.reply()


@pytest.mark.parametrize("vector", VECTORS)
def test_server_stores_exactly_one_message_under_normalize(vector: str, servers: ServerPool) -> None:
    server = servers.get()
    before = maildir_files(server)
    with Client(server.host, server.port) as client:
        final = _send_attack(client, VECTORS[vector][0])
        assert final.startswith(b"250 2.0.0 Ok: queued as ")
        client.send(CLEAN)
        assert client.lines(3) == START
        assert client.reply().startswith(b"250 2.0.0 Ok: queued as ")
        assert client.command(b"QUIT") == replies.bye(HOST).wire
    assert sorted(delivered_since(server, before)) == [
        ("alice@example.test", stored(vector).replace(b"\r\n", b"\n")),
        ("bob@example.test", b"Subject: clean\n\nclean\n"),
    ]


@pytest.mark.parametrize("vector", _reject_cases())
def test_server_refuses_the_message_under_reject(vector: str, servers: ServerPool) -> None:
    server = servers.get({"server": {"bare_newline": "reject"}})
    before = maildir_files(server)
    with Client(server.host, server.port) as client:
        assert _send_attack(client, VECTORS[vector][0]) == refusal(vector)
        client.send(CLEAN)
        assert client.lines(3) == START
        assert client.reply().startswith(b"250 2.0.0 Ok: queued as ")
    assert delivered_since(server, before) == [("bob@example.test", b"Subject: clean\n\nclean\n")]
