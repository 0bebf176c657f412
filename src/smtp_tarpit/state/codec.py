"""How a ``ClientState`` is written into a shared store (SQLite, Redis) and read back: compact JSON.

``encode`` turns a state into bytes; ``decode`` turns bytes back into a state and checks everything on the
way, because what a shared store holds may have been written by another version of this program, by a
person with redis-cli, or by nobody we know.

Invariants:
- ``decode(encode(s), settings) == s`` for every state the policy can produce (scores within
  ``[0, max_score]``, finite times, at most ``MAX_UNKNOWNS`` unknown-recipient times).
- ``decode`` either returns a state that keeps every invariant of ``ClientState`` (finite, non-negative
  times and score, score at most ``settings.max_score``, a bounded list of unknowns, counts only of known
  observations) or raises ``ValueError``; never any other exception, whatever the bytes. A score above
  ``settings.max_score`` but within what any config allows is brought down to it, like ``observe`` does:
  after a reload that lowers max_score, the worst clients must not be forgotten as "malformed".
- A record is small: at most ``MAX_RECORD`` octets are ever parsed.
"""

from __future__ import annotations

import json
import math
from typing import Any

from smtp_tarpit.policy.reputation import MAX_UNKNOWNS, ClientState, Observation
from smtp_tarpit.policy.settings import PolicySettings

VERSION = 1
# MAX_UNKNOWNS (the policy's bound on unknown-recipient times per key): a record with more was not written
# by us. Encoding keeps the most recent ones so that what we write always reads back.
MAX_SCORE = 10_000.0  # the largest [reputation] max_score the config accepts; above it is not ours
# 1000 times of ~20 octets plus the rest; anything much larger is not ours and is refused before parsing.
MAX_RECORD = 64 * 1024
MAX_COUNT = 2**63 - 1  # fits a signed 64-bit integer wherever the record goes
_OBSERVATIONS = frozenset(o.value for o in Observation)
_FIELDS = frozenset({"v", "s", "a", "u", "f", "c"})


def encode(state: ClientState) -> bytes:
    record = {
        "v": VERSION,
        "s": state.score,
        "a": state.at,
        "u": list(state.unknowns[-MAX_UNKNOWNS:]),
        "f": state.flagged_until,
        "c": dict(state.counts),
    }
    # allow_nan=False: a non-finite number is a bug upstream; fail here rather than write it.
    return json.dumps(record, separators=(",", ":"), allow_nan=False).encode()


def decode(data: bytes, settings: PolicySettings) -> ClientState:
    """The state in ``data``, or ValueError saying what is wrong with it."""
    if len(data) > MAX_RECORD:
        raise ValueError(f"record of {len(data)} octets (at most {MAX_RECORD})")
    try:
        record = json.loads(data, parse_constant=_no_constant)
    except (UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    # json.JSONDecodeError is a ValueError already.
    if not isinstance(record, dict) or set(record) != _FIELDS:
        raise ValueError("not a client state record")
    if type(record["v"]) is not int or record["v"] != VERSION:
        raise ValueError(f"unknown record version {record['v']!r}")
    score = _time(record["s"], "score")
    if score > MAX_SCORE:
        raise ValueError(f"score {score} above any max_score")
    return ClientState(
        score=min(score, settings.max_score),
        at=_time(record["a"], "at"),
        unknowns=_unknowns(record["u"]),
        flagged_until=_time(record["f"], "flagged_until"),
        counts=_counts(record["c"]),
    )


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _number(value: object, what: str) -> float:
    # bool is an int in Python; true/false in a record is not a number.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} is not a number: {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range
        raise ValueError(f"{what} is out of range") from None
    if not math.isfinite(number):
        raise ValueError(f"{what} is not finite")
    return number


def _time(value: object, what: str) -> float:
    number = _number(value, what)
    if number < 0:
        raise ValueError(f"{what} is negative: {number}")
    return number


def _unknowns(value: object) -> tuple[float, ...]:
    if not isinstance(value, list):
        raise ValueError("unknowns is not a list")
    if len(value) > MAX_UNKNOWNS:
        raise ValueError(f"{len(value)} unknowns (at most {MAX_UNKNOWNS})")
    return tuple(_number(item, "an unknown recipient time") for item in value)


def _counts(value: object) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, dict):
        raise ValueError("counts is not an object")
    for name, count in value.items():
        if name not in _OBSERVATIONS:
            raise ValueError(f"unknown observation {name!r}")
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_COUNT:
            raise ValueError(f"count of {name} is not a non-negative integer: {count!r}")
    return tuple(sorted(value.items()))
