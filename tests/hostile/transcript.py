"""The hostile dialogue format: parse a ``corpus/*.txt`` file, replay it through the core and a real server.

A transcript is one client's session, written as in ``tests/protocol/corpus`` (same prefixes and escapes)
with a few additions for a real server. One item per line:

- ``# ...`` a comment; blank lines are ignored.
- ``@config section.key = value`` a server setting, the value in TOML (``@config limits.message_size = 2048``,
  ``@config server.bare_newline = "reject"``). The test server's own defaults are those of
  ``tests.e2e.helpers.start_server``: hostname mx.example.test, local domains example.test and
  catchall.test, recipients alice, bob, sales (alias of alice) and @catchall.test (into bob), tar pit off.
- ``@only core`` or ``@only e2e``: replay through one layer only (the core knows nothing of the tar pit's
  hard error limit, the e2e replay cannot do a TLS handshake).
- ``@xfail reason``: the behaviour written here is what we need, not yet what we do (a strict xfail).
- ``@closed``: the server must have closed the connection at the end. Otherwise the runner sends QUIT at
  the end and expects ``221``: whatever came before, the session is still sane.
- ``C: text`` a client line (CRLF appended); ``R: text`` raw client bytes (nothing appended).
- ``S: text`` one line the server must send, exactly (CRLF appended); ``{ID}`` stands for a message id.
- ``--`` ends a chunk although no server line follows.
- ``M> mailbox`` starts a message that must be delivered into ``mailbox``; ``M: text`` is one line of it
  (CRLF appended), ``M= text`` bytes without CRLF. Every delivered message must be listed, none other.

Escapes in text: ``\\r \\n \\t \\\\ \\xHH`` and ``\\{N*text}`` (text repeated N times). Consecutive client
lines are one chunk (pipelined); each chunk must produce exactly the server lines that follow it.
The greeting is the first chunk's answer.

The core replay answers each event as the session does (``session_reply``): the recipients file of the
e2e helpers resolved by the real directory code, relaying refused, passwords alice / "correct horse".
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smtp_tarpit.directory import recipients
from smtp_tarpit.directory.recipients import Verdict
from smtp_tarpit.protocol import Features, Limits, SmtpConnection, events, replies
from smtp_tarpit.protocol.events import (
    Answer,
    AuthCredentials,
    Data,
    Event,
    Helo,
    Help,
    Mail,
    Message,
    NeedData,
    Noop,
    Quit,
    Rcpt,
    Rset,
    StartTls,
    Vrfy,
)
from smtp_tarpit.protocol.replies import Reply
from tests.e2e.helpers import PASSWORD, RECIPIENTS, RunningServer
from tests.hostile.wire import Client, check_replies
from tests.protocol.smtp_dialogue import decode

HOST = "mx.example.test"
DOMAINS = ["example.test", "catchall.test"]
CORE_MESSAGE_ID = "C0DE0001"
_ID = re.escape(b"{ID}")
# Where the core hands a long message out in parts as it arrives (``MessagePart``, never answered), the
# message is its parts and its end joined; a refusal voids the parts before it.
MESSAGE_PART: Any = getattr(events, "MessagePart", None)


def message_part(event: object) -> bytes | None:
    """The text of a message part, or None if ``event`` is anything else."""
    if MESSAGE_PART is not None and isinstance(event, MESSAGE_PART):
        content: bytes = event.content
        return content
    return None


@dataclass
class Step:
    client: bytes | None  # None: the greeting
    expected: bytearray = field(default_factory=bytearray)

    @property
    def pattern(self) -> re.Pattern[bytes]:
        return re.compile(re.escape(bytes(self.expected)).replace(_ID, rb"[0-9A-F]+"))


@dataclass
class Transcript:
    name: str
    config: dict[str, dict[str, Any]] = field(default_factory=dict)
    layers: tuple[str, ...] = ("core", "e2e")
    xfail: str = ""
    closed: bool = False
    steps: list[Step] = field(default_factory=lambda: [Step(None)])
    messages: list[tuple[str, bytes]] = field(default_factory=list)  # (mailbox, content with CRLF)


def _config_line(transcript: Transcript, text: str) -> None:
    key, _, value = text.partition("=")
    section, _, name = key.strip().partition(".")
    parsed = tomllib.loads(f"value = {value.strip()}")["value"]
    transcript.config.setdefault(section, {})[name] = parsed


def parse(path: Path) -> Transcript:
    transcript = Transcript(path.stem)
    steps = transcript.steps
    collecting = False  # a client chunk is being collected until a server line closes it
    for number, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        prefix, body = line[:2], (line[3:] if line[2:3] == " " else line[2:])
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("@config "):
            _config_line(transcript, line.removeprefix("@config "))
        elif line.startswith("@only "):
            transcript.layers = (line.split()[1],)
        elif line.startswith("@xfail "):
            transcript.xfail = line.removeprefix("@xfail ").strip()
        elif line == "@closed":
            transcript.closed = True
        elif line == "--":
            steps.append(Step(b""))
            collecting = True
        elif prefix in ("C:", "R:"):
            if not collecting:
                steps.append(Step(b""))
                collecting = True
            steps[-1].client = (steps[-1].client or b"") + decode(body) + (b"\r\n" if prefix == "C:" else b"")
        elif prefix == "S:":
            collecting = False
            steps[-1].expected += decode(body) + b"\r\n"
        elif prefix == "M>":
            transcript.messages.append((body.strip().lower(), b""))
        elif prefix in ("M:", "M="):
            if not transcript.messages:
                raise ValueError(f"{path.name}:{number}: message line before any 'M> mailbox'")
            mailbox, content = transcript.messages[-1]
            content += decode(body) + (b"\r\n" if prefix == "M:" else b"")
            transcript.messages[-1] = (mailbox, content)
        else:
            raise ValueError(f"{path.name}:{number}: cannot read {line!r}")
    if transcript.layers[0] not in ("core", "e2e"):
        raise ValueError(f"{path.name}: @only takes 'core' or 'e2e'")
    return transcript


# --- the core, answered as the session answers ---------------------------------------------------------------


def core_setup(config: dict[str, dict[str, Any]]) -> tuple[Limits, Features]:
    limits, server, auth = config.get("limits", {}), config.get("server", {}), config.get("auth", {})
    defaults = Limits()
    return (
        Limits(
            command_line=limits.get("command_line", defaults.command_line),
            text_line=limits.get("text_line", defaults.text_line),
            message_size=limits.get("message_size", defaults.message_size),
            recipients=limits.get("recipients_per_message", defaults.recipients),
            reject_bare_newline=server.get("bare_newline") == "reject",
            junk_commands=limits.get("junk_commands", defaults.junk_commands),
        ),
        Features(
            starttls="certificate" in config.get("tls", {}),
            auth="users_file" in auth,
            plaintext_auth=bool(auth.get("plaintext_from_loopback")),
        ),
    )


DIRECTORY = recipients.build(DOMAINS, [("RECIPIENTS", line.split()) for line in RECIPIENTS.splitlines()])


@dataclass
class SessionModel:
    """What the session adds to the core: the directory, relay refusal, passwords, delivered messages."""

    relay: bool = False  # [delivery] relay is set: authenticated clients may name other domains
    mailboxes: list[str] = field(default_factory=list)
    delivered: list[tuple[str, bytes]] = field(default_factory=list)
    parts: bytearray = field(default_factory=bytearray)  # a message's text so far, when it comes in parts

    def take(self, event: object) -> bool:
        """Keep a part of a message that is still arriving; True if ``event`` was one (it gets no reply)."""
        content = message_part(event)
        if content is None:
            return False
        self.parts += content
        return True

    def reply(self, conn: SmtpConnection, event: Event) -> Reply:
        match event:
            case Helo(extended=True):
                self.mailboxes = []
                return replies.ehlo(HOST, conn.extensions())
            case Helo():
                self.mailboxes = []
                return replies.helo(HOST)
            case Mail():
                self.mailboxes = []
                return replies.SENDER_OK
            case Rset() | StartTls():
                self.mailboxes = []
                return self._simple(event)
            case Rcpt(recipient=recipient):
                return self._rcpt(conn, recipient)
            case Data():
                return replies.START_DATA
            case Message(content=content):
                whole = bytes(self.parts) + content
                self.delivered += [(mailbox, whole) for mailbox in self.mailboxes]
                self.mailboxes, self.parts = [], bytearray()
                return replies.queued(CORE_MESSAGE_ID)
            case Noop() | Quit() | Vrfy() | Help():
                return self._simple(event)
            case AuthCredentials(username=username, password=password, authzid=authzid):
                ok = (username, password) == ("alice", PASSWORD) and authzid in ("", username)
                return replies.AUTH_OK if ok else replies.AUTH_FAILED
            case Answer(reply=reply):
                if conn.in_data:
                    self.mailboxes, self.parts = [], bytearray()
                return reply
        raise AssertionError(f"unexpected event {event!r}")

    def _rcpt(self, conn: SmtpConnection, recipient: Any) -> Reply:
        found = DIRECTORY.resolve(recipient)
        if found.verdict is Verdict.NOT_LOCAL:
            if conn.authenticated and self.relay and not recipient.relay_trick:
                self.mailboxes.append(recipient.key)
                return replies.RECIPIENT_OK
            return replies.RELAY_DENIED
        if found.verdict is Verdict.UNKNOWN:
            return replies.UNKNOWN_USER
        if found.mailbox not in self.mailboxes:
            self.mailboxes.append(found.mailbox)
        return replies.RECIPIENT_OK

    @staticmethod
    def _simple(event: Event) -> Reply:
        match event:
            case Quit():
                return replies.bye(HOST)
            case Vrfy():
                return replies.VRFY_CANNOT
            case Help():
                return replies.HELP
            case StartTls():
                return replies.READY_FOR_TLS
        return replies.OK


def drain(conn: SmtpConnection, model: SessionModel) -> bytes:
    out = bytearray()
    while not isinstance(event := conn.next_event(), NeedData):
        if not model.take(event):
            out += conn.send(model.reply(conn, event))
    return bytes(out)


def replay_core(transcript: Transcript) -> None:
    limits, features = core_setup(transcript.config)
    conn = SmtpConnection(dataclasses.replace(limits), features)
    model = SessionModel(relay=bool(transcript.config.get("delivery", {}).get("relay")))
    for index, step in enumerate(transcript.steps):
        if step.client is None:
            out = conn.send(replies.greeting(HOST))
        else:
            conn.receive_data(step.client)
            out = drain(conn, model)
        check_replies(out)
        assert step.pattern.fullmatch(out), (
            f"chunk {index} {step.client!r}:\n{out!r}\nwanted\n{step.expected!r}"
        )
    if transcript.closed:
        assert conn.closed
    else:
        conn.receive_data(b"QUIT\r\n")
        assert drain(conn, model) == replies.bye(HOST).wire
    assert sorted(model.delivered) == sorted(transcript.messages)


# --- a real server ---------------------------------------------------------------------------------------


def maildir_files(server: RunningServer) -> set[Path]:
    return set(server.maildir.glob("*/*/new/*"))


def without_trace(stored: bytes) -> bytes:
    """The message as the client sent it: our Return-Path and Received header (ending ';' + date) removed."""
    lines = stored.split(b"\n")
    assert lines[0].startswith(b"Return-Path: <") and lines[1].startswith(b"Received: from "), stored[:200]
    end = next(i for i, line in enumerate(lines) if line.endswith(b";"))
    return b"\n".join(lines[end + 2 :])


def delivered_since(server: RunningServer, before: set[Path]) -> list[tuple[str, bytes]]:
    found = []
    for path in sorted(maildir_files(server) - before):
        mailbox = f"{path.parent.parent.name}@{path.parent.parent.parent.name}"
        found.append((mailbox, without_trace(path.read_bytes())))
    return found


def replay_e2e(transcript: Transcript, server: RunningServer) -> None:
    before = maildir_files(server)
    with Client(server.host, server.port) as client:
        for index, step in enumerate(transcript.steps):
            if step.client:
                client.send(step.client)
            out = client.lines(step.expected.count(b"\r\n"))
            check_replies(out)
            assert step.pattern.fullmatch(out), (
                f"chunk {index} {step.client!r}:\n{out!r}\nwanted\n{step.expected!r}"
            )
        if transcript.closed:
            assert client.rest() == b"", "more replies before the server closed"
            assert client.eof, "the server did not close the connection"
        else:
            assert client.command(b"QUIT") == replies.bye(HOST).wire
            assert client.rest() == b""
    wanted = sorted((mailbox, content.replace(b"\r\n", b"\n")) for mailbox, content in transcript.messages)
    assert sorted(delivered_since(server, before)) == wanted
