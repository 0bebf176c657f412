"""Salted scrypt password hashes and the users file (``name:hash`` lines); plaintext is never stored.

Hash format (one line, no spaces): ``$scrypt$ln=<log2 N>,r=<r>,p=<p>$<salt base64>$<key base64>``.

Invariants:
- Verification is constant-time in the key comparison, and an unknown user costs the same scrypt run as a
  known one (no user-enumeration oracle through timing).
- ``verify`` is CPU-heavy (tens of ms): callers run it in a thread, never on the event loop.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from pathlib import Path

LOG2_N, R, P = 14, 8, 1  # 16 MiB and ~50 ms per check: OWASP's minimum for scrypt
_FORMAT = re.compile(r"\$scrypt\$ln=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)")
_MAXMEM = 256 * 1024 * 1024


class UsersFileError(ValueError):
    """The users file is malformed; the message names the line."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _derive(password: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=1 << log2_n, r=r, p=p, maxmem=_MAXMEM, dklen=32
    )


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    key = _derive(password, salt, LOG2_N, R, P)
    return f"$scrypt$ln={LOG2_N},r={R},p={P}${_b64(salt)}${_b64(key)}"


def check_hash(text: str) -> bool:
    match = _FORMAT.fullmatch(text)
    return match is not None and 10 <= int(match.group(1)) <= 20 and 1 <= int(match.group(2)) <= 32


def verify(password: str, stored: str) -> bool:
    match = _FORMAT.fullmatch(stored)
    if not match:
        return False
    log2_n, r, p = int(match.group(1)), int(match.group(2)), int(match.group(3))
    key = _derive(password, base64.b64decode(match.group(4)), log2_n, r, p)
    return hmac.compare_digest(key, base64.b64decode(match.group(5)))


_DUMMY = "$scrypt$ln=14,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="


@dataclass(frozen=True, slots=True)
class Users:
    hashes: dict[str, str]

    def check(self, username: str, password: str) -> bool:
        stored = self.hashes.get(username)
        ok = verify(password, stored or _DUMMY)
        return ok and stored is not None


def load_users(path: Path) -> Users:
    """Read ``name:hash`` lines (``#`` comments).

    Raises OSError if the file is unreadable, UsersFileError if a line is malformed.
    """
    hashes: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, stored = line.partition(":")
        if not colon or not name or not check_hash(stored):
            raise UsersFileError(
                f"{path}:{number}: expected 'name:hash' with a hash from 'smtp-tarpit hash-password'"
            )
        hashes[name] = stored
    return Users(hashes)
