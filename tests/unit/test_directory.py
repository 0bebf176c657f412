"""The recipient directory: mailboxes, aliases, catch-alls, postmaster, relay tricks."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtp_tarpit.directory import recipients
from smtp_tarpit.directory.recipients import DirectoryError, Verdict
from smtp_tarpit.protocol.address import parse_mailbox


def _dir(text: str, domains: tuple[str, ...] = ("example.test", "other.test")) -> recipients.Directory:
    entries = [(f"f:{n}", line.split()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    return recipients.build(list(domains), entries)


def _resolve(directory: recipients.Directory, address: str) -> tuple[Verdict, str]:
    found = directory.resolve(parse_mailbox(address))
    return found.verdict, found.mailbox


def test_lookup_is_case_insensitive() -> None:
    directory = _dir("Alice@Example.TEST")
    assert _resolve(directory, "ALICE@example.test") == (Verdict.ACCEPT, "alice@example.test")


def test_alias_chain_and_alias_target_are_mailboxes() -> None:
    directory = _dir("a@example.test b@example.test\nb@example.test c@example.test")
    assert _resolve(directory, "a@example.test") == (Verdict.ACCEPT, "c@example.test")
    assert _resolve(directory, "c@example.test") == (Verdict.ACCEPT, "c@example.test")


def test_alias_loop_is_an_error() -> None:
    with pytest.raises(DirectoryError, match="alias loop"):
        _dir("a@example.test b@example.test\nb@example.test a@example.test")


def test_catch_all_and_unknown_and_not_local() -> None:
    directory = _dir("alice@example.test\n@other.test alice@example.test")
    assert _resolve(directory, "anyone@other.test") == (Verdict.ACCEPT, "alice@example.test")
    assert _resolve(directory, "nobody@example.test")[0] is Verdict.UNKNOWN
    assert _resolve(directory, "x@elsewhere.test")[0] is Verdict.NOT_LOCAL


def test_postmaster_of_every_domain_goes_to_the_first_domains_postmaster() -> None:
    directory = _dir("alice@example.test")
    assert _resolve(directory, "postmaster@other.test") == (Verdict.ACCEPT, "postmaster@example.test")
    assert _resolve(directory, "postmaster") == (Verdict.ACCEPT, "postmaster@example.test")
    aliased = _dir("alice@example.test\npostmaster@example.test alice@example.test")
    assert _resolve(aliased, "postmaster@other.test") == (Verdict.ACCEPT, "alice@example.test")


def test_relay_tricks_are_never_local_even_with_a_catch_all() -> None:
    directory = _dir("@example.test alice@example.test")
    for address in ("a%b.test@example.test", "b.test!a@example.test", '"a@b.test"@example.test'):
        assert _resolve(directory, address)[0] is Verdict.NOT_LOCAL


def test_targets_outside_local_domains_are_refused() -> None:
    with pytest.raises(DirectoryError, match=r"f:1: x@elsewhere\.test: not in one of"):
        _dir("sales@example.test x@elsewhere.test")


def test_file_comments(tmp_path: Path) -> None:
    path = tmp_path / "r.txt"
    path.write_text("# comment\nalice@example.test  # trailing comment\nfoo#bar@example.test\n")
    directory = recipients.load(["example.test"], path)
    assert set(directory.mailboxes) == {"alice@example.test", "foo#bar@example.test"}
