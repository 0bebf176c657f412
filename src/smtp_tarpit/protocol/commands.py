"""The arguments of SMTP commands, parsed into events: what each command line asks for, or the syntax
error to answer it with.

Pure functions of the argument and the few facts of the connection they need (was the greeting EHLO, is
the transaction SMTPUTF8, is the recipient list full); the connection (connection.py) owns the state,
the order of commands and AUTH's exchange.

Invariants: nothing raises (a bad argument is an ``Answer`` with its reply and ``Problem``); a MAIL or RCPT
parameter we do not know is refused, never ignored.
"""

from __future__ import annotations

from smtp_tarpit.protocol import replies
from smtp_tarpit.protocol.address import Address, AddressError, parse_path
from smtp_tarpit.protocol.events import Answer, Event, Helo, Mail, Problem, Rcpt, Vrfy


def helo(argument: str, extended: bool) -> Event:
    """HELO or EHLO (``extended``): one word, the client's name."""
    if not argument or " " in argument:
        return Answer(replies.SYNTAX_EHLO if extended else replies.SYNTAX_HELO, Problem.SYNTAX)
    return Helo(argument, extended)


def mail(argument: str, extended: bool, message_size: int) -> Event:
    """``FROM:<path> [params]``; parameters only after EHLO, a declared SIZE at most ``message_size``."""
    if argument[:5].upper() != "FROM:":
        return Answer(replies.SYNTAX_MAIL, Problem.SYNTAX)
    try:
        sender, params = parse_path(argument[5:], allow_null=True)
    except AddressError:
        return Answer(replies.BAD_SENDER_SYNTAX, Problem.SYNTAX)
    if params and not extended:
        return Answer(replies.UNKNOWN_PARAMETER, Problem.SYNTAX)
    return _mail_with_params(sender, params, message_size)


def _mail_with_params(sender: Address | None, params: dict[str, str | None], message_size: int) -> Event:
    size: int | None = None
    smtputf8 = "SMTPUTF8" in params
    eight_bit = False
    for key, value in params.items():
        if key == "SIZE" and value is not None and _is_number(value):
            size = int(value)
        elif key == "BODY" and value is not None and value.upper() in ("7BIT", "8BITMIME"):
            eight_bit = value.upper() == "8BITMIME"
        elif (key == "SMTPUTF8" and value is None) or (key == "AUTH" and value is not None):
            pass  # AUTH=<mailbox> (RFC 4954 section 5) is accepted and not trusted
        else:
            return Answer(replies.UNKNOWN_PARAMETER, Problem.SYNTAX)
    if size is not None and size > message_size:
        return Answer(replies.SIZE_DECLARED_TOO_BIG, Problem.MESSAGE_TOO_BIG)
    if sender is not None and not sender.is_ascii and not smtputf8:
        return Answer(replies.NON_ASCII_ADDRESS, Problem.SYNTAX)
    return Mail(sender, size, smtputf8, eight_bit)


def rcpt(argument: str, smtputf8: bool, full: bool) -> Event:
    """``TO:<path>``, no parameters; non-ASCII only in an SMTPUTF8 transaction; none more once ``full``."""
    if argument[:3].upper() != "TO:":
        return Answer(replies.SYNTAX_RCPT, Problem.SYNTAX)
    try:
        recipient, params = parse_path(argument[3:], allow_null=True)
    except AddressError:
        return Answer(replies.BAD_RECIPIENT_SYNTAX, Problem.SYNTAX)
    if recipient is None:
        return Answer(replies.NULL_RECIPIENT, Problem.SYNTAX)
    if params:
        return Answer(replies.UNKNOWN_PARAMETER, Problem.SYNTAX)
    if not recipient.is_ascii and not smtputf8:
        return Answer(replies.NON_ASCII_ADDRESS, Problem.SYNTAX)
    if full:
        return Answer(replies.TOO_MANY_RECIPIENTS, Problem.TOO_MANY_RECIPIENTS)
    return Rcpt(recipient)


def no_argument(argument: str, event: Event) -> Event:
    """DATA, RSET, STARTTLS: ``event``, unless an argument came with it."""
    return Answer(replies.NO_ARGUMENTS, Problem.SYNTAX) if argument else event


def vrfy(argument: str) -> Event:
    return Vrfy(argument) if argument else Answer(replies.SYNTAX_VRFY, Problem.SYNTAX)


def _is_number(text: str) -> bool:
    # ASCII digits only: str.isdigit() also accepts "\u00b2", on which int() raises.
    return text.isascii() and text.isdigit() and len(text) <= 20
