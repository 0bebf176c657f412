"""Reading the message text after 354: finding the end on the raw bytes, then unstuffing and normalising.

Invariants:
- Only CRLF "." CRLF ends the data, judged on the raw bytes as received (a "." line reached through a bare
  CR or LF never ends it: no SMTP smuggling).
- Memory is bounded: past the size limit the text is dropped and only the tail needed to find the end is kept.
- A long message comes out in parts of whole lines (``MessagePart``) as it arrives, then its end
  (``Message``); a refusal found on the way (a line too long, a bare newline in "reject" mode, the size)
  ends the parts, and the message's answer is that refusal: what went out in parts is void.
"""

from __future__ import annotations

from dataclasses import dataclass

from smtp_tarpit.protocol import replies
from smtp_tarpit.protocol.events import Answer, Message, MessagePart, Problem

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


def finish(body: bytes, total: int, limits: DataLimits) -> Message | Answer:
    """Turn the last raw text (up to and including the last line's CRLF) into a Message or a refusal;
    ``total`` is the size of the whole message, parts before included."""
    if total > limits.message_size:
        return too_big(limits)
    converted = convert(body, limits)
    return converted if isinstance(converted, Answer) else Message(converted)


def part(raw: bytes, limits: DataLimits) -> MessagePart | Answer:
    """Whole raw lines from the middle of a message as a MessagePart, or the refusal they already earn."""
    converted = convert(raw, limits)
    return converted if isinstance(converted, Answer) else MessagePart(converted)


def too_big(limits: DataLimits) -> Answer:
    return Answer(replies.message_too_big(limits.message_size), Problem.MESSAGE_TOO_BIG)


def line_too_long(limits: DataLimits) -> Answer:
    return Answer(replies.text_line_too_long(limits.text_line), Problem.MESSAGE_TOO_BIG)


def convert(body: bytes, limits: DataLimits) -> bytes | Answer:
    """Raw CRLF-ended lines as text: unstuffed, bare CR and LF normalised (or refused), lines checked."""
    lines = body.split(b"\r\n")
    lines.pop()  # the empty tail after the last CRLF
    pairs = body.count(b"\r\n")
    bare = body.count(b"\r") != pairs or body.count(b"\n") != pairs
    too_long = max(map(len, lines), default=0) + 2 > limits.text_line
    # In "reject" mode a NUL is refused too: a downstream that drops NULs would read CRLF "." CRLF in
    # CRLF NUL "." CRLF, the one fake end that holds no bare CR or LF.
    if too_long or (limits.reject_bare_newline and (bare or b"\x00" in body)):
        return _first_problem(lines, limits)
    if b"\r\n." in body or body.startswith(b"."):
        lines = [line[1:] if line.startswith(b".") else line for line in lines]
    if bare:
        # Postfix 3.9's "normalize": every bare CR or LF becomes a line break of its own.
        lines = [_normalise(line) for line in lines]
    lines.append(b"")
    return b"\r\n".join(lines)


def _first_problem(lines: list[bytes], limits: DataLimits) -> Answer:
    # The first offending line decides (a line too long before a bare newline in the same line), so the
    # answer is the same whether the message came whole or in parts whose later lines were never read.
    for line in lines:
        if len(line) + 2 > limits.text_line:
            return line_too_long(limits)
        if limits.reject_bare_newline and (b"\r" in line or b"\n" in line):
            break
        if limits.reject_bare_newline and b"\x00" in line:
            return Answer(replies.NUL_IN_TEXT, Problem.BARE_NEWLINE)
    return Answer(replies.BARE_NEWLINE, Problem.BARE_NEWLINE)


def _normalise(line: bytes) -> bytes:
    # Within one CRLF-delimited line there is no CRLF pair left, so each CR and each LF is bare.
    return line.replace(b"\r", b"\n").replace(b"\n", b"\r\n")
