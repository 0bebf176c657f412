"""Parsing of RFC 5321 paths and ESMTP parameters, directly and through MAIL/RCPT on the connection."""

from __future__ import annotations

import pytest

from smtp_tarpit.protocol.address import Address, AddressError, parse_mailbox, parse_params, parse_path
from smtp_tarpit.protocol.events import Mail, Rcpt
from tests.protocol.smtp_dialogue import Dialogue


def rcpt_address(dialogue: Dialogue) -> Address:
    event = dialogue.events[-1]
    assert isinstance(event, Rcpt)
    return event.recipient


def in_transaction() -> Dialogue:
    dialogue = Dialogue()
    dialogue.feed(b"EHLO client.example\r\nMAIL FROM:<s@example.org>\r\n")
    return dialogue


@pytest.mark.parametrize(
    ("path", "address"),
    [
        ("<alice@example.test>", Address("alice", "example.test")),
        ("<Alice@Example.TEST>", Address("Alice", "example.test")),
        ("alice@example.test", Address("alice", "example.test")),
        (" <alice@example.test>", Address("alice", "example.test")),
        ("<alice@example.test.>", Address("alice", "example.test")),
        ('<"john doe"@example.test>', Address("john doe", "example.test")),
        ('<"a\\"b\\\\c"@example.test>', Address('a"b\\c', "example.test")),
        ('<"a>b"@example.test>', Address("a>b", "example.test")),
        ("<first.last+tag@example.test>", Address("first.last+tag", "example.test")),
        ("<user@[192.0.2.1]>", Address("user", "[192.0.2.1]")),
        ("<user@[IPv6:2001:db8::1]>", Address("user", "[ipv6:2001:db8::1]")),
        ("<j\u00f6rg@b\u00fccher.example>", Address("j\u00f6rg", "b\u00fccher.example")),
    ],
)
def test_paths_parse_to_addresses(path: str, address: Address) -> None:
    assert parse_path(path, allow_null=False) == (address, {})


@pytest.mark.parametrize(
    "path",
    [
        "<@relay.example:alice@example.test>",
        "<@relay.example,@other.example:alice@example.test>",
    ],
)
def test_source_routes_are_stripped(path: str) -> None:
    assert parse_path(path, allow_null=False) == (Address("alice", "example.test"), {})


@pytest.mark.parametrize("path", ["<@relay.example>", "<@:alice@example.test>", "<@bad_host:a@example.test>"])
def test_malformed_source_routes_are_refused(path: str) -> None:
    with pytest.raises(AddressError):
        parse_path(path, allow_null=False)


@pytest.mark.parametrize(
    "mailbox",
    [
        "alice%evil.example@example.test",
        "evil.example!alice@example.test",
        '"alice@evil.example"@example.test',
    ],
)
def test_routing_tricks_in_the_local_part_are_flagged(mailbox: str) -> None:
    address = parse_mailbox(mailbox)
    assert address.relay_trick
    assert address.domain == "example.test"


def test_an_ordinary_local_part_is_no_relay_trick() -> None:
    assert not parse_mailbox("first.last+tag@example.test").relay_trick


@pytest.mark.parametrize("path", ["<postmaster>", "<Postmaster>", "<POSTMASTER>"])
def test_bare_postmaster_is_accepted_without_a_domain(path: str) -> None:
    address, _ = parse_path(path, allow_null=False)
    assert address == Address("postmaster", "")
    assert address.key == "postmaster"
    assert str(address) == "postmaster"


def test_postmaster_at_a_domain_is_an_ordinary_address() -> None:
    assert parse_mailbox("postmaster@example.test").key == "postmaster@example.test"


def test_local_part_of_64_octets_is_accepted_and_65_refused() -> None:
    assert parse_mailbox("a" * 64 + "@example.test").local == "a" * 64
    with pytest.raises(AddressError):
        parse_mailbox("a" * 65 + "@example.test")


def test_local_part_limit_counts_octets_not_characters() -> None:
    with pytest.raises(AddressError):
        parse_mailbox("\u00e9" * 33 + "@example.test")


def test_path_longer_than_256_octets_is_refused() -> None:
    domain = ".".join(["d" * 60] * 4)  # 243 octets: a valid domain
    assert parse_path(f"<{'a' * 12}@{domain}>", allow_null=False)[0] is not None  # 256 octets
    with pytest.raises(AddressError):
        parse_path(f"<{'a' * 13}@{domain}>", allow_null=False)


@pytest.mark.parametrize(
    "path",
    [
        "<alice@example.test",
        "<alice@example.test>x",
        "<alice>",
        "<@example.test>",
        "<alice@>",
        "<alice@@example.test>",
        "<.alice@example.test>",
        "<alice.@example.test>",
        "<alice..x@example.test>",
        "<al ice@example.test>",
        '<"unterminated@example.test>',
        '<"a"b@example.test>',
        "<alice@-example.test>",
        "<alice@example..test>",
        "<alice@exa_mple.test>",
        "<alice@[not-an-ip]>",
    ],
)
def test_malformed_paths_are_refused(path: str) -> None:
    with pytest.raises(AddressError):
        parse_path(path, allow_null=False)


def test_null_path_is_none_where_allowed_and_refused_elsewhere() -> None:
    assert parse_path("<>", allow_null=True) == (None, {})
    with pytest.raises(AddressError):
        parse_path("<>", allow_null=False)


def test_key_folds_the_case_of_the_local_part_and_the_domain() -> None:
    assert parse_mailbox("ALICE@Example.Test").key == "alice@example.test"


def test_str_quotes_local_parts_that_need_it() -> None:
    assert str(parse_mailbox('"john \\"j\\" doe"@example.test')) == '"john \\"j\\" doe"@example.test'
    assert str(parse_mailbox("alice@example.test")) == "alice@example.test"


def test_parameters_parse_with_upper_cased_keys() -> None:
    assert parse_params(" size=10  BODY=8BITMIME smtputf8") == {
        "SIZE": "10",
        "BODY": "8BITMIME",
        "SMTPUTF8": None,
    }


@pytest.mark.parametrize("text", ["SIZE=1 size=2", "=x", "SIZE=", "BAD_KEY=1", "KEY=a=b"])
def test_malformed_or_duplicate_parameters_are_refused(text: str) -> None:
    with pytest.raises(AddressError):
        parse_params(text)


def test_quoted_local_part_reaches_the_session_unquoted() -> None:
    dialogue = in_transaction()
    assert dialogue.codes(b'RCPT TO:<"alice"@example.test>\r\n') == ["250 2.1.5"]
    assert rcpt_address(dialogue) == Address("alice", "example.test")


def test_source_routed_recipient_reaches_the_session_as_its_final_mailbox() -> None:
    dialogue = in_transaction()
    assert dialogue.codes(b"RCPT TO:<@relay.example:bob@example.test>\r\n") == ["250 2.1.5"]
    assert rcpt_address(dialogue) == Address("bob", "example.test")


@pytest.mark.parametrize(
    "recipient",
    [
        b"alice%evil.example@example.test",
        b"evil.example!alice@example.test",
        b'"alice@evil.example"@example.test',
    ],
)
def test_relay_tricks_reach_the_session_flagged_and_are_not_local(recipient: bytes) -> None:
    dialogue = in_transaction()
    assert dialogue.codes(b"RCPT TO:<" + recipient + b">\r\n") == ["550 5.1.1"]
    assert rcpt_address(dialogue).relay_trick


def test_bare_postmaster_recipient_is_accepted() -> None:
    dialogue = in_transaction()
    assert dialogue.codes(b"RCPT TO:<Postmaster>\r\n") == ["250 2.1.5"]
    assert rcpt_address(dialogue).key == "postmaster"


def test_too_long_local_part_is_refused_at_rcpt() -> None:
    dialogue = in_transaction()
    assert dialogue.say(b"RCPT TO:<" + b"a" * 65 + b"@example.test>\r\n") == [
        "501 5.1.3 Bad recipient address syntax"
    ]


def test_bare_postmaster_is_accepted_as_sender() -> None:
    dialogue = Dialogue()
    dialogue.feed(b"EHLO client.example\r\n")
    assert dialogue.codes(b"MAIL FROM:<postmaster>\r\n") == ["250 2.1.0"]
    event = dialogue.events[-1]
    assert isinstance(event, Mail)
    assert event.sender == Address("postmaster", "")
