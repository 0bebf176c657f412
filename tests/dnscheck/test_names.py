"""Host name suffix matching for exemptions, by example and by property."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtp_tarpit.dnscheck import matches_suffix

LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,14}[a-z0-9])?", fullmatch=True)
DOMAIN = st.lists(LABEL, min_size=1, max_size=4).map(".".join)


@pytest.mark.parametrize(
    ("hostname", "suffix", "expected"),
    [
        ("mail-x.google.com", ".google.com", True),
        ("MAIL-X.Google.COM.", ".google.com", True),
        ("mail-x.google.com", ".GOOGLE.com.", True),
        ("evilgoogle.com", ".google.com", False),
        ("google.com", ".google.com", False),
        ("google.com", "google.com", True),
        ("a.b.google.com", "google.com", True),
        ("evilgoogle.com", "google.com", False),
        ("google.com.evil.test", "google.com", False),
        (None, "google.com", False),
        ("", "google.com", False),
        ("google.com", "", False),
        ("google.com", ".", False),
    ],
)
def test_suffix_examples(hostname: str | None, suffix: str, expected: bool) -> None:
    assert matches_suffix(hostname, [suffix]) is expected


def test_any_suffix_of_the_list_matches() -> None:
    assert matches_suffix("mx.outlook.com", [".google.com", ".outlook.com"])
    assert not matches_suffix("mx.outlook.com", [])


@given(label=LABEL, domain=DOMAIN, dotted=st.booleans(), upper=st.booleans())
def test_label_under_suffix_always_matches(label: str, domain: str, dotted: bool, upper: bool) -> None:
    hostname = f"{label}.{domain}"
    suffix = "." + domain if dotted else domain
    assert matches_suffix(hostname.upper() if upper else hostname, [suffix])


@given(label=LABEL, domain=DOMAIN, dotted=st.booleans())
def test_suffix_glued_without_a_dot_never_matches(label: str, domain: str, dotted: bool) -> None:
    suffix = "." + domain if dotted else domain
    assert not matches_suffix(label + domain, [suffix])
