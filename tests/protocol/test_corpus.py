"""Recorded dialogues: each ``corpus/*.txt`` transcript is replayed through the core, byte for byte.

Transcript format, one item per line:

- ``# ...`` is a comment; blank lines are ignored.
- ``@limits key=value ...`` and ``@features name ...`` configure the connection (``Limits`` / ``Features``).
- ``@closed`` says the connection must be closed at the end (otherwise it must still be open).
- ``C: text`` is a client line: the text, then CRLF. ``R: text`` is raw client bytes: no CRLF appended.
- ``S: text`` is one line the server must write (CRLF appended), exactly.
- ``M: text`` is one line of a delivered message (CRLF appended); ``M= text`` adds bytes without CRLF
  (``M=`` alone is the empty message). Consecutive M lines make one message; every delivered message must
  be listed, in order.
- ``--`` ends a chunk even though no server line follows.

Text after the prefix may use the escapes ``\\r \\n \\t \\\\ \\xHH`` (one octet) and ``\\{N*text}`` (text
repeated N times); other characters are sent as UTF-8. Consecutive client lines are sent as one chunk
(pipelined); each chunk must produce exactly the server lines that follow it. The greeting is the first chunk.
The canonical responder (``smtp_dialogue.canonical_reply``) plays the session.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from smtp_tarpit.protocol import Features, Limits, replies
from tests.protocol.smtp_dialogue import HOST, Dialogue, decode, reply_lines

CORPUS = Path(__file__).parent / "corpus"
TRANSCRIPTS = sorted(CORPUS.glob("*.txt"))


@dataclass
class Step:
    client: bytes | None  # None: the greeting
    expected: bytearray = field(default_factory=bytearray)


@dataclass
class Transcript:
    limits: Limits = field(default_factory=Limits)
    features: Features = field(default_factory=Features)
    closed: bool = False
    steps: list[Step] = field(default_factory=lambda: [Step(None)])
    messages: list[bytes] = field(default_factory=list)


def _field_value(text: str) -> int | bool:
    if text in ("true", "false"):
        return text == "true"
    return int(text)


def parse(path: Path) -> Transcript:
    transcript = Transcript()
    steps = transcript.steps
    client: bytearray | None = None  # the chunk being collected, until a server line closes it
    previous = ""
    for number, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        prefix, body = line[:2], (line[3:] if line[2:3] == " " else line[2:])
        if not line.strip() or line.startswith("#"):
            pass  # a comment or a blank line still separates two messages' M lines
        elif line.startswith("@limits "):
            pairs = (item.split("=") for item in line.split()[1:])
            transcript.limits = Limits(**{key: _field_value(value) for key, value in pairs})  # type: ignore[arg-type]
        elif line.startswith("@features "):
            transcript.features = Features(**dict.fromkeys(line.split()[1:], True))
        elif line == "@closed":
            transcript.closed = True
        elif line == "--":
            client = bytearray()
            steps.append(Step(b""))
        elif prefix in ("C:", "R:"):
            if client is None:
                client = bytearray()
                steps.append(Step(b""))
            client += decode(body) + (b"\r\n" if prefix == "C:" else b"")
            steps[-1].client = bytes(client)
        elif prefix == "S:":
            client = None
            steps[-1].expected += decode(body) + b"\r\n"
        elif prefix in ("M:", "M="):
            if previous[:1] != "M":
                transcript.messages.append(b"")
            transcript.messages[-1] += decode(body) + (b"\r\n" if prefix == "M:" else b"")
        else:
            raise ValueError(f"{path.name}:{number}: cannot read {line!r}")
        previous = line
    return transcript


def replay(transcript: Transcript) -> Dialogue:
    dialogue = Dialogue(dataclasses.replace(transcript.limits), transcript.features, greet=False)
    for index, step in enumerate(transcript.steps):
        if step.client is None:
            out = dialogue.conn.send(replies.greeting(HOST))
        else:
            out = dialogue.feed(step.client)
        assert reply_lines(out) == reply_lines(bytes(step.expected)), f"chunk {index}: {step.client!r}"
        assert out == step.expected
    return dialogue


def _client_bytes(path: Path) -> bytes:
    return b"".join(step.client or b"" for step in parse(path).steps)


# STARTTLS discards what is buffered when it is answered: those transcripts depend on the chunks by design.
BYTEWISE = [path for path in TRANSCRIPTS if b"STARTTLS" not in _client_bytes(path).upper()]


def test_the_corpus_is_there() -> None:
    assert len(TRANSCRIPTS) >= 25
    assert len(BYTEWISE) >= 25


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=[path.stem for path in TRANSCRIPTS])
def test_transcript(path: Path) -> None:
    transcript = parse(path)
    dialogue = replay(transcript)
    assert dialogue.messages == transcript.messages
    assert dialogue.conn.closed is transcript.closed


@pytest.mark.parametrize("path", BYTEWISE, ids=[path.stem for path in BYTEWISE])
def test_transcript_sent_byte_by_byte_gives_the_same_replies(path: Path) -> None:
    transcript = parse(path)
    dialogue = Dialogue(dataclasses.replace(transcript.limits), transcript.features)
    out = bytearray(dialogue.greeting)
    for step in transcript.steps:
        for octet in step.client or b"":
            out += dialogue.feed(bytes([octet]))
    assert reply_lines(bytes(out)) == reply_lines(b"".join(bytes(step.expected) for step in transcript.steps))
    assert dialogue.messages == transcript.messages


@pytest.mark.parametrize(
    ("text", "octets"),
    [
        ("plain", b"plain"),
        (r"a\r\nb", b"a\r\nb"),
        (r"\x00\xff\\", b"\x00\xff\\"),
        (r"\{3*ab}c", b"abababc"),
        ("caf\u00e9", b"caf\xc3\xa9"),
    ],
)
def test_transcript_escapes(text: str, octets: bytes) -> None:
    assert decode(text) == octets
