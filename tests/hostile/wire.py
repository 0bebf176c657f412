"""What every hostile test checks on the wire: reply shape, no leaked internals, and a raw socket client.

Owns:
- ``check_replies(wire)``: each reply line is ``ddd`` + space or hyphen + text + CRLF, at most 512 octets,
  one code per reply, the enhanced code (when present) of the reply's class on every line.
- ``assert_no_leak(wire)``: no exception text, traceback, source path or module name in what we send.
- ``Client``: a raw socket to a running server that checks both of the above on every byte it receives.
- ``rss_mib`` and ``receive_queue``: what a server process holds (its RSS, and the bytes the kernel keeps
  for it unread on one connection), to prove input and output stay bounded.
"""

from __future__ import annotations

import contextlib
import re
import socket
import time
from pathlib import Path

REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])([ -])([^\r\n]*)\r\n")
ENHANCED = re.compile(rb"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?: |$)")
MAX_REPLY_LINE = 512  # RFC 5321 4.5.3.1.5, CRLF included
LEAKS = (
    b"Traceback",
    b'File "',
    b".py",
    b"Error(",
    b"Exception",
    b"errno",
    b"Errno",
    b"smtp_tarpit",
    b"/work",
    b"/tmp",
    b"/usr/",
    b"site-packages",
    b"object at 0x",
)


def assert_no_leak(wire: bytes) -> None:
    for leak in LEAKS:
        assert leak not in wire, f"a reply shows internals ({leak!r}): {wire!r}"


def split_replies(wire: bytes) -> list[list[bytes]]:
    """The replies in ``wire`` (which must end at a reply's end), each as its lines without CRLF."""
    replies: list[list[bytes]] = []
    current: list[bytes] = []
    position = 0
    while position < len(wire):
        line = REPLY_LINE.match(wire, position)
        assert line is not None, f"not a reply line at {position}: {wire[position : position + 80]!r}"
        current.append(wire[position : line.end() - 2])
        position = line.end()
        if line.group(2) == b" ":
            replies.append(current)
            current = []
    assert not current, f"a multi-line reply never ends: {current!r}"
    return replies


def check_reply(lines: list[bytes]) -> None:
    codes = {line[:3] for line in lines}
    assert len(codes) == 1, f"one reply, several codes: {lines!r}"
    code = lines[0][:3]
    enhanced = [ENHANCED.match(line, 4) for line in lines]
    if enhanced[0] is not None:
        # RFC 2034: the enhanced code's class is the reply's class, and every line of the reply carries it.
        assert all(found is not None for found in enhanced), f"enhanced code on some lines only: {lines!r}"
        assert enhanced[0].group(1) == code[:1], f"enhanced code of another class: {lines!r}"
        assert len({found.group(0).strip() for found in enhanced if found}) == 1, lines
    for line in lines:
        assert len(line) + 2 <= MAX_REPLY_LINE, f"reply line of {len(line) + 2} octets: {line[:80]!r}"


def check_replies(wire: bytes) -> list[list[bytes]]:
    """Every reply in ``wire`` well formed and free of internals; returns them."""
    assert_no_leak(wire)
    replies = split_replies(wire)
    for reply in replies:
        check_reply(reply)
    return replies


class Client:
    """A raw SMTP client socket: sends bytes as given, reads replies, checks every byte it receives."""

    def __init__(self, host: str, port: int, timeout: float = 10.0, source: str | None = None) -> None:
        self.sock = socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None
        )
        self.timeout = timeout
        self.received = bytearray()  # everything, for the leak check at the end
        self._pending = bytearray()  # received but not yet handed out
        self.eof = False

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):  # wakes up a thread still blocked sending on this socket
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or self.eof:
            return False
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return False
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        assert_no_leak(chunk)
        self.received += chunk
        self._pending += chunk
        return True

    def lines(self, count: int, timeout: float | None = None) -> bytes:
        """Exactly ``count`` CRLF-terminated lines (fewer only if the server closes or goes silent)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while self._pending.count(b"\r\n") < count and self._fill(deadline):
            pass
        end = 0
        for _ in range(count):
            found = self._pending.find(b"\r\n", end)
            if found < 0:
                end = len(self._pending)
                break
            end = found + 2
        out = bytes(self._pending[:end])
        del self._pending[:end]
        return out

    def reply(self, timeout: float | None = None) -> bytes:
        """One whole reply (all its lines), checked."""
        out = bytearray()
        while True:
            line = self.lines(1, timeout)
            out += line
            if not line.endswith(b"\r\n") or line[3:4] != b"-":
                break
        if out:
            check_replies(bytes(out))
        return bytes(out)

    def command(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return self.reply()

    def rest(self, timeout: float = 10.0) -> bytes:
        """Everything until the server closes the connection (or ``timeout`` passes)."""
        deadline = time.monotonic() + timeout
        while self._fill(deadline):
            pass
        out = bytes(self._pending)
        self._pending.clear()
        return out

    def quiet(self, seconds: float) -> bytes:
        """Whatever arrives within ``seconds`` (b"" if nothing does)."""
        deadline = time.monotonic() + seconds
        while self._fill(deadline):
            pass
        out = bytes(self._pending)
        self._pending.clear()
        return out


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def _hex_port(address: str) -> int:
    return int(address.rpartition(":")[2], 16)


def receive_queue(server_port: int, client_port: int) -> int | None:
    """Bytes the kernel holds unread for the server on this connection (None if it is gone)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            local, remote, queues = fields[1], fields[2], fields[4]
            if _hex_port(local) == server_port and _hex_port(remote) == client_port:
                return int(queues.partition(":")[2], 16)
    return None
