"""End to end with aiosmtplib, a real asyncio client: extensions it sees, STARTTLS and AUTH, partial
refusals among several recipients, and SMTPUTF8 addresses."""

from __future__ import annotations

import asyncio
import ssl
from email.message import EmailMessage

import aiosmtplib
import pytest

from tests.e2e.conftest import ServerFactory
from tests.e2e.helpers import PASSWORD, RunningServer

TLS = {"certificate": "cert.pem", "private_key": "key.pem"}
AUTH = {"users_file": "users.txt"}


def _message(subject: str, to: str = "alice@example.test") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "sender@remote.test"
    message["To"] = to
    message["Subject"] = subject
    message.set_content(f"body of {subject}\n")
    return message


def _client(
    server: RunningServer, *, start_tls: bool = False, tls_context: ssl.SSLContext | None = None
) -> aiosmtplib.SMTP:
    return aiosmtplib.SMTP(
        hostname=server.host,
        port=server.port,
        local_hostname="client.test",
        timeout=10,
        start_tls=start_tls,
        tls_context=tls_context,
    )


async def _until_closed(protocol: object) -> None:
    """Let the TLS close finish before asyncio.run() closes the loop (else: unclosed transport warnings)."""
    async with asyncio.timeout(5):
        while getattr(protocol, "transport", None) is not None:
            await asyncio.sleep(0.005)


def _context(server: RunningServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.folder / "cert.pem"))


def test_aiosmtplib_sees_the_esmtp_extensions(server: RunningServer) -> None:
    async def extensions() -> dict[str, str]:
        async with _client(server, start_tls=False) as smtp:
            await smtp.ehlo()
            return dict(smtp.esmtp_extensions)

    found = asyncio.run(extensions())
    assert {"pipelining", "size", "8bitmime", "enhancedstatuscodes", "smtputf8"} <= found.keys()
    assert int(found["size"]) > 0
    assert "starttls" not in found
    assert "auth" not in found


def test_aiosmtplib_sends_with_starttls_and_auth(make_server: ServerFactory) -> None:
    server = make_server(tls=TLS, auth=AUTH)

    async def send() -> tuple[bool, list[str], dict[str, aiosmtplib.SMTPResponse], str]:
        async with _client(server, start_tls=True, tls_context=_context(server)) as smtp:
            protocol = smtp.protocol
            await smtp.ehlo()
            methods = list(smtp.server_auth_methods)
            login = await smtp.login("alice", PASSWORD)
            assert login.code == 235
            errors, response = await smtp.send_message(_message("over tls"))
            encrypted = smtp.get_transport_info("ssl_object") is not None
        await _until_closed(protocol)
        return encrypted, methods, errors, response

    encrypted, methods, errors, response = asyncio.run(send())
    assert encrypted
    assert methods == ["plain", "login"]
    assert errors == {}
    assert response.startswith("2.0.0 Ok: queued as ")
    [stored] = server.messages()
    assert b" with ESMTPSA id " in stored
    assert b"Subject: over tls\n" in stored


def test_aiosmtplib_sends_without_tls(server: RunningServer) -> None:
    async def send() -> tuple[dict[str, aiosmtplib.SMTPResponse], str]:
        async with _client(server, start_tls=False) as smtp:
            return await smtp.send_message(_message("plaintext"))

    errors, response = asyncio.run(send())
    assert errors == {}
    assert response.startswith("2.0.0 Ok: queued as ")
    [stored] = server.messages()
    assert b" with ESMTP id " in stored
    assert stored.endswith(b"body of plaintext\n")


def test_one_unknown_recipient_among_several_is_reported_and_the_rest_delivered(
    server: RunningServer,
) -> None:
    recipients = ["alice@example.test", "nobody@example.test", "bob@example.test"]

    async def send() -> dict[str, aiosmtplib.SMTPResponse]:
        async with _client(server, start_tls=False) as smtp:
            errors, _ = await smtp.send_message(_message("several"), recipients=recipients)
            return errors

    errors = asyncio.run(send())
    assert list(errors) == ["nobody@example.test"]
    assert errors["nobody@example.test"].code == 550
    assert errors["nobody@example.test"].message.startswith("5.1.1 ")
    assert len(server.messages("alice@example.test")) == 1
    assert len(server.messages("bob@example.test")) == 1


def test_all_recipients_unknown_raises_recipients_refused(server: RunningServer) -> None:
    async def send() -> None:
        async with _client(server, start_tls=False) as smtp:
            await smtp.send_message(_message("nobody"), recipients=["nobody@example.test", "x@example.test"])

    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
        asyncio.run(send())
    assert [(e.recipient, e.code) for e in refused.value.recipients] == [
        ("nobody@example.test", 550),
        ("x@example.test", 550),
    ]
    assert server.messages() == []


def test_non_ascii_recipient_is_parsed_with_smtputf8_and_refused_553_without(server: RunningServer) -> None:
    async def dialogue() -> tuple[int, str, int, str]:
        async with _client(server, start_tls=False) as smtp:
            await smtp.mail("sender@remote.test", options=["SMTPUTF8"], encoding="utf-8")
            with pytest.raises(aiosmtplib.SMTPRecipientRefused) as unknown:
                await smtp.rcpt("jörg@example.test", encoding="utf-8")
            await smtp.rset()
            await smtp.mail("sender@remote.test")
            with pytest.raises(aiosmtplib.SMTPRecipientRefused) as not_allowed:
                await smtp.rcpt("jörg@example.test", encoding="utf-8")
            return (
                unknown.value.code,
                unknown.value.message,
                not_allowed.value.code,
                not_allowed.value.message,
            )

    unknown_code, unknown_text, refused_code, refused_text = asyncio.run(dialogue())
    assert (unknown_code, unknown_text[:5]) == (550, "5.1.1")  # parsed, then looked up: not ours
    assert (refused_code, refused_text[:5]) == (553, "5.6.7")  # not even parsed without SMTPUTF8


def test_send_message_with_a_non_ascii_address_uses_smtputf8(server: RunningServer) -> None:
    async def send() -> dict[str, aiosmtplib.SMTPResponse]:
        async with _client(server, start_tls=False) as smtp:
            errors, _ = await smtp.send_message(
                _message("utf8"),
                sender="jörg@remote.test",
                recipients=["jörg@example.test", "alice@example.test"],
            )
            return errors

    errors = asyncio.run(send())
    assert list(errors) == ["jörg@example.test"]
    assert errors["jörg@example.test"].code == 550
    [stored] = server.messages()
    assert stored.startswith("Return-Path: <jörg@remote.test>\n".encode())
    assert b" with UTF8SMTP id " in stored
