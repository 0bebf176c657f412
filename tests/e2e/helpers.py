"""Start a real smtp-tarpit process for a test, with its own config, recipients, Maildir and log file."""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from smtp_tarpit.auth.passwords import hash_password

RECIPIENTS = """\
alice@example.test
bob@example.test
sales@example.test alice@example.test
@catchall.test bob@example.test
"""
PASSWORD = "correct horse"
_LISTENING = re.compile(r"listening on (\S+) port (\d+)")
_USERS_LINE: list[str] = []  # one scrypt hash per test run: hashing costs ~100 ms


def users_line() -> str:
    if not _USERS_LINE:
        _USERS_LINE.append(f"alice:{hash_password(PASSWORD)}\n")
    return _USERS_LINE[0]


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost / 127.0.0.1, made fresh by the test."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def write_config(folder: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    path = folder / "smtp-tarpit.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class RunningServer:
    folder: Path
    config: Path
    process: subprocess.Popen[bytes]
    host: str = "127.0.0.1"
    port: int = 0
    log_path: Path = field(default_factory=Path)

    @property
    def maildir(self) -> Path:
        return self.folder / "mail"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def messages(self, mailbox: str = "alice@example.test") -> list[bytes]:
        local, _, domain = mailbox.partition("@")
        new = self.maildir / domain / local / "new"
        return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.log())
            if found:
                return found
            time.sleep(0.02)
        raise AssertionError(f"log never matched {pattern!r}:\n{self.log()}")

    def stop(self, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


def start_server(folder: Path, overrides: dict[str, dict[str, Any]] | None = None) -> RunningServer:
    """Write a config (defaults below, then ``overrides`` per section) and start the server on a free port."""
    (folder / "recipients.txt").write_text(RECIPIENTS)
    sections: dict[str, dict[str, Any]] = {
        "server": {"listen": ["127.0.0.1:0"], "hostname": "mx.example.test", "shutdown_grace": "5s"},
        "recipients": {"domains": ["example.test", "catchall.test"], "file": "recipients.txt"},
        "delivery": {"maildir": "mail"},
        "tarpit": {"delay": 0},
        "log": {"level": "debug"},
    }
    for section, values in (overrides or {}).items():
        sections.setdefault(section, {}).update(values)
    if "auth" in sections and sections["auth"].get("users_file") == "users.txt":
        (folder / "users.txt").write_text(users_line())
    if "tls" in sections and sections["tls"].get("certificate") == "cert.pem":
        make_certificate(folder)
    config = write_config(folder, sections)
    log_path = folder / "server.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "smtp_tarpit", "serve", "--config", str(config)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    server = RunningServer(folder, config, process, log_path=log_path)
    try:
        found = server.wait_for_log(_LISTENING.pattern)
        # The admin socket and HTTP listener open just after the SMTP listeners: a test may use them at
        # once (CI once found admin.sock missing right after "listening on").
        server.wait_for_log(r"smtp-tarpit \S+ ready")
    except AssertionError:
        process.kill()
        process.wait()
        raise
    server.host, server.port = found.group(1), int(found.group(2))
    return server


def send_until_stopped(
    server: RunningServer,
    worker: int,
    acked: dict[str, bytes],
    stop: threading.Event,
    *,
    filler: Callable[[int], bytes] = lambda number: (b"x" * 70 + b"\r\n") * 50,
    prefix: str = "",
) -> None:
    """Send messages to alice, one connection each, until ``stop`` or the server goes away; record message
    id -> marker for every 250. Message ``number`` is ``filler(number)`` between its Subject and its last
    line, ``END-<marker>``."""
    number = 0
    while not stop.is_set():
        number += 1
        marker = f"{prefix}w{worker}n{number}".encode()
        body = b"Subject: crash " + marker + b"\r\n\r\n" + filler(number) + b"END-" + marker + b"\r\n"
        try:
            with smtplib.SMTP(server.host, server.port, timeout=10) as smtp:
                smtp.ehlo("client.example")
                smtp.mail("s@remote.test")
                smtp.rcpt("alice@example.test")
                code, text = smtp.data(body)
        except (OSError, smtplib.SMTPException):
            return
        if code == 250:
            found = re.search(rb"queued as (\w+)", text)
            assert found is not None
            acked[found.group(1).decode()] = marker


def kill_while_sending(server: RunningServer, minimum: int, within: float) -> dict[str, bytes]:
    """Four clients send to alice until ``minimum`` messages got a 250 (or ``within`` seconds passed), then
    the server is killed with SIGKILL mid-stream. Returns message id -> marker for every acknowledged one;
    each message ends with the line ``END-<marker>``."""
    acked: dict[str, bytes] = {}
    stop = threading.Event()
    workers = [threading.Thread(target=send_until_stopped, args=(server, n, acked, stop)) for n in range(4)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + within
    while len(acked) < minimum and time.monotonic() < deadline:
        time.sleep(0.01)
    server.process.kill()
    server.process.wait()
    stop.set()
    for worker in workers:
        worker.join(timeout=15)
    return acked
