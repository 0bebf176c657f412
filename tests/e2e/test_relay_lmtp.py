"""LMTP delivery (RFC 2033): smtp-sink -L and a scripted LMTP server as downstreams, over TCP and a Unix socket.

The scripted server (:class:`FakeLmtp`) is a real asyncio server on 127.0.0.1 (or a Unix socket) in a thread
of the test: it answers each recipient after the data as told, which smtp-sink cannot (it gives every
recipient the same answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import smtplib
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from smtp_tarpit.delivery import DeliveryError, DownstreamRefusedError, Envelope, TargetUnavailableError
from smtp_tarpit.delivery.lmtp import LmtpDeliverer, wire_text
from smtp_tarpit.delivery.relay import RelayTarget, parse_relay
from tests.e2e import downstream
from tests.e2e.downstream import SmtpSink, start_smtp_sink
from tests.e2e.helpers import RunningServer

BODY = b"Subject: over lmtp\r\n\r\nline one\r\n.dot line\r\n..\r\nlast\r\n"

# ------------------------------------------------------------------------------------- a scripted LMTP server


@dataclass
class FakeLmtp:
    """Answers as scripted; records every command line and every message as it came over the wire."""

    lhlo: tuple[str, ...] = ("fake.example", "PIPELINING", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES")
    rcpt: dict[str, str] = field(default_factory=dict)  # recipient -> RCPT reply (default 250)
    final: dict[str, str] = field(default_factory=dict)  # recipient -> reply after the data (default 250)
    stall_at: str = ""  # a verb after which nothing is answered any more
    commands: list[str] = field(default_factory=list)
    wire: list[bytes] = field(default_factory=list)  # the data as sent, dot-stuffed, up to and with ".\r\n"
    opened: int = 0
    closed: int = 0
    most_at_once: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.opened += 1
        self.most_at_once = max(self.most_at_once, self.opened - self.closed)
        try:
            await self._dialogue(reader, writer)
        finally:
            writer.close()
            self.closed += 1

    async def _dialogue(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 fake.example LMTP\r\n")
        accepted: list[str] = []
        while line := await reader.readline():
            command = line.decode().rstrip("\r\n")
            self.commands.append(command)
            verb = command.split(" ", 1)[0].upper()
            if verb == self.stall_at:
                await reader.read()  # answer nothing, until the client hangs up
                return
            if verb == "LHLO":
                writer.write("".join(f"250-{x}\r\n" for x in self.lhlo[:-1]).encode())
                writer.write(f"250 {self.lhlo[-1]}\r\n".encode())
            elif verb == "RCPT":
                address = command[command.index("<") + 1 : command.rindex(">")]
                reply = self.rcpt.get(address, "250 2.1.5 Ok")
                if reply.startswith("2"):
                    accepted.append(address)
                writer.write(reply.encode() + b"\r\n")
            elif verb == "DATA":
                writer.write(b"354 go ahead\r\n")
                await self._data(reader, writer, accepted)
            elif verb == "QUIT":
                writer.write(b"221 2.0.0 Bye\r\n")
                break
            else:  # MAIL, RSET
                accepted.clear()
                writer.write(b"250 2.0.0 Ok\r\n")
            await writer.drain()

    async def _data(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, to: list[str]) -> None:
        wire = b""
        while not wire.endswith(b"\r\n.\r\n"):
            chunk = await reader.readline()
            if not chunk:
                return
            wire += chunk
        self.wire.append(wire)
        for recipient in to:
            if recipient in self.final:  # multi-line, to prove each reply is read whole
                code, text = self.final[recipient].split(" ", 1)
                writer.write(f"{code}-{text}\r\n{code} {recipient}\r\n".encode())
            else:
                writer.write(b"250 2.0.0 Ok: delivered\r\n")
        to.clear()


@contextlib.contextmanager
def running(fake: FakeLmtp, unix_path: str | None = None) -> Iterator[RelayTarget]:
    """Run ``fake`` in a thread with its own event loop on 127.0.0.1:<free port> (or ``unix_path``)."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    where: list[RelayTarget] = []
    stop = loop.create_future()

    async def serve() -> None:
        if unix_path:
            server = await asyncio.start_unix_server(fake.handle, unix_path)
            where.append(RelayTarget("lmtp", path=unix_path))
        else:
            server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
            where.append(RelayTarget("lmtp", "127.0.0.1", server.sockets[0].getsockname()[1]))
        started.set()
        async with server:
            await stop
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield where[0]
    finally:
        loop.call_soon_threadsafe(stop.set_result, None)
        thread.join(10)
        loop.close()


def _envelope(*recipients: str, sender: str = "s@remote.test", smtputf8: bool = False) -> Envelope:
    return Envelope("id1", sender, recipients, recipients, smtputf8=smtputf8)


def _deliver(
    target: RelayTarget,
    message: bytes,
    *recipients: str,
    sender: str = "s@remote.test",
    smtputf8: bool = False,
) -> None:
    deliverer = LmtpDeliverer(target, hostname="mx.example.test", timeout=2.0)
    asyncio.run(deliverer.deliver(_envelope(*recipients, sender=sender, smtputf8=smtputf8), message))


def _wait_closed(fake: FakeLmtp) -> None:
    deadline = time.monotonic() + 5
    while fake.closed < fake.opened and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.closed == fake.opened


# ------------------------------------------------------------------------------------------------ parse_relay


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://127.0.0.1:10025", RelayTarget("smtp", "127.0.0.1", 10025)),
        ("smtp+starttls://mx.example.test:587", RelayTarget("smtp+starttls", "mx.example.test", 587)),
        ("lmtp://127.0.0.1:24", RelayTarget("lmtp", "127.0.0.1", 24)),
        ("LMTP://127.0.0.1:24/", RelayTarget("lmtp", "127.0.0.1", 24)),
        ("lmtp://[::1]:24", RelayTarget("lmtp", "::1", 24)),
        ("lmtp:/run/dovecot/lmtp", RelayTarget("lmtp", path="/run/dovecot/lmtp")),
    ],
)
def test_parse_relay_accepts_each_scheme(url: str, expected: RelayTarget) -> None:
    assert parse_relay(url) == expected


def test_a_relay_target_prints_as_it_is_written() -> None:
    for url in ("smtp://127.0.0.1:25", "lmtp://[::1]:24", "lmtp:/run/dovecot/lmtp"):
        assert str(parse_relay(url)) == url


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("", "expected smtp://host:port"),
        ("127.0.0.1:24", "expected smtp://host:port"),
        ("http://127.0.0.1:24", "lmtp:/path/to/socket"),
        ("lmtp://127.0.0.1", "expected lmtp://host:port"),
        ("lmtp://:24", "expected lmtp://host:port"),
        ("lmtp://127.0.0.1:0", "bad port"),
        ("lmtp://127.0.0.1:70000", "bad port"),
        ("lmtp://127.0.0.1:x", "bad port"),
        ("lmtp://127.0.0.1:24/inbox", "expected lmtp://host:port"),
        ("lmtp://user@127.0.0.1:24", "expected lmtp://host:port"),
        ("lmtp://127.0.0.1:24?x=1", "unexpected '?' or '#'"),
        ("lmtp:/run/lmtp#x", "unexpected '?' or '#'"),
        ("lmtp:", "absolute path"),
        ("lmtp:run/lmtp", "absolute path"),
        ("lmtp:/run/", "absolute path"),
        ("lmtp:///run/lmtp", "expected lmtp://host:port"),
        ("lmtp:/run/a\tb", "control character"),
        ("lmtp://127.0.0.1:2\n4", "control character"),
        (" smtp://127.0.0.1:25", "surrounding space"),
        ("lmtp:/" + "x" * 107, "longer than 107 bytes"),
        ("smtp:/run/lmtp", "expected smtp://host:port"),
    ],
)
def test_parse_relay_says_what_is_wrong(url: str, complaint: str) -> None:
    with pytest.raises(ValueError, match="^.*" + complaint.replace("?", r"\?")):
        parse_relay(url)


# ------------------------------------------------------------------------------ the client against a script


def test_the_text_is_sent_with_crlf_and_dot_stuffed() -> None:
    assert wire_text(b"a\nb\rc\r\n.d\n..e\r.\r\nf") == b"a\r\nb\r\nc\r\n..d\r\n...e\r\n..\r\nf\r\n.\r\n"
    assert wire_text(b".\r\n") == b"..\r\n.\r\n"
    fake = FakeLmtp()
    with running(fake) as target:
        _deliver(target, b"Subject: x\n\n.\nMAIL FROM:<evil@evil.test>\r.\r", "alice@example.test")
    assert fake.wire == [b"Subject: x\r\n\r\n..\r\nMAIL FROM:<evil@evil.test>\r\n..\r\n.\r\n"]
    assert fake.commands == [
        "LHLO mx.example.test",
        "MAIL FROM:<s@remote.test>",
        "RCPT TO:<alice@example.test>",
        "DATA",
        "QUIT",
    ]
    _wait_closed(fake)


def test_smtputf8_and_8bitmime_are_asked_for_only_when_offered_and_needed() -> None:
    fake = FakeLmtp()
    with running(fake) as target:
        _deliver(target, "Subject: é\r\n\r\nx\r\n".encode(), "jösé@example.test", smtputf8=True)
        _deliver(target, BODY, "alice@example.test", sender="")
    fake_plain = FakeLmtp(lhlo=("fake.example", "ENHANCEDSTATUSCODES"))
    with running(fake_plain) as target:
        _deliver(target, "Subject: é\r\n\r\nx\r\n".encode(), "alice@example.test", smtputf8=True)
    mails = [c for c in fake.commands + fake_plain.commands if c.startswith("MAIL")]
    assert mails == [
        "MAIL FROM:<s@remote.test> SMTPUTF8 BODY=8BITMIME",
        "MAIL FROM:<>",
        "MAIL FROM:<s@remote.test>",
    ]
    assert "RCPT TO:<jösé@example.test>" in fake.commands


def test_some_recipients_refused_at_rcpt_is_rset_and_a_4xx() -> None:
    fake = FakeLmtp(rcpt={"bob@example.test": "550 5.1.1 no such user"})
    with running(fake) as target, pytest.raises(DeliveryError) as caught:
        _deliver(target, BODY, "alice@example.test", "bob@example.test")
    assert type(caught.value) is DeliveryError
    assert fake.commands[-2:] == ["RSET", "QUIT"] and "DATA" not in fake.commands
    _wait_closed(fake)


def test_all_recipients_refused_at_rcpt_is_passed_on_as_that_5xx() -> None:
    fake = FakeLmtp(rcpt={"alice@example.test": "550-5.1.1 no such user\r\n550 5.1.1 really"})
    with running(fake) as target, pytest.raises(DownstreamRefusedError) as caught:
        _deliver(target, BODY, "alice@example.test")
    assert (caught.value.code, caught.value.enhanced) == (550, "5.1.1")


def test_a_4xx_at_rcpt_is_a_4xx_even_when_the_others_are_5xx() -> None:
    fake = FakeLmtp(rcpt={"alice@example.test": "450 4.2.1 busy", "bob@example.test": "550 5.1.1 unknown"})
    with running(fake) as target, pytest.raises(DeliveryError) as caught:
        _deliver(target, BODY, "alice@example.test", "bob@example.test")
    assert type(caught.value) is DeliveryError


@pytest.mark.parametrize(
    ("final", "error", "code"),
    [
        ({}, None, 0),
        ({"bob@example.test": "452 4.2.2 over quota"}, DeliveryError, 0),
        ({"bob@example.test": "552 5.2.2 over quota"}, DeliveryError, 0),
        (
            {"alice@example.test": "552 5.2.2 full", "bob@example.test": "554 5.6.0 no"},
            DownstreamRefusedError,
            552,
        ),
        ({"alice@example.test": "452 4.2.2 full", "bob@example.test": "554 5.6.0 no"}, DeliveryError, 0),
    ],
)
def test_one_final_reply_per_recipient_decides_the_answer(
    final: dict[str, str], error: type[DeliveryError] | None, code: int
) -> None:
    fake = FakeLmtp(final=final)
    with running(fake) as target:
        if error is None:
            _deliver(target, BODY, "alice@example.test", "bob@example.test")
        else:
            with pytest.raises(error) as caught:
                _deliver(target, BODY, "alice@example.test", "bob@example.test")
            assert type(caught.value) is error
            if isinstance(caught.value, DownstreamRefusedError):
                assert (caught.value.code, caught.value.enhanced) == (code, "5.2.2")
    assert fake.commands[-1] == "QUIT"  # all the final replies were read: the dialogue stayed in step
    _wait_closed(fake)


def test_a_server_that_stops_answering_is_a_timeout_and_the_connection_is_closed() -> None:
    fake = FakeLmtp(stall_at="DATA")
    with running(fake) as target:
        started = time.monotonic()
        with pytest.raises(TargetUnavailableError, match="failed: TimeoutError"):
            _deliver(target, BODY, "alice@example.test")
        assert 1.9 < time.monotonic() - started < 5
        _wait_closed(fake)


def test_connections_are_bounded() -> None:
    fake = FakeLmtp()

    async def many(target: RelayTarget) -> None:
        deliverer = LmtpDeliverer(target, hostname="mx.example.test", timeout=5, connections=2)
        await asyncio.gather(*(deliverer.deliver(_envelope("alice@example.test"), BODY) for _ in range(8)))

    with running(fake) as target:
        asyncio.run(many(target))
    assert (fake.opened, len(fake.wire), fake.most_at_once) == (8, 8, 2)


def test_an_unreachable_target_is_unavailable_for_a_while() -> None:
    deliverer = LmtpDeliverer(
        RelayTarget("lmtp", "127.0.0.1", downstream.free_port()), hostname="mx.example.test", timeout=2
    )
    assert deliverer.available
    with pytest.raises(TargetUnavailableError, match="unavailable: ConnectionRefusedError"):
        asyncio.run(deliverer.deliver(_envelope("alice@example.test"), BODY))
    assert not deliverer.available


def test_a_greeting_that_is_not_220_makes_the_target_unavailable() -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"421-4.3.2 too busy\r\n421 4.3.2 come back later\r\n")
        await writer.drain()
        writer.close()

    async def attempt() -> LmtpDeliverer:
        server = await asyncio.start_server(refuse, "127.0.0.1", 0)
        target = RelayTarget("lmtp", "127.0.0.1", server.sockets[0].getsockname()[1])
        deliverer = LmtpDeliverer(target, hostname="mx.example.test", timeout=2)
        async with server:
            with pytest.raises(TargetUnavailableError):
                await deliverer.deliver(_envelope("alice@example.test"), BODY)
        return deliverer

    assert not asyncio.run(attempt()).available


def test_a_malformed_reply_is_a_4xx() -> None:
    async def garble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 fake\r\n")
        await reader.readline()
        writer.write(b"250 fake\r\n")
        await reader.readline()
        writer.write(b"hello?\r\n")
        await writer.drain()
        await reader.read()
        writer.close()

    async def attempt() -> None:
        server = await asyncio.start_server(garble, "127.0.0.1", 0)
        target = RelayTarget("lmtp", "127.0.0.1", server.sockets[0].getsockname()[1])
        async with server:
            await LmtpDeliverer(target, hostname="mx", timeout=2).deliver(_envelope("a@example.test"), BODY)

    with pytest.raises(DeliveryError, match="broke the protocol: malformed reply line") as caught:
        asyncio.run(attempt())
    assert type(caught.value) is DeliveryError


# --------------------------------------------------------------------------- end to end, through smtp-tarpit


def _front(make_server, relay: str, **overrides: dict[str, object]) -> RunningServer:  # type: ignore[no-untyped-def]
    return make_server(delivery={"relay": relay, "relay_timeout": "5s"}, **overrides)


@pytest.fixture
def sink_folder() -> Iterator[Path]:
    # Short, and not under pytest's 0700 base: smtp-sink drops to nobody; a Unix socket path is <= 107 bytes.
    with tempfile.TemporaryDirectory(prefix="lmtp-") as folder:
        yield Path(folder)


def test_mail_arrives_in_smtp_sink_over_lmtp_intact(make_server, sink_folder: Path) -> None:  # type: ignore[no-untyped-def]
    with start_smtp_sink(sink_folder, lmtp=True) as sink:
        front = _front(make_server, f"lmtp://127.0.0.1:{sink.port}")
        with smtplib.SMTP(front.host, front.port, timeout=30) as smtp:
            smtp.ehlo("client.example")
            assert smtp.sendmail("s@remote.test", ["alice@example.test", "bob@example.test"], BODY) == {}
        [message] = sink.parsed_messages()
    assert (message.proto, message.helo) == ("LMTP", "mx.example.test")  # it got our LHLO
    assert (message.sender, message.recipients) == (
        "s@remote.test",
        ["alice@example.test", "bob@example.test"],
    )
    assert message.data.endswith(b"\nSubject: over lmtp\n\nline one\n.dot line\n..\nlast\n")
    assert b"by mx.example.test (smtp-tarpit) with ESMTP" in message.data
    front.wait_for_log(r"result=delivered")


def test_recipients_with_different_final_answers_give_451_4_3_0(make_server) -> None:  # type: ignore[no-untyped-def]
    fake = FakeLmtp(final={"bob@example.test": "552 5.2.2 mailbox full"})
    with running(fake) as target:
        front = _front(make_server, str(target))
        with smtplib.SMTP(front.host, front.port, timeout=30) as smtp:
            smtp.ehlo("client.example")
            smtp.mail("s@remote.test")
            smtp.rcpt("alice@example.test")
            smtp.rcpt("bob@example.test")
            code, text = smtp.data(BODY)
    assert (code, text[:5]) == (451, b"4.3.0")  # the client retries; alice may see it twice, never zero
    assert len(fake.wire) == 1 and fake.commands[0] == "LHLO mx.example.test"
    front.wait_for_log(r'result=deferred detail="downstream took the message for 1 of 2 recipients"')


@pytest.mark.parametrize(("option", "wanted"), [(["-f", "."], 500), (["-r", "."], 451)])
def test_the_same_final_answer_for_all_is_passed_on_by_class(  # type: ignore[no-untyped-def]
    make_server, sink_folder: Path, option: list[str], wanted: int
) -> None:
    with start_smtp_sink(sink_folder, lmtp=True, options=option) as sink:
        front = _front(make_server, f"lmtp://127.0.0.1:{sink.port}")
        with smtplib.SMTP(front.host, front.port, timeout=30) as smtp:
            smtp.ehlo("client.example")
            smtp.mail("s@remote.test")
            smtp.rcpt("alice@example.test")
            smtp.rcpt("bob@example.test")
            code, text = smtp.data(BODY)
        sink.wait_for_messages(1)
    assert code == wanted
    assert text.startswith(b"5.3.0 " if wanted == 500 else b"4.3.0 ")


def _start_unix_sink(folder: Path, path: Path) -> SmtpSink:
    """smtp-sink -L on a Unix socket (the downstream helper listens on TCP only); stopped by its PID."""
    root = folder / "root"
    root.mkdir(mode=0o755)
    args = [str(downstream.SMTP_SINK), "-L", "-S", downstream._SINK_SEPARATOR_ARG]
    if os.geteuid() == 0:  # as start_smtp_sink does: smtp-sink refuses to run as root without -u
        os.chown(root, *downstream._nobody_ids())
        args += ["-u", "nobody", "-R", str(root), "-D", "/messages"]
    else:
        args += ["-D", str(root / "messages")]
    args += [f"unix:{path}", "10"]
    with (folder / "smtp-sink.log").open("ab") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    sink = SmtpSink(folder=folder, port=0, process=process, lmtp=True, args=args)
    deadline = time.monotonic() + 10
    while not _unix_listening(path):
        if time.monotonic() > deadline or process.poll() is not None:
            sink.stop_abruptly()
            raise AssertionError(f"smtp-sink never listened on {path}: {sink.log()}")
        time.sleep(0.02)
    return sink


def _unix_listening(path: Path) -> bool:
    """A socket listens at ``path`` (from /proc/net/unix: no probe connection, which smtp-sink would count)."""
    with open("/proc/net/unix") as table:
        return any(
            line.split()[-1] == str(path) and line.split()[3] == "00010000"
            for line in table.readlines()[1:]
            if len(line.split()) == 8
        )


def test_lmtp_over_a_unix_socket(make_server, sink_folder: Path) -> None:  # type: ignore[no-untyped-def]
    downstream.require_smtp_sink()
    path = sink_folder / "lmtp.sock"
    with _start_unix_sink(sink_folder, path) as sink:
        front = _front(make_server, f"lmtp:{path}")
        with smtplib.SMTP(front.host, front.port, timeout=30) as smtp:
            assert smtp.sendmail("s@remote.test", ["alice@example.test"], BODY) == {}
        [message] = sink.parsed_messages()
    assert (message.client_addr, message.proto, message.recipients) == (
        "local",
        "LMTP",
        ["alice@example.test"],
    )
    assert message.data.endswith(b"\n.dot line\n..\nlast\n")


def test_lmtp_target_gone_gives_451_4_4_1_then_421_to_new_sessions(  # type: ignore[no-untyped-def]
    make_server, sink_folder: Path
) -> None:
    with start_smtp_sink(sink_folder, lmtp=True) as sink:
        front = _front(make_server, f"lmtp://127.0.0.1:{sink.port}")
        with smtplib.SMTP(front.host, front.port, timeout=30) as smtp:
            smtp.ehlo("client.test")
            smtp.mail("s@remote.test")
            smtp.rcpt("alice@example.test")
            sink.stop()  # the LMTP server goes away mid-session
            code, text = smtp.data(BODY)
    assert (code, text[:5]) == (451, b"4.4.1")
    with socket.create_connection((front.host, front.port), timeout=10) as sock:
        assert sock.makefile("rb").readline().startswith(b"421 4.4.1")
    front.wait_for_log(r'result=deferred detail="downstream lmtp://127\.0\.0\.1:\d+ unavailable')
