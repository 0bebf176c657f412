"""The SMTP state table: which command is legal in which state, and where a positive reply leads.

All state-machine logic of the core lives here (as h11 keeps it in ``_state.py``): the connection looks a
``(State, Verb)`` pair up in ``TABLE`` and either answers with the reply found there (503 and friends) or
emits the command's event and, when the session's reply is positive (< 400), moves to the state found there.
Nothing outside ``protocol/`` decides which command is legal; the tar pit never does.
"""

from __future__ import annotations

import enum

from smtp_tarpit.protocol import replies
from smtp_tarpit.protocol.replies import Reply


class State(enum.Enum):
    # Members are singletons compared by identity: hash them so too (Enum's own __hash__ is Python code,
    # and these are dictionary keys on every command).
    __hash__ = object.__hash__

    INIT = "init"  # greeted; HELO/EHLO not yet given (or reset by STARTTLS)
    READY = "ready"  # HELO/EHLO given, no transaction
    MAIL = "mail"  # MAIL accepted, no recipient yet
    RCPT = "rcpt"  # at least one recipient accepted
    DATA = "data"  # reading message text after 354
    SASL = "sasl"  # reading a SASL response line after 334
    CLOSED = "closed"  # 221 or 421 sent; nothing more is read


class Verb(enum.Enum):
    # Members are singletons compared by identity: hash them so too (Enum's own __hash__ is Python code,
    # and these are dictionary keys on every command).
    __hash__ = object.__hash__

    HELO = "HELO"
    EHLO = "EHLO"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    RSET = "RSET"
    NOOP = "NOOP"
    QUIT = "QUIT"
    VRFY = "VRFY"
    HELP = "HELP"
    STARTTLS = "STARTTLS"
    AUTH = "AUTH"
    EXPN = "EXPN"
    TURN = "TURN"
    ETRN = "ETRN"


VERBS: dict[bytes, Verb] = {v.value.encode(): v for v in Verb}

_COMMAND_STATES = (State.INIT, State.READY, State.MAIL, State.RCPT)
_SAME = None  # marker: a positive reply leaves the state as it is


def _build() -> dict[tuple[State, Verb], State | Reply | None]:
    table: dict[tuple[State, Verb], State | Reply | None] = {}
    for state in _COMMAND_STATES:
        greeted = State.INIT if state is State.INIT else State.READY
        table[state, Verb.HELO] = State.READY
        table[state, Verb.EHLO] = State.READY
        table[state, Verb.RSET] = greeted
        table[state, Verb.NOOP] = _SAME
        table[state, Verb.QUIT] = State.CLOSED
        table[state, Verb.VRFY] = _SAME
        table[state, Verb.HELP] = _SAME
        table[state, Verb.EXPN] = replies.NOT_IMPLEMENTED
        table[state, Verb.TURN] = replies.NOT_IMPLEMENTED
        table[state, Verb.ETRN] = replies.NOT_IMPLEMENTED
        table[state, Verb.MAIL] = replies.NESTED_MAIL
        table[state, Verb.RCPT] = replies.NEED_MAIL
        table[state, Verb.DATA] = replies.NEED_MAIL
        table[state, Verb.STARTTLS] = replies.IN_TRANSACTION
        table[state, Verb.AUTH] = replies.IN_TRANSACTION
    table[State.INIT, Verb.MAIL] = replies.NEED_HELO
    table[State.INIT, Verb.STARTTLS] = replies.NEED_HELO
    table[State.INIT, Verb.AUTH] = replies.NEED_HELO
    table[State.READY, Verb.MAIL] = State.MAIL
    table[State.READY, Verb.STARTTLS] = State.INIT  # RFC 3207: after TLS the client starts over with EHLO
    table[State.READY, Verb.AUTH] = _SAME
    table[State.MAIL, Verb.RCPT] = State.RCPT
    table[State.RCPT, Verb.RCPT] = State.RCPT
    table[State.MAIL, Verb.DATA] = replies.NO_VALID_RECIPIENTS
    table[State.RCPT, Verb.DATA] = State.DATA
    return table


TABLE = _build()


def lookup(state: State, verb: Verb) -> tuple[Reply | None, State | None]:
    """Return (refusal, None) for an illegal command, or (None, state after a positive reply)."""
    entry = TABLE[state, verb]
    if isinstance(entry, Reply):
        return entry, None
    return None, state if entry is None else entry
