"""The record format of shared stores (state/codec.py): what we write reads back exactly; whatever else a
store holds is refused with ValueError, never with another exception and never as a nonsense state."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtp_tarpit.policy.reputation import EMPTY, MAX_UNKNOWNS, ClientState, Observation, observe
from smtp_tarpit.policy.settings import PolicySettings
from smtp_tarpit.state.codec import MAX_RECORD, decode, encode

SETTINGS = PolicySettings(half_life=600.0, harvest_threshold=5, max_score=100.0)
times = st.floats(min_value=0.0, max_value=1e11, allow_nan=False, allow_infinity=False)
counts = st.dictionaries(
    st.sampled_from([o.value for o in Observation]), st.integers(min_value=0, max_value=2**63 - 1)
).map(lambda d: tuple(sorted(d.items())))
states = st.builds(
    ClientState,
    score=st.floats(min_value=0.0, max_value=SETTINGS.max_score, allow_nan=False),
    at=times,
    unknowns=st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=40).map(tuple),
    flagged_until=times,
    counts=counts,
)
GOOD = {"v": 1, "s": 1.5, "a": 1000.0, "u": [990.0, 995.0], "f": 0.0, "c": {"error": 2}}


@given(states)
def test_every_state_reads_back_exactly(state: ClientState) -> None:
    assert decode(encode(state), SETTINGS) == state


def test_a_state_built_by_the_policy_reads_back_exactly() -> None:
    state = EMPTY
    for step, observation in enumerate([*Observation, Observation.UNKNOWN_RECIPIENT] * 3):
        state = observe(state, observation, 1_700_000_000.123 + step / 7, SETTINGS)
    assert decode(encode(state), SETTINGS) == state


def test_the_record_is_compact_json() -> None:
    record = encode(ClientState(score=1.5, at=1000.0, unknowns=(990.0,), counts=(("error", 2),)))
    assert b" " not in record
    assert json.loads(record) == {"v": 1, "s": 1.5, "a": 1000.0, "u": [990.0], "f": 0.0, "c": {"error": 2}}
    assert len(encode(EMPTY)) < 50


def test_encoding_keeps_only_the_most_recent_unknowns() -> None:
    state = ClientState(unknowns=tuple(float(t) for t in range(MAX_UNKNOWNS + 5)))
    assert decode(encode(state), SETTINGS).unknowns == state.unknowns[-MAX_UNKNOWNS:]


def test_a_non_finite_number_is_never_written() -> None:
    with pytest.raises(ValueError, match="JSON compliant"):
        encode(ClientState(score=math.inf))


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("v", 2, "version"),
        ("v", True, "version"),
        ("v", "1", "version"),
        ("s", -0.5, "negative"),
        ("s", 10_000.5, "above any max_score"),
        ("s", "1", "not a number"),
        ("s", None, "not a number"),
        ("s", True, "not a number"),
        ("s", 10**400, "out of range"),
        ("a", -1.0, "negative"),
        ("a", [1.0], "not a number"),
        ("f", -5, "negative"),
        ("u", "1.0", "not a list"),
        ("u", [1.0, "x"], "not a number"),
        ("u", [1.0, None], "not a number"),
        ("u", [0.0] * (MAX_UNKNOWNS + 1), "unknowns"),
        ("c", [], "not an object"),
        ("c", {"bogus": 1}, "unknown observation"),
        ("c", {"error": -1}, "non-negative integer"),
        ("c", {"error": 1.0}, "non-negative integer"),
        ("c", {"error": True}, "non-negative integer"),
        ("c", {"error": 2**64}, "non-negative integer"),
    ],
)
def test_a_record_with_a_wrong_field_is_refused(field: str, value: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        decode(json.dumps({**GOOD, field: value}).encode(), SETTINGS)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"null",
        b"[]",
        b'"text"',
        b"\xff\xfe\xfa",
        b'{"v":1,"s":NaN,"a":1.0,"u":[],"f":0.0,"c":{}}',
        b'{"v":1,"s":Infinity,"a":1.0,"u":[],"f":0.0,"c":{}}',
        b'{"v":1,"s":1.0,"a":-Infinity,"u":[],"f":0.0,"c":{}}',
        b'{"v":1,"s":1e999,"a":1.0,"u":[],"f":0.0,"c":{}}',
        b'{"v":1,"s":1.0,"a":1.0,"u":[],"f":0.0}',
        b'{"v":1,"s":1.0,"a":1.0,"u":[],"f":0.0,"c":{},"x":1}',
        b"[" * 50_000,
        b'{"v":1,"s":' + b"9" * 5000 + b',"a":1.0,"u":[],"f":0.0,"c":{}}',
        b" " * (MAX_RECORD + 1),
    ],
)
def test_what_is_not_a_record_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode(data, SETTINGS)


def test_a_score_above_a_lowered_max_score_is_brought_down_to_it() -> None:
    record = encode(ClientState(score=80.0, at=1.0, flagged_until=5.0))
    assert decode(record, SETTINGS) == ClientState(score=80.0, at=1.0, flagged_until=5.0)
    assert decode(record, PolicySettings(max_score=50.0)) == ClientState(
        score=50.0, at=1.0, flagged_until=5.0
    )


def _valid(state: ClientState) -> bool:
    numbers = (state.score, state.at, state.flagged_until, *state.unknowns)
    return (
        all(isinstance(n, float) and math.isfinite(n) for n in numbers)
        and 0 <= state.score <= SETTINGS.max_score
        and state.at >= 0
        and state.flagged_until >= 0
        and len(state.unknowns) <= MAX_UNKNOWNS
        and all(name in {o.value for o in Observation} and count >= 0 for name, count in state.counts)
        and list(state.counts) == sorted(state.counts)
    )


@given(st.binary(max_size=300))
def test_any_bytes_decode_to_a_valid_state_or_value_error(data: bytes) -> None:
    try:
        state = decode(data, SETTINGS)
    except ValueError:
        return
    assert _valid(state)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)


@given(st.sampled_from(sorted(GOOD)), json_values)
def test_any_value_in_any_field_decodes_to_a_valid_state_or_value_error(field: str, value: object) -> None:
    data = json.dumps({**GOOD, field: value}).encode()  # NaN and Infinity included, as Python writes them
    try:
        state = decode(data, SETTINGS)
    except ValueError:
        return
    assert _valid(state)
