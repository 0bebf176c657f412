"""Reading the message text after 354: finding the end on the raw bytes, then unstuffing and normalising.

Invariants:
- Only CRLF "." CRLF ends the data, judged on the raw bytes as received (a "." line reached through a bare
  CR or LF never ends it: no SMTP smuggling).
- Memory is bounded: past the size limit the text is dropped and only the tail needed to find the end is kept.
- The result is either a complete message whose every line ends in CRLF, or a refusal; never a part.
"""

from __future__ import annotations

from dataclasses import dataclass

from smtp_tarpit.protocol import replies
from smtp_tarpit.protocol.events import Answer, Message, Problem

END = b"\r\n.\r\n"


@dataclass(slots=True)
class DataLimits:
    message_size: int
    text_line: int
    reject_bare_newline: bool


def find_end(buffer: bytearray, scan_from: int, *, at_start: bool) -> int:
    """Index in ``buffer`` just after the CRLF that precedes the final ".", or -1 if not there yet.

    The data begins right after the DATA command's CRLF, so a "." line at the very start also ends it;
    ``at_start`` says the buffer still begins there (not after a dropped, oversize part).
    """
    if at_start and buffer[:3] == b".\r\n":
        return 0
    at = buffer.find(END, max(0, scan_from - 4))
    return -1 if at < 0 else at + 2


def finish(body: bytes, oversize: bool, limits: DataLimits) -> Message | Answer:
    """Turn the raw text (up to and including the last line's CRLF) into a Message or a refusal."""
    if oversize or len(body) > limits.message_size:
        return Answer(replies.message_too_big(limits.message_size), Problem.MESSAGE_TOO_BIG)
    lines = body.split(b"\r\n")
    lines.pop()  # the empty tail after the last CRLF
    if max(map(len, lines), default=0) + 2 > limits.text_line:
        return Answer(replies.text_line_too_long(limits.text_line), Problem.MESSAGE_TOO_BIG)
    pairs = body.count(b"\r\n")
    bare = body.count(b"\r") != pairs or body.count(b"\n") != pairs
    if bare and limits.reject_bare_newline:
        return Answer(replies.BARE_NEWLINE, Problem.BARE_NEWLINE)
    if b"\r\n." in body or body.startswith(b"."):
        lines = [line[1:] if line.startswith(b".") else line for line in lines]
    if bare:
        # Postfix 3.9's "normalize": every bare CR or LF becomes a line break of its own.
        lines = [_normalise(line) for line in lines]
    lines.append(b"")
    return Message(b"\r\n".join(lines))


def _normalise(line: bytes) -> bytes:
    # Within one CRLF-delimited line there is no CRLF pair left, so each CR and each LF is bare.
    return line.replace(b"\r", b"\n").replace(b"\n", b"\r\n")
