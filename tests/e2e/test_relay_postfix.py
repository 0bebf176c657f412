"""Relay mode in front of a real Postfix: intact delivery, refusals passed on, failures as 4xx, nothing lost."""

from __future__ import annotations

import re
import signal
import smtplib
import socket
import time

import pytest

from tests.e2e import downstream
from tests.e2e.downstream import PostfixInstance
from tests.e2e.helpers import RunningServer, kill_while_sending

make_postfix = downstream.make_postfix
postfix = downstream.postfix


def _front(make_server, target: PostfixInstance, **overrides: dict[str, object]) -> RunningServer:  # type: ignore[no-untyped-def]
    relay = {"relay": f"smtp://127.0.0.1:{target.port}", "relay_timeout": "10s"}
    return make_server(delivery=relay, **overrides)


def test_mail_arrives_in_postfix_intact_with_the_real_client_forwarded(
    make_server, postfix: PostfixInstance
) -> None:  # type: ignore[no-untyped-def]
    front = _front(make_server, postfix)
    body = b"Subject: through\r\n\r\nline one\r\n.dot line\r\n\r\n..\r\nlast\r\n"
    with smtplib.SMTP(front.host, front.port, timeout=30) as smtp:
        smtp.ehlo("client.example")
        assert smtp.sendmail("s@remote.test", ["alice@example.test"], body) == {}
    [stored] = postfix.wait_for_messages("alice@example.test", 1)
    assert stored.endswith(b"Subject: through\n\nline one\n.dot line\n\n..\nlast\n")
    assert b"by mx.example.test (smtp-tarpit) with ESMTP" in stored
    postfix.wait_for_log(r"orig_client=\S*\[127\.0\.0\.1\]")


def test_a_user_postfix_does_not_know_is_refused_and_tar_pitted(
    make_server, postfix: PostfixInstance
) -> None:  # type: ignore[no-untyped-def]
    front = _front(make_server, postfix, tarpit={"delay": 1})
    with smtplib.SMTP(front.host, front.port, timeout=30) as smtp:
        smtp.ehlo("client.example")
        smtp.mail("s@remote.test")
        assert smtp.rcpt("sales@example.test")[0] == 250  # known to our file, not to Postfix
        started = time.monotonic()
        code, text = smtp.data(b"Subject: x\r\n\r\ny\r\n")
    assert code == 550 and text.startswith(b"5.1.1") and time.monotonic() - started >= 1
    front.wait_for_log(r"result=refused")


def test_postfix_going_away_mid_session_gives_a_4xx(make_server, postfix: PostfixInstance) -> None:  # type: ignore[no-untyped-def]
    front = _front(make_server, postfix)
    with smtplib.SMTP(front.host, front.port, timeout=30) as smtp:
        smtp.ehlo("client.example")
        smtp.mail("s@remote.test")
        smtp.rcpt("alice@example.test")
        postfix.stop_abruptly()
        code, _ = smtp.data(b"Subject: kept by the client\r\n\r\ny\r\n")
    assert code == 451  # the client keeps the message and retries: nothing lost


def test_smuggling_vectors_never_make_a_second_message_in_postfix(
    make_server, postfix: PostfixInstance
) -> None:  # type: ignore[no-untyped-def]
    front = _front(make_server, postfix)
    vectors = [b"\n.\n", b"\r.\r", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n"]
    with smtplib.SMTP(front.host, front.port, timeout=30) as smtp:
        for number, vector in enumerate(vectors):
            smtp.ehlo("client.example")
            smtp.mail("s@remote.test")
            smtp.rcpt("alice@example.test")
            smtp.putcmd("DATA")
            assert smtp.getreply()[0] == 354
            smtp.send(
                b"Subject: vector "
                + str(number).encode()
                + b"\r\n\r\nx"
                + vector
                + b"MAIL FROM:<evil@evil.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nSubject: smuggled\r\n"
                + b"\r\n.\r\n"
            )
            assert smtp.getreply()[0] == 250
    messages = postfix.wait_for_messages("alice@example.test", len(vectors))
    assert len(messages) == len(vectors)
    time.sleep(0.5)
    assert postfix.messages("bob@example.test") == []


def test_kill_9_loses_no_acknowledged_message(make_server, postfix: PostfixInstance) -> None:  # type: ignore[no-untyped-def]
    front = _front(make_server, postfix)
    acknowledged = kill_while_sending(front, minimum=20, within=20)
    if len(acknowledged) < 20:
        pytest.fail(f"only {len(acknowledged)} messages were acknowledged before the deadline")
    stored = postfix.wait_for_messages("alice@example.test", len(acknowledged), timeout=30)
    ids = {
        m.group(1).decode()
        for message in stored
        if (m := re.search(rb"smtp-tarpit\) with ESMTP id (\w+)", message))
    }
    missing = set(acknowledged) - ids
    assert not missing, f"acknowledged but not in Postfix: {sorted(missing)}"
    with socket.create_connection(("127.0.0.1", postfix.port), timeout=5):
        pass  # Postfix itself is still fine


def _verifying_front(make_server, target: PostfixInstance, **overrides: dict[str, object]) -> RunningServer:  # type: ignore[no-untyped-def]
    server = _front(make_server, target, **overrides)
    text = server.config.read_text().replace('file = "recipients.txt"', 'verify = "downstream"')
    server.config.write_text(text)  # no local list: Postfix decides who exists
    server.process.send_signal(signal.SIGHUP)
    server.wait_for_log("reloaded")
    return server


def _rcpt_codes(front: RunningServer, addresses: list[str], source: str = "127.0.0.1") -> list[int]:
    with smtplib.SMTP(front.host, front.port, timeout=30, source_address=(source, 0)) as smtp:
        smtp.ehlo("client.example")
        smtp.mail("s@remote.test")
        return [smtp.rcpt(address)[0] for address in addresses]


def test_postfix_decides_who_exists_and_its_answers_are_cached(make_server, postfix: PostfixInstance) -> None:  # type: ignore[no-untyped-def]
    front = _verifying_front(make_server, postfix, tarpit={"delay": 0.5})
    started = time.monotonic()
    assert _rcpt_codes(front, ["alice@example.test", "carol@example.test"]) == [250, 550]
    assert time.monotonic() - started >= 0.5  # the 550 is tar pitted like any
    assert _rcpt_codes(front, ["carol@example.test", "alice@example.test"]) == [550, 250]
    refusals = re.findall(r"reject: RCPT from .*<carol@example\.test>", postfix.log())
    assert len(refusals) == 1  # the second answer came from our cache


def test_a_flagged_harvester_never_reaches_the_downstream(make_server, postfix: PostfixInstance) -> None:  # type: ignore[no-untyped-def]
    front = _verifying_front(make_server, postfix, harvest={"threshold": 2, "delay": 0})
    probes = [f"guess{i}@example.test" for i in range(6)]
    assert _rcpt_codes(front, probes, source="127.0.1.2") == [550, 450, 450, 450, 450, 450]
    asked = set(re.findall(r"<(guess\d)@example\.test>", postfix.log()))
    assert asked == {"guess0", "guess1"}  # asked until the flag went up, never after


def test_verification_with_postfix_down_is_a_temporary_failure(make_server, postfix: PostfixInstance) -> None:  # type: ignore[no-untyped-def]
    front = _verifying_front(make_server, postfix)
    postfix.stop()
    with smtplib.SMTP(front.host, front.port, timeout=30) as smtp:
        smtp.ehlo("client.example")
        smtp.mail("s@remote.test")
        code, text = smtp.rcpt("alice@example.test")
    assert (code, text[:5]) == (450, b"4.4.3")
